import FrameSwitch
import Testing

@Suite("MAC-learning switch")
struct EthernetSwitchTests {
    let nat = PortID(0), a = PortID(1), b = PortID(2), c = PortID(3)
    let macNAT = MACAddress(raw: 0x5255_0A00_0202)
    let macA = MACAddress(raw: 0x5254_0000_000A)
    let macB = MACAddress(raw: 0x5254_0000_000B)
    let second: Int64 = 1_000_000_000

    @Test("unknown and broadcast destinations flood; learned ones go to their port")
    func learning() {
        var sw = EthernetSwitch()
        #expect(sw.ingress(from: a, source: macA, destination: .broadcast, now: 0) == .flood)
        #expect(sw.ingress(from: b, source: macB, destination: macNAT, now: 1) == .flood)
        #expect(sw.ingress(from: nat, source: macNAT, destination: macB, now: 2) == .forward(b))
        #expect(sw.ingress(from: b, source: macB, destination: macA, now: 3) == .forward(a))
        #expect(sw.ingress(from: a, source: macA, destination: macNAT, now: 4) == .forward(nat))
        #expect(sw.port(of: macA) == a)
    }

    @Test("a MAC live on another port is a duplicate, and the owner keeps it")
    func duplicate() {
        var sw = EthernetSwitch()
        _ = sw.ingress(from: a, source: macA, destination: .broadcast, now: 0)
        #expect(sw.ingress(from: b, source: macA, destination: .broadcast, now: second) == .duplicate(owner: a))
        #expect(sw.port(of: macA) == a)
        #expect(sw.ingress(from: nat, source: macNAT, destination: macA, now: 2 * second) == .forward(a))
    }

    @Test("entries age out; then the MAC may move")
    func aging() {
        var sw = EthernetSwitch(agingTime: 10 * second)
        _ = sw.ingress(from: a, source: macA, destination: .broadcast, now: 0)
        #expect(sw.ingress(from: nat, source: macNAT, destination: macA, now: 9 * second) == .forward(a))
        #expect(sw.ingress(from: nat, source: macNAT, destination: macA, now: 11 * second) == .flood)
        #expect(sw.ingress(from: b, source: macA, destination: .broadcast, now: 11 * second) == .flood)
        #expect(sw.port(of: macA) == b)
        #expect(sw.expire(now: 100 * second) == 2)
        #expect(sw.count == 0)
    }

    @Test("a closed port's entries go with it")
    func removal() {
        var sw = EthernetSwitch()
        _ = sw.ingress(from: a, source: macA, destination: .broadcast, now: 0)
        _ = sw.ingress(from: b, source: macB, destination: .broadcast, now: 0)
        #expect(sw.removePort(a) == [macA])
        #expect(sw.port(of: macA) == nil)
        #expect(sw.ingress(from: c, source: macA, destination: macB, now: 1) == .forward(b))
    }

    @Test("group or zero sources are dropped; same-port destinations are not echoed")
    func drops() {
        var sw = EthernetSwitch()
        #expect(sw.ingress(from: a, source: .broadcast, destination: macB, now: 0) == .drop(.invalidSource))
        #expect(sw.ingress(from: a, source: .zero, destination: macB, now: 0) == .drop(.invalidSource))
        _ = sw.ingress(from: a, source: macA, destination: .broadcast, now: 0)
        let macA2 = MACAddress(raw: 0x5254_0000_00A2)
        #expect(sw.ingress(from: a, source: macA2, destination: macA, now: 1) == .drop(.sameSegment))
    }

    @Test("a full table drops frames from new MACs instead of learning them")
    func capacity() {
        var sw = EthernetSwitch(capacity: 2)
        _ = sw.ingress(from: a, source: macA, destination: .broadcast, now: 0)
        _ = sw.ingress(from: b, source: macB, destination: .broadcast, now: 0)
        let macC = MACAddress(raw: 0x5254_0000_000C)
        #expect(sw.ingress(from: c, source: macC, destination: .broadcast, now: 0) == .drop(.tableFull))
        #expect(sw.port(of: macC) == nil)
        #expect(sw.ingress(from: a, source: macA, destination: macB, now: 1) == .forward(b))
    }

