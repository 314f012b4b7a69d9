import CLinux
import Glibc

/// A Unix socket address (a filesystem path), hashable so datagram peers can be looked up.
public struct UnixAddress: Hashable, CustomStringConvertible {
    fileprivate var storage = sockaddr_un()
    fileprivate var length: socklen_t = socklen_t(MemoryLayout<sa_family_t>.size)

    public init() {}

    public init(path: String) throws(IOError) {
        storage.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let limit = MemoryLayout.size(ofValue: storage.sun_path)
        guard !bytes.isEmpty, bytes.count < limit else {
            throw IOError(call: "bind", code: ENAMETOOLONG, detail: "\(path): Unix socket paths must be 1 to \(limit - 1) bytes")
        }
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
    }

    /// The path, or "" for an unnamed peer (one that never bound a path, so it can't be answered).
    public var path: String {
        let n = Int(length) - MemoryLayout<sa_family_t>.size
        guard n > 0 else { return "" }
        return withUnsafeBytes(of: storage.sun_path) { raw in
            let bytes = raw.prefix(n)
            let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
            return String(decoding: bytes[..<end], as: UTF8.self)
        }
    }

    public var isNamed: Bool { Int(length) > MemoryLayout<sa_family_t>.size }
    public var description: String { isNamed ? path : "(unnamed)" }

    public static func == (a: UnixAddress, b: UnixAddress) -> Bool {
        guard a.length == b.length else { return false }
        let n = a.pathLength
        // Compared in place: this runs for every datagram received, so it must not allocate.
        return withUnsafeBytes(of: a.storage.sun_path) { pa in
            withUnsafeBytes(of: b.storage.sun_path) { pb in
                guard let x = pa.baseAddress, let y = pb.baseAddress else { return n == 0 }
                return memcmp(x, y, n) == 0
            }
        }
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(length)
        withUnsafeBytes(of: storage.sun_path) { raw in
            hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: raw.prefix(pathLength)))
        }
    }

    private var pathLength: Int { max(0, Int(length) - MemoryLayout<sa_family_t>.size) }
}

public enum SocketKind {
    case stream, datagram

    var type: Int32 {
        switch self {
        case .stream: Int32(SOCK_STREAM.rawValue)
        case .datagram: Int32(SOCK_DGRAM.rawValue)
        }
    }
}

private func newSocket(domain: Int32, kind: SocketKind) throws(IOError) -> Descriptor {
    let fd = try syscallBlocking("socket") { socket(domain, kind.type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    return Descriptor(owning: fd)
}

/// Binds a Unix socket at `path` with permission `mode`, replacing a stale socket file.
///
/// A socket file that still answers belongs to a live daemon and is never taken over;
/// a file that is not a socket is never removed. The mode is set before `listen`, so
/// no client can connect through a wider mode in between.
public func bindUnixSocket(path: String, kind: SocketKind, mode: mode_t, group: String? = nil,
                           backlog: Int32 = 128) throws(IOError) -> Descriptor {
    let address = try UnixAddress(path: path)
    try removeStaleSocket(path: path, address: address, kind: kind)
    let socket = try newSocket(domain: AF_UNIX, kind: kind)
    var storage = address.storage
    _ = try withUnsafePointer(to: &storage) { (p) throws(IOError) in
        try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(IOError) in
            try syscallBlocking("bind", detail: path) { bind(socket.raw, sa, address.length) }
        }
    }
    do {
        try syscallBlocking("chmod", detail: path) { chmod(path, mode) }
        if let group {
            let gid = try groupID(named: group)
            try syscallBlocking("chown", detail: "\(path) to group \(group)") { chown(path, uid_t.max, gid) }
        }
        if kind == .stream { try syscallBlocking("listen", detail: path) { listen(socket.raw, backlog) } }
    } catch {
        // The file is ours from bind on: leave nothing behind on failure.
        unlink(path)
        throw error
    }
    return socket
}

/// Clears the way for binding a Unix socket at `path` elsewhere (another library binds it):
/// a stale socket file is removed; a live one, or a file that is not a socket, is an error.
public func removeStaleSocket(path: String, kind: SocketKind) throws(IOError) {
    try removeStaleSocket(path: path, address: UnixAddress(path: path), kind: kind)
}

private func removeStaleSocket(path: String, address: UnixAddress, kind: SocketKind) throws(IOError) {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    guard (info.st_mode & S_IFMT) == S_IFSOCK else {
        throw IOError(call: "bind", code: EEXIST, detail: "\(path) exists and is not a socket; not replacing it")
    }
    let probe = try newSocket(domain: AF_UNIX, kind: kind)
    var storage = address.storage
    let rc = withUnsafePointer(to: &storage) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(probe.raw, $0, address.length) }
    }
    let code = errno
    probe.close()
    if rc == 0 || code == EINPROGRESS || code == EAGAIN {
        throw IOError(call: "bind", code: EADDRINUSE, detail: "\(path) is in use by a running process")
    }
    if code == ECONNREFUSED || code == ENOENT || code == EPROTOTYPE {
        // Nobody listens: a leftover from a process that died. EPROTOTYPE: a leftover of the other kind.
        unlink(path)
        return
    }
    throw IOError(call: "connect", code: code, detail: path)
}

