import DataPlane
import FrameSwitch
import Testing

/// A sink that records frames for the uplink as well.
final class UplinkSink: FramePathSink {
    var delivered: [(PortID, [UInt8])] = []
    var toNAT: [[UInt8]] = []
    var uplink: [[UInt8]] = []
    var served: [[UInt8]] = []
    var flowLimits = FlowLimits(tcp: 16, udp: 16, icmp: 16, dnsTCP: 4)

    func deliver(_ frame: UnsafeRawBufferPointer, to port: PortID) { delivered.append((port, Array(frame))) }
    func send(_ frame: [UInt8], to port: PortID) {}
    func inputToNAT(_ frame: UnsafeRawBufferPointer) { toNAT.append(Array(frame)) }
    /// Plays slirpd's DHCP server: takes DHCP requests.
    func serveLocally(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, from port: PortID) -> Bool {
        let f = Array(frame)
        if f.count > 37, f[12] == 8, f[13] == 0, f[23] == 17, f[36] == 0, f[37] == 67 {
            served.append(f)
            return true
        }
        return false
    }
    func isShortOfDescriptors(now: Int64) -> Bool { false }
    func frameEvent(_ event: FramePathEvent) {}
    func toUplink(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) { uplink.append(Array(frame)) }
}

@Suite("VXLAN header")
struct VXLANHeaderTests {
    static let frame: [UInt8] = MACAddress.broadcast.bytes + MACAddress(raw: 0x0200_0000_0001).bytes + [0x08, 0x06] + [UInt8](repeating: 7, count: 28)

    @Test func encapsulatesWithTheIFlagAndVNI() {
        let out = Self.frame.withUnsafeBytes { VXLANHeader.encapsulate($0, vni: 0x12_3456) }
        #expect(Array(out[0..<8]) == [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0])
        #expect(Array(out[8...]) == Self.frame)
        let decoded = out.withUnsafeBytes { VXLANHeader.decode($0, vni: 0x12_3456) }
        #expect(decoded == .success(8..<out.count))
    }

    @Test func refusesBadFlagsOtherVNIsAndShortPackets() {
        var out = Self.frame.withUnsafeBytes { VXLANHeader.encapsulate($0, vni: 42) }
        #expect(out.withUnsafeBytes { VXLANHeader.decode($0, vni: 43) } == .failure(.wrongVNI(42)))
        out[0] = 0x00
        #expect(out.withUnsafeBytes { VXLANHeader.decode($0, vni: 42) } == .failure(.badFlags(0)))
        out[0] = 0x0C  // I plus the GPE P bit: another payload, not Ethernet
        #expect(out.withUnsafeBytes { VXLANHeader.decode($0, vni: 42) } == .failure(.badFlags(0x0C)))
        let short: [UInt8] = [0x08, 0, 0, 0, 0, 0, 42, 0] + [UInt8](repeating: 0, count: 13)
        #expect(short.withUnsafeBytes { VXLANHeader.decode($0, vni: 42) } == .failure(.tooShort))
        // Reserved bits are ignored on receipt (RFC 7348).
        var reserved = Self.frame.withUnsafeBytes { VXLANHeader.encapsulate($0, vni: 42) }
        reserved[1] = 0xFF
        reserved[7] = 0xFF
        #expect(reserved.withUnsafeBytes { VXLANHeader.decode($0, vni: 42) } == .success(8..<reserved.count))
    }

    @Test func sourcePortFollowsTheFlowAndStaysInRange() {
        func udp(_ sport: UInt16) -> [UInt8] {
            FramePathTests.udp(FramePathTests.macA, FramePathTests.macB, from: FramePathTests.ip(15), to: FramePathTests.ip(16), sourcePort: sport)
        }
        let ports = (40000..<40064).map { sport in udp(UInt16(sport)).withUnsafeBytes { VXLANHeader.sourcePort(for: $0) } }
        #expect(ports.allSatisfy { (32768...60999).contains($0) })
        // The same flow always gets the same port; different flows spread.
        #expect(udp(40000).withUnsafeBytes { VXLANHeader.sourcePort(for: $0) } == ports[0])
        #expect(Set(ports).count > 32)
    }
}

@Suite("VXLAN remote table")
struct VXLANRemoteTableTests {
    let mac = MACAddress(raw: 0x0200_0000_0042)

