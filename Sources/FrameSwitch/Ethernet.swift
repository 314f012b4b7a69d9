// FrameSwitch: the pure logic of the data path, with no I/O and no unsafe code.
//
// Theory of operation: guests speak Ethernet. Stream transports wrap each frame in a
// 4-byte big-endian length (`StreamFraming`); datagram transports carry one frame per
// datagram. Every frame, from a guest or from libslirp, passes `EthernetSwitch.ingress`,
// which learns where its source MAC lives and says where it goes. libslirp is one port
// of the switch like any guest: it never forwards between guests itself.
// Functions over bytes are generic and `@inlinable`, so callers pass buffer views of
// their own kind (the daemon passes raw socket buffers, tests pass arrays).

/// A 48-bit Ethernet address, stored in the low bits of a UInt64 for cheap hashing.
public struct MACAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let raw: UInt64

    @inlinable public init(raw: UInt64) { self.raw = raw & 0xFFFF_FFFF_FFFF }

    /// Reads six bytes at `offset`.
    @inlinable
    public init<C: RandomAccessCollection<UInt8>>(_ bytes: C, at offset: Int) where C.Index == Int {
        var value: UInt64 = 0
        let start = bytes.startIndex + offset
        for i in 0..<6 { value = value << 8 | UInt64(bytes[start + i]) }
        self.init(raw: value)
    }

    /// Parses `52:54:00:12:34:56` (also with `-`).
    public init?(_ text: String) {
        let parts = text.split(whereSeparator: { $0 == ":" || $0 == "-" })
        guard parts.count == 6 else { return nil }
        var value: UInt64 = 0
        for part in parts {
            guard part.count == 2, let byte = UInt8(part, radix: 16) else { return nil }
            value = value << 8 | UInt64(byte)
        }
        self.init(raw: value)
    }

    public static let broadcast = MACAddress(raw: 0xFFFF_FFFF_FFFF)
    public static let zero = MACAddress(raw: 0)

    /// The I/G bit: set for broadcast and multicast.
    @inlinable public var isGroup: Bool { raw & 0x0100_0000_0000 != 0 }

    /// IPv6 all-routers (ff02::2, router solicitations) and all-MLDv2-routers (ff02::16,
    /// MLD reports): groups only a router listens to, and the network's one router is the
    /// gateway. A switch with MLD snooping sends them to its router port alone; flooding
    /// them costs n² deliveries when n guests come up at once (issue 20 item 3).
    @inlinable public var isRoutersOnlyGroup: Bool { raw == 0x3333_0000_0002 || raw == 0x3333_0000_0016 }

    public var bytes: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: raw >> (40 - 8 * UInt64($0))) } }

    public var description: String {
        bytes.map { b in
            let s = String(b, radix: 16)
            return b < 16 ? "0" + s : s
        }.joined(separator: ":")
    }

    public static func < (a: MACAddress, b: MACAddress) -> Bool { a.raw < b.raw }
}

/// The big-endian 16-bit value at byte `at` of a frame.
@inlinable
public func read16<C: RandomAccessCollection<UInt8>>(_ frame: C, _ at: Int) -> UInt16 where C.Index == Int {
    UInt16(frame[frame.startIndex + at]) << 8 | UInt16(frame[frame.startIndex + at + 1])
}

/// The big-endian 32-bit value at byte `at` of a frame.
@inlinable
public func read32<C: RandomAccessCollection<UInt8>>(_ frame: C, _ at: Int) -> UInt32 where C.Index == Int {
    UInt32(read16(frame, at)) << 16 | UInt32(read16(frame, at + 2))
}

/// A value's bytes in network order, for building frames.
public func bigEndianBytes(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
public func bigEndianBytes(_ value: UInt32) -> [UInt8] { bigEndianBytes(UInt16(value >> 16)) + bigEndianBytes(UInt16(value & 0xFFFF)) }

/// The addresses at the start of an Ethernet frame.
public struct EthernetHeader: Equatable, Sendable {
    public static let length = 14
    public var destination: MACAddress
    public var source: MACAddress
    public var etherType: UInt16

    @inlinable
    public init?<C: RandomAccessCollection<UInt8>>(_ frame: C) where C.Index == Int {
        guard frame.count >= Self.length else { return nil }
        destination = MACAddress(frame, at: 0)
        source = MACAddress(frame, at: 6)
        let s = frame.startIndex
        etherType = UInt16(frame[s + 12]) << 8 | UInt16(frame[s + 13])
    }
}