/// Listens on a TCP address. `host` is a name or numeric address; it binds the first that works.
public func listenTCP(host: String, port: UInt16, backlog: Int32 = 128) throws(IOError) -> Descriptor {
    var lastError = IOError(call: "getaddrinfo", code: EADDRNOTAVAIL, detail: host)
    for candidate in try resolve(host: host, port: port, passive: true) {
        do {
            let socket = try newSocket(domain: candidate.family, kind: .stream)
            var on: Int32 = 1
            setsockopt(socket.raw, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
            _ = try candidate.withAddress { (sa, len) throws(IOError) in
                try syscallBlocking("bind", detail: "\(host):\(port)") { bind(socket.raw, sa, len) }
            }
            try syscallBlocking("listen", detail: "\(host):\(port)") { listen(socket.raw, backlog) }
            return socket
        } catch {
            lastError = error
        }
    }
    throw lastError
}

/// Connects a blocking TCP socket (used by the guest-forward relay, outside the loop).
public func connectTCP(host: String, port: UInt16) throws(IOError) -> Descriptor {
    var lastError = IOError(call: "getaddrinfo", code: EADDRNOTAVAIL, detail: host)
    for candidate in try resolve(host: host, port: port, passive: false) {
        let fd = socket(candidate.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { lastError = IOError(call: "socket", code: errno); continue }
        let socket = Descriptor(owning: fd)
        do {
            _ = try candidate.withAddress { (sa, len) throws(IOError) in
                try syscallBlocking("connect", detail: "\(host):\(port)") { connect(socket.raw, sa, len) }
            }
            return socket
        } catch {
            lastError = error
        }
    }
    throw lastError
}

/// A non-blocking UDP socket connected to a numeric address (a DNS upstream). Connected,
/// it receives only that peer's datagrams, and an unreachable peer shows as
/// ECONNREFUSED on the next call.
public func connectUDP(host: String, port: UInt16) throws(IOError) -> Descriptor {
    guard let candidate = try resolve(host: host, port: port, passive: false, kind: .datagram).first else {
        throw IOError(call: "getaddrinfo", code: EADDRNOTAVAIL, detail: host)
    }
    let socket = try newSocket(domain: candidate.family, kind: .datagram)
    _ = try candidate.withAddress { (sa, len) throws(IOError) in
        try syscallBlocking("connect", detail: "\(host):\(port)") { connect(socket.raw, sa, len) }
    }
    return socket
}

private struct ResolvedAddress {
    var family: Int32
    var bytes: [UInt8]

    func withAddress<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(IOError) -> R) throws(IOError) -> R {
        let result: Result<R, IOError> = bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return .failure(IOError(call: "getaddrinfo", code: EINVAL)) }
            return Result { () throws(IOError) in try body(base.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count)) }
        }
        return try result.get()
    }
}