    @Test func learnsMovesAndAges() {
        var table = VXLANRemoteTable<String>(agingTime: 100, capacity: 2)
        #expect(table.learn(mac, on: "B", now: 0, isLocal: false) == .learned)
        #expect(table.remote(of: mac, now: 50) == "B")
        #expect(table.learn(mac, on: "B", now: 60, isLocal: false) == .refreshed)
        #expect(table.learn(mac, on: "C", now: 70, isLocal: false) == .moved)
        #expect(table.remote(of: mac, now: 169) == "C")
        #expect(table.remote(of: mac, now: 170) == nil)
        #expect(table.expire(now: 170) == 1)
        #expect(table.count == 0)
    }

    @Test func neverLearnsLocalNATOrGroupMACs() {
        var table = VXLANRemoteTable<String>()
        #expect(table.learn(mac, on: "B", now: 0, isLocal: true) == .refusedLocal)
        #expect(table.learn(MACAddress(raw: 0x5255_0A00_0202), on: "B", now: 0, isLocal: false) == .refusedLocal)
        #expect(table.learn(.broadcast, on: "B", now: 0, isLocal: false) == .refusedInvalid)
        #expect(table.learn(.zero, on: "B", now: 0, isLocal: false) == .refusedInvalid)
        #expect(table.count == 0)
    }

    @Test func capsTheTable() {
        var table = VXLANRemoteTable<String>(capacity: 1)
        #expect(table.learn(mac, on: "B", now: 0, isLocal: false) == .learned)
        #expect(table.learn(MACAddress(raw: 0x0200_0000_0043), on: "B", now: 0, isLocal: false) == .refusedFull)
    }

    @Test func replicatesUnknownAndGroupFramesToEveryRemote() {
        var table = VXLANRemoteTable<String>()
        _ = table.learn(mac, on: "B", now: 0, isLocal: false)
        #expect(table.targets(for: mac, now: 1, remotes: ["B", "C", "K"]) == ["B"])
        #expect(table.targets(for: .broadcast, now: 1, remotes: ["B", "C", "K"]) == ["B", "C", "K"])
        #expect(table.targets(for: MACAddress(raw: 0x3333_0000_0001), now: 1, remotes: ["B", "C"]) == ["B", "C"])
        #expect(table.targets(for: MACAddress(raw: 0x0200_0000_0099), now: 1, remotes: ["B", "C"]) == ["B", "C"])
        // A MAC learnt on a remote that was removed floods to those left.
        #expect(table.targets(for: mac, now: 1, remotes: ["C"]) == ["C"])
        #expect(table.forget(remote: "B") == 1)
    }

    @Test func aMulticastUnderlayFloodsToTheGroupAndUnicastsToLearntMembers() {
        var table = VXLANRemoteTable<String>(agingTime: 10)
        _ = table.learn(mac, on: "M1", now: 0, isLocal: false)
        let members: Set<String> = ["M1", "M2"]
        let flood = ["R", "G"]
        #expect(table.targets(for: mac, now: 1, reachable: members.contains, flood: flood) == ["M1"])
        #expect(table.targets(for: .broadcast, now: 1, reachable: members.contains, flood: flood) == flood)
        #expect(table.targets(for: MACAddress(raw: 0x0200_0000_0099), now: 1, reachable: members.contains, flood: flood) == flood)
        // Learnt on one no longer reachable, or aged out: back to the group.
        #expect(table.targets(for: mac, now: 1, reachable: { $0 == "M2" }, flood: flood) == flood)
        #expect(table.targets(for: mac, now: 10, reachable: members.contains, flood: flood) == flood)
    }

    @Test func groupMembersAreAdmittedOnceAndCapped() {
        var members = VXLANGroupMembers<String>(capacity: 2)
        #expect(members.admit("A", group: "G") == "A")
        #expect(members.admit("B", group: "G") == "B")
        #expect(members.admit("A", group: "G") == "A")
        // Full: a third sender is taken under the group and not remembered.
        #expect(members.admit("C", group: "G") == "G")
        #expect(!members.contains("C") && members.contains("A"))
        #expect(members.members == ["A", "B"])
    }
}

