import DataPlane
import FrameSwitch
import TestSupport
import Testing

/// Drives one shim with crafted frames from both sides, as the Network would.
struct ShimHarness {
    var shim: TCPWindowShim
    var v6 = false
    let port = PortID(1)
    var now: Int64 = 0
    /// The guest's initial sequence number and libslirp's.
    let guestISN: UInt32
    let slirpISN: UInt32 = 5000

    /// `guestISN`: by default wraps within the first 4 KiB of data.
    init(flowCap: Int = 1 << 20, networkCap: Int = 64 << 20, maxFlows: Int = 100, v6: Bool = false,
         guestISN: UInt32 = 0xFFFF_F000) {
        shim = TCPWindowShim(flowCap: flowCap, networkCap: networkCap, maxFlows: maxFlows)
        self.v6 = v6
        self.guestISN = guestISN
    }

    /// The verdict and the frame that goes on (the output buffer when rewritten).
    mutating func guest(_ f: TCPFrame) -> (TCPWindowShim.Verdict, [UInt8]) {
        let bytes = f.bytes
        let v = bytes.withUnsafeBytes { shim.fromGuest($0, port: port, now: now) }
        return (v, v == .rewritten ? shim.guestOutput : bytes)
    }

    /// A held pure ACK is taken at once, as at the end of the Network's loop turn.
    mutating func nat(_ f: TCPFrame) -> (TCPWindowShim.Verdict, [UInt8]) {
        let bytes = f.bytes
        let v = bytes.withUnsafeBytes { shim.fromNAT($0, port: port, now: now) }
        if v == .held {
            var held: [UInt8] = []
            return shim.takeHeldACK(into: &held) == port ? (.rewritten, held) : (v, [])
        }
        return (v, v == .rewritten ? shim.natOutput : bytes)
    }

    mutating func releases() -> [[UInt8]] {
        var out: [[UInt8]] = []
        while let f = shim.nextRelease() { out.append(f) }
        return out
    }

    func fromGuest(_ flags: UInt8 = TCPFrame.ackFlag, seq: UInt32 = 0, ack: UInt32 = 0, window: UInt16 = 1000,
                   options: [UInt8] = [], payload: Int = 0) -> TCPFrame {
        var f = TCPFrame.fromGuest(v6: v6)
        f.flags = flags; f.seq = seq; f.ack = ack; f.window = window; f.options = options
        f.payload = (0..<payload).map { UInt8(truncatingIfNeeded: $0) }
        return f
    }

    func toGuest(_ flags: UInt8 = TCPFrame.ackFlag, seq: UInt32 = 0, ack: UInt32, window: UInt16,
                 options: [UInt8] = [], payload: Int = 0) -> TCPFrame {
        var f = TCPFrame.toGuest(v6: v6)
        f.flags = flags; f.seq = seq; f.ack = ack; f.window = window; f.options = options
        f.payload = Array(repeating: 0x55, count: payload)
        return f
    }

    /// Guest sequence number `n` bytes into the stream.
    func g(_ n: Int) -> UInt32 { guestISN &+ 1 &+ UInt32(n) }

    /// The guest opens with shift `shift` (nil: no Window Scale); libslirp answers with window `window`.
    mutating func open(shift: UInt8? = 7, window: UInt16 = 65535) {
        let ws: [UInt8] = shift.map { [1, 3, 3, $0] } ?? []
        _ = guest(fromGuest(TCPFrame.syn, seq: guestISN, window: 64240, options: [2, 4, 0x05, 0xB4] + ws))
        _ = nat(toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: slirpISN, ack: g(0), window: window, options: [2, 4, 0x05, 0xB4]))
        _ = guest(fromGuest(seq: g(0), ack: slirpISN + 1, window: 502))
    }

    /// The flow opens and the guest sends libslirp's whole first window (65 segments of 1,000
    /// bytes, 65,000 bytes, all passed), so what it sends next is held.
    mutating func fillSlirpWindow() {
        open()
        _ = slirpAck(0)
        for n in 0..<65 { _ = send(n * 1000) }
    }

    /// libslirp ACKs `n` guest bytes with window `window`; returns the window field the guest sees.
    mutating func slirpAck(_ n: Int, window: UInt16 = 65535) -> UInt16 {
        TCPFrame.window(nat(toGuest(seq: slirpISN + 1, ack: g(n), window: window)).1)
    }

    /// The guest sends `length` bytes at stream offset `n`.
    mutating func send(_ n: Int, _ length: Int = 1000, flags: UInt8 = TCPFrame.ackFlag | TCPFrame.psh,
                       ack: UInt32? = nil) -> (TCPWindowShim.Verdict, [UInt8]) {
        guest(fromGuest(flags, seq: g(n), ack: ack ?? slirpISN + 1, window: 502, payload: length))
    }

    var flow: (slirpEdge: UInt32, edge: UInt32, queued: Int, committed: Int, scaled: Bool, hasEdges: Bool)? {
        shim.flowState(guest: v6 ? TCPFrame.guest6 : TCPFrame.guest4, guestPort: 40000,
                       remote: v6 ? TCPFrame.gateway6 : TCPFrame.gateway4, remotePort: 80)
    }
}

