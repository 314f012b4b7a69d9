import CLinux
import Glibc

// A bound, unconnected UDP socket (the VXLAN uplink's): datagrams to and from any peer,
// addressed by raw address bytes (4 for IPv4, 16 for IPv6) and a port, so callers need
// no sockaddr. Non-blocking; EAGAIN is `.wouldBlock`.

/// A UDP peer: address bytes in network order (4 or 16) and a port.
public struct UDPPeer: Hashable, Sendable {
    public var address: [UInt8]
    public var port: UInt16

    public init(address: [UInt8], port: UInt16) {
        self.address = address
        self.port = port
    }
}

/// Binds a non-blocking UDP socket to `address` (4 or 16 bytes) and `port`.
/// The corresponding C calls are `socket(AF_INET/AF_INET6, SOCK_DGRAM)` and `bind`.
public func bindUDP(address: [UInt8], port: UInt16, receiveBuffer: Int32 = 4 << 20) throws(IOError) -> Descriptor {
    let v6 = address.count == 16
    let fd = try syscallBlocking("socket") {
        Glibc.socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }
    let descriptor = Descriptor(owning: fd)
    if v6 {
        var on: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &on, socklen_t(MemoryLayout<Int32>.size))
    }
    let local = UDPPeer(address: address, port: port)
    let bound: Result<Void, IOError> = Result { () throws(IOError) in
        try withSocketAddress(local) { (sa, len) throws(IOError) in
            _ = try syscallBlocking("bind", detail: describe(local)) { Glibc.bind(fd, sa, len) }
        }
    }
    if case .failure(let error) = bound {
        descriptor.close()
        throw error
    }
    descriptor.setBufferSizes(send: 4 << 20, receive: receiveBuffer)
    return descriptor
}

/// `[addr]:port` or `addr:port`, for logs.
public func describe(_ peer: UDPPeer) -> String {
    var text = [CChar](repeating: 0, count: 64)
    let family = peer.address.count == 16 ? AF_INET6 : AF_INET
    _ = peer.address.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &text, socklen_t(text.count)) }
    let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return family == AF_INET6 ? "[\(host)]:\(peer.port)" : "\(host):\(peer.port)"
}

private func withSocketAddress<R>(_ peer: UDPPeer, _ body: (UnsafePointer<sockaddr>, socklen_t) throws(IOError) -> R) throws(IOError) -> R {
    if peer.address.count == 16 {
        var sa = sockaddr_in6()
        sa.sin6_family = sa_family_t(AF_INET6)
        sa.sin6_port = peer.port.bigEndian
        withUnsafeMutableBytes(of: &sa.sin6_addr) { dst in
            for i in 0..<16 { dst[i] = peer.address[i] }
        }
        return try passing(&sa, to: body)
    }
    guard peer.address.count == 4 else { throw IOError(call: "bind", code: EINVAL, detail: "address of \(peer.address.count) bytes") }
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_port = peer.port.bigEndian
    withUnsafeMutableBytes(of: &sa.sin_addr) { dst in
        for i in 0..<4 { dst[i] = peer.address[i] }
    }
    return try passing(&sa, to: body)
}

/// Calls `body` with `sa` (a sockaddr_in or sockaddr_in6) as a `sockaddr` and its size.
private func passing<S, R>(_ sa: inout S, to body: (UnsafePointer<sockaddr>, socklen_t) throws(IOError) -> R) throws(IOError) -> R {
    let result: Result<R, IOError> = withUnsafePointer(to: &sa) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sp in
            Result { () throws(IOError) in try body(sp, socklen_t(MemoryLayout<S>.size)) }
        }
    }
    return try result.get()
}

