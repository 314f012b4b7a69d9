import DataPlane
import FrameSwitch
import Testing

/// Collects what the frame path hands its owner; `echo` plays libslirp answering from
/// inside its input (its send_packet runs within slirp_input).
final class FakeSink: FramePathSink {
    var delivered: [(PortID, [UInt8])] = []
    var sent: [(PortID, [UInt8])] = []
    var toNAT: [[UInt8]] = []
    var events: [FramePathEvent] = []
    var localServices: (([UInt8]) -> Bool)?
    var flowLimits = FlowLimits(tcp: 16, udp: 16, icmp: 16, dnsTCP: 4)
    var echo: ((UnsafeRawBufferPointer) -> Void)?

    func deliver(_ frame: UnsafeRawBufferPointer, to port: PortID) { delivered.append((port, Array(frame))) }
    func send(_ frame: [UInt8], to port: PortID) { sent.append((port, frame)) }
    func inputToNAT(_ frame: UnsafeRawBufferPointer) {
        toNAT.append(Array(frame))
        echo?(frame)
    }
    func serveLocally(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, from port: PortID) -> Bool {
        localServices?(Array(frame)) ?? false
    }
    func isShortOfDescriptors(now: Int64) -> Bool { false }
    func frameEvent(_ event: FramePathEvent) { events.append(event) }

    func delivered(to port: PortID) -> [[UInt8]] { delivered.filter { $0.0 == port }.map(\.1) }
}

@Suite("Frame path")
struct FramePathTests {
    static let macA = MACAddress(raw: 0x5254_0000_000A)
    static let macB = MACAddress(raw: 0x5254_0000_000B)
    static let macC = MACAddress(raw: 0x5254_0000_000C)
    static let natMAC = MACAddress(raw: 0x5255_0A00_0202)
    static let gateway: UInt32 = 0x0A00_0202
    static func ip(_ d: UInt8) -> UInt32 { 0x0A00_0200 | UInt32(d) }

    let a = PortState(id: PortID(1), closesOnDuplicateMAC: true)
    let b = PortState(id: PortID(2), closesOnDuplicateMAC: false)
    let c = PortState(id: PortID(3), closesOnDuplicateMAC: false)
    let sink = FakeSink()
    let now: Int64 = 1_000_000_000

    func path(isolate: Bool = false) -> FramePath {
        let path = FramePath(natPort: PortID(0), settings: FramePath.Settings(isolateGuests: isolate, ipv6: true,
                                                                              network: 0x0A00_0200, mask: 0xFFFF_FF00))
        path.security = PortSecurity(addresses: PortSecurity.Addresses(
            network: 0x0A00_0200, mask: 0xFFFF_FF00, reserved: [Self.gateway, Self.ip(3)], reserved6: []))
        for port in [a, b, c] { path.addPort(port) }
        return path
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }

    /// A UDP datagram in IPv4 (header checksum right, UDP checksum 0).
    static func udp(_ source: MACAddress, _ destination: MACAddress, from sourceIP: UInt32, to destinationIP: UInt32,
                    port: UInt16 = 9999, sourcePort: UInt16 = 40000) -> [UInt8] {
        let payload: [UInt8] = [1, 2, 3, 4]
        var ip: [UInt8] = [0x45, 0] + be16(UInt16(28 + payload.count)) + [0, 0, 0x40, 0, 64, 17, 0, 0]
            + bigEndianBytes(sourceIP) + bigEndianBytes(destinationIP)
        IPChecksum.store(in: &ip, at: 10)
        return destination.bytes + source.bytes + [0x08, 0x00] + ip + be16(sourcePort) + be16(port) + be16(UInt16(8 + payload.count))
            + [0, 0] + payload
    }

