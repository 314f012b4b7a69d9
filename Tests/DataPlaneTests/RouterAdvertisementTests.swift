import DataPlane
import FrameSwitch
import Testing

/// libslirp's RAs rewritten toward each guest: MTU, RDNSS and DNSSL (RFC 4861, RFC 8106).
@Suite("Router advertisements")
struct RouterAdvertisementTests {
    static let dns: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [3]
    static let linkLocal: [UInt8] = [0xFE, 0x80] + Array(repeating: 0, count: 13) + [2]
    static let allNodes: [UInt8] = [0xFF, 0x02] + Array(repeating: 0, count: 13) + [1]
    static let slirpMAC = MACAddress(raw: 0x5256_0000_0002)

    /// The RA libslirp 4.7 builds (ndp_send_ra): SLLA, prefix fec0::/64, and, when `rdnss`,
    /// its own RDNSS with a lifetime of 1,200,000 s.
    static func slirpRA(rdnss: Bool = false, mtu: UInt32? = nil) -> [UInt8] {
        var icmp: [UInt8] = [134, 0, 0, 0, 255, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]
        icmp += [1, 1] + slirpMAC.bytes
        icmp += [3, 4, 64, 0xC0] + bigEndianBytes(UInt32(86400)) + bigEndianBytes(UInt32(14400)) + [0, 0, 0, 0]
            + [0xFE, 0xC0] + Array(repeating: 0, count: 14)
        if rdnss { icmp += [25, 3, 0, 0] + bigEndianBytes(UInt32(1_200_000)) + dns }
        if let mtu { icmp += [5, 1, 0, 0] + bigEndianBytes(mtu) }
        let pseudo = linkLocal + allNodes + bigEndianBytes(UInt32(icmp.count)) + [0, 0, 0, 58]
        IPChecksum.store(in: &icmp, at: 2, pseudoHeader: pseudo)
        return MACAddress(raw: 0x3333_0000_0001).bytes + slirpMAC.bytes + [0x86, 0xDD, 0x60, 0, 0, 0]
            + bigEndianBytes(UInt16(icmp.count)) + [58, 255] + linkLocal + allNodes + icmp
    }