private func resolve(host: String, port: UInt16, passive: Bool, kind: SocketKind = .stream) throws(IOError) -> [ResolvedAddress] {
    var hints = addrinfo()
    hints.ai_socktype = kind.type
    hints.ai_flags = passive ? AI_PASSIVE : 0
    var list: UnsafeMutablePointer<addrinfo>?
    let rc = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &list)
    guard rc == 0 else {
        throw IOError(call: "getaddrinfo", code: EADDRNOTAVAIL, detail: "\(host): \(String(cString: gai_strerror(rc)))")
    }
    defer { freeaddrinfo(list) }
    var result: [ResolvedAddress] = []
    var node = list
    while let entry = node {
        if let addr = entry.pointee.ai_addr {
            let raw = UnsafeRawBufferPointer(start: addr, count: Int(entry.pointee.ai_addrlen))
            result.append(ResolvedAddress(family: entry.pointee.ai_family, bytes: Array(raw)))
        }
        node = entry.pointee.ai_next
    }
    return result
}

extension Descriptor {
    /// Sends one datagram on a connected socket.
    public func send(_ bytes: [UInt8]) throws(IOError) -> IOResult<Int> {
        let fd = raw
        let result: Result<IOResult<Int>, IOError> = bytes.withUnsafeBytes { bytes in
            Result { () throws(IOError) in try syscall("send") { Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) } }
        }
        return try result.get()
    }

    /// Receives one datagram into `buffer` (whose size bounds it); returns its length.
    public func receive(into buffer: inout [UInt8]) throws(IOError) -> IOResult<Int> {
        let fd = raw
        let result: Result<IOResult<Int>, IOError> = buffer.withUnsafeMutableBytes { space in
            Result { () throws(IOError) in try syscall("recv") { Glibc.recv(fd, space.baseAddress, space.count, 0) } }
        }
        return try result.get()
    }

    /// Accepts one connection, non-blocking. The peer is described for logs.
    public func accept() throws(IOError) -> IOResult<(Descriptor, String)> {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = try withUnsafeMutablePointer(to: &storage) { (p) throws(IOError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(IOError) in
                try syscall("accept") {
                    accept4(raw, sa, &length, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
                }
            }
        }
        guard case .done(let fd) = result else { return .wouldBlock }
        let conn = Descriptor(owning: fd)
        return .done((conn, describe(&storage, length, fd: fd)))
    }

    /// Disables Nagle: frames are whole messages and latency matters more than packing.
    public func setNoDelay() {
        var on: Int32 = 1
        _ = setsockopt(raw, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Delivers TCP urgent data in line (SO_OOBINLINE), so a reader sees every byte in order.
    public func setOutOfBandInline() {
        var on: Int32 = 1
        _ = setsockopt(raw, SOL_SOCKET, SO_OOBINLINE, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Closes a TCP connection with a reset (SO_LINGER 0): no TIME_WAIT is left behind.
    public func closeWithReset() {
        var abort = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(raw, SOL_SOCKET, SO_LINGER, &abort, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    /// Receives one datagram into `buffer` (which must be empty), returning its sender.
    public func receiveDatagram(into buffer: ByteBuffer) throws(IOError) -> IOResult<UnixAddress> {
        buffer.prepareForWholeRead()
        let space = buffer.freeSpace
        var from = UnixAddress()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        // MSG_TRUNC makes the call return the real size, so an oversized frame is seen, not silently cut.
        let result = try withUnsafeMutablePointer(to: &from.storage) { (p) throws(IOError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(IOError) in
                try syscall("recvfrom") { recvfrom(raw, space.baseAddress, space.count, Int32(MSG_TRUNC), sa, &length) }
            }
        }
        guard case .done(let n) = result else { return .wouldBlock }
        from.length = length
        buffer.didWrite(Swift.min(n, space.count))
        if n > space.count { buffer.truncatedBy = n - space.count } else { buffer.truncatedBy = 0 }
        return .done(from)
    }

    /// Writes each queued length-prefixed frame as one datagram (on a connected socket) or
    /// one tap frame, until the queue is empty or the peer is full.
    public func writeFrames(from queue: ByteBuffer) throws(IOError) -> IOResult<Int> {
        var sent = 0
        while queue.count >= 4 {
            let bytes = queue.readable
            let length = Int(UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self)))
            let frame = UnsafeRawBufferPointer(rebasing: bytes[4..<(4 + length)])
            guard case .done = try writeFrame(frame) else { return sent == 0 ? .wouldBlock : .done(sent) }
            queue.consume(4 + length)
            sent += 1
        }
        return .done(sent)
    }
}

extension Descriptor {
    /// Writes one whole frame: one datagram on a connected socket, one frame on a tap.
    public func writeFrame(_ frame: UnsafeRawBufferPointer) throws(IOError) -> IOResult<Int> {
        // write(), not send(): a tap device takes frames the same way and is no socket.
        try syscall("write") { Glibc.write(raw, frame.baseAddress, frame.count) }
    }
}

/// A non-blocking Unix socket connected to `peer`. A connected datagram socket sends to
/// that peer alone and polls writable only while the peer's receive queue has room.
public func connectUnix(to peer: UnixAddress, kind: SocketKind) throws(IOError) -> Descriptor {
    let socket = try newSocket(domain: AF_UNIX, kind: kind)
    try socket.reconnect(to: peer)
    return socket
}

extension Descriptor {
    /// Connects this Unix socket to `peer` again. For a datagram socket this asks the kernel
    /// whether the peer still exists without sending it anything: ECONNREFUSED when its
    /// socket is closed (the file stays), ENOENT when the file is gone.
    public func reconnect(to peer: UnixAddress) throws(IOError) {
        var storage = peer.storage
        _ = try withUnsafePointer(to: &storage) { (p) throws(IOError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(IOError) in
                try syscallBlocking("connect", detail: peer.path) { Glibc.connect(raw, sa, peer.length) }
            }
        }
    }
}

/// Who is at the other end of a Unix stream socket, as the kernel recorded at connect time.
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    /// Supplementary groups (SO_PEERGROUPS); empty when the kernel cannot tell.
    public var groups: [UInt32]

    public init(pid: Int32, uid: UInt32, gid: UInt32, groups: [UInt32]) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }
}

extension Descriptor {
    /// SO_PEERCRED and SO_PEERGROUPS; nil when the socket has no peer credentials (TCP).
    public func peerCredentials() -> PeerCredentials? {
        var cred = clinux_ucred()
        var size = socklen_t(MemoryLayout<clinux_ucred>.size)
        guard getsockopt(raw, SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0 else { return nil }
        var groups = [gid_t](repeating: 0, count: 64)
        var length = socklen_t(groups.count * MemoryLayout<gid_t>.size)
        var rc = getsockopt(raw, SOL_SOCKET, SO_PEERGROUPS, &groups, &length)
        if rc != 0, errno == ERANGE {
            // More than 64 groups: the kernel said how much room it needs.
            groups = [gid_t](repeating: 0, count: Int(length) / MemoryLayout<gid_t>.size)
            rc = getsockopt(raw, SOL_SOCKET, SO_PEERGROUPS, &groups, &length)
        }
        if rc != 0 { length = 0 }
        return PeerCredentials(pid: cred.pid, uid: cred.uid, gid: cred.gid,
                               groups: Array(groups.prefix(Int(length) / MemoryLayout<gid_t>.size)))
    }
}

/// The owner and group of a file (a datagram peer's socket file); nil if it cannot be read.
public func fileOwner(_ path: String) -> (uid: UInt32, gid: UInt32)? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return (info.st_uid, info.st_gid)
}

/// Two connected, non-blocking Unix sockets of `kind`: one end for each side of an
/// in-process connection (the fuzz harness's stand-in guests). The corresponding C call
/// is `socketpair`.
public func socketPair(kind: SocketKind) throws(IOError) -> (Descriptor, Descriptor) {
    var fds: [Int32] = [-1, -1]
    try syscallBlocking("socketpair") {
        socketpair(AF_UNIX, kind.type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
    }
    return (Descriptor(owning: fds[0]), Descriptor(owning: fds[1]))
}

private func describe(_ storage: inout sockaddr_storage, _ length: socklen_t, fd: Int32) -> String {
    switch Int32(storage.ss_family) {
    case AF_INET, AF_INET6:
        guard let (h, s) = numericHostAndService(&storage, length) else { return "inet peer" }
        return h.contains(":") ? "[\(h)]:\(s)" : "\(h):\(s)"
    default:
        // Unix peers have no address worth printing; their credentials say who they are.
        var cred = clinux_ucred()
        var size = socklen_t(MemoryLayout<clinux_ucred>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) == 0 else { return "unix peer" }
        return "pid \(cred.pid) uid \(cred.uid)"
    }
}

/// An inet address as numeric host and port text (getnameinfo), or nil.
func numericHostAndService(_ storage: inout sockaddr_storage, _ length: socklen_t) -> (String, String)? {
    var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
    var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
    let rc = withUnsafePointer(to: &storage) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            getnameinfo($0, length, &host, socklen_t(host.count), &service, socklen_t(service.count), NI_NUMERICHOST | NI_NUMERICSERV)
        }
    }
    guard rc == 0 else { return nil }
    let text = { (chars: [CChar]) in String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    return (text(host), text(service))
}

/// A group's id by name (or a number given as text).
public func groupID(named name: String) throws(IOError) -> gid_t {
    if let number = gid_t(name) { return number }
    var entry = group()
    var result: UnsafeMutablePointer<group>?
    var buffer = [CChar](repeating: 0, count: 16384)
    let rc = getgrnam_r(name, &entry, &buffer, buffer.count, &result)
    guard rc == 0, result != nil else {
        throw IOError(call: "getgrnam", code: rc == 0 ? ENOENT : rc, detail: "no group named '\(name)'")
    }
    return entry.gr_gid
}

/// Opens the tap device `name` for frames (one per read or write). The device must
/// exist and the caller may use it: `ip tuntap add mode tap user USER name NAME`.
public func openTap(name: String) throws(IOError) -> Descriptor {
    try openTap(name: name, offloadCandidates: []).tap
}

/// How a tap was opened: with a virtio-net header of `vnetHeaderSize` bytes before each
/// frame (0: none) and the TUN_F_* offloads the kernel accepted.
public struct TapOffloads: Sendable, Equatable {
    public var vnetHeaderSize: Int
    public var flags: UInt32

    public static let checksum = UInt32(TUN_F_CSUM)
    public static let tso4 = UInt32(TUN_F_TSO4)
    public static let tso6 = UInt32(TUN_F_TSO6)
    public static let tsoECN = UInt32(TUN_F_TSO_ECN)
    /// USO4 and USO6: the kernel takes only both together.
    public static let uso = UInt32(TUN_F_USO4) | UInt32(TUN_F_USO6)

    /// TUN_F_* names, for the log.
    public var names: String {
        let all: [(UInt32, String)] = [(Self.checksum, "CSUM"), (Self.tso4, "TSO4"), (Self.tso6, "TSO6"),
                                       (Self.tsoECN, "TSO_ECN"), (UInt32(TUN_F_USO4), "USO4"), (UInt32(TUN_F_USO6), "USO6")]
        let set = all.filter { flags & $0.0 != 0 }.map(\.1)
        return set.isEmpty ? "none" : set.joined(separator: "|")
    }
}

/// Opens the tap device `name`. With `offloadCandidates` (TUN_F_* sets, the most wanted
/// first), asks for a virtio-net header of `vnetHeaderSize` bytes (IFF_VNET_HDR,
/// TUNSETVNETHDRSZ) and enables the first set the kernel accepts (TUNSETOFFLOAD); if it
/// refuses IFF_VNET_HDR, the tap runs without header and offloads. Without candidates, or
/// then, offloads a previous user left on the device are cleared: frames must arrive whole.
public func openTap(name: String, offloadCandidates: [UInt32], vnetHeaderSize: Int = 10) throws(IOError) -> (tap: Descriptor, offloads: TapOffloads) {
    guard !name.isEmpty, name.utf8.count < 16 else {
        throw IOError(call: "open", code: EINVAL, detail: "tap name '\(name)': 1 to 15 characters")
    }
    let fd = try syscallBlocking("open", detail: "/dev/net/tun") { open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC) }
    let tap = Descriptor(owning: fd)
    do {
        if !offloadCandidates.isEmpty, clinux_tap_attach(fd, name, 1) == 0 {
            // The size is the device's, kept from its last user (QEMU may have set 12): set it.
            try syscallBlocking("ioctl(TUNSETVNETHDRSZ)", detail: name) { clinux_tap_set_vnet_header_size(fd, Int32(vnetHeaderSize)) }
            for flags in offloadCandidates where clinux_tap_set_offload(fd, flags) == 0 {
                return (tap, TapOffloads(vnetHeaderSize: vnetHeaderSize, flags: flags))
            }
            _ = clinux_tap_set_offload(fd, 0)
            return (tap, TapOffloads(vnetHeaderSize: vnetHeaderSize, flags: 0))
        }
        try syscallBlocking("ioctl(TUNSETIFF)", detail: name) { clinux_tap_attach(fd, name, 0) }
        _ = clinux_tap_set_offload(fd, 0)
        return (tap, TapOffloads(vnetHeaderSize: 0, flags: 0))
    } catch {
        tap.close()
        throw error
    }
}

extension Descriptor {
    /// Reads one frame from a tap device into `buffer` (which must be empty).
    public func readFrame(into buffer: ByteBuffer) throws(IOError) -> IOResult<Int> {
        buffer.prepareForWholeRead()
        return try read(into: buffer)
    }

    /// Writes one frame to a tap behind its virtio-net `header`, with the two bytes at
    /// `patchOffset` replaced by `patch` (big-endian) when given: the frame itself is not
    /// changed (it may be libslirp's). The corresponding C call is `writev`.
    public func writeTapFrame(_ frame: UnsafeRawBufferPointer, header: UnsafeRawBufferPointer,
                              patch: UInt16?, patchOffset: Int) throws(IOError) -> IOResult<Int> {
        var word = (patch ?? 0).bigEndian
        return try withUnsafeBytes(of: &word) { (patchBytes) throws(IOError) -> IOResult<Int> in
            var parts: (iovec, iovec, iovec, iovec) = (
                iovec(iov_base: UnsafeMutableRawPointer(mutating: header.baseAddress), iov_len: header.count),
                iovec(), iovec(), iovec())
            var count: Int32 = 2
            if patch != nil, patchOffset >= 0, patchOffset + 2 <= frame.count {
                parts.1 = iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress), iov_len: patchOffset)
                parts.2 = iovec(iov_base: UnsafeMutableRawPointer(mutating: patchBytes.baseAddress), iov_len: 2)
                parts.3 = iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress.map { $0 + patchOffset + 2 }),
                                iov_len: frame.count - patchOffset - 2)
                count = 4
            } else {
                parts.1 = iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress), iov_len: frame.count)
            }
            return try withUnsafePointer(to: &parts) { (p) throws(IOError) -> IOResult<Int> in
                try p.withMemoryRebound(to: iovec.self, capacity: 4) { (v) throws(IOError) -> IOResult<Int> in
                    try syscall("writev") { Glibc.writev(raw, v, count) }
                }
            }
        }
    }
}

/// The port a bound inet socket has (after binding port 0, the one the kernel chose).
/// The corresponding C call is `getsockname`.
public func boundPort(_ socket: Descriptor) throws(IOError) -> UInt16 {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &storage) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket.raw, $0, &length) }
    }
    guard rc == 0 else { throw IOError(call: "getsockname", code: errno) }
    switch Int32(storage.ss_family) {
    case AF_INET:
        return withUnsafeBytes(of: &storage) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
    case AF_INET6:
        return withUnsafeBytes(of: &storage) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
    default:
        throw IOError(call: "getsockname", code: EAFNOSUPPORT)
    }
}
