/// An IPv4 address in host byte order.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses exactly four decimal parts, 0-255 each. Unlike inet_aton, which QEMU uses,
    /// this rejects shorthand (`127.1`), hex and octal parts and trailing blanks: with
    /// inet_aton `010.0.2.15` is 8.0.2.15, and a typo should fail rather than mean that.
    /// A part with a leading zero is rejected for the same reason.
    public init?(_ text: String) {
        guard let value = parseDottedQuad(text.utf8[...]) else { return nil }
        self.value = value
    }

    /// 0.0.0.0, which the forwarding rules use for "not given".
    public static let any = IPv4Address(0)

    public var octets: [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
    }

    public var description: String { octets.map(String.init).joined(separator: ".") }

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.value < rhs.value }
}

/// `a.b.c.d` with decimal parts 0-255 and no leading zeros (inet_pton's rules).
func parseDottedQuad(_ text: Substring.UTF8View) -> UInt32? {
    var result: UInt32 = 0
    var parts = 0
    var part: UInt32 = 0
    var digits = 0
    var leadingZero = false
    for byte in text {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            if digits == 1 && leadingZero { return nil }
            if digits == 0 { leadingZero = byte == UInt8(ascii: "0") }
            part = part * 10 + UInt32(byte - UInt8(ascii: "0"))
            digits += 1
            if part > 255 { return nil }
        case UInt8(ascii: "."):
            guard digits > 0, parts < 3 else { return nil }
            result = result << 8 | part
            parts += 1
            part = 0
            digits = 0
        default:
            return nil
        }
    }
    guard digits > 0, parts == 3 else { return nil }
    return result << 8 | part
}

/// An IPv6 address as 16 bytes in network order.
public struct IPv6Address: Hashable, Sendable, CustomStringConvertible {
    /// Always 16 bytes when made by this module's initialisers.
    public var bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Parses RFC 4291 text: eight groups of 1-4 hex digits, at most one `::` standing
    /// for one or more zero groups, and optionally a dotted IPv4 address as the last 32
    /// bits. This is what inet_pton (QEMU's parser) accepts; zone ids (`%eth0`) are not.
    public init?(_ text: String) {
        guard let bytes = parseIPv6(Array(text.utf8)) else { return nil }
        self.bytes = bytes
    }

    /// `::`
    public static let unspecified = IPv6Address(uncheckedBytes: [UInt8](repeating: 0, count: 16))

    init(uncheckedBytes: [UInt8]) { bytes = uncheckedBytes }

    /// The eight 16-bit groups.
    public var groups: [UInt16] {
        let padded = Array(bytes.prefix(16)) + [UInt8](repeating: 0, count: max(0, 16 - bytes.count))
        return (0..<8).map { UInt16(padded[2 * $0]) << 8 | UInt16(padded[2 * $0 + 1]) }
    }

    /// True when the first `length` bits of both addresses agree (QEMU's in6_equal_net).
    public func hasPrefix(_ prefix: IPv6Address, length: Int) -> Bool {
        let a = groups, b = prefix.groups
        var remaining = max(0, min(128, length))
        for i in 0..<8 where remaining > 0 {
            let bits = min(16, remaining)
            let mask: UInt16 = bits == 16 ? 0xFFFF : ~(0xFFFF >> UInt16(bits))
            if a[i] & mask != b[i] & mask { return false }
            remaining -= bits
        }
        return true
    }

    /// RFC 5952 text: lower case, no leading zeros, the longest run (the first of equal
    /// runs) of two or more zero groups as `::`, and IPv4-mapped addresses
    /// (`::ffff:0:0/96`) with a dotted tail as section 5 recommends.
    public var description: String {
        let g = groups
        if g[0..<5].allSatisfy({ $0 == 0 }) && g[5] == 0xFFFF {
            let v4 = IPv4Address(UInt32(g[6]) << 16 | UInt32(g[7]))
            return "::ffff:\(v4)"
        }
        var bestStart = -1, bestLength = 0
        var i = 0
        while i < 8 {
            guard g[i] == 0 else { i += 1; continue }
            var j = i
            while j < 8 && g[j] == 0 { j += 1 }
            if j - i > bestLength { bestStart = i; bestLength = j - i }
            i = j
        }
        func hex(_ range: Range<Int>) -> String {
            g[range].map { String($0, radix: 16) }.joined(separator: ":")
        }
        guard bestLength >= 2 else { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }
}

private func parseIPv6(_ text: [UInt8]) -> [UInt8]? {
    let colon = UInt8(ascii: ":")
    // Split around the one allowed "::".
    var doubleColon: Int?
    var i = 0
    while i + 1 < text.count {
        if text[i] == colon && text[i + 1] == colon {
            guard doubleColon == nil else { return nil }
            doubleColon = i
            i += 2
        } else {
            i += 1
        }
    }
    let head: ArraySlice<UInt8>
    let tail: ArraySlice<UInt8>
    if let dc = doubleColon {
        head = text[..<dc]
        tail = text[(dc + 2)...]
    } else {
        head = text[...]
        tail = []
    }
    // The dotted IPv4 form may only end the whole address.
    guard let headGroups = parseGroups(head, mayEndWithIPv4: doubleColon == nil),
          let tailGroups = parseGroups(tail, mayEndWithIPv4: true) else { return nil }
    let explicit = headGroups.count + tailGroups.count
    let groups: [UInt16]
    if doubleColon != nil {
        guard explicit <= 7 else { return nil }
        groups = headGroups + [UInt16](repeating: 0, count: 8 - explicit) + tailGroups
    } else {
        guard explicit == 8 else { return nil }
        groups = headGroups
    }
    return groups.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
}

/// Colon-separated hex groups; an empty slice is zero groups.
private func parseGroups(_ text: ArraySlice<UInt8>, mayEndWithIPv4: Bool) -> [UInt16]? {
    guard !text.isEmpty else { return [] }
    let fields = text.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
    var groups: [UInt16] = []
    for (index, field) in fields.enumerated() {
        if index == fields.count - 1 && mayEndWithIPv4 && field.contains(UInt8(ascii: ".")) {
            guard let v4 = parseDottedQuad(Substring(decoding: field, as: UTF8.self).utf8) else { return nil }
            groups.append(UInt16(v4 >> 16))
            groups.append(UInt16(v4 & 0xFFFF))
            continue
        }
        guard (1...4).contains(field.count) else { return nil }
        var value: UInt16 = 0
        for byte in field {
            guard let digit = hexDigitValue(byte) else { return nil }
            value = value << 4 | UInt16(digit)
        }
        groups.append(value)
    }
    return groups.count <= 8 ? groups : nil
}

func hexDigitValue(_ byte: UInt8) -> Int? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
    case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a")) + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A")) + 10
    default: nil
    }
}