    @Test("a port learns at most macsPerPort MACs; the rest are dropped, and a MAC that leaves frees a place")
    func perPortCap() {
        var sw = EthernetSwitch(agingTime: 10 * second, macsPerPort: 3, natPort: nat)
        for i in 0..<3 {
            #expect(sw.ingress(from: a, source: MACAddress(raw: 0x02FA_0000_0000 + UInt64(i)), destination: .broadcast, now: 0) == .flood)
        }
        for i in 3..<5000 {
            #expect(sw.ingress(from: a, source: MACAddress(raw: 0x02FA_0000_0000 + UInt64(i)), destination: .broadcast, now: 1) == .drop(.portMACLimit))
        }
        #expect(sw.learnedCount(on: a) == 3)
        #expect(sw.count == 3)
        // Another port and the NAT are untouched by a's overflow.
        #expect(sw.ingress(from: b, source: macB, destination: .broadcast, now: 2) == .flood)
        #expect(sw.ingress(from: nat, source: macNAT, destination: macB, now: 2) == .forward(b))
        for i in 0..<5 {
            _ = sw.ingress(from: nat, source: MACAddress(raw: 0x5255_0A00_0300 + UInt64(i)), destination: .broadcast, now: 2)
        }
        #expect(sw.learnedCount(on: nat) == 6)
        // Aged out (a's three, b's one, the NAT's six): a may learn new ones.
        #expect(sw.expire(now: 11 * second) == 10)
        #expect(sw.learnedCount(on: a) == 0)
        #expect(sw.ingress(from: a, source: MACAddress(raw: 0x02FA_0000_1000), destination: .broadcast, now: 11 * second) == .flood)
        #expect(sw.removePort(a).count == 1)
        #expect(sw.learnedCount(on: a) == 0)
    }

    @Test("a guest never gets one of the NAT's MACs (52:55, 52:56) learned")
    func natMACs() {
        var sw = EthernetSwitch(natPort: nat)
        #expect(sw.ingress(from: a, source: MACAddress(raw: 0x5255_0A00_0202), destination: .broadcast, now: 0) == .drop(.natMAC))
        #expect(sw.ingress(from: a, source: MACAddress(raw: 0x5256_0000_0002), destination: .broadcast, now: 0) == .drop(.natMAC))
        #expect(sw.port(of: MACAddress(raw: 0x5255_0A00_0202)) == nil)
        #expect(sw.ingress(from: nat, source: macNAT, destination: .broadcast, now: 1) == .flood)
        #expect(sw.port(of: macNAT) == nat)
        #expect(sw.ingress(from: a, source: macA, destination: .broadcast, now: 1) == .flood)
    }

    @Test("with the NAT's addresses known, a 52:55 or 52:56 MAC not derived from one is a guest's own (a random tap MAC)")
    func randomMACsStartingLikeTheNATs() {
        var sw = EthernetSwitch(natPort: nat)
        sw.natIdentity = .init(network: 0x0A00_0200, mask: 0xFFFF_FF00, suffixes6: [2, 3])
        let random = MACAddress(raw: 0x5255_D924_A9D1)  // 217.36.169.209: not in 10.0.2.0/24
        #expect(sw.ingress(from: a, source: random, destination: .broadcast, now: 0) == .flood)
        #expect(sw.port(of: random) == a)
        let random6 = MACAddress(raw: 0x5256_E3B6_3CFE)
        #expect(sw.ingress(from: b, source: random6, destination: .broadcast, now: 0) == .flood)
        #expect(sw.ingress(from: c, source: MACAddress(raw: 0x5255_0A00_0202), destination: .broadcast, now: 0) == .drop(.natMAC))
        #expect(sw.ingress(from: c, source: MACAddress(raw: 0x5255_0A00_02FE), destination: .broadcast, now: 0) == .drop(.natMAC),
                "any address of the network: libslirp answers ARP for guestfwd addresses too")
        #expect(sw.ingress(from: c, source: MACAddress(raw: 0x5256_0000_0003), destination: .broadcast, now: 0) == .drop(.natMAC),
                "52:56 and the end of the NAT's IPv6 DNS address")
        #expect(!EthernetSwitch.isNATMAC(random6, identity: sw.natIdentity) && EthernetSwitch.isNATMAC(random6))
    }
}
