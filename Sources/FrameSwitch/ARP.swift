/// ARP for IPv4 over Ethernet (RFC 826), and the IPv4 source of a frame: what the
/// switch reads to learn which guest MAC holds which address.
public struct ARPPacket: Equatable, Sendable {
    public static let etherType: UInt16 = 0x0806
    public static let request: UInt16 = 1
    public static let reply: UInt16 = 2

    public var operation: UInt16
    public var senderMAC: MACAddress
    public var senderIP: UInt32
    public var targetMAC: MACAddress
    public var targetIP: UInt32

    public init(operation: UInt16, senderMAC: MACAddress, senderIP: UInt32, targetMAC: MACAddress, targetIP: UInt32) {
        self.operation = operation
        self.senderMAC = senderMAC
        self.senderIP = senderIP
        self.targetMAC = targetMAC
        self.targetIP = targetIP
    }

    /// Reads an Ethernet/IPv4 ARP packet; nil for anything else.
    @inlinable
    public static func parse<C: RandomAccessCollection<UInt8>>(frame: C) -> ARPPacket? where C.Index == Int {
        guard frame.count >= 42 else { return nil }
        let s = frame.startIndex
        guard read16(frame, 12) == etherType, read16(frame, 14) == 1, read16(frame, 16) == 0x0800,
              frame[s + 18] == 6, frame[s + 19] == 4 else { return nil }
        return ARPPacket(operation: read16(frame, 20), senderMAC: MACAddress(frame, at: 22), senderIP: read32(frame, 28),
                         targetMAC: MACAddress(frame, at: 32), targetIP: read32(frame, 38))
    }

    /// The reply `owner` would send to this request: "targetIP is at owner".
    public func reply(from owner: MACAddress) -> [UInt8] {
        var frame: [UInt8] = []
        frame.reserveCapacity(42)
        frame += senderMAC.bytes + owner.bytes + [0x08, 0x06]
        frame += [0, 1, 0x08, 0x00, 6, 4, 0, UInt8(ARPPacket.reply)]
        frame += owner.bytes + bigEndianBytes(targetIP) + senderMAC.bytes + bigEndianBytes(senderIP)
        return frame
    }
}

/// The source address of an IPv4 frame (ethertype 0x0800, version 4), or nil.
@inlinable
public func ipv4Source<C: RandomAccessCollection<UInt8>>(frame: C) -> UInt32? where C.Index == Int {
    guard frame.count >= 34 else { return nil }
    let s = frame.startIndex
    guard frame[s + 12] == 0x08, frame[s + 13] == 0x00, frame[s + 14] >> 4 == 4 else { return nil }
    return UInt32(frame[s + 26]) << 24 | UInt32(frame[s + 27]) << 16 | UInt32(frame[s + 28]) << 8 | UInt32(frame[s + 29])
}

/// Whether libslirp may be given this frame: any non-IPv4 frame, or IPv4 carrying TCP,
/// UDP or ICMP, the only IPv4 protocols libslirp implements (it discards the rest), so
/// the rest of its input path is never tried with them. IPv4 fragments are then
/// reassembled before libslirp sees them (IPv4Reassembly).
public func natAcceptsFrame<C: RandomAccessCollection<UInt8>>(_ frame: C) -> Bool where C.Index == Int {
    let s = frame.startIndex
    guard frame.count >= 24, frame[s + 12] == 0x08, frame[s + 13] == 0x00 else { return true }
    let proto = frame[s + 23]
    return proto == 1 || proto == 6 || proto == 17
}
