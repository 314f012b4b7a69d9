/// IPv6 Neighbor Discovery (RFC 4861), the little the switch needs: reading libslirp's
/// Neighbor Solicitations and answering them for a guest with a Neighbor Advertisement,
/// the IPv6 twin of the ARP proxy. Also the source address of an IPv6 frame, from which
/// the switch learns which guest MAC holds which IPv6 address.
public struct NeighborSolicitation: Equatable, Sendable {
    public var sourceMAC: MACAddress
    /// 16 bytes each.
    public var sourceIP: [UInt8]
    public var target: [UInt8]

    public var targetKey: IPv6Key { IPv6Key(target, at: 0) }

    /// Reads an untagged IPv6 frame carrying ICMPv6 type 135 directly (no extension
    /// headers), hop limit 255 as RFC 4861 7.1.1 requires; nil for anything else.
    public static func parse<C: RandomAccessCollection<UInt8>>(frame: C) -> NeighborSolicitation? where C.Index == Int {
        let s = frame.startIndex
        guard frame.count >= 14 + 40 + 24, frame[s + 12] == 0x86, frame[s + 13] == 0xDD, frame[s + 14] >> 4 == 6,
              frame[s + 20] == 58, frame[s + 21] == 255, frame[s + 54] == 135, frame[s + 55] == 0 else { return nil }
        let payload = Int(frame[s + 18]) << 8 | Int(frame[s + 19])
        guard payload >= 24, 54 + payload <= frame.count else { return nil }
        return NeighborSolicitation(sourceMAC: MACAddress(frame, at: 6), sourceIP: Array(frame[(s + 22)..<(s + 38)]),
                                    target: Array(frame[(s + 62)..<(s + 78)]))
    }

    /// The solicited, overriding advertisement `owner` would send: "target is at owner".
    public func advertisement(from owner: MACAddress) -> [UInt8] {
        var icmp: [UInt8] = [136, 0, 0, 0, 0x60, 0, 0, 0] + target + [2, 1] + owner.bytes
        let length = icmp.count
        let pseudo = target + sourceIP + [0, 0, UInt8(length >> 8), UInt8(length & 0xFF), 0, 0, 0, 58]
        IPChecksum.store(in: &icmp, at: 2, pseudoHeader: pseudo)
        return sourceMAC.bytes + owner.bytes + [0x86, 0xDD, 0x60, 0, 0, 0, 0, UInt8(length), 58, 255]
            + target + sourceIP + icmp
    }
}

/// An IPv6 address as two integers: a table key that costs no allocation per frame.
public struct IPv6Key: Hashable, Sendable {
    public var high: UInt64
    public var low: UInt64

    @inlinable
    public init<C: RandomAccessCollection<UInt8>>(_ bytes: C, at offset: Int) where C.Index == Int {
        var high: UInt64 = 0, low: UInt64 = 0
        for i in 0..<8 { high = high << 8 | UInt64(bytes[bytes.startIndex + offset + i]) }
        for i in 8..<16 { low = low << 8 | UInt64(bytes[bytes.startIndex + offset + i]) }
        self.high = high
        self.low = low
    }
}

/// The source address of an IPv6 frame (ethertype 0x86DD, version 6), or nil; nil too
/// for the unspecified address a host uses before it has one (during DAD).
@inlinable
public func ipv6Source<C: RandomAccessCollection<UInt8>>(frame: C) -> IPv6Key? where C.Index == Int {
    guard frame.count >= 54 else { return nil }
    let s = frame.startIndex
    guard frame[s + 12] == 0x86, frame[s + 13] == 0xDD, frame[s + 14] >> 4 == 6 else { return nil }
    let source = IPv6Key(frame, at: 22)
    return source.high == 0 && source.low == 0 ? nil : source
}

/// The Internet checksum (RFC 1071).
public enum IPChecksum {
    /// The folded 16-bit one's complement sum, not yet complemented.
    public static func sum(_ bytes: [UInt8], initial: UInt16 = 0) -> UInt16 {
        bytes.withUnsafeBytes { sum($0, initial: initial) }  // InternetChecksum.swift
    }

    /// Writes the checksum of `bytes` (whose checksum field at `offset` is zero), with the
    /// sum of `pseudoHeader` folded in for TCP, UDP and ICMPv6.
    public static func store(in bytes: inout [UInt8], at offset: Int, pseudoHeader: [UInt8] = []) {
        let value = ~sum(bytes, initial: sum(pseudoHeader))
        bytes[offset] = UInt8(value >> 8)
        bytes[offset + 1] = UInt8(value & 0xFF)
    }
}
