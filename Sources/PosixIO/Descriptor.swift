import Glibc

/// An owned file descriptor, closed exactly once: by `close()` or, failing that, on deinit.
public final class Descriptor {
    public private(set) var raw: Int32
    /// The epoll instance a `PollSet` registered this descriptor in (-1: none), and for
    /// which events. It leaves that instance before it is closed: a number reused by a new
    /// descriptor then never inherits the registration, and a description another process
    /// shares (an eventfd QEMU also holds) is not watched on after slirpd let go of it.
    var epollInstance: Int32 = -1
    var epollEvents: UInt32 = 0

    public init(owning raw: Int32) {
        self.raw = raw
    }

    public var isOpen: Bool { raw >= 0 }

    public func close() {
        guard raw >= 0 else { return }
        if epollInstance >= 0 {
            EpollRegistry.remove(raw, from: epollInstance)
            epollInstance = -1
        }
        // close() may report EINTR/EIO, but the descriptor is released either way on Linux.
        _ = Glibc.close(raw)
        raw = -1
    }

    deinit { close() }

    /// Reads into `buffer`'s free space, which must not be empty. `.done(0)` means end of stream.
    public func read(into buffer: ByteBuffer) throws(IOError) -> IOResult<Int> {
        buffer.prepareForRead()
        let space = buffer.freeSpace
        // Callers consume whole frames after each read and size buffers for two of the largest.
        precondition(space.count > 0, "read into a full buffer")
        let result = try syscall("read") { Glibc.read(raw, space.baseAddress, space.count) }
        if case .done(let n) = result, n > 0 { buffer.didWrite(n) }
        if case .done(let n) = result { buffer.lastReadFilled = n == space.count } else { buffer.lastReadFilled = false }
        return result
    }

    /// Writes as much of `buffer`'s readable bytes as the socket takes, and consumes them.
    public func write(from buffer: ByteBuffer) throws(IOError) -> IOResult<Int> {
        let bytes = buffer.readable
        guard bytes.count > 0 else { return .done(0) }
        let result = try syscall("send") {
            Glibc.send(raw, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
        }
        if case .done(let n) = result { buffer.consume(n) }
        return result
    }

    /// Sets the socket's send and receive buffer sizes; the kernel may cap them.
    public func setBufferSizes(send: Int32, receive: Int32) {
        var s = send, r = receive
        let size = socklen_t(MemoryLayout<Int32>.size)
        _ = setsockopt(raw, SOL_SOCKET, SO_SNDBUF, &s, size)
        _ = setsockopt(raw, SOL_SOCKET, SO_RCVBUF, &r, size)
    }
}

/// The monotonic clock in nanoseconds; libslirp's timers run on this timebase.
public func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Creates `path` and missing parents with `mode` (like `mkdir -p`), refusing a
/// directory that another user owns: a shared /tmp must not let others plant sockets.
public func makeRuntimeDirectory(_ path: String, mode: mode_t) throws(IOError) {
    var prefix = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        prefix += "/" + component
        if mkdir(prefix, mode) != 0, errno != EEXIST {
            throw IOError(call: "mkdir", code: errno, detail: prefix)
        }
    }
    var info = stat()
    guard lstat(path, &info) == 0 else { throw IOError(call: "stat", code: errno, detail: path) }
    guard (info.st_mode & S_IFMT) == S_IFDIR else {
        throw IOError(call: "mkdir", code: ENOTDIR, detail: path)
    }
    if info.st_uid != geteuid() {
        throw IOError(call: "mkdir", code: EPERM, detail: "\(path) is owned by uid \(info.st_uid)")
    }
}

public func currentUserID() -> UInt32 { geteuid() }

public func environmentValue(_ name: String) -> String? {
    guard let value = getenv(name) else { return nil }
    return String(cString: value)
}

/// Removes a file, ignoring its absence.
public func removeFile(_ path: String) {
    _ = unlink(path)
}

/// The absolute path of the running executable.
public func executablePath() -> String? {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return nil }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

public func writeStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

/// Sets a file's permission bits.
public func setFileMode(_ path: String, _ mode: UInt32) throws(IOError) {
    try syscallBlocking("chmod", detail: path) { chmod(path, mode_t(mode)) }
}

/// SO_PEERCRED, for code that reads peer credentials through another library's socket API.
public let peerCredentialsSocketOption: Int32 = SO_PEERCRED

/// Nanoseconds since the Unix epoch (for capture timestamps).
public func realtimeNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// The current time as RFC 3339 in UTC, e.g. 2026-11-21T08:30:00Z.
public func wallClockTimestamp() -> String {
    var now = time(nil)
    var parts = tm()
    gmtime_r(&now, &parts)
    var buffer = [CChar](repeating: 0, count: 32)
    let n = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
    return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Where slirpd's sockets go by default, and the directory's mode:
/// `$XDG_RUNTIME_DIR/slirpd`, else `/run/slirpd` for root, else `/tmp/slirpd-UID`.
public func defaultRuntimeDirectory() -> (path: String, mode: UInt32) {
    if let xdg = environmentValue("XDG_RUNTIME_DIR"), !xdg.isEmpty { return ("\(xdg)/slirpd", 0o700) }
    let uid = currentUserID()
    // Root's sockets are meant for other users' QEMUs (socket mode and group decide who).
    if uid == 0 { return ("/run/slirpd", 0o755) }
    return ("/tmp/slirpd-\(uid)", 0o700)
}

/// Writes all of `bytes` to standard output; false once the reader has gone (EPIPE).
@discardableResult
public func writeStandardOutput(_ bytes: [UInt8]) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { write(1, $0.baseAddress.map { $0 + offset }, $0.count - offset) }
        if n < 0 {
            if errno == EINTR { continue }
            return false
        }
        offset += n
    }
    return true
}