@Suite("TCPWindowShim: window scaling toward the guest, unscaled toward libslirp")
struct TCPWindowShimTests {
    let linuxSYNOptions: [UInt8] = [2, 4, 0x05, 0xB4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]

    @Test("guest opens: its Window Scale becomes NOPs toward libslirp, libslirp's SYN-ACK gains WS(7); checksums verify", arguments: [false, true])
    func guestOpens(v6: Bool) {
        var h = ShimHarness(v6: v6)
        let syn = h.fromGuest(TCPFrame.syn, seq: h.guestISN, window: 64240, options: linuxSYNOptions)
        let (v1, out1) = h.guest(syn)
        #expect(v1 == .rewritten)
        #expect(out1.count == syn.bytes.count)
        #expect(TCPFrame.options(out1) == Array(linuxSYNOptions.prefix(17)) + [1, 1, 1])
        #expect(TCPFrame.window(out1) == 64240)
        #expect(TCPFrame.checksumsVerify(out1))
        let synAck = h.toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.slirpISN, ack: h.g(0), window: 65535, options: [2, 4, 0x05, 0xB4])
        let (v2, out2) = h.nat(synAck)
        #expect(v2 == .rewritten)
        #expect(out2.count == synAck.bytes.count + 4)
        #expect(TCPFrame.options(out2) == [1, 3, 3, 7, 2, 4, 0x05, 0xB4])
        #expect(TCPFrame.window(out2) == 65535)  // a SYN-ACK's window is never scaled
        #expect(TCPFrame.checksumsVerify(out2))
        #expect(h.flow?.scaled == true)
        #expect(h.shim.scaledFlowCount == 1)
        // Retransmissions get the same treatment.
        #expect(h.guest(syn).1 == out1)
        #expect(h.nat(synAck).1 == out2)
        #expect(h.shim.flowCount == 1 && h.shim.scaledFlowCount == 1)
    }

    @Test("a SYN-ACK with IPv4 header options grows correctly")
    func ipv4OptionsOnGrowth() {
        var h = ShimHarness()
        _ = h.guest(h.fromGuest(TCPFrame.syn, seq: h.guestISN, options: [1, 3, 3, 9]))
        var synAck = h.toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.slirpISN, ack: h.g(0), window: 65535, options: [2, 4, 0x05, 0xB4])
        synAck.ipOptions = [1, 1, 1, 0]
        synAck.padding = 6
        let (v, out) = h.nat(synAck)
        #expect(v == .rewritten)
        #expect(TCPFrame.checksumsVerify(out))
        #expect(TCPFrame.options(out) == [1, 3, 3, 7, 2, 4, 0x05, 0xB4])
        #expect(out.count == synAck.bytes.count + 4 - 6)  // padding dropped, header grown
    }

    @Test("libslirp opens (host forward): its SYN gains WS(7); the guest's SYN-ACK with WS makes the flow scaled", arguments: [false, true])
    func slirpOpens(v6: Bool) {
        var h = ShimHarness(v6: v6)
        let syn = h.toGuest(TCPFrame.syn, seq: h.slirpISN, ack: 0, window: 65535, options: [2, 4, 0x05, 0xB4])
        let (v1, out1) = h.nat(syn)
        #expect(v1 == .rewritten)
        #expect(TCPFrame.options(out1) == [1, 3, 3, 7, 2, 4, 0x05, 0xB4])
        #expect(TCPFrame.checksumsVerify(out1))
        #expect(h.flow?.scaled == false)
        #expect(h.nat(syn).1 == out1)  // retransmitted SYN
        let synAck = h.fromGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.guestISN, ack: h.slirpISN + 1, window: 64240, options: linuxSYNOptions)
        let (v2, out2) = h.guest(synAck)
        #expect(v2 == .rewritten)
        #expect(TCPFrame.options(out2).suffix(3) == [1, 1, 1])
        #expect(TCPFrame.checksumsVerify(out2))
        #expect(h.flow?.scaled == true)
        // libslirp's ACK of the SYN-ACK is scaled toward the guest; the guest's window unscaled toward libslirp.
        #expect(h.slirpAck(0) > 512)
        #expect(TCPFrame.window(h.send(0, 100).1) == 64256)  // 502 << 7
    }

    @Test("libslirp opens, the guest's SYN-ACK has no Window Scale: the flow passes untouched")
    func slirpOpensGuestDeclines() {
        var h = ShimHarness()
        _ = h.nat(h.toGuest(TCPFrame.syn, seq: h.slirpISN, ack: 0, window: 65535, options: [2, 4, 0x05, 0xB4]))
        let synAck = h.fromGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.guestISN, ack: h.slirpISN + 1, window: 64240, options: [2, 4, 0x05, 0xB4])
        #expect(h.guest(synAck).0 == .pass)
        #expect(h.shim.flowCount == 0)
        #expect(h.nat(h.toGuest(seq: h.slirpISN + 1, ack: h.g(0), window: 65535)).0 == .pass)
        #expect(h.send(0).0 == .pass)
    }

    @Test("a guest without Window Scale: every frame of the flow passes byte for byte, no state", arguments: [false, true])
    func passThrough(v6: Bool) {
        var h = ShimHarness(v6: v6)
        #expect(h.guest(h.fromGuest(TCPFrame.syn, seq: h.guestISN, options: [2, 4, 0x05, 0xB4])).0 == .pass)
        #expect(h.nat(h.toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.slirpISN, ack: h.g(0), window: 65535, options: [2, 4, 0x05, 0xB4])).0 == .pass)
        for n in 0..<100 { #expect(h.send(n * 1000).0 == .pass) }
        #expect(h.nat(h.toGuest(seq: h.slirpISN + 1, ack: h.g(100_000), window: 0)).0 == .pass)
        #expect(h.shim.flowCount == 0 && h.shim.queuedBytes == 0)
    }

    @Test("non-TCP and unparseable frames pass")
    func otherFrames() {
        var h = ShimHarness()
        var udp = h.fromGuest(payload: 10).bytes
        udp[23] = 17
        let short = Array(h.fromGuest().bytes.prefix(40))
        for frame in [udp, short, [UInt8](repeating: 0, count: 10)] {
            #expect(frame.withUnsafeBytes { h.shim.fromGuest($0, port: h.port, now: 0) } == .pass)
            #expect(frame.withUnsafeBytes { h.shim.fromNAT($0, port: h.port, now: 0) } == .pass)
        }
    }

    @Test("guest windows unscaled toward libslirp: min(65535, field << shift) for shifts 0, 7, 14", arguments: [
        (UInt8(0), UInt16(1000), UInt16(1000)), (0, 65535, 65535), (7, 502, 64256), (7, 512, 65535), (7, 0, 0),
        (14, 1, 16384), (14, 3, 49152), (14, 4, 65535), (15, 1, 16384),
    ])
    func guestWindowUnscaled(shift: UInt8, field: UInt16, expected: UInt16) {
        var h = ShimHarness()
        h.open(shift: shift)
        let (_, out) = h.guest(h.fromGuest(seq: h.g(0), ack: h.slirpISN + 1, window: field))
        #expect(TCPFrame.window(out) == expected)
        #expect(TCPFrame.checksumsVerify(out))
    }

    @Test("offered window: libslirp's window rounded up plus the flow cap rounded down, in units of 128")
    func offeredWindow() {
        var h = ShimHarness(flowCap: 1 << 20)
        h.open()
        #expect(h.slirpAck(0) == UInt16((65535 + (1 << 20)) >> 7))
        var small = ShimHarness(flowCap: 0)
        small.open(window: 1000)
        #expect(small.slirpAck(0, window: 1000) == 8)  // ceil(1000 / 128)
        var zero = ShimHarness(flowCap: 0)
        zero.open(window: 0)
        #expect(zero.slirpAck(0, window: 0) == 0)
        var full = ShimHarness(flowCap: 0)
        full.open()
        #expect(full.slirpAck(0, window: 65535) == 512)
    }

    @Test("the offered edge never retracts, whatever libslirp's ack and window do")
    func neverRetract() {
        var h = ShimHarness(flowCap: 0)
        h.open()
        #expect(h.slirpAck(0, window: 65535) == 512)  // edge = g(65536)
        #expect(h.slirpAck(0, window: 100) == 512)
        #expect(h.slirpAck(1000, window: 0) == 505)  // ceil(64536 / 128)
        #expect(h.flow.map { $0.edge } == h.g(1000 + 505 * 128))  // rounded up, 104 bytes past the cap
        #expect(h.slirpAck(4000, window: 0) == 481)  // ceil(61640 / 128): 128 bytes past the cap would be too many
        #expect(h.slirpAck(65536, window: 0) == 0)
    }

    @Test("segments beyond libslirp's window are queued and released in order as its ACKs arrive, with the latest ACK and window")
    func queueAndRelease() {
        var h = ShimHarness()
        h.open()
        _ = h.slirpAck(0)
        for n in 0..<65 { #expect(h.send(n * 1000).0 == .rewritten) }  // 65,000 <= 65,535
        for n in 65..<70 { #expect(h.send(n * 1000).0 == .queued) }
        #expect(h.shim.queuedBytes == 5000)
        // libslirp's edge (65,535) takes the start of the first held segment at once.
        #expect(h.releases().map(TCPFrame.seq) == [h.g(65_000)])
        // The guest's later ACK (for data libslirp sent it) rides on the released segments.
        _ = h.guest(h.fromGuest(seq: h.g(70_000), ack: h.slirpISN + 101, window: 400))
        _ = h.slirpAck(3000)  // edge g(68,535): the segments ending at 66,000..68,000 fit, and 535 of the next
        let first = h.releases()
        #expect(first.map { TCPFrame.seq($0) } == [h.g(65_535), h.g(66_000), h.g(67_000), h.g(68_000)])
        #expect(h.shim.queuedBytes == 1465)
        for f in first {
            #expect(TCPFrame.ack(f) == h.slirpISN + 101)
            #expect(TCPFrame.window(f) == 51200)
            #expect(TCPFrame.checksumsVerify(f))
        }
        _ = h.slirpAck(5000)
        #expect(h.releases().map { TCPFrame.seq($0) } == [h.g(68_535), h.g(69_000)])
        #expect(h.shim.queuedBytes == 0 && h.shim.segmentsReleased == 7 && h.shim.segmentsSplit == 2)
    }

    @Test("out-of-order segments are released in sequence order")
    func outOfOrder() {
        var h = ShimHarness()
        h.fillSlirpWindow()
        for n in [68, 66, 67, 65] { #expect(h.send(n * 1000).0 == .queued) }
        _ = h.slirpAck(10_000)
        #expect(h.releases().map { TCPFrame.seq($0) } == [65, 66, 67, 68].map { h.g($0 * 1000) })
        #expect(h.shim.queuedBytes == 0)
    }

    @Test("duplicates and covered segments are dropped; a longer retransmission replaces what it covers")
    func duplicates() {
        var h = ShimHarness()
        h.fillSlirpWindow()
        #expect(h.send(66_000).0 == .queued)
        #expect(h.send(66_000).0 == .drop)
        #expect(h.send(66_200, 500).0 == .drop)  // inside 66,000..67,000
        #expect(h.shim.queuedBytes == 1000)
        #expect(h.send(65_000, 3000).0 == .queued)  // covers 66,000..67,000
        #expect(h.shim.queuedBytes == 3000)
        _ = h.slirpAck(10_000)
        let out = h.releases()
        #expect(out.map { TCPFrame.seq($0) } == [h.g(65_000)])
        // A retransmission of data libslirp already has passes at once.
        #expect(h.send(1000).0 == .rewritten)
    }

    @Test("a segment beyond the offered edge is dropped and counted")
    func beyondEdge() {
        var h = ShimHarness(flowCap: 10_000)
        h.open()
        let field = h.slirpAck(0)
        let edge = Int(field) * 128
        #expect(h.send(edge - 1000).0 == .queued)
        #expect(h.send(edge - 999).0 == .drop)
        #expect(h.shim.droppedBeyondEdge == 1)
    }

    @Test("the network cap shrinks later flows' offers; queued bytes stay within commitments; no retraction")
    func networkCap() {
        var a = ShimHarness(flowCap: 40_000, networkCap: 50_000)
        a.shim.coalescesACKs = false  // natOutput is read after each ACK below
        a.open()
        #expect(a.slirpAck(0) == UInt16((65535 + 40_000) >> 7))
        // A second flow on the same shim (another guest port number).
        var b = TCPFrame.fromGuest()
        b.sourcePort = 40001
        b.flags = TCPFrame.syn
        b.options = [1, 3, 3, 7]
        _ = b.bytes.withUnsafeBytes { a.shim.fromGuest($0, port: a.port, now: 0) }
        var bs = TCPFrame.toGuest()
        bs.destinationPort = 40001
        bs.flags = TCPFrame.syn | TCPFrame.ackFlag
        bs.ack = 1
        _ = bs.bytes.withUnsafeBytes { a.shim.fromNAT($0, port: a.port, now: 0) }
        bs.flags = TCPFrame.ackFlag
        _ = bs.bytes.withUnsafeBytes { a.shim.fromNAT($0, port: a.port, now: 0) }
        let committedA = a.flow?.committed ?? -1
        #expect(committedA <= 40_000)
        #expect(a.shim.committedBytes <= 50_000)
        let out = a.shim.natOutput
        #expect(Int(TCPFrame.window(out)) * 128 - 65535 <= 50_000 - committedA)
        // libslirp acks flow a's data: its commitment shrinks, and its edge does not move back.
        let edge = a.flow?.edge
        #expect(a.slirpAck(0, window: 0) == UInt16((Int(edge.map { $0 &- a.g(0) } ?? 0) + 127) >> 7))
    }

    @Test("per-flow cap: a flow never holds more than it was offered beyond libslirp's edge")
    func flowCap() {
        var h = ShimHarness(flowCap: 5000)
        h.open()
        _ = h.slirpAck(0)
        var queued = 0
        for n in 65..<80 where h.send(n * 1000).0 == .queued { queued += 1 }
        #expect(h.shim.queuedBytes <= 5000 + 128)
        #expect(queued == 5)  // 65,000..70,000; the window covers 65,535 + 5,000 rounded down
    }

    @Test("a full queue behind a hole takes the hole's retransmission, giving up its latest held data")
    func holeAtFullCap() {
        var h = ShimHarness(flowCap: 5000)
        h.open()
        _ = h.slirpAck(0)                       // offered: 65,536 + 4,992
        for n in 0..<65 { _ = h.send(n * 1000) }
        _ = h.slirpAck(65_000, window: 0)       // libslirp's window closes; 65,000..66,000 is lost on the way
        for n in 66..<70 { #expect(h.send(n * 1000).0 == .queued) }
        #expect(h.send(70_000, 400).0 == .queued)
        #expect(h.shim.queuedBytes == 4400)
        #expect(h.send(65_000).0 == .queued)    // the hole's resend: 70,000..70,400 gives way
        #expect(h.shim.queuedBytes == 5000)
        #expect(h.shim.segmentsEvicted == 1)
        _ = h.slirpAck(65_000, window: 65535)   // libslirp's socket drained
        #expect(h.releases().map(TCPFrame.seq) == (65..<70).map { h.g($0 * 1000) })
        #expect(h.send(70_000, 400).0 != .drop) // and the guest's resend of what gave way is taken
    }

    @Test("the guest resending held data libslirp needs next, past its closed window: held (libslirp would drop it), released when it opens")
    func resendProbesLibslirp() {
        var h = ShimHarness(flowCap: 5000)
        h.fillSlirpWindow()
        _ = h.slirpAck(65_000, window: 0)       // closed
        #expect(h.send(65_000).0 == .queued)
        #expect(h.send(66_000).0 == .queued)
        // The guest's timer resends 65,000 while libslirp's window is closed: already held.
        #expect(h.send(65_000).0 == .drop)
        // A resend of held data libslirp does not need next is dropped too.
        #expect(h.send(66_000).0 == .drop)
        // What fits the edge libslirp announced before (65,535) goes; the rest once its
        // ACK shows room.
        #expect(h.releases().map(TCPFrame.seq) == [h.g(65_000)])
        _ = h.slirpAck(66_000, window: 65535)
        #expect(h.releases().map(TCPFrame.seq) == [h.g(66_000)])
    }

    @Test("a held segment straddling libslirp's edge: its start goes at once, the rest when the edge moves")
    func splitAtEdge() {
        var h = ShimHarness()
        h.fillSlirpWindow()
        _ = h.slirpAck(65_000, window: 0)
        #expect(h.send(65_000, 16_000).0 == .queued)
        _ = h.slirpAck(65_000, window: 6_000)      // room for 6,000 of the 16,000 held
        let first = h.releases()
        #expect(first.count == 1)
        #expect(first.first.map { (TCPFrame.seq($0), TCPFrame.checksumsVerify($0)) } ?? (0, false) == (h.g(65_000), true))
        #expect(first.first.map { $0.count } == TCPFrame.fromGuest().bytes.count + 6_000)
        #expect(h.shim.queuedBytes == 10_000 && h.shim.segmentsSplit == 1)
        _ = h.slirpAck(71_000, window: 65535)
        #expect(h.releases().map(TCPFrame.seq) == [h.g(71_000)])
        #expect(h.shim.queuedBytes == 0)
    }

    // Found by fuzz-tcp-shim in CI: the rest of a split head, left at libslirp's edge, sat
    // ahead of an overlapping held retransmission that started before that edge.
    @Test("a split at libslirp's edge trims the overlapping segments behind it: releases stay in sequence order, nothing is handed twice")
    func splitThenOverlap() {
        var h = ShimHarness()
        h.fillSlirpWindow()
        _ = h.slirpAck(65_000, window: 0)
        #expect(h.send(65_000, 2000).0 == .queued)     // 65,000..67,000
        #expect(h.send(66_000, 2000).0 == .queued)     // 66,000..68,000, cut differently
        #expect(h.send(66_200, 300, flags: TCPFrame.ackFlag | TCPFrame.psh | TCPFrame.fin).0 == .queued)  // a stray FIN inside
        _ = h.slirpAck(65_000, window: 1500)         // the edge at 66,500
        #expect(h.releases().map(TCPFrame.seq) == [h.g(65_000)])
        #expect(h.shim.queuedBytes == 2000)         // 66,500..68,000 twice over; the stray FIN is gone
        _ = h.slirpAck(66_500, window: 65535)
        let out = h.releases()
        #expect(out.map(TCPFrame.seq) == [h.g(66_500), h.g(67_000)])
        #expect(out.map(SlirpReceiver.payloadLength) == [500, 1000])
        #expect(out.allSatisfy(TCPFrame.checksumsVerify))
        #expect(h.shim.queuedBytes == 0)
    }

    @Test("a FIN held behind a release that covers its data goes with that release")
    func coveredFINJoinsRelease() {
        var h = ShimHarness()
        h.fillSlirpWindow()
        _ = h.slirpAck(65_000, window: 0)
        #expect(h.send(65_000, 1000).0 == .queued)
        #expect(h.send(65_500, 500, flags: TCPFrame.ackFlag | TCPFrame.fin).0 == .queued)
        _ = h.slirpAck(65_000, window: 65535)
        let last = h.releases()
        #expect(last.map(TCPFrame.seq) == [h.g(65_000)])
        #expect(last.map { $0[TCPFrame.tcpOffset($0) + 13] & TCPFrame.fin } == [TCPFrame.fin])
        #expect(last.allSatisfy(TCPFrame.checksumsVerify))
    }
    @Test("held data libslirp's window does not reach: probed with its first byte, backing off; a probe's empty answer is absorbed")
    func windowProbes() throws {
        var h = ShimHarness()
        h.fillSlirpWindow()
        _ = h.slirpAck(65_535, window: 0)       // libslirp took it all and closed its window
        #expect(h.send(65_535, 1000).0 == .queued)
        #expect(h.shim.nextProbeDeadline == h.now + TCPWindowShim.firstProbe)
        #expect(h.shim.nextProbe(now: h.now + TCPWindowShim.firstProbe - 1) == nil)
        h.now += TCPWindowShim.firstProbe
        let first = h.shim.nextProbe(now: h.now)
        let probe = try #require(first)
        #expect(TCPFrame.seq(probe) == h.g(65_535) && probe.count == TCPFrame.fromGuest().bytes.count + 1)
        #expect(TCPFrame.checksumsVerify(probe))
        #expect(h.shim.nextProbeDeadline == h.now + 2 * TCPWindowShim.firstProbe)   // backing off
        // libslirp's window is still closed: its ACK moves nothing and is not the guest's.
        #expect(h.nat(h.toGuest(seq: h.slirpISN + 1, ack: h.g(65_535), window: 0)).0 == .absorbed)
        // The next probe finds room: the ACK moves on, and what was held goes.
        h.now += 2 * TCPWindowShim.firstProbe
        let second = h.shim.nextProbe(now: h.now)
        #expect(second != nil)
        #expect(h.nat(h.toGuest(seq: h.slirpISN + 1, ack: h.g(65_536), window: 60_000)).0 != .absorbed)
        #expect(h.releases().map(TCPFrame.seq) == [h.g(65_535)])
        // Probing goes on until libslirp ACKs what was released.
        #expect(h.shim.nextProbeDeadline != nil)
        _ = h.slirpAck(66_535, window: 65535)
        #expect(h.shim.nextProbeDeadline == nil)
    }

    @Test("zero window from libslirp with nothing to queue: the guest sees 0, then the update releases what was held")
    func zeroWindow() {
        var h = ShimHarness(flowCap: 4096)
        h.fillSlirpWindow()
        #expect(h.send(65_000).0 == .queued)
        _ = h.slirpAck(65_000, window: 0)
        // The edge it announced before (65,535) still takes the first 535 bytes.
        #expect(h.releases().map(TCPFrame.seq) == [h.g(65_000)])
        #expect(h.releases().isEmpty)
        _ = h.slirpAck(65_535, window: 65535)  // libslirp's socket drained
        #expect(h.releases().map(TCPFrame.seq) == [h.g(65_535)])
    }

    @Test("a FIN after queued data waits for it; FINs both ways free the flow")
    func finAfterQueued() {
        var h = ShimHarness()
        h.fillSlirpWindow()
        #expect(h.send(65_000).0 == .queued)
        #expect(h.send(66_000, 0, flags: TCPFrame.ackFlag | TCPFrame.fin).0 == .queued)
        _ = h.nat(h.toGuest(TCPFrame.ackFlag | TCPFrame.fin, seq: h.slirpISN + 1, ack: h.g(0), window: 65535))
        _ = h.slirpAck(10_000)
        let out = h.releases()
        #expect(out.count == 2)
        #expect(out.last.map { $0[TCPFrame.tcpOffset($0) + 13] & TCPFrame.fin } == TCPFrame.fin)
        // Kept until libslirp ACKs the FIN (see "Kept until ACKed"); that ACK frees the flow.
        #expect(h.shim.flowCount == 1 && h.shim.queuedBytes == 0)
        _ = h.nat(h.toGuest(seq: h.slirpISN + 2, ack: h.g(66_001), window: 65535))
        #expect(h.shim.flowCount == 0 && h.shim.queuedBytes == 0 && h.shim.committedBytes == 0 && h.shim.retainedBytes == 0)
    }

    @Test("a RST from either side frees the flow and its queue", arguments: [false, true])
    func rst(fromGuest: Bool) {
        var h = ShimHarness()
        h.open()
        _ = h.slirpAck(0)
        for n in 65..<70 { _ = h.send(n * 1000) }
        #expect(h.shim.queuedBytes == 5000)
        let v = fromGuest ? h.guest(h.fromGuest(TCPFrame.rst, seq: h.g(0))).0
            : h.nat(h.toGuest(TCPFrame.rst | TCPFrame.ackFlag, seq: h.slirpISN + 1, ack: h.g(0), window: 0)).0
        #expect(v == .pass)
        #expect(h.shim.flowCount == 0 && h.shim.queuedBytes == 0 && h.shim.committedBytes == 0 && h.shim.scaledFlowCount == 0)
        #expect(h.releases().isEmpty)
    }

    @Test("removePort and expire free flows")
    func removeAndExpire() {
        var h = ShimHarness()
        h.open()
        _ = h.slirpAck(0)
        _ = h.send(70_000)
        h.shim.removePort(PortID(2))
        #expect(h.shim.flowCount == 1)
        h.shim.removePort(h.port)
        #expect(h.shim.flowCount == 0 && h.shim.queuedBytes == 0)
        var e = ShimHarness()
        e.open()
        e.shim.expire(now: TCPWindowShim.defaultIdleTimeout)
        #expect(e.shim.flowCount == 1)
        e.shim.expire(now: TCPWindowShim.defaultIdleTimeout + 1)
        #expect(e.shim.flowCount == 0 && e.shim.scaledFlowCount == 0)
    }

    @Test("past maxFlows new flows are not scaled, and are counted")
    func tableFull() {
        var h = ShimHarness(maxFlows: 0)
        #expect(h.guest(h.fromGuest(TCPFrame.syn, seq: h.guestISN, options: [1, 3, 3, 7])).0 == .pass)
        #expect(h.nat(h.toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.slirpISN, ack: h.g(0), window: 65535)).0 == .pass)
        #expect(h.shim.flowsRefused == 1 && h.shim.flowCount == 0)
    }

    @Test("guest frames with Ethernet padding and IPv4 options: lengths come from IP; queued copies drop the padding")
    func paddingAndIPOptions() {
        var h = ShimHarness()
        h.open()
        _ = h.slirpAck(0)
        var f = h.fromGuest(TCPFrame.ackFlag, seq: h.g(0), ack: h.slirpISN + 1, window: 502, payload: 10)
        f.ipOptions = [1, 1, 1, 0]
        f.padding = 8
        let (v, out) = h.guest(f)
        #expect(v == .rewritten && TCPFrame.window(out) == 64256 && TCPFrame.checksumsVerify(out))
        f.seq = h.g(70_000)
        #expect(h.guest(f).0 == .queued)
        _ = h.slirpAck(70_000)
        let released = h.releases()
        #expect(released.count == 1)
        #expect(released.first.map { $0.count } == f.bytes.count - 8)
        #expect(released.allSatisfy(TCPFrame.checksumsVerify))
    }
}

@Suite("TCPWindowShim: libslirp's pure ACKs, one per flow per loop turn")
struct TCPWindowShimACKTests {
    /// libslirp's frame for the guest, as the Network hands it over (no end-of-turn take).
    func fromNAT(_ h: inout ShimHarness, _ f: TCPFrame) -> TCPWindowShim.Verdict {
        let bytes = f.bytes
        return bytes.withUnsafeBytes { h.shim.fromNAT($0, port: h.port, now: h.now) }
    }

    func endOfTurn(_ h: inout ShimHarness) -> [(PortID, [UInt8])] {
        var out: [(PortID, [UInt8])] = []
        var frame: [UInt8] = []
        while let port = h.shim.takeHeldACK(into: &frame) { out.append((port, frame)) }
        return out
    }

    @Test("several ACKs in one turn reach the guest as the last one, its window scaled", arguments: [false, true])
    func lastWins(v6: Bool) {
        var h = ShimHarness(v6: v6)
        h.open()
        for n in 1...5 {
            #expect(fromNAT(&h, h.toGuest(seq: h.slirpISN + 1, ack: h.g(n * 1000), window: 65535)) == .held)
        }
        let out = endOfTurn(&h)
        #expect(out.count == 1)
        #expect(out.first?.0 == h.port)
        let frame = out.first?.1 ?? []
        #expect(TCPFrame.ack(frame) == h.g(5000))
        #expect(Int(TCPFrame.window(frame)) << 7 > 65535)
        #expect(TCPFrame.checksumsVerify(frame))
        #expect(h.shim.acksCoalesced == 4)
        #expect(endOfTurn(&h).isEmpty)
    }

    @Test("a duplicate ACK (same ACK and window) goes at once, so the guest can count it for fast retransmit")
    func duplicatesGoAtOnce() {
        var h = ShimHarness()
        h.open()
        let ack = h.toGuest(seq: h.slirpISN + 1, ack: h.g(1000), window: 65535)
        #expect(fromNAT(&h, ack) == .held)
        let second = fromNAT(&h, ack)
        #expect(second == .rewritten || second == .pass)
        #expect(fromNAT(&h, ack) != .held)
        #expect(endOfTurn(&h).count == 1)
    }

    @Test("data, FIN or RST from libslirp supersede the held ACK")
    func supersededByData() {
        var h = ShimHarness()
        h.open()
        #expect(fromNAT(&h, h.toGuest(seq: h.slirpISN + 1, ack: h.g(1000), window: 65535)) == .held)
        let data = h.toGuest(TCPFrame.ackFlag | TCPFrame.psh, seq: h.slirpISN + 1, ack: h.g(1000), window: 65535, payload: 100)
        #expect(fromNAT(&h, data) != .held)
        #expect(endOfTurn(&h).isEmpty)
        #expect(fromNAT(&h, h.toGuest(seq: h.slirpISN + 101, ack: h.g(2000), window: 65535)) == .held)
        _ = fromNAT(&h, h.toGuest(TCPFrame.rst | TCPFrame.ackFlag, seq: h.slirpISN + 101, ack: h.g(2000), window: 0))
        #expect(endOfTurn(&h).isEmpty)
        #expect(h.shim.flowCount == 0)
    }

    @Test("each flow keeps its own ACK; a flow that ends before the turn's end loses its held one")
    func perFlow() {
        var h = ShimHarness()
        h.open()
        #expect(fromNAT(&h, h.toGuest(seq: h.slirpISN + 1, ack: h.g(1000), window: 65535)) == .held)
        // A second flow: another guest port number.
        var syn = h.fromGuest(TCPFrame.syn, seq: 1, window: 64240, options: [1, 3, 3, 7])
        syn.sourcePort = 40001
        _ = syn.bytes.withUnsafeBytes { h.shim.fromGuest($0, port: PortID(2), now: 0) }
        var synack = h.toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: 9, ack: 2, window: 65535)
        synack.destinationPort = 40001
        _ = fromNAT(&h, synack)
        var ack = h.toGuest(seq: 10, ack: 500, window: 65535)
        ack.destinationPort = 40001
        #expect(fromNAT(&h, ack) == .held)
        #expect(Set(endOfTurn(&h).map(\.0.raw)) == [1, 2])
        // Held, then the guest resets the flow: nothing is delivered for it.
        #expect(fromNAT(&h, ack) == .held)
        var rst = h.fromGuest(TCPFrame.rst, seq: 500)
        rst.sourcePort = 40001
        _ = rst.bytes.withUnsafeBytes { h.shim.fromGuest($0, port: PortID(2), now: 0) }
        #expect(endOfTurn(&h).isEmpty)
    }

    @Test("with coalescing off every ACK goes at once")
    func off() {
        var h = ShimHarness()
        h.shim.coalescesACKs = false
        h.open()
        #expect(fromNAT(&h, h.toGuest(seq: h.slirpISN + 1, ack: h.g(1000), window: 65535)) == .rewritten)
        #expect(endOfTurn(&h).isEmpty)
    }
}

@Suite("TCPWindowShim: which flows are scaled, and how far")
struct TCPWindowShimScopeTests {
    @Test("an MSS over 16 KiB on both sides leaves the flow unscaled: libslirp's SYN-ACK passes as it is; one small MSS is scaled")
    func jumboGuestOpens() {
        for (guestMSS, slirpMSS) in [(UInt16(65480), UInt16(1460)), (1460, 65480)] {
            var h = ShimHarness()
            _ = h.guest(h.fromGuest(TCPFrame.syn, seq: h.guestISN, window: 64240,
                                    options: [2, 4, UInt8(guestMSS >> 8), UInt8(guestMSS & 0xFF), 1, 3, 3, 7]))
            let synack = h.toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.slirpISN, ack: h.g(0), window: 65535,
                                   options: [2, 4, UInt8(slirpMSS >> 8), UInt8(slirpMSS & 0xFF)])
            // libslirp's segments follow the smaller MSS, so its window updates keep coming.
            #expect(h.nat(synack).0 == .rewritten)
            #expect(h.shim.scaledFlowCount == 1)
        }
        for (guestMSS, slirpMSS) in [(UInt16(65480), UInt16(65480)), (32000, 20000)] {
            var h = ShimHarness()
            _ = h.guest(h.fromGuest(TCPFrame.syn, seq: h.guestISN, window: 64240,
                                    options: [2, 4, UInt8(guestMSS >> 8), UInt8(guestMSS & 0xFF), 1, 3, 3, 7]))
            let synack = h.toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.slirpISN, ack: h.g(0), window: 65535,
                                   options: [2, 4, UInt8(slirpMSS >> 8), UInt8(slirpMSS & 0xFF)])
            let (v, out) = h.nat(synack)
            #expect(v == .pass)
            #expect(out == synack.bytes)
            #expect(h.shim.scaledFlowCount == 0)
            #expect(h.flow == nil)
        }
    }

    @Test("libslirp's SYN with a jumbo MSS (a host forward on an MTU 65520 network) gains no Window Scale")
    func jumboHostForward() {
        var h = ShimHarness()
        let syn = h.toGuest(TCPFrame.syn, seq: h.slirpISN, ack: 0, window: 65535, options: [2, 4, 0xFF, 0xC8])
        let (v, out) = h.nat(syn)
        #expect(v == .pass && out == syn.bytes)
        #expect(h.shim.flowCount == 0)
    }

    @Test("a port's flow cap limits what its new flows are offered beyond libslirp's window")
    func portCap() {
        var h = ShimHarness(flowCap: 1 << 20)
        h.shim.setFlowCap(100_000, for: h.port)
        h.open()
        let field = Int(h.slirpAck(0))
        #expect(field == (65535 + 127) >> 7 + 100_000 >> 7 || field == (65535 + 100_000) >> 7)
        #expect((h.flow?.committed ?? .max) <= 100_000)
    }
}
