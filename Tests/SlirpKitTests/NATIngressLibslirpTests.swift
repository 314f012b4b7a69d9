import DataPlane
import FrameSwitch
import NetOptions
import PosixIO
import SlirpKit
import Testing

/// NATIngressCheck's fixes, each shown on real libslirp 4.7 with and without the check.
///
/// Issue 22's memory disclosure: after a handshake to a loopback listener,
/// one PSH|ACK|URG segment with urgent pointer 65535 and 10 bytes of data. Unchecked,
/// libslirp 4.7 sends the listener far more than 10 bytes (its receive buffer, stale heap
/// included, over and over: see NATIngressCheck); through NATIngressCheck, exactly the 10.
/// The unchecked leak is safe to trigger here: libslirp only reads inside its own
/// 128 KiB receive buffer, which in this process holds nothing but zeroes or test bytes.
@Suite("NATIngressCheck against real libslirp", .serialized)
struct NATIngressLibslirpTests {
    static let payload = Array("0123456789".utf8)

    /// Everything the listener reads after the probe, over about `rounds` x 20 ms or until
    /// it has read more than `limit` bytes.
    static func probe(throughCheck: Bool, rounds: Int = 25, limit: Int = 1 << 20) throws -> [UInt8] {
        let listener = try listenTCP(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        guard case .inet(_, let port) = try listener.boundAddress() else {
            Issue.record("not an inet socket")
            return []
        }
        let stack = try SlirpStack(options: try NetworkOptions.parse(""), mtu: 0)
        defer { stack.close() }
        var lastSegment: [UInt8]?
        stack.onOutput = { frame in
            if frame.count >= 54, frame[12] == 0x08, frame[13] == 0, frame[23] == 6 { lastSegment = Array(frame) }
        }
        NATResetTests.arpRequest.withUnsafeBytes { stack.input($0) }
        let natMAC = MACAddress(raw: 0x5255_0A00_0202)
        NATResetTests.segment(to: natMAC, port: port, flags: 0x02, seq: 1000, ack: 0).withUnsafeBytes { stack.input($0) }
        try NATResetTests.pump(stack) { lastSegment != nil }
        let synAck = try #require(lastSegment, "no SYN-ACK from libslirp")
        let serverSeq = UInt32(synAck[38]) << 24 | UInt32(synAck[39]) << 16 | UInt32(synAck[40]) << 8 | UInt32(synAck[41])
        NATResetTests.segment(to: natMAC, port: port, flags: 0x10, seq: 1001, ack: serverSeq &+ 1).withUnsafeBytes { stack.input($0) }
        let host = try #require(try accept(listener, via: stack), "the host listener saw no connection")
        defer { host.close() }
        host.setOutOfBandInline()

        var probe = NATResetTests.segment(to: natMAC, port: port, flags: 0x38, seq: 1001, ack: serverSeq &+ 1,
                                          urgent: 65535, payload: payload)
        if throughCheck {
            guard case .rewritten(let fixed) = NATIngressCheck.verdict(probe) else {
                Issue.record("the check did not rewrite the probe")
                return []
            }
            probe = fixed
        }
        probe.withUnsafeBytes { stack.input($0) }

        return try drain(host, via: stack, rounds: rounds, limit: limit)
    }

    /// The connection libslirp makes to `listener`, pumping the stack until it arrives.
    static func accept(_ listener: Descriptor, via stack: SlirpStack) throws -> Descriptor? {
        var accepted: Descriptor?
        try NATResetTests.pump(stack) {
            if case .done(let (socket, _)) = try listener.accept() { accepted = socket }
            return accepted != nil
        }
        return accepted
    }

    /// What `host` reads while the stack is pumped `rounds` times, or until past `limit` bytes.
    static func drain(_ host: Descriptor, via stack: SlirpStack, rounds: Int, limit: Int) throws -> [UInt8] {
        var received: [UInt8] = []
        let buffer = ByteBuffer(capacity: 1 << 16)
        try NATResetTests.pump(stack, rounds: rounds) {
            while received.count <= limit {
                buffer.removeAll()
                guard case .done(let n) = try host.read(into: buffer), n > 0 else { break }
                received.append(contentsOf: buffer.readable)
            }
            return received.count > limit
        }
        return received
    }

    @Test("through NATIngressCheck the listener reads exactly the probe's 10 bytes")
    func checkedProbe() throws {
        let received = try Self.probe(throughCheck: true)
        #expect(received == Self.payload)
    }

    @Test("without NATIngressCheck libslirp 4.7 sends the listener more than the guest sent (the test can fail)")
    func uncheckedProbeLeaks() throws {
        let received = try Self.probe(throughCheck: false, rounds: 10, limit: 1 << 16)
        #expect(received.count > Self.payload.count, "libslirp sent only \(received.count) bytes: is it fixed upstream?")
        print("unchecked URG probe: the listener read \(received.count) bytes for 10 sent")
    }

    // IPv6: ip6_input does not cut what follows the payload length, and tcp_input appends
    // the whole mbuf to the socket buffer, so trailing bytes reach the host peer outside
    // the sequence space. NATIngressCheck cuts them.
    static let guest6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x15]
    static let host6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x02]

    static func ipv6Frame(_ nextHeader: UInt8, _ payload: [UInt8], hopLimit: UInt8 = 64, trailing: [UInt8] = []) -> [UInt8] {
        MACAddress(raw: 0x5255_0A00_0202).bytes + NATResetTests.guestMAC.bytes + [0x86, 0xDD, 0x60, 0, 0, 0]
            + NATResetTests.be16(UInt16(payload.count)) + [nextHeader, hopLimit] + guest6 + host6 + payload + trailing
    }

    static func pseudo6(_ nextHeader: UInt8, length: Int) -> [UInt8] {
        guest6 + host6 + NATResetTests.be32(UInt32(length)) + [0, 0, 0, nextHeader]
    }

    static func segment6(port: UInt16, flags: UInt8, seq: UInt32, ack: UInt32, payload: [UInt8] = [], trailing: [UInt8] = []) -> [UInt8] {
        var tcp = NATResetTests.be16(NATResetTests.guestPort) + NATResetTests.be16(port) + NATResetTests.be32(seq)
            + NATResetTests.be32(ack) + [5 << 4, flags] + NATResetTests.be16(65535) + [0, 0, 0, 0] + payload
        IPChecksum.store(in: &tcp, at: 16, pseudoHeader: pseudo6(6, length: tcp.count))
        return ipv6Frame(6, tcp, trailing: trailing)
    }

    /// What a listener on ::1 reads after one 10-byte segment followed by 5 bytes past the payload length.
    static func trailingProbe(throughCheck: Bool) throws -> [UInt8] {
        let listener = try listenTCP(host: "::1", port: 0)
        defer { listener.close() }
        guard case .inet(_, let port) = try listener.boundAddress() else {
            Issue.record("not an inet socket")
            return []
        }
        let stack = try SlirpStack(options: try NetworkOptions.parse(""), mtu: 0)
        defer { stack.close() }
        var lastSegment: [UInt8]?
        stack.onOutput = { frame in
            if frame.count >= 74, frame[12] == 0x86, frame[13] == 0xDD, frame[20] == 6 { lastSegment = Array(frame) }
        }
        // A Neighbor Solicitation for the host address, so libslirp learns the guest's MAC.
        var solicitation: [UInt8] = [135, 0, 0, 0, 0, 0, 0, 0] + host6 + [1, 1] + NATResetTests.guestMAC.bytes
        IPChecksum.store(in: &solicitation, at: 2, pseudoHeader: pseudo6(58, length: solicitation.count))
        ipv6Frame(58, solicitation, hopLimit: 255).withUnsafeBytes { stack.input($0) }
        segment6(port: port, flags: 0x02, seq: 1000, ack: 0).withUnsafeBytes { stack.input($0) }
        try NATResetTests.pump(stack) { lastSegment != nil }
        let synAck = try #require(lastSegment, "no IPv6 SYN-ACK from libslirp")
        let serverSeq = synAck[58..<62].reduce(0) { $0 << 8 | UInt32($1) }
        segment6(port: port, flags: 0x10, seq: 1001, ack: serverSeq &+ 1).withUnsafeBytes { stack.input($0) }
        let host = try #require(try accept(listener, via: stack), "the host listener saw no IPv6 connection")
        defer { host.close() }

        var probe = segment6(port: port, flags: 0x18, seq: 1001, ack: serverSeq &+ 1, payload: payload,
                             trailing: Array("EXTRA".utf8))
        if throughCheck {
            guard case .rewritten(let fixed) = NATIngressCheck.verdict(probe) else {
                Issue.record("the check did not cut the trailing bytes")
                return []
            }
            probe = fixed
        }
        probe.withUnsafeBytes { stack.input($0) }
        return try drain(host, via: stack, rounds: 10, limit: .max)
    }

    @Test("IPv6 bytes past the payload length: cut by NATIngressCheck; without it libslirp hands them to the host peer")
    func ipv6TrailingBytes() throws {
        #expect(try Self.trailingProbe(throughCheck: true) == Self.payload)
        let unchecked = try Self.trailingProbe(throughCheck: false)
        #expect(unchecked == Self.payload + Array("EXTRA".utf8), "libslirp 4.7 no longer delivers trailing bytes: \(unchecked.count) bytes")
    }
}
