import FrameSwitch
import Testing

@Suite("NAT connections of a guest")
struct NATConnectionsTests {
    let nat = MACAddress(raw: 0x5255_0A00_0202)
    let guest = MACAddress(raw: 0x5254_0000_0042)
    let other = MACAddress(raw: 0x5254_0000_0043)

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func be32(_ v: UInt32) -> [UInt8] { be16(UInt16(v >> 16)) + be16(UInt16(v & 0xFFFF)) }

    static func tcp(from natPort: UInt16, to guestPort: UInt16, seq: UInt32, ack: UInt32, flags: UInt8) -> [UInt8] {
        be16(natPort) + be16(guestPort) + be32(seq) + be32(ack) + [5 << 4, flags] + be16(65535) + [0, 0, 0, 0]
    }

    /// libslirp to the guest over IPv4: 10.0.2.2:natPort -> 10.0.2.15:guestPort (checksums left 0: not checked).
    func segment4(to mac: MACAddress? = nil, natPort: UInt16 = 8080, guestPort: UInt16 = 40000, ack: UInt32,
                  flags: UInt8 = 0x10, fragmentOffset: UInt8 = 0) -> [UInt8] {
        let payload = Self.tcp(from: natPort, to: guestPort, seq: 7, ack: ack, flags: flags)
        return (mac ?? guest).bytes + nat.bytes + [0x08, 0x00, 0x45, 0, 0, UInt8(20 + payload.count), 0, 0, 0x40, fragmentOffset,
                                                   64, 6, 0, 0, 10, 0, 2, 2, 10, 0, 2, 15] + payload
    }

    static let natAddress6: [UInt8] = [0xFE, 0xC0] + [UInt8](repeating: 0, count: 13) + [2]
    static let guestAddress6: [UInt8] = [0xFE, 0xC0] + [UInt8](repeating: 0, count: 6) + [0x50, 0x54, 0, 0xFF, 0xFE, 0, 0, 0x42]

    func segment6(ack: UInt32, flags: UInt8 = 0x10) -> [UInt8] {
        let payload = Self.tcp(from: 80, to: 50000, seq: 7, ack: ack, flags: flags)
        return guest.bytes + nat.bytes + [0x86, 0xDD, 0x60, 0, 0, 0, 0, UInt8(payload.count), 6, 64]
            + Self.natAddress6 + Self.guestAddress6 + payload
    }

    /// The one's complement sum over `bytes` is 0xFFFF when a checksum in them is right.
    static func sumsToOnes(_ bytes: [UInt8]) -> Bool {
        ~IPChecksum.sum(bytes) == 0
    }

    @Test("the ACK number of the last segment is what the RST carries, from the guest to the NAT")
    func resetFromLastAck() throws {
        var table = NATConnections()
        table.observe(toGuest: segment4(ack: 1001, flags: 0x12))
        table.observe(toGuest: segment4(ack: 5000))
        #expect(table.count == 1)
        let rst = try #require(table.resets().first)
        #expect(rst.count == 14 + 20 + 20)
        #expect(EthernetHeader(rst)?.destination == nat)
        #expect(EthernetHeader(rst)?.source == guest)
        #expect(Array(rst[26..<30]) == [10, 0, 2, 15])
        #expect(Array(rst[30..<34]) == [10, 0, 2, 2])
        #expect(Array(rst[34..<38]) == Self.be16(40000) + Self.be16(8080))
        #expect(Array(rst[38..<42]) == Self.be32(5000))
        #expect(rst[47] == 0x04)
        #expect(rst[23] == 6 && rst[20] & 0x1F == 0 && rst[21] == 0)
        #expect(Self.sumsToOnes(Array(rst[14..<34])), "IPv4 header checksum")
        let pseudo: [UInt8] = Array(rst[26..<34]) + [0, 6, 0, 20]
        #expect(Self.sumsToOnes(pseudo + Array(rst[34...])), "TCP checksum")
    }

    @Test("IPv6 segments give an IPv6 RST with a valid checksum")
    func ipv6() throws {
        var table = NATConnections()
        table.observe(toGuest: segment6(ack: 0xFFFF_FFF0))
        let rst = try #require(table.resets().first)
        #expect(rst.count == 14 + 40 + 20)
        #expect(Array(rst[12..<14]) == [0x86, 0xDD])
        #expect(rst[20] == 6 && rst[19] == 20)
        #expect(Array(rst[22..<38]) == Self.guestAddress6)
        #expect(Array(rst[38..<54]) == Self.natAddress6)
        #expect(Array(rst[54..<58]) == Self.be16(50000) + Self.be16(80))
        #expect(Array(rst[58..<62]) == Self.be32(0xFFFF_FFF0))
        let pseudo = Array(rst[22..<54]) + [0, 0, 0, 20, 0, 0, 0, 6]
        #expect(Self.sumsToOnes(pseudo + Array(rst[54...])), "TCP checksum")
    }

    @Test("a RST either way ends the record; SYNs without ACK, fragments and other protocols make none")
    func lifecycle() {
        var table = NATConnections()
        table.observe(toGuest: segment4(ack: 0, flags: 0x02))
        table.observe(toGuest: segment4(ack: 9, fragmentOffset: 1))
        var udp = segment4(ack: 9)
        udp[23] = 17
        table.observe(toGuest: udp)
        table.observe(toGuest: Array(segment4(ack: 9).prefix(53)))
        #expect(table.isEmpty)
        table.observe(toGuest: segment4(ack: 9))
        table.observe(toGuest: segment4(guestPort: 40001, ack: 9))
        #expect(table.count == 2)
        table.observe(toGuest: segment4(ack: 10, flags: 0x14))
        #expect(table.count == 1)
    }

    @Test("a guest that comes back with its MAC takes its connections and no one else's")
    func takeAndMerge() {
        var table = NATConnections()
        table.observe(toGuest: segment4(ack: 1))
        table.observe(toGuest: segment4(to: other, guestPort: 40001, ack: 2))
        #expect(table.guestMACs == [guest, other])
        let taken = table.take(guestMAC: other)
        #expect(taken.count == 1 && taken.guestMACs == [other])
        #expect(table.count == 1 && table.guestMACs == [guest])
        var back = NATConnections()
        back.merge(taken)
        #expect(back.count == 1)
    }

    @Test("the table is bounded: connections the NAT has closed make room first, then new ones go unrecorded")
    func bounded() {
        var table = NATConnections()
        for port in 0..<UInt16(NATConnections.capacity) {
            table.observe(toGuest: segment4(guestPort: 10000 + port, ack: 1, flags: port < 10 ? 0x11 : 0x10))
        }
        #expect(table.count == NATConnections.capacity)
        table.observe(toGuest: segment4(guestPort: 20000, ack: 1))
        #expect(table.count == NATConnections.capacity - 10 + 1)
        for port in 0..<UInt16(20) { table.observe(toGuest: segment4(guestPort: 30000 + port, ack: 1)) }
        #expect(table.count == NATConnections.capacity)
        #expect(table.unrecorded == 11)
    }
}
