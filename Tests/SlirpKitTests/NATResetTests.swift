import FrameSwitch
import NetOptions
import PosixIO
import SlirpKit
import Testing

/// The RST slirpd sends for a departed guest (FrameSwitch's NATConnections), tried on
/// real libslirp: a guest's connection to a loopback listener is opened with hand-made
/// frames, then reset. Only loopback traffic; one thread, as libslirp requires.
@Suite("NAT connection reset against real libslirp", .serialized)
struct NATResetTests {
    static let guestMAC = MACAddress(raw: 0x5254_0012_3456)
    static let guestIP: [UInt8] = [10, 0, 2, 15]
    static let gatewayIP: [UInt8] = [10, 0, 2, 2]
    static let guestPort: UInt16 = 40000

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func be32(_ v: UInt32) -> [UInt8] { be16(UInt16(v >> 16)) + be16(UInt16(v & 0xFFFF)) }

    /// A guest's ARP request for the gateway, so libslirp learns the guest's MAC.
    static var arpRequest: [UInt8] {
        MACAddress.broadcast.bytes + guestMAC.bytes + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]
            + guestMAC.bytes + guestIP + MACAddress.zero.bytes + gatewayIP
    }

    /// A TCP segment from the guest to the gateway's `port`.
    static func segment(to natMAC: MACAddress, port: UInt16, flags: UInt8, seq: UInt32, ack: UInt32,
                        urgent: UInt16 = 0, payload: [UInt8] = []) -> [UInt8] {
        var tcp = be16(guestPort) + be16(port) + be32(seq) + be32(ack) + [5 << 4, flags] + be16(65535) + [0, 0]
            + be16(urgent) + payload
        IPChecksum.store(in: &tcp, at: 16, pseudoHeader: guestIP + gatewayIP + [0, 6] + be16(UInt16(tcp.count)))
        var ip: [UInt8] = [0x45, 0] + be16(UInt16(20 + tcp.count)) + [0, 0, 0x40, 0, 64, 6, 0, 0] + guestIP + gatewayIP
        IPChecksum.store(in: &ip, at: 10)
        return natMAC.bytes + guestMAC.bytes + [0x08, 0x00] + ip + tcp
    }

    /// Runs libslirp's poll step and timers until `done`, for at most `rounds` of up to 20 ms.
    static func pump(_ stack: SlirpStack, rounds: Int = 100, until done: () throws -> Bool) throws {
        for _ in 0..<rounds {
            if try done() { return }
            var set = PollSet()
            var timeout: UInt32 = 20
            stack.addPollDescriptors(to: &set, timeout: &timeout)
            let ok = try set.wait(timeoutMilliseconds: Int32(min(timeout, 20)))
            stack.processPoll(&set, pollFailed: !ok)
            stack.runDueTimers(now: monotonicNanoseconds())
        }
    }

    static func established(_ stack: SlirpStack, port: UInt16) -> Bool {
        ConnectionTable.parse(stack.connectionInfo()).contains {
            $0.proto == "TCP" && $0.state == "ESTABLISHED" && $0.destinationPort == Int(port) && $0.sourcePort == Int(guestPort)
        }
    }

    @Test("a RST at libslirp's ACK number closes the connection and its host socket; one outside the window does not")
    func resetClosesConnection() throws {
        let listener = try listenTCP(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        guard case .inet(_, let port) = try listener.boundAddress() else { Issue.record("not an inet socket"); return }
        let stack = try SlirpStack(options: try NetworkOptions.parse(""), mtu: 0)
        defer { stack.close() }
        var tracked = NATConnections()
        var lastSegment: [UInt8]?
        stack.onOutput = { frame in
            tracked.observe(toGuest: frame)
            if frame.count >= 54, frame[12] == 0x08, frame[13] == 0, frame[23] == 6 { lastSegment = Array(frame) }
        }

        Self.arpRequest.withUnsafeBytes { stack.input($0) }
        let natMAC = MACAddress(raw: 0x5255_0A00_0202)
        Self.segment(to: natMAC, port: port, flags: 0x02, seq: 1000, ack: 0).withUnsafeBytes { stack.input($0) }
        try Self.pump(stack) { !tracked.isEmpty }
        let synAck = try #require(lastSegment, "no SYN-ACK from libslirp")
        #expect(synAck[47] & 0x12 == 0x12)
        let serverSeq = UInt32(synAck[38]) << 24 | UInt32(synAck[39]) << 16 | UInt32(synAck[40]) << 8 | UInt32(synAck[41])
        Self.segment(to: natMAC, port: port, flags: 0x10, seq: 1001, ack: serverSeq &+ 1).withUnsafeBytes { stack.input($0) }
        var accepted: Descriptor?
        try Self.pump(stack) {
            if case .done(let (socket, _)) = try listener.accept() { accepted = socket }
            return accepted != nil
        }
        let host = try #require(accepted, "the host listener saw no connection")
        defer { host.close() }
        #expect(Self.established(stack, port: port))
        #expect(tracked.count == 1)

        // The same RST with its sequence number a megabyte ahead: outside libslirp's window.
        var ahead = NATConnections()
        var shifted = synAck
        shifted.replaceSubrange(42..<46, with: Self.be32(1001 + 1_000_000))
        ahead.observe(toGuest: shifted)
        for frame in ahead.resets() { frame.withUnsafeBytes { stack.input($0) } }
        try Self.pump(stack, rounds: 10) { !Self.established(stack, port: port) }
        #expect(Self.established(stack, port: port), "a RST outside the window closed the connection")

        let resets = tracked.resets()
        #expect(resets.count == 1)
        for frame in resets { frame.withUnsafeBytes { stack.input($0) } }
        try Self.pump(stack) { !Self.established(stack, port: port) }
        #expect(!Self.established(stack, port: port), "libslirp kept the connection: \(stack.connectionInfo())")

        // The host side sees the end: EOF or a reset.
        let buffer = ByteBuffer(capacity: 4096)
        var ended = false
        try Self.pump(stack) {
            do {
                if case .done(let n) = try host.read(into: buffer), n == 0 { ended = true }
            } catch {
                ended = true
            }
            return ended
        }
        #expect(ended, "the host socket stayed open")
    }
}