/// An IPv4 network. The address is kept masked, as QEMU masks `net=`.
public struct IPv4Network: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    /// 0...32.
    public var prefixLength: Int

    /// Masks `address` to the network; `prefixLength` must be 0...32.
    public init(address: IPv4Address, prefixLength: Int) {
        precondition((0...32).contains(prefixLength), "IPv4 prefix length \(prefixLength) is outside 0...32")
        self.prefixLength = prefixLength
        self.address = IPv4Address(address.value & Self.mask(prefixLength))
    }

    /// The netmask in host byte order, e.g. 0xFFFFFF00 for /24.
    public var mask: UInt32 { Self.mask(prefixLength) }

    static func mask(_ prefixLength: Int) -> UInt32 {
        prefixLength <= 0 ? 0 : UInt32.max << UInt32(32 - min(32, prefixLength))
    }

    /// The prefix length of a contiguous netmask, or nil for masks like 255.0.255.0.
    public static func prefixLength(ofMask mask: UInt32) -> Int? {
        let length = (~mask).leadingZeroBitCount  // the mask's leading one bits
        return mask == Self.mask(length) ? length : nil
    }

    public func contains(_ candidate: IPv4Address) -> Bool {
        candidate.value & mask == address.value & mask
    }

    /// The network's address with its host part set from the low bits of `hostPart`,
    /// as QEMU derives the defaults: `network.host(0x0202)` is x.x.x.2 in a /24 and
    /// x.x.2.2 in a /16.
    public func host(_ hostPart: UInt32) -> IPv4Address {
        IPv4Address(address.value & mask | hostPart & ~mask)
    }

    public var description: String { "\(address)/\(prefixLength)" }
}

/// An IPv4 or IPv6 address, as DNSUpstream and VXLANEndpoint hold one.
public enum HostAddress: Hashable, Sendable {
    case v4(IPv4Address)
    case v6(IPv6Address)

    /// `IPv4`, `IPv4:PORT`, a bare IPv6 address or `[IPv6]:PORT`, with `defaultPort` when
    /// none is given; port 0 is refused.
    static func parse(_ text: String, defaultPort: UInt16) -> (HostAddress, port: UInt16)? {
        var host = Substring(text)
        var port = defaultPort
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let rest = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let p = UInt16(rest.dropFirst()), p != 0 else { return nil }
                port = p
            }
            guard let v6 = IPv6Address(String(host)) else { return nil }
            return (.v6(v6), port)
        }
        if let v6 = IPv6Address(String(host)), host.contains(":") { return (.v6(v6), port) }
        if let colon = host.lastIndex(of: ":") {
            guard let p = UInt16(host[host.index(after: colon)...]), p != 0 else { return nil }
            port = p
            host = host[..<colon]
        }
        guard let v4 = IPv4Address(String(host)) else { return nil }
        return (.v4(v4), port)
    }
}

/// Where the network's DNS server sends queries it does not answer itself.
public struct DNSUpstream: Hashable, Sendable, CustomStringConvertible {
    public typealias Address = HostAddress

    public var address: Address
    public var port: UInt16

    public init(_ address: Address, port: UInt16 = 53) {
        self.address = address
        self.port = port
    }

    /// `IP`, `IP:PORT`, a bare IPv6 address, or `[IPv6]:PORT`. Port 0 is refused.
    public init?(_ text: String) {
        guard let (address, port) = HostAddress.parse(text, defaultPort: 53) else { return nil }
        self.init(address, port: port)
    }

    public var description: String {
        switch address {
        case .v4(let a): return port == 53 ? "\(a)" : "\(a):\(port)"
        case .v6(let a): return port == 53 ? "\(a)" : "[\(a)]:\(port)"
        }
    }

    /// The first `nameserver` line of a resolv.conf text, if it holds an address.
    public static func fromResolvConf(_ text: String) -> DNSUpstream? {
        for line in text.split(whereSeparator: \.isNewline) {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, fields[0] == "nameserver" else { continue }
            // A zone id (fe80::1%eth0) cannot be used from here; skip such a server.
            let host = String(fields[1])
            if let v4 = IPv4Address(host) { return DNSUpstream(.v4(v4)) }
            if let v6 = IPv6Address(host) { return DNSUpstream(.v6(v6)) }
        }
        return nil
    }
}
