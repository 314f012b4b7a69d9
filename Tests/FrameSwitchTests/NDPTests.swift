import Testing

@testable import FrameSwitch

@Suite struct NDPTests {
    let nat = MACAddress(raw: 0x5256_0000_0002)
    let guest = MACAddress(raw: 0x5254_0012_3456)
    let natIP: [UInt8] = [0xFE, 0x80] + [UInt8](repeating: 0, count: 13) + [2]
    let guestIP: [UInt8] = [0xFE, 0xC0] + [UInt8](repeating: 0, count: 6) + [0x50, 0x54, 0x00, 0xFF, 0xFE, 0x12, 0x34, 0x56]

    /// A solicitation as libslirp's ndp_send_ns builds it: to the solicited-node group,
    /// with its own link-layer address as an option.
    func solicitation(hopLimit: UInt8 = 255) -> [UInt8] {
        let group: [UInt8] = [0xFF, 0x02] + [UInt8](repeating: 0, count: 9) + [1, 0xFF] + guestIP[13...]
        let icmp: [UInt8] = [135, 0, 0, 0, 0, 0, 0, 0] + guestIP + [1, 1] + nat.bytes
        return [0x33, 0x33] + group[12...] + nat.bytes + [0x86, 0xDD, 0x60, 0, 0, 0, 0, UInt8(icmp.count), 58, hopLimit]
            + natIP + group + icmp
    }

    @Test func readsLibslirpsSolicitation() throws {
        let ns = try #require(NeighborSolicitation.parse(frame: solicitation()))
        #expect(ns.sourceMAC == nat && ns.sourceIP == natIP && ns.target == guestIP)
        #expect(ns.targetKey == IPv6Key(guestIP, at: 0))
        #expect(NeighborSolicitation.parse(frame: solicitation(hopLimit: 64)) == nil, "RFC 4861 7.1.1: hop limit must be 255")
        for n in 0..<solicitation().count { _ = NeighborSolicitation.parse(frame: Array(solicitation().prefix(n))) }
    }

    @Test func advertisesTheGuestToTheSolicitorWithAValidChecksum() throws {
        let ns = try #require(NeighborSolicitation.parse(frame: solicitation()))
        let na = ns.advertisement(from: guest)
        #expect(Array(na[0..<6]) == nat.bytes && Array(na[6..<12]) == guest.bytes)
        #expect(na[20] == 58 && na[21] == 255)
        #expect(Array(na[22..<38]) == guestIP && Array(na[38..<54]) == natIP)
        let icmp = Array(na[54...])
        #expect(icmp[0] == 136 && icmp[4] == 0x60, "solicited and override")
        #expect(Array(icmp[8..<24]) == guestIP)
        #expect(Array(icmp[24..<32]) == [2, 1] + guest.bytes)
        let pseudo = guestIP + natIP + [0, 0, 0, UInt8(icmp.count), 0, 0, 0, 58]
        #expect(IPChecksum.sum(pseudo + icmp) == 0xFFFF)
    }

    @Test func sourceOfAnIPv6FrameButNotTheUnspecifiedOne() {
        var frame = solicitation()
        #expect(ipv6Source(frame: frame) == IPv6Key(natIP, at: 0))
        frame.replaceSubrange(22..<38, with: [UInt8](repeating: 0, count: 16))
        #expect(ipv6Source(frame: frame) == nil)
    }
}