public func errorDescription(_ code: Int32) -> String { String(cString: strerror(code)) }

/// The whole file, with POSIX's reasons for failures (a missing file is ENOENT, one over
/// `limit` bytes EFBIG): the config file and the lease files are read with it.
public func readWholeFile(_ path: String, limit: Int) throws(IOError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw IOError(call: "open", code: errno, detail: path) }
    let file = Descriptor(owning: fd)
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { Glibc.read(file.raw, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw IOError(call: "read", code: errno, detail: path)
        }
        if n == 0 { return bytes }
        bytes += chunk[0..<n]
        if bytes.count > limit { throw IOError(call: "read", code: EFBIG, detail: path) }
    }
}

/// Replaces `path` with `text` so that a crash or power loss at any moment leaves either
/// the old file or the new one, never a truncated one: the text goes to a temporary file
/// beside it (`path.tmp`, replaced if a crash left one), which is fsynced, renamed over
/// `path`, and then the directory is fsynced so the rename itself is on disk. One
/// writer per path: the state directory's lock (`lockExclusively`) keeps other daemons out.
public func writeFileAtomically(_ path: String, _ text: String, mode: mode_t = 0o600) throws(IOError) {
    let temporary = path + ".tmp"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw IOError(call: "open", code: errno, detail: temporary) }
    let file = Descriptor(owning: fd)
    let bytes = Array(text.utf8)
    var written = 0
    while written < bytes.count {
        let n = bytes[written...].withUnsafeBytes { Glibc.write(file.raw, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            let code = errno
            unlink(temporary)
            throw IOError(call: "write", code: code, detail: temporary)
        }
        written += n
    }
    guard fsync(file.raw) == 0 else {
        let code = errno
        unlink(temporary)
        throw IOError(call: "fsync", code: code, detail: temporary)
    }
    file.close()
    guard rename(temporary, path) == 0 else {
        let code = errno
        unlink(temporary)
        throw IOError(call: "rename", code: code, detail: path)
    }
    let slash = path.utf8.lastIndex(of: UInt8(ascii: "/"))
    let directory = slash.map { $0 == path.utf8.startIndex ? "/" : String(path[..<$0]) } ?? "."
    let dirfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dirfd >= 0 else { throw IOError(call: "open", code: errno, detail: directory) }
    let dir = Descriptor(owning: dirfd)
    guard fsync(dir.raw) == 0 else { throw IOError(call: "fsync", code: errno, detail: directory) }
}

/// The outcome of `lockExclusively`.
public enum FileLock {
    /// This process holds the lock for as long as the descriptor stays open.
    case held(Descriptor)
    /// Another process holds it; its PID as it wrote it in the file, if it has yet.
    case heldByOther(pid: Int32?)
}

/// Takes an exclusive `flock` on `path` (created with `mode` if missing) without waiting,
/// and writes this process's PID into it. The lock goes with the descriptor: it ends when
/// the descriptor is closed or the process dies, however it dies, so a stale lock file
/// never keeps a later process out. The descriptor is close-on-exec, so no child
/// (a guest forward's command) keeps the lock. The corresponding C call is `flock`.
public func lockExclusively(_ path: String, mode: mode_t = 0o600) throws(IOError) -> FileLock {
    let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, mode)
    guard fd >= 0 else { throw IOError(call: "open", code: errno, detail: path) }
    let file = Descriptor(owning: fd)
    while flock(file.raw, LOCK_EX | LOCK_NB) != 0 {
        let code = errno
        if code == EINTR { continue }
        guard code == EWOULDBLOCK else { throw IOError(call: "flock", code: code, detail: path) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { pread(file.raw, $0.baseAddress, $0.count, 0) }
        let text = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
        return .heldByOther(pid: Int32(text.split(whereSeparator: { $0 == "\n" || $0 == " " }).first ?? ""))
    }
    let pid = Array("\(getpid())\n".utf8)
    guard ftruncate(file.raw, 0) == 0,
          pid.withUnsafeBytes({ pwrite(file.raw, $0.baseAddress, $0.count, 0) }) == pid.count else {
        throw IOError(call: "write", code: errno, detail: path)
    }
    return .held(file)
}

/// How many descriptors this process has open (entries of /proc/self/fd) and may open
/// (RLIMIT_NOFILE's soft limit); nil if either cannot be read.
public func descriptorUsage() -> (open: Int, limit: Int)? {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, let dir = opendir("/proc/self/fd") else { return nil }
    defer { closedir(dir) }
    var count = 0
    while let entry = readdir(dir) {
        if entry.pointee.d_name.0 != UInt8(ascii: ".") { count += 1 }
    }
    // The directory being read holds one descriptor of its own.
    return (count - 1, limit.rlim_cur >= rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every NAT flow of every guest is a
/// descriptor in libslirp, and the soft 1,024 systemd and shells leave is far below
/// what many guests need. Returns the soft limit before and after, and the hard limit.
///
/// The corresponding C calls are `getrlimit` and `setrlimit` on `RLIMIT_NOFILE`.
public func raiseDescriptorLimit() throws(IOError) -> (before: Int, after: Int, hard: Int) {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { throw IOError(call: "getrlimit", code: errno) }
    func value(_ v: rlim_t) -> Int { v >= rlim_t(Int.max) ? Int.max : Int(v) }
    let before = value(limit.rlim_cur)
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { throw IOError(call: "setrlimit", code: errno) }
    }
    return (before, value(limit.rlim_cur), value(limit.rlim_max))
}
