import DataPlane
import FrameSwitch
import TestSupport
import Testing

/// Frames between guest 10.0.2.15 (or fec0::15) and the NAT, with real checksums.
private enum Wire {
    static let guestMAC: [UInt8] = [0x52, 0x54, 0, 0, 0, 0x42]
    static let natMAC: [UInt8] = [0x52, 0x55, 10, 0, 2, 2]
    static let guest4: [UInt8] = [10, 0, 2, 15]
    static let host4: [UInt8] = [10, 0, 2, 2]
    static let dns4: [UInt8] = [10, 0, 2, 3]
    static let guest6: [UInt8] = [0xFE, 0xC0] + [UInt8](repeating: 0, count: 13) + [0x15]
    static let host6: [UInt8] = [0xFE, 0xC0] + [UInt8](repeating: 0, count: 13) + [0x02]

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func be32(_ v: UInt32) -> [UInt8] { be16(UInt16(v >> 16)) + be16(UInt16(v & 0xFFFF)) }

    static func ipv4(_ proto: UInt8, from source: [UInt8], to destination: [UInt8], _ payload: [UInt8],
                     toGuest: Bool = false, checksumOffset: Int? = nil) -> [UInt8] {
        var body = payload
        if let at = checksumOffset {
            let pseudo = source + destination + [0, proto] + be16(UInt16(body.count))
            IPChecksum.store(in: &body, at: at, pseudoHeader: proto == 1 ? [] : pseudo)
        }
        var ip: [UInt8] = [0x45, 0] + be16(UInt16(20 + body.count)) + [0, 0, 0x40, 0, 64, proto, 0, 0] + source + destination
        IPChecksum.store(in: &ip, at: 10)
        let ethernet = toGuest ? guestMAC + natMAC : natMAC + guestMAC
        return ethernet + [0x08, 0x00] + ip + body
    }

    static func ipv6(_ proto: UInt8, from source: [UInt8], to destination: [UInt8], _ payload: [UInt8],
                     toGuest: Bool = false, checksumOffset: Int) -> [UInt8] {
        var body = payload
        IPChecksum.store(in: &body, at: checksumOffset, pseudoHeader: source + destination + be32(UInt32(body.count)) + [0, 0, 0, proto])
        let ethernet = toGuest ? guestMAC + natMAC : natMAC + guestMAC
        return ethernet + [0x86, 0xDD, 0x60, 0, 0, 0] + be16(UInt16(body.count)) + [proto, 64] + source + destination + body
    }

    static func tcpHeader(_ sport: UInt16, _ dport: UInt16, seq: UInt32, ack: UInt32, flags: UInt8, window: UInt16 = 65535,
                          payload: [UInt8] = []) -> [UInt8] {
        be16(sport) + be16(dport) + be32(seq) + be32(ack) + [5 << 4, flags] + be16(window) + [0, 0, 0, 0] + payload
    }

    /// Guest to NAT: guestPort -> 10.0.2.2 (or `to`):natPort.
    static func tcp(_ guestPort: UInt16, _ natPort: UInt16 = 80, to nat: [UInt8] = host4, seq: UInt32 = 1000, ack: UInt32 = 0,
                    flags: UInt8 = 0x02, payload: [UInt8] = [], badChecksum: Bool = false) -> [UInt8] {
        var frame = ipv4(6, from: guest4, to: nat, tcpHeader(guestPort, natPort, seq: seq, ack: ack, flags: flags, payload: payload),
                         checksumOffset: 16)
        if badChecksum { frame[50] ^= 0xFF }
        return frame
    }

    /// NAT to guest.
    static func tcpToGuest(_ guestPort: UInt16, _ natPort: UInt16 = 80, from nat: [UInt8] = host4, seq: UInt32 = 5000,
                           ack: UInt32, flags: UInt8, window: UInt16 = 65535) -> [UInt8] {
        ipv4(6, from: nat, to: guest4, tcpHeader(natPort, guestPort, seq: seq, ack: ack, flags: flags, window: window),
             toGuest: true, checksumOffset: 16)
    }

    static func udp(_ guestPort: UInt16, _ natPort: UInt16 = 9999, payload: [UInt8] = [1, 2, 3, 4]) -> [UInt8] {
        ipv4(17, from: guest4, to: host4, be16(guestPort) + be16(natPort) + be16(UInt16(8 + payload.count)) + [0, 0] + payload,
             checksumOffset: 6)
    }

