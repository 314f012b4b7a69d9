// systemd's two process interfaces, spoken directly rather than through libsystemd:
//
// - Socket activation: the manager passes listening sockets as descriptors 3, 4, ...
//   and describes them in LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES (names from each
//   socket's FileDescriptorName=, colon-separated). A socket is described by asking
//   the kernel (type, family, bound address), so the unit file is the only place that
//   says where it lives.
// - Notification: a datagram to the Unix socket in NOTIFY_SOCKET ("@name" for the
//   abstract namespace), one "KEY=VALUE" per line: READY=1, STATUS=..., WATCHDOG=1.
//
// Both sets of variables are removed from the environment once read, so programs that
// slirpd starts (guest forward commands) do not mistake them for their own.
import CLinux
import Glibc

/// Where an inherited socket is bound.
public enum SocketAddress: Equatable, Sendable, CustomStringConvertible {
    case unix(path: String)
    case inet(host: String, port: UInt16)

    public var description: String {
        switch self {
        case .unix(let path): path
        case .inet(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}

/// A socket passed in by socket activation.
public struct InheritedSocket {
    public let descriptor: Descriptor
    /// Its FileDescriptorName= (systemd defaults it to the socket unit's name).
    public let name: String
    public let kind: SocketKind
    public let address: SocketAddress
}

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
private let firstListenDescriptor: Int32 = 3

/// Takes the sockets systemd passed this process, or none when it passed none. A socket
/// slirpd cannot serve (a connected one, a UDP one, ...) is an error that names it.
public func takeInheritedSockets() throws(IOError) -> [InheritedSocket] {
    let pid = environment("LISTEN_PID"), count = environment("LISTEN_FDS"), names = environment("LISTEN_FDNAMES")
    for key in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(key) }
    // Variables meant for another process (our parent's) are not ours to act on.
    guard let pid, Int32(pid) == getpid(), let count else { return [] }
    guard let n = Int32(count), n >= 0, n < 4096 else {
        throw IOError(call: "socket activation", code: EINVAL, detail: "LISTEN_FDS='\(count)' is not a descriptor count")
    }
    let nameList = names.map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
    var sockets: [InheritedSocket] = []
    for i in 0..<n {
        let fd = firstListenDescriptor + i
        let descriptor = Descriptor(owning: fd)
        let name = Int(i) < nameList.count ? nameList[Int(i)] : ""
        let label = "descriptor \(fd)\(name.isEmpty ? "" : " (\(name))")"
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else {
            throw IOError(call: "fcntl", code: errno, detail: "socket activation: \(label)")
        }
        let type = try socketOption(fd, SO_TYPE, label)
        let kind: SocketKind
        switch type {
        case Int32(SOCK_STREAM.rawValue): kind = .stream
        case Int32(SOCK_DGRAM.rawValue): kind = .datagram
        default: throw IOError(call: "socket activation", code: EPROTOTYPE, detail: "\(label) is not a stream or datagram socket")
        }
        if kind == .stream, try socketOption(fd, SO_ACCEPTCONN, label) == 0 {
            throw IOError(call: "socket activation", code: EINVAL, detail: "\(label) is a connection, not a listening socket (use Accept=no)")
        }
        let address = try boundAddress(fd, label)
        if case .inet = address, kind == .datagram {
            throw IOError(call: "socket activation", code: EPROTOTYPE, detail: "\(label) is a UDP socket; slirpd serves Unix datagram sockets only")
        }
        sockets.append(InheritedSocket(descriptor: descriptor, name: name, kind: kind, address: address))
    }
    return sockets
}

private func environment(_ key: String) -> String? {
    getenv(key).map { String(cString: $0) }
}

private func socketOption(_ fd: Int32, _ option: Int32, _ label: String) throws(IOError) -> Int32 {
    var value: Int32 = 0
    var size = socklen_t(MemoryLayout<Int32>.size)
    guard getsockopt(fd, SOL_SOCKET, option, &value, &size) == 0 else {
        throw IOError(call: "getsockopt", code: errno, detail: "socket activation: \(label) is not a socket")
    }
    return value
}

private func boundAddress(_ fd: Int32, _ label: String) throws(IOError) -> SocketAddress {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &storage) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard rc == 0 else { throw IOError(call: "getsockname", code: errno, detail: label) }
    switch Int32(storage.ss_family) {
    case AF_UNIX:
        let path = withUnsafeBytes(of: &storage) { raw -> String in
            let bytes = raw[MemoryLayout<sa_family_t>.size..<Int(length)]
            return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        guard !path.isEmpty else {
            throw IOError(call: "socket activation", code: EINVAL, detail: "\(label) is an unnamed or abstract Unix socket; slirpd needs a path")
        }
        return .unix(path: path)
    case AF_INET, AF_INET6:
        guard let (h, s) = numericHostAndService(&storage, length) else { throw IOError(call: "getnameinfo", code: EINVAL, detail: label) }
        return .inet(host: h, port: UInt16(s) ?? 0)
    default:
        throw IOError(call: "socket activation", code: EAFNOSUPPORT, detail: "\(label) is neither a Unix nor an inet socket")
    }
}

extension Descriptor {
    /// Where this socket is bound (a TCP port bound as 0 reads back as the one the kernel chose).
    public func boundAddress() throws(IOError) -> SocketAddress {
        try PosixIO.boundAddress(raw, "descriptor \(raw)")
    }
}

/// Messages to the service manager (sd_notify's protocol). Without NOTIFY_SOCKET every
/// message is dropped, so callers need not care whether systemd started them.
public final class ServiceNotifier {
    private let socket: Descriptor?
    private var address = sockaddr_un()
    private var addressLength = socklen_t(0)
    /// Half of WATCHDOG_USEC in nanoseconds, the interval systemd recommends; nil without a watchdog.
    public let watchdogInterval: Int64?
    /// Why NOTIFY_SOCKET cannot be used, for the caller to log; nil when it can or is unset.
    public private(set) var problem: String?

    public init() {
        let path = environment("NOTIFY_SOCKET")
        let usec = environment("WATCHDOG_USEC"), pid = environment("WATCHDOG_PID")
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] { unsetenv(key) }
        if let usec, let value = Int64(usec), value > 0, pid.map({ Int32($0) == getpid() }) ?? true {
            watchdogInterval = value * 1000 / 2
        } else {
            watchdogInterval = nil
        }
        guard let path, !path.isEmpty else { socket = nil; return }
        var bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes[0] == UInt8(ascii: "/") || bytes[0] == UInt8(ascii: "@"), bytes.count < capacity else {
            problem = "NOTIFY_SOCKET='\(path)' is not a Unix socket path slirpd can use; not notifying"
            socket = nil
            return
        }
        // "@name" is the abstract namespace: a leading NUL and no terminator.
        let abstract = bytes[0] == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        addressLength = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 {
            problem = "cannot make a socket for NOTIFY_SOCKET: \(String(cString: strerror(errno)))"
            socket = nil
        } else {
            socket = Descriptor(owning: fd)
        }
    }

    public var isActive: Bool { socket != nil }

    /// Sends `state` ("READY=1\nSTATUS=..."). Never blocks: a manager too busy to take it
    /// loses the message, which is better than a stalled network. Returns the failure, if any.
    @discardableResult
    public func send(_ state: String) -> IOError? {
        guard let socket else { return nil }
        let bytes = Array(state.utf8)
        let rc = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { Glibc.sendto(socket.raw, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), sa, addressLength) }
            }
        }
        return rc < 0 ? IOError(call: "sendto", code: errno, detail: "NOTIFY_SOCKET") : nil
    }
}

/// Sets no_new_privs for this process and its children (PR_SET_NO_NEW_PRIVS): exec never
/// gains privileges again. systemd's NoNewPrivileges= does the same for the units.
public func forbidNewPrivileges() throws(IOError) {
    try syscallBlocking("prctl(PR_SET_NO_NEW_PRIVS)") { clinux_forbid_new_privileges() }
}