@Suite("Switch with a VXLAN uplink")
struct UplinkSwitchTests {
    let local = PortID(1), uplink = PortID(9), nat = PortID(0)
    let mac = MACAddress(raw: 0x0200_0000_0001)

    @Test func aRemoteCannotTakeALocalMACButAGuestThatMovedHereCan() {
        var sw = EthernetSwitch(natPort: nat)
        sw.uplinkPort = uplink
        #expect(sw.ingress(from: local, source: mac, destination: .broadcast, now: 0) == .flood)
        #expect(sw.ingress(from: uplink, source: mac, destination: .broadcast, now: 1) == .duplicate(owner: local))
        #expect(sw.ingress(from: uplink, source: MACAddress(raw: 0x5255_0A00_0202), destination: .broadcast, now: 1) == .drop(.natMAC))
        let remote = MACAddress(raw: 0x0200_0000_0002)
        #expect(sw.ingress(from: uplink, source: remote, destination: mac, now: 2) == .forward(local))
        // The remote guest migrates here: its MAC moves to the local port at once.
        #expect(sw.ingress(from: PortID(2), source: remote, destination: mac, now: 3) == .forward(local))
        #expect(sw.port(of: remote) == PortID(2))
    }

    @Test func theUplinkHasNoPerPortCap() {
        var sw = EthernetSwitch(macsPerPort: 2, natPort: nat)
        sw.uplinkPort = uplink
        for i in 0..<10 {
            #expect(sw.ingress(from: uplink, source: MACAddress(raw: 0x0200_0000_1000 + UInt64(i)), destination: .broadcast, now: 0) == .flood)
        }
        #expect(sw.learnedCount(on: uplink) == 10)
    }
}

@Suite("Frame path: distributed gateway")
struct DistributedGatewayTests {
    static let gatewayMAC = MACAddress(raw: 0x5255_0A00_0202)
    static let remoteMAC = MACAddress(raw: 0x0200_0000_00B0)
    let a = PortState(id: PortID(1), closesOnDuplicateMAC: true)
    let sink = UplinkSink()
    let now: Int64 = 1_000_000_000

    func path() -> FramePath {
        let path = FramePath(natPort: PortID(0), settings: FramePath.Settings(isolateGuests: false, ipv6: true,
                                                                              network: 0x0A00_0200, mask: 0xFFFF_FF00))
        path.security = PortSecurity(addresses: PortSecurity.Addresses(
            network: 0x0A00_0200, mask: 0xFFFF_FF00, reserved: [FramePathTests.gateway, FramePathTests.ip(3)], reserved6: []))
        path.addPort(a)
        path.uplinkPort = PortID(9)
        return path
    }

    func fromGuest(_ path: FramePath, _ frame: [UInt8]) {
        frame.withUnsafeBytes { path.fromGuest($0, from: a, now: now, sink: sink) }
    }

    func fromUplink(_ path: FramePath, _ frame: [UInt8]) -> FramePath.UplinkDrop? {
        frame.withUnsafeBytes { path.fromUplink($0, EthernetHeader($0)!, now: now, sink: sink) }
    }

    @Test func localGatewayTrafficNeverCrosses() {
        let p = path()
        // ARP for the gateway and for DNS: answered here, not flooded to other hosts.
        fromGuest(p, FramePathTests.arpRequest(from: FramePathTests.macA, sender: FramePathTests.ip(15), target: FramePathTests.gateway))
        fromGuest(p, FramePathTests.arpRequest(from: FramePathTests.macA, sender: FramePathTests.ip(15), target: FramePathTests.ip(3)))
        #expect(sink.toNAT.count == 2)
        // Unicast to the gateway's MAC.
        fromGuest(p, FramePathTests.udp(FramePathTests.macA, Self.gatewayMAC, from: FramePathTests.ip(15), to: 0x0808_0808))
        // A DHCP discover: served locally.
        fromGuest(p, FramePathTests.udp(FramePathTests.macA, .broadcast, from: 0, to: 0xFFFF_FFFF, port: 67, sourcePort: 68))
        #expect(sink.served.count == 1)
        #expect(sink.uplink.isEmpty)
        // ARP for another guest's address goes to every host; so does a broadcast.
        fromGuest(p, FramePathTests.arpRequest(from: FramePathTests.macA, sender: FramePathTests.ip(15), target: FramePathTests.ip(100)))
        #expect(sink.uplink.count == 1)
        #expect(p.uplinkSent == 1)
    }