    static func udpToGuest(_ guestPort: UInt16, _ natPort: UInt16 = 9999) -> [UInt8] {
        ipv4(17, from: host4, to: guest4, be16(natPort) + be16(guestPort) + be16(12) + [0, 0, 9, 9, 9, 9], toGuest: true,
             checksumOffset: 6)
    }

    static func echo(id: UInt16, seq: UInt16, reply: Bool = false) -> [UInt8] {
        let icmp = [reply ? 0 : 8, 0, 0, 0] + be16(id) + be16(seq) + [0x61, 0x62]
        return reply ? ipv4(1, from: host4, to: guest4, icmp, toGuest: true, checksumOffset: 2)
            : ipv4(1, from: guest4, to: host4, icmp, checksumOffset: 2)
    }

    /// The one's complement sum is all ones when the checksums in `bytes` are right.
    static func sumsToOnes(_ bytes: [UInt8]) -> Bool { IPChecksum.sum(bytes) == 0xFFFF }
}

@Suite("Flow budget of a guest")
struct FlowBudgetTests {
    let limits = FlowLimits(tcp: 3, udp: 2, icmp: 2, dnsTCP: 1)
    let second: Int64 = 1_000_000_000

    func budget() -> FlowBudget { FlowBudget(dnsAddress: 0x0A00_0203) }

    @discardableResult
    func admit(_ b: inout FlowBudget, _ frame: [UInt8], at now: Int64 = 0, shortage: Bool = false) -> FlowBudget.Verdict {
        b.admit(frame, now: now, limits: limits) { shortage }
    }