extension Descriptor {
    /// Sends one datagram to `peer` (`sendto`).
    public func send(_ bytes: [UInt8], to peer: UDPPeer) throws(IOError) -> IOResult<Int> {
        let fd = raw
        return try withSocketAddress(peer) { (sa, len) throws(IOError) in
            let result: Result<IOResult<Int>, IOError> = bytes.withUnsafeBytes { b in
                Result { () throws(IOError) in try syscall("sendto") { sendto(fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL), sa, len) } }
            }
            return try result.get()
        }
    }

    /// Receives one datagram into `buffer` (emptied first), returning its sender
    /// (`recvfrom`); an oversized datagram sets `buffer.truncatedBy`.
    public func receiveUDP(into buffer: ByteBuffer) throws(IOError) -> IOResult<UDPPeer> {
        buffer.removeAll()
        let space = buffer.freeSpace
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = raw
        let result = try withUnsafeMutablePointer(to: &storage) { (p) throws(IOError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(IOError) in
                try syscall("recvfrom") { recvfrom(fd, space.baseAddress, space.count, Int32(MSG_TRUNC), sa, &length) }
            }
        }
        guard case .done(let n) = result else { return .wouldBlock }
        buffer.didWrite(Swift.min(n, space.count))
        buffer.truncatedBy = n > space.count ? n - space.count : 0
        let peer: UDPPeer
        if Int32(storage.ss_family) == AF_INET6 {
            peer = withUnsafeBytes(of: &storage) { raw in
                let sa = raw.load(as: sockaddr_in6.self)
                return UDPPeer(address: withUnsafeBytes(of: sa.sin6_addr) { Array($0) }, port: UInt16(bigEndian: sa.sin6_port))
            }
        } else {
            peer = withUnsafeBytes(of: &storage) { raw in
                let sa = raw.load(as: sockaddr_in.self)
                return UDPPeer(address: withUnsafeBytes(of: sa.sin_addr) { Array($0) }, port: UInt16(bigEndian: sa.sin_port))
            }
        }
        return .done(peer)
    }
}

/// The index of network interface `name` (`if_nametoindex`).
public func interfaceIndex(_ name: String) throws(IOError) -> Int32 {
    let index = if_nametoindex(name)
    guard index != 0 else { throw IOError(call: "if_nametoindex", code: errno, detail: name) }
    return Int32(index)
}

/// Joins IPv4 multicast `group` (4 bytes) on interface `ifindex` (`IP_ADD_MEMBERSHIP` with
/// an `ip_mreqn`); the membership ends when the socket closes.
public func joinIPv4Multicast(_ socket: Descriptor, group: [UInt8], ifindex: Int32) throws(IOError) {
    var request = ip_mreqn()
    withUnsafeMutableBytes(of: &request.imr_multiaddr) { dst in
        for i in 0..<4 { dst[i] = group[i] }
    }
    request.imr_ifindex = ifindex
    let size = socklen_t(MemoryLayout<ip_mreqn>.size)
    _ = try syscallBlocking("setsockopt(IP_ADD_MEMBERSHIP)", detail: describe(UDPPeer(address: group, port: 0))) {
        setsockopt(socket.raw, Int32(IPPROTO_IP), IP_ADD_MEMBERSHIP, &request, size)
    }
}

/// Sends this socket's IPv4 multicast out of interface `ifindex` (`IP_MULTICAST_IF`), with
/// the given TTL, and not looped back to this host's own members (`IP_MULTICAST_LOOP` off).
public func sendIPv4Multicast(_ socket: Descriptor, ifindex: Int32, ttl: Int32) throws(IOError) {
    var request = ip_mreqn()
    request.imr_ifindex = ifindex
    _ = try syscallBlocking("setsockopt(IP_MULTICAST_IF)") {
        setsockopt(socket.raw, Int32(IPPROTO_IP), IP_MULTICAST_IF, &request, socklen_t(MemoryLayout<ip_mreqn>.size))
    }
    var hops = ttl, loop: Int32 = 0
    let size = socklen_t(MemoryLayout<Int32>.size)
    _ = try syscallBlocking("setsockopt(IP_MULTICAST_TTL)") { setsockopt(socket.raw, Int32(IPPROTO_IP), IP_MULTICAST_TTL, &hops, size) }
    _ = try syscallBlocking("setsockopt(IP_MULTICAST_LOOP)") { setsockopt(socket.raw, Int32(IPPROTO_IP), IP_MULTICAST_LOOP, &loop, size) }
}