    /// RFC 1071 by hand, independent of the code under test: the sum over pseudo-header
    /// and ICMPv6 message of a correct checksum is 0xFFFF.
    static func checksumIsValid(_ frame: [UInt8]) -> Bool {
        let icmp = Array(frame[54...])
        let bytes = Array(frame[22..<54]) + [0, 0, UInt8(icmp.count >> 8), UInt8(icmp.count & 0xFF), 0, 0, 0, 58] + icmp
            + (icmp.count % 2 == 1 ? [0] : [])
        var sum: UInt32 = 0
        for i in stride(from: 0, to: bytes.count, by: 2) { sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]) }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return sum == 0xFFFF
    }

    /// The options of an RA frame as (type, body after type and length).
    static func options(_ frame: [UInt8]) -> [(UInt8, [UInt8])] {
        var out: [(UInt8, [UInt8])] = []
        var at = 70
        while at + 2 <= frame.count {
            let length = Int(frame[at + 1]) * 8
            guard length > 0, at + length <= frame.count else { Issue.record("bad option at \(at)"); break }
            out.append((frame[at], Array(frame[(at + 2)..<(at + length)])))
            at += length
        }
        #expect(at == frame.count)
        return out
    }

    @Test func addsMTURDNSSAndDNSSL() throws {
        let options = RouterAdvertisementOptions(dns: Self.dns, searchDomains: ["example.test", "b.example"])
        let out = try #require(RouterAdvertisement.rewrite(Self.slirpRA(), mtu: 9000, options: options))
        #expect(Int(out[18]) << 8 | Int(out[19]) == out.count - 54)
        #expect(Self.checksumIsValid(out))
        let found = Self.options(out)
        #expect(found.map(\.0) == [1, 3, 5, 25, 31])
        #expect(found[2].1 == [0, 0, 0, 0, 0x23, 0x28])  // MTU 9000
        #expect(found[3].1 == [0, 0, 0, 0, 0x07, 0x08] + Self.dns)  // lifetime 1800
        let names: [UInt8] = [7] + Array("example".utf8) + [4] + Array("test".utf8) + [0]
            + [1, 0x62] + [7] + Array("example".utf8) + [0]
        #expect(Array(found[4].1.prefix(6 + names.count)) == [0, 0, 0, 0, 0x07, 0x08] + names)
        #expect(found[4].1.dropFirst(6 + names.count).allSatisfy { $0 == 0 })
        // libslirp's own fields are untouched: router lifetime 1800 and the prefix.
        #expect(out[54 + 6] == 0x07 && out[54 + 7] == 0x08)
        #expect(found[1].1 == Array(Self.slirpRA()[(70 + 8 + 2)..<(70 + 8 + 32)]))
    }

    @Test func replacesLibslirpsRDNSSAndMTUAndOmitsDNSSLWithoutSearchDomains() throws {
        // An MTU option of libslirp's own 65520 (4.7 sends none, a later one might) never reaches a guest.
        let out = try #require(RouterAdvertisement.rewrite(Self.slirpRA(rdnss: true, mtu: 65520), mtu: 1500,
                                                           options: RouterAdvertisementOptions(dns: Self.dns)))
        #expect(Self.checksumIsValid(out))
        let found = Self.options(out)
        #expect(found.map(\.0) == [1, 3, 5, 25])
        #expect(found[2].1 == [0, 0, 0, 0, 0x05, 0xDC])
        #expect(found[3].1.prefix(6) == [0, 0, 0, 0, 0x07, 0x08])
    }

    @Test func refusesWhatIsNotAWellFormedRA() {
        var zeroLength = Self.slirpRA()
        zeroLength[71] = 0  // the first option's length
        #expect(RouterAdvertisement.rewrite(zeroLength, mtu: 1500, options: RouterAdvertisementOptions()) == nil)
        var long = Self.slirpRA()
        long[19] &+= 8  // payload length past the frame
        #expect(RouterAdvertisement.rewrite(long, mtu: 1500, options: RouterAdvertisementOptions()) == nil)
        var solicitation = Self.slirpRA()
        solicitation[54] = 133
        #expect(!RouterAdvertisement.isAdvertisement(solicitation))
        #expect(RouterAdvertisement.rewrite(Array(Self.slirpRA().prefix(60)), mtu: 1500, options: RouterAdvertisementOptions()) == nil)
    }

    /// The frame path sends each guest its own copy, with that guest's MTU.
    @Test func eachGuestGetsItsOwnMTU() throws {
        let settings = FramePath.Settings(isolateGuests: false, ipv6: true, network: 0x0A00_0200, mask: 0xFFFF_FF00,
                                          routerAdvertisement: RouterAdvertisementOptions(dns: Self.dns))
        let path = FramePath(natPort: PortID(0), settings: settings)
        let small = PortState(id: PortID(1), closesOnDuplicateMAC: true, mtu: 1500)
        let jumbo = PortState(id: PortID(2), closesOnDuplicateMAC: true, mtu: 9000)
        path.addPort(small)
        path.addPort(jumbo)
        let sink = FakeSink()
        Self.slirpRA().withUnsafeBytes { path.fromNAT($0, now: 1_000_000_000, sink: sink) }
        let toSmall = try #require(sink.delivered(to: PortID(1)).first)
        let toJumbo = try #require(sink.delivered(to: PortID(2)).first)
        #expect(sink.delivered.count == 2)
        #expect(Self.options(toSmall).first { $0.0 == 5 }?.1 == [0, 0, 0, 0, 0x05, 0xDC])
        #expect(Self.options(toJumbo).first { $0.0 == 5 }?.1 == [0, 0, 0, 0, 0x23, 0x28])
        #expect(Self.options(toSmall).first { $0.0 == 25 }?.1.suffix(16) == Self.dns[...])
        #expect(Self.checksumIsValid(toSmall) && Self.checksumIsValid(toJumbo))
    }
}
