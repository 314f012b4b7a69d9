import FrameSwitch
import Testing

@Suite("ARP")
struct ARPTests {
    let nat = MACAddress(raw: 0x5255_0A00_0202)
    let guest = MACAddress(raw: 0x5254_0000_0042)

    /// libslirp's request: who has 10.0.2.15? tell 10.0.2.2.
    var request: [UInt8] {
        MACAddress.broadcast.bytes + nat.bytes + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]
            + nat.bytes + [10, 0, 2, 2] + MACAddress.zero.bytes + [10, 0, 2, 15]
    }

    @Test("a request is read field by field, and a padded frame too")
    func parse() throws {
        let arp = try #require(ARPPacket.parse(frame: request))
        #expect(arp == ARPPacket(operation: ARPPacket.request, senderMAC: nat, senderIP: 0x0A00_0202,
                                 targetMAC: .zero, targetIP: 0x0A00_020F))
        #expect(ARPPacket.parse(frame: request + [UInt8](repeating: 0, count: 18)) == arp)
        #expect(ARPPacket.parse(frame: Array(request.prefix(41))) == nil)
        var ipv6 = request
        ipv6[16] = 0x86
        #expect(ARPPacket.parse(frame: ipv6) == nil)
    }

    @Test("the reply answers the asker from the owner, and parses back")
    func reply() throws {
        let arp = try #require(ARPPacket.parse(frame: request))
        let frame = arp.reply(from: guest)
        #expect(frame.count == 42)
        #expect(EthernetHeader(frame)?.destination == nat)
        #expect(EthernetHeader(frame)?.source == guest)
        #expect(ARPPacket.parse(frame: frame) == ARPPacket(operation: ARPPacket.reply, senderMAC: guest, senderIP: 0x0A00_020F,
                                                           targetMAC: nat, targetIP: 0x0A00_0202))
    }

    @Test("the IPv4 source is read only from IPv4 frames")
    func source() {
        var frame = guest.bytes + nat.bytes + [0x08, 0x00, 0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2]
        #expect(ipv4Source(frame: frame) == 0x0A00_020F)
        frame[12] = 0x86
        #expect(ipv4Source(frame: frame) == nil)
        #expect(ipv4Source(frame: request) == nil)
    }
}