    @Test("SYNs past the TCP cap get a RST|ACK from the destination, with valid checksums")
    func tcpCapAndReset() throws {
        var b = budget()
        for port: UInt16 in 40000..<40003 { #expect(admit(&b, Wire.tcp(port)) == .pass) }
        #expect(b.tcpCount == 3)
        // A retransmitted SYN of an open flow still passes.
        #expect(admit(&b, Wire.tcp(40001)) == .pass)
        let verdict = admit(&b, Wire.tcp(40003, seq: 77))
        guard case .refuse(.tcp, shortage: false, let reply?) = verdict else {
            Issue.record("expected a refusal, got \(verdict)")
            return
        }
        #expect(b.tcpCount == 3)
        #expect(b.refusedByCap[.tcp] == 1)
        #expect(reply.count == 54)
        #expect(Array(reply[0..<6]) == Wire.guestMAC && Array(reply[6..<12]) == Wire.natMAC)
        #expect(Array(reply[26..<30]) == Wire.host4 && Array(reply[30..<34]) == Wire.guest4)
        #expect(Array(reply[34..<38]) == Wire.be16(80) + Wire.be16(40003))
        #expect(Array(reply[42..<46]) == Wire.be32(78), "ACKs the SYN")
        #expect(reply[47] == 0x14, "RST|ACK")
        #expect(Wire.sumsToOnes(Array(reply[14..<34])), "IPv4 header checksum")
        #expect(Wire.sumsToOnes(Array(reply[26..<34]) + [0, 6, 0, 20] + Array(reply[34...])), "TCP checksum")
        // Segments of open flows are untouched.
        #expect(admit(&b, Wire.tcp(40000, seq: 1001, ack: 1, flags: 0x18, payload: [1, 2, 3])) == .pass)
    }

    @Test("UDP past its cap gets ICMP port unreachable quoting the datagram; known ports still pass")
    func udpCapAndUnreachable() throws {
        var b = budget()
        #expect(admit(&b, Wire.udp(5000)) == .pass)
        #expect(admit(&b, Wire.udp(5001)) == .pass)
        // libslirp has one socket per guest port: a new destination from it is no new flow.
        #expect(admit(&b, Wire.udp(5000, 7777)) == .pass)
        let frame = Wire.udp(5002)
        guard case .refuse(.udp, shortage: false, let reply?) = admit(&b, frame) else {
            Issue.record("expected a refusal")
            return
        }
        #expect(b.udpCount == 2)
        #expect(Array(reply[0..<6]) == Wire.guestMAC && Array(reply[6..<12]) == Wire.natMAC)
        #expect(reply[23] == 1, "ICMP")
        #expect(Array(reply[26..<30]) == Wire.host4 && Array(reply[30..<34]) == Wire.guest4)
        #expect(reply[34] == 3 && reply[35] == 3, "port unreachable")
        #expect(Array(reply[42...]) == Array(frame[14..<(14 + 28)]), "quotes the IP header and 8 bytes")
        #expect(Wire.sumsToOnes(Array(reply[14..<34])))
        #expect(Wire.sumsToOnes(Array(reply[34...])), "ICMP checksum")
        #expect(admit(&b, Wire.udp(5001)) == .pass)
    }

    @Test("an IPv6 UDP refusal is ICMPv6 port unreachable with a valid checksum")
    func udp6Refusal() throws {
        var b = budget()
        func udp6(_ port: UInt16) -> [UInt8] {
            Wire.ipv6(17, from: Wire.guest6, to: Wire.host6, Wire.be16(port) + Wire.be16(53) + Wire.be16(10) + [0, 0, 1, 2], checksumOffset: 6)
        }
        #expect(admit(&b, udp6(1)) == .pass)
        #expect(admit(&b, udp6(2)) == .pass)
        guard case .refuse(.udp, _, let reply?) = admit(&b, udp6(3)) else {
            Issue.record("expected a refusal")
            return
        }
        #expect(reply[12] == 0x86 && reply[13] == 0xDD && reply[20] == 58)
        #expect(reply[54] == 1 && reply[55] == 4)
        let length = Int(reply[18]) << 8 | Int(reply[19])
        #expect(length == reply.count - 54)
        let pseudo = Array(reply[22..<54]) + Wire.be32(UInt32(length)) + [0, 0, 0, 58]
        #expect(Wire.sumsToOnes(pseudo + Array(reply[54...])))
    }

    @Test("echo requests past the ICMP cap are dropped; a reply frees one")
    func icmpCap() {
        var b = budget()
        #expect(admit(&b, Wire.echo(id: 1, seq: 1)) == .pass)
        #expect(admit(&b, Wire.echo(id: 1, seq: 2)) == .pass)
        #expect(admit(&b, Wire.echo(id: 1, seq: 3)) == .refuse(.icmp, shortage: false, reply: nil))
        b.observe(toGuest: Wire.echo(id: 1, seq: 1, reply: true), now: 0)
        #expect(b.icmpCount == 1)
        #expect(admit(&b, Wire.echo(id: 1, seq: 3)) == .pass)
    }

    @Test("a RST from the NAT, or an acceptable one from the guest, ends a TCP flow")
    func resets() {
        var b = budget()
        admit(&b, Wire.tcp(40000))
        admit(&b, Wire.tcp(40001))
        b.observe(toGuest: Wire.tcpToGuest(40000, ack: 0, flags: 0x14), now: 0)
        #expect(b.tcpCount == 1)
        b.observe(toGuest: Wire.tcpToGuest(40001, ack: 1001, flags: 0x12, window: 100), now: 0)
        // Out of libslirp's window, or with a bad checksum: libslirp ignores it, so does the budget.
        admit(&b, Wire.tcp(40001, seq: 5, flags: 0x04))
        admit(&b, Wire.tcp(40001, seq: 1001, flags: 0x04, badChecksum: true))
        #expect(b.tcpCount == 1)
        admit(&b, Wire.tcp(40001, seq: 1050, flags: 0x04))
        #expect(b.tcpCount == 0)
    }

    @Test("libslirp closing first: FIN both ways, the guest's acknowledged, ends a flow after TIME_WAIT")
    func finBothWaysNATFirst() {
        var b = budget()
        admit(&b, Wire.tcp(40000))
        b.observe(toGuest: Wire.tcpToGuest(40000, ack: 1001, flags: 0x12), now: 0)
        b.observe(toGuest: Wire.tcpToGuest(40000, seq: 5001, ack: 1001, flags: 0x11), now: 0)
        admit(&b, Wire.tcp(40000, seq: 1001, ack: 5002, flags: 0x11))
        b.observe(toGuest: Wire.tcpToGuest(40000, seq: 5002, ack: 1002, flags: 0x10), now: second)
        b.expire(now: second + FlowBudget.timeWait - 1)
        #expect(b.tcpCount == 1, "libslirp's TIME_WAIT still holds it")
        b.expire(now: second + FlowBudget.timeWait)
        #expect(b.tcpCount == 0)
    }

    @Test("the guest closing first: its acceptable ACK of libslirp's FIN ends the flow at once (LAST_ACK)")
    func finBothWaysGuestFirst() {
        var b = budget()
        admit(&b, Wire.tcp(40000))
        b.observe(toGuest: Wire.tcpToGuest(40000, ack: 1001, flags: 0x12), now: 0)
        admit(&b, Wire.tcp(40000, seq: 1001, ack: 5001, flags: 0x11))
        b.observe(toGuest: Wire.tcpToGuest(40000, seq: 5001, ack: 1002, flags: 0x11), now: second)
        admit(&b, Wire.tcp(40000, seq: 200_000, ack: 5002, flags: 0x10))
        #expect(b.tcpCount == 1, "an ACK outside libslirp's window does not end LAST_ACK")
        admit(&b, Wire.tcp(40000, seq: 1002, ack: 5002, flags: 0x10, badChecksum: true))
        #expect(b.tcpCount == 1, "nor one with a bad checksum")
        admit(&b, Wire.tcp(40000, seq: 1002, ack: 5001, flags: 0x10))
        #expect(b.tcpCount == 1, "nor one that does not cover libslirp's FIN")
        admit(&b, Wire.tcp(40000, seq: 1002, ack: 5002, flags: 0x10))
        #expect(b.tcpCount == 0)
    }

    @Test("a FIN libslirp never acknowledged does not end the flow")
    func unacknowledgedFin() {
        var b = budget()
        admit(&b, Wire.tcp(40000))
        b.observe(toGuest: Wire.tcpToGuest(40000, ack: 1001, flags: 0x12), now: 0)
        admit(&b, Wire.tcp(40000, seq: 9999, ack: 5001, flags: 0x11))
        b.observe(toGuest: Wire.tcpToGuest(40000, seq: 5001, ack: 1001, flags: 0x11), now: 0)
        b.expire(now: 1000 * second)
        #expect(b.tcpCount == 1)
    }

    @Test("flows age out on libslirp's timers")
    func ageing() {
        var b = budget()
        admit(&b, Wire.tcp(40000))                          // never established: 75 s
        admit(&b, Wire.tcp(40001))
        b.observe(toGuest: Wire.tcpToGuest(40001, ack: 1001, flags: 0x12), now: 0)  // established: no limit
        admit(&b, Wire.udp(5000))                           // 240 s
        admit(&b, Wire.udp(5001, 53))
        b.observe(toGuest: Wire.udpToGuest(5001, 53), now: second)   // DNS reply: 10 s
        admit(&b, Wire.echo(id: 9, seq: 9))                 // 240 s
        b.expire(now: 12 * second)
        #expect(b.udpCount == 1)
        #expect(b.tcpCount == 2)
        b.expire(now: FlowBudget.handshakeTimeout)
        #expect(b.tcpCount == 1)
        b.expire(now: FlowBudget.udpExpiry)
        #expect(b.udpCount == 0 && b.icmpCount == 0)
        b.expire(now: 100_000 * second)
        #expect(b.tcpCount == 1)
    }

    @Test("a full cap frees itself once flows have aged out")
    func capAfterExpiry() {
        var b = budget()
        admit(&b, Wire.udp(1), at: 0)
        admit(&b, Wire.udp(2), at: 0)
        #expect(admit(&b, Wire.udp(3), at: 0) != .pass)
        #expect(admit(&b, Wire.udp(3), at: FlowBudget.udpExpiry) == .pass)
    }

    @Test("at a cap, flows are looked over for expiry at most once a second")
    func capExpiryIsPaced() {
        var b = budget()
        admit(&b, Wire.udp(1), at: 0)
        admit(&b, Wire.udp(2), at: 0)
        #expect(admit(&b, Wire.udp(3), at: FlowBudget.udpExpiry - 1) != .pass)
        #expect(admit(&b, Wire.udp(3), at: FlowBudget.udpExpiry) != .pass, "looked over less than a second ago")
        #expect(admit(&b, Wire.udp(3), at: FlowBudget.udpExpiry - 1 + second) == .pass)
    }

    @Test("DNS over TCP has its own share inside the TCP cap")
    func dnsShare() {
        var b = budget()
        #expect(admit(&b, Wire.tcp(40000, 53, to: Wire.dns4)) == .pass)
        guard case .refuse(.dnsTCP, shortage: false, _?) = admit(&b, Wire.tcp(40001, 53, to: Wire.dns4)) else {
            Issue.record("expected a DNS refusal")
            return
        }
        #expect(b.dnsTCPCount == 1)
        #expect(admit(&b, Wire.tcp(40002, 53)) == .pass, "port 53 elsewhere is ordinary TCP")
        b.observe(toGuest: Wire.tcpToGuest(40000, 53, from: Wire.dns4, ack: 0, flags: 0x14), now: 0)
        #expect(b.dnsTCPCount == 0)
        #expect(admit(&b, Wire.tcp(40001, 53, to: Wire.dns4)) == .pass)
    }

    @Test("short of descriptors, new flows are refused but open ones pass")
    func shortage() {
        var b = budget()
        admit(&b, Wire.tcp(40000))
        guard case .refuse(.tcp, shortage: true, _?) = admit(&b, Wire.tcp(40001), shortage: true) else {
            Issue.record("expected a refusal for shortage")
            return
        }
        #expect(b.refusedForShortage == 1)
        #expect(admit(&b, Wire.tcp(40000, seq: 1001, flags: 0x10), shortage: true) == .pass)
    }

    @Test("one guest at its caps leaves another guest's budget untouched")
    func otherGuests() {
        var attacker = budget(), honest = budget()
        for port: UInt16 in 1...50 { admit(&attacker, Wire.udp(port)) }
        for port: UInt16 in 1...50 { admit(&attacker, Wire.tcp(port)) }
        #expect(admit(&honest, Wire.tcp(40000)) == .pass)
        #expect(admit(&honest, Wire.udp(5000)) == .pass)
        #expect(honest.refusedTotal == 0)
        #expect(attacker.refusedTotal == 95)
    }

    @Test("host forwards' connections, non-SYN segments and odd frames are not counted")
    func notCounted() {
        var b = budget()
        #expect(admit(&b, Wire.tcp(40000, flags: 0x12)) == .pass)   // SYN-ACK to libslirp's SYN
        #expect(admit(&b, Wire.tcp(40000, flags: 0x10)) == .pass)
        #expect(admit(&b, Array(Wire.tcp(40000).prefix(40))) == .pass)
        #expect(admit(&b, [UInt8](repeating: 0, count: 10)) == .pass)
        #expect(b.tcpCount == 0)
        #expect(b.bufferEstimate == 0)
        admit(&b, Wire.tcp(40001))
        #expect(b.bufferEstimate == FlowBudget.tcpBufferBytes)
    }

    @Test("mangled frames never trap and never push a count past its cap")
    func mangledFrames() {
        var generator = SeededGenerator(state: 22)
        var b = budget()
        let seeds = [Wire.tcp(1), Wire.tcp(2, flags: 0x01), Wire.tcp(3, flags: 0x04), Wire.udp(4), Wire.echo(id: 1, seq: 1),
                     Wire.tcpToGuest(1, ack: 1001, flags: 0x12), Wire.udpToGuest(4), Wire.echo(id: 1, seq: 1, reply: true),
                     Wire.ipv6(6, from: Wire.guest6, to: Wire.host6, Wire.tcpHeader(5, 80, seq: 1, ack: 0, flags: 0x02), checksumOffset: 16)]
        for round in 0..<20_000 {
            var frame = seeds[Int.random(in: 0..<seeds.count, using: &generator)]
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                frame[Int.random(in: 0..<frame.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { frame.removeLast(Int.random(in: 0..<frame.count, using: &generator)) }
            let now = Int64(round) * 10_000_000
            if round % 2 == 0 {
                if case .refuse(_, _, let reply?) = admit(&b, frame, at: now) { #expect(reply.count >= 54) }
            } else {
                b.observe(toGuest: frame, now: now)
            }
            #expect(b.tcpCount <= limits.tcp && b.udpCount <= limits.udp && b.icmpCount <= limits.icmp && b.dnsTCPCount <= limits.dnsTCP)
        }
    }
}