    @Test func framesFromTheUplinkReachLocalGuestsOnly() {
        let p = path()
        fromGuest(p, FramePathTests.arpRequest(from: FramePathTests.macA, sender: FramePathTests.ip(15), target: FramePathTests.ip(100)))
        let natBefore = sink.toNAT.count
        let reply = FramePathTests.udp(Self.remoteMAC, FramePathTests.macA, from: FramePathTests.ip(100), to: FramePathTests.ip(15))
        #expect(fromUplink(p, reply) == nil)
        #expect(sink.delivered.map(\.0) == [PortID(1)])
        #expect(p.port(of: Self.remoteMAC) == PortID(9))
        // A broadcast from the uplink reaches the local guest and not libslirp.
        #expect(fromUplink(p, FramePathTests.udp(Self.remoteMAC, .broadcast, from: FramePathTests.ip(100), to: FramePathTests.ip(255))) == nil)
        #expect(sink.delivered.map(\.0) == [PortID(1), PortID(1)])
        #expect(sink.toNAT.count == natBefore)
        // A local guest's unicast to the remote MAC goes to the uplink, not flooded locally.
        fromGuest(p, FramePathTests.udp(FramePathTests.macA, Self.remoteMAC, from: FramePathTests.ip(15), to: FramePathTests.ip(100)))
        #expect(sink.uplink.count == 2)
    }

    @Test func theUplinkCannotReachTheGatewayOrSpoofLocalStations() {
        let p = path()
        fromGuest(p, FramePathTests.udp(FramePathTests.macA, .broadcast, from: FramePathTests.ip(15), to: FramePathTests.ip(255)))
        let natBefore = sink.toNAT.count
        let toGateway = FramePathTests.udp(Self.remoteMAC, Self.gatewayMAC, from: FramePathTests.ip(100), to: 0x0808_0808)
        #expect(fromUplink(p, toGateway) == .gateway)
        let arpGateway = FramePathTests.arpRequest(from: Self.remoteMAC, sender: FramePathTests.ip(100), target: FramePathTests.gateway)
        #expect(fromUplink(p, arpGateway) == .gateway)
        let dhcp = FramePathTests.udp(Self.remoteMAC, .broadcast, from: 0, to: 0xFFFF_FFFF, port: 67, sourcePort: 68)
        #expect(fromUplink(p, dhcp) == .dhcp)
        let offer = FramePathTests.udp(Self.remoteMAC, .broadcast, from: FramePathTests.gateway, to: 0xFFFF_FFFF, port: 68, sourcePort: 67)
        #expect(fromUplink(p, offer) == .dhcp)
        let stolen = FramePathTests.udp(FramePathTests.macA, .broadcast, from: FramePathTests.ip(100), to: FramePathTests.ip(255))
        #expect(fromUplink(p, stolen) == .localSource)
        let natMAC = FramePathTests.udp(Self.gatewayMAC, .broadcast, from: FramePathTests.ip(100), to: FramePathTests.ip(255))
        #expect(fromUplink(p, natMAC) == .localSource)
        let spoofGateway = FramePathTests.arpRequest(from: Self.remoteMAC, sender: FramePathTests.gateway, target: FramePathTests.ip(15))
        #expect(fromUplink(p, spoofGateway) == .spoofedAddress)
        #expect(sink.delivered.isEmpty)
        #expect(sink.toNAT.count == natBefore)
        #expect(p.uplinkDrops[.gateway] == 2 && p.uplinkDrops[.dhcp] == 2 && p.uplinkDrops[.localSource] == 2)
    }

    @Test func isolationKeepsEverythingOffTheUplink() {
        let p = path()
        p.settings.isolateGuests = true
        fromGuest(p, FramePathTests.udp(FramePathTests.macA, .broadcast, from: FramePathTests.ip(15), to: FramePathTests.ip(255)))
        #expect(sink.uplink.isEmpty)
        let frame = FramePathTests.udp(Self.remoteMAC, .broadcast, from: FramePathTests.ip(100), to: FramePathTests.ip(255))
        #expect(fromUplink(p, frame) == .notLocal)
    }
}