    static func arpRequest(from mac: MACAddress, sender: UInt32, target: UInt32) -> [UInt8] {
        MACAddress.broadcast.bytes + mac.bytes + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]
            + mac.bytes + bigEndianBytes(sender) + MACAddress.zero.bytes + bigEndianBytes(target)
    }

    func fromGuest(_ path: FramePath, _ port: PortState, _ frame: [UInt8]) {
        frame.withUnsafeBytes { path.fromGuest($0, from: port, now: now, sink: sink) }
    }

    func fromNAT(_ path: FramePath, _ frame: [UInt8]) {
        frame.withUnsafeBytes { path.fromNAT($0, now: now, sink: sink) }
    }

    /// The NAT announces itself (its ARP request, flooded to every guest), so the switch knows its MAC.
    func natSpeaks(_ path: FramePath) {
        fromNAT(path, Self.arpRequest(from: Self.natMAC, sender: Self.gateway, target: Self.ip(99)))
        sink.delivered.removeAll()
    }

    @Test("a guest's frame for the gateway goes to libslirp and to no guest; its MAC is learnt")
    func guestToNAT() {
        let path = path()
        natSpeaks(path)
        let frame = Self.udp(Self.macA, Self.natMAC, from: Self.ip(15), to: Self.gateway)
        fromGuest(path, a, frame)
        #expect(sink.toNAT == [frame])
        #expect(sink.delivered.isEmpty)
        #expect(a.mac == Self.macA)
        #expect(sink.events == [.macLearned(a.id, Self.macA)])
        #expect(a.flows.udpCount == 1)
    }

    @Test("a broadcast from a guest floods to the other guests and the NAT, never back to its sender")
    func flood() {
        let path = path()
        let frame = Self.arpRequest(from: Self.macA, sender: Self.ip(15), target: Self.ip(16))
        fromGuest(path, a, frame)
        #expect(sink.toNAT == [frame])
        #expect(sink.delivered(to: b.id) == [frame])
        #expect(sink.delivered(to: c.id) == [frame])
        #expect(sink.delivered(to: a.id).isEmpty)
    }

    /// An ICMPv6 message of `type` from macA's link-local address to the group `group` (ff02::group).
    static func icmp6(to group: UInt8, mac: MACAddress, type: UInt8) -> [UInt8] {
        let groupMAC = group == 0xFB ? MACAddress(raw: 0x3333_FF00_000B) : MACAddress(raw: 0x3333_0000_0000 | UInt64(group))
        let source: [UInt8] = [0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0, 0xFF, 0xFE, 0, 0, 0x0A]
        let destination: [UInt8] = group == 0xFB ? [0xFF, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xFF, 0, 0, 0x0B]
            : [0xFF, 0x02] + [UInt8](repeating: 0, count: 13) + [group]
        let body: [UInt8] = [type, 0, 0, 0, 0, 0, 0, 0]
        return groupMAC.bytes + mac.bytes + [0x86, 0xDD, 0x60, 0, 0, 0] + be16(UInt16(body.count)) + [58, 255]
            + source + destination + body
    }

    @Test("router solicitations and MLD reports go to the gateway only; other IPv6 multicast still floods")
    func routersOnlyGroups() {
        let path = path()
        for (group, type) in [(UInt8(2), UInt8(133)), (UInt8(0x16), UInt8(143))] {
            let frame = Self.icmp6(to: group, mac: Self.macA, type: type)
            fromGuest(path, a, frame)
            #expect(sink.toNAT.last == frame, "ff02::\(group) reaches the gateway")
            #expect(sink.delivered.isEmpty, "ff02::\(group) is not flooded to the guests")
        }
        // A neighbour solicitation to a solicited-node group: every guest may own the address.
        let solicitation = Self.icmp6(to: 0xFB, mac: Self.macA, type: 135)
        fromGuest(path, a, solicitation)
        #expect(sink.delivered(to: b.id) == [solicitation])
        #expect(sink.delivered(to: c.id) == [solicitation])
    }

    @Test("an ARP request for a known guest address goes to its holder alone; for the gateway to the NAT alone")
    func arpSuppression() {
        let path = path()
        // B and C make themselves known (their own requests for an unknown address flood).
        fromGuest(path, b, Self.arpRequest(from: Self.macB, sender: Self.ip(16), target: Self.ip(99)))
        fromGuest(path, c, Self.arpRequest(from: Self.macC, sender: Self.ip(17), target: Self.ip(99)))
        sink.delivered.removeAll()
        sink.toNAT.removeAll()
        let forB = Self.arpRequest(from: Self.macA, sender: Self.ip(15), target: Self.ip(16))
        fromGuest(path, a, forB)
        #expect(sink.delivered(to: b.id) == [forB])
        #expect(sink.delivered(to: c.id).isEmpty)
        #expect(sink.toNAT == [forB], "libslirp still sees every request (it learns the sender)")
        sink.delivered.removeAll()
        fromGuest(path, a, Self.arpRequest(from: Self.macA, sender: Self.ip(15), target: Self.gateway))
        #expect(sink.delivered.isEmpty, "the gateway's address is the NAT's: no guest gets the request")
        // An address nobody is known to hold still floods.
        let unknown = Self.arpRequest(from: Self.macA, sender: Self.ip(15), target: Self.ip(40))
        fromGuest(path, a, unknown)
        #expect(sink.delivered(to: b.id) == [unknown])
        #expect(sink.delivered(to: c.id) == [unknown])
    }

    @Test("guest to guest unicast is forwarded to the port holding the MAC, unless isolate=on")
    func guestToGuest() {
        for isolate in [false, true] {
            let sink = FakeSink()
            let path = path(isolate: isolate)
            Self.arpRequest(from: Self.macB, sender: Self.ip(16), target: Self.ip(15)).withUnsafeBytes {
                path.fromGuest($0, from: b, now: now, sink: sink)
            }
            #expect(sink.delivered(to: a.id).count == (isolate ? 0 : 1), "isolate=\(isolate): broadcast")
            sink.delivered.removeAll()
            sink.toNAT.removeAll()
            let frame = Self.udp(Self.macA, Self.macB, from: Self.ip(15), to: Self.ip(16))
            let drops = a.drops
            frame.withUnsafeBytes { path.fromGuest($0, from: a, now: now, sink: sink) }
            #expect(sink.toNAT.isEmpty)
            if isolate {
                #expect(sink.delivered.isEmpty)
                #expect(a.drops == drops + 1)
            } else {
                #expect(sink.delivered(to: b.id) == [frame])
                #expect(sink.delivered.count == 1)
            }
        }
    }

    @Test("a frame claiming another guest's address is dropped, counted and reported with its holder")
    func portSecurity() {
        let path = path()
        natSpeaks(path)
        fromGuest(path, a, Self.udp(Self.macA, Self.natMAC, from: Self.ip(15), to: Self.gateway))
        sink.toNAT.removeAll()
        fromGuest(path, b, Self.udp(Self.macB, Self.natMAC, from: Self.ip(15), to: Self.gateway))
        #expect(sink.toNAT.isEmpty)
        #expect(b.drops == 1)
        #expect(path.securityDrops[.takenAddress] == 1)
        #expect(sink.events.last == .securityDrop(b.id, .takenAddress, .ipv4(Self.ip(15)), owner: a.id, count: 1))
        // And the gateway's own address is no guest's to send from.
        fromGuest(path, c, Self.udp(Self.macC, Self.natMAC, from: Self.gateway, to: Self.ip(3)))
        #expect(sink.toNAT.isEmpty)
        #expect(path.securityDrops[.reservedAddress] == 1)
    }

    @Test("a second guest on a MAC another holds is refused once, then muted; a stream guest is to be closed")
    func duplicateMAC() {
        let path = path()
        let frame = Self.arpRequest(from: Self.macA, sender: Self.ip(15), target: Self.ip(16))
        fromGuest(path, a, frame)
        sink.events.removeAll()
        sink.delivered.removeAll()
        fromGuest(path, b, frame)
        fromGuest(path, b, frame)
        #expect(sink.events == [.duplicateMAC(b.id, Self.macA, owner: a.id)])
        #expect(b.refusedFor == Self.macA)
        #expect(b.drops == 2)
        #expect(sink.delivered.isEmpty)
        // A stream guest is not muted: the owner closes it on the event.
        fromGuest(path, c, Self.arpRequest(from: Self.macC, sender: Self.ip(17), target: Self.ip(16)))
        let stream = PortState(id: PortID(4), closesOnDuplicateMAC: true)
        path.addPort(stream)
        sink.events.removeAll()
        fromGuest(path, stream, Self.arpRequest(from: Self.macC, sender: Self.ip(17), target: Self.ip(16)))
        #expect(sink.events == [.duplicateMAC(stream.id, Self.macC, owner: c.id)])
        #expect(stream.refusedFor == nil)
        // Once the holder has gone, the muted guest owns the MAC.
        path.removePort(a.id)
        sink.events.removeAll()
        fromGuest(path, b, frame)
        fromGuest(path, b, frame)
        #expect(b.refusedFor == nil)
        #expect(b.mac == Self.macA)
        #expect(sink.events.contains(.macReclaimed(b.id, Self.macA)))
    }

    @Test("the NAT's unicast goes to the port holding the destination address, whatever the MAC")
    func natToHolder() {
        let path = path()
        fromGuest(path, a, Self.udp(Self.macA, Self.natMAC, from: Self.ip(15), to: Self.gateway))
        fromGuest(path, b, Self.udp(Self.macB, Self.natMAC, from: Self.ip(16), to: Self.gateway))
        sink.delivered.removeAll()
        let toA = Self.udp(Self.natMAC, Self.macA, from: Self.gateway, to: Self.ip(15), port: 40000)
        fromNAT(path, toA)
        #expect(sink.delivered(to: a.id) == [toA])
        // Addressed to B's MAC but A's address: it goes to A, the address's holder.
        let misaddressed = Self.udp(Self.natMAC, Self.macB, from: Self.gateway, to: Self.ip(15), port: 40000)
        fromNAT(path, misaddressed)
        #expect(sink.delivered(to: a.id) == [toA, misaddressed])
        #expect(sink.delivered(to: b.id).isEmpty)
    }

    @Test("the NAT's unicast to an address and MAC nobody holds is dropped, not flooded")
    func unknownUnicast() {
        let path = path()
        fromNAT(path, Self.udp(Self.natMAC, MACAddress(raw: 0x5254_0000_0099), from: Self.gateway, to: Self.ip(99)))
        #expect(sink.delivered.isEmpty)
        #expect(path.natUnknownUnicastDropped == 1)
    }

    @Test("libslirp's ARP request for a guest's address is answered for it, queued until injectPending")
    func arpProxy() {
        let path = path()
        fromGuest(path, a, Self.arpRequest(from: Self.macA, sender: Self.ip(15), target: Self.gateway))
        sink.toNAT.removeAll()
        sink.delivered.removeAll()
        fromNAT(path, Self.arpRequest(from: Self.natMAC, sender: Self.gateway, target: Self.ip(15)))
        #expect(sink.delivered.isEmpty)
        #expect(sink.toNAT.isEmpty)
        #expect(path.hasPendingForNAT)
        path.injectPending(now: 0, sink)
        #expect(sink.toNAT.count == 1)
        let reply = sink.toNAT.first.flatMap { ARPPacket.parse(frame: $0) }
        #expect(reply?.operation == ARPPacket.reply)
        #expect(reply?.senderMAC == Self.macA)
        #expect(reply?.senderIP == Self.ip(15))
        #expect(path.arpProxied == 1)
        // A departed guest's address is asked of every guest again.
        path.removePort(a.id)
        fromNAT(path, Self.arpRequest(from: Self.natMAC, sender: Self.gateway, target: Self.ip(15)))
        #expect(sink.delivered.count == 2)
    }

    @Test("a frame slirpd's own services take does not reach libslirp")
    func servedLocally() {
        let path = path()
        sink.localServices = { _ in true }
        fromGuest(path, a, Self.udp(Self.macA, MACAddress.broadcast, from: 0, to: 0xFFFF_FFFF, port: 67))
        #expect(sink.toNAT.isEmpty)
        #expect(sink.delivered.isEmpty)
    }

    @Test("a new flow (libslirp's: a guest UDP source port) past the guest's cap is refused and reported; libslirp never sees it")
    func flowCap() {
        let path = path()
        sink.flowLimits = FlowLimits(tcp: 16, udp: 1, icmp: 16, dnsTCP: 4)
        natSpeaks(path)
        fromGuest(path, a, Self.udp(Self.macA, Self.natMAC, from: Self.ip(15), to: Self.gateway, sourcePort: 1000))
        fromGuest(path, a, Self.udp(Self.macA, Self.natMAC, from: Self.ip(15), to: Self.gateway, sourcePort: 1001))
        #expect(sink.toNAT.count == 1)
        #expect(sink.events.last == .flowRefused(a.id, .udp, shortage: false))
    }

    @Test("libslirp answering from inside its input re-enters the frame path safely")
    func reentry() {
        let path = path()
        natSpeaks(path)
        sink.echo = { [sink, now] frame in
            // libslirp's send_packet, called within slirp_input: the reply goes to the guest at once.
            let reply = Self.udp(Self.natMAC, Self.macA, from: Self.gateway, to: Self.ip(15), port: 40000)
            _ = frame
            reply.withUnsafeBytes { path.fromNAT($0, now: now, sink: sink) }
        }
        fromGuest(path, a, Self.udp(Self.macA, Self.natMAC, from: Self.ip(15), to: Self.gateway))
        #expect(sink.toNAT.count == 1)
        #expect(sink.delivered(to: a.id).count == 1)
        #expect(a.flows.udpCount == 1)
    }

    @Test("with isolate=on the NAT's ARP request for a held address goes to its holder only; otherwise to every guest")
    func solicitationRouting() {
        for isolate in [false, true] {
            let sink = FakeSink()
            let path = path(isolate: isolate)
            Self.udp(Self.macA, Self.natMAC, from: Self.ip(15), to: Self.gateway).withUnsafeBytes {
                path.fromGuest($0, from: a, now: now, sink: sink)
            }
            // A falls silent past the MAC aging time: the proxy no longer answers for it,
            // but port security still binds 10.0.2.15 to its port.
            path.housekeeping(now: now + 301_000_000_000)
            sink.delivered.removeAll()
            Self.arpRequest(from: Self.natMAC, sender: Self.gateway, target: Self.ip(15)).withUnsafeBytes {
                path.fromNAT($0, now: now + 302_000_000_000, sink: sink)
            }
            #expect(path.arpProxied == 0)
            #expect(sink.delivered.map(\.0).sorted() == (isolate ? [a.id] : [a.id, b.id, c.id]), "isolate=\(isolate)")
        }
    }

    @Test("a guest sending from the NAT's own MAC is refused by port security")
    func natMACFromGuest() {
        let path = path()
        fromGuest(path, a, Self.udp(Self.natMAC, MACAddress.broadcast, from: Self.ip(15), to: Self.gateway))
        #expect(sink.toNAT.isEmpty)
        #expect(sink.delivered.isEmpty)
        #expect(path.securityDrops[.natMAC] == 1)
        #expect(a.drops == 1)
        #expect(a.mac == nil)
    }
}
