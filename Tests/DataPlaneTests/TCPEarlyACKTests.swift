import DataPlane
import FrameSwitch
import TestSupport
import Testing

/// Drives one TCPEarlyACK with crafted frames, as FramePath would: libslirp's frames as the
/// shim hands them on, the guest's before the shim.
struct EarlyHarness {
    var stage: TCPEarlyACK
    var v6 = false
    let port = PortID(1)
    var now: Int64 = 1_000_000_000
    let guestISN: UInt32 = 7000
    let slirpISN: UInt32 = 0xFFFF_FF00  // wraps within the first 256 bytes of data

    init(flowCap: Int = 1 << 20, networkCap: Int = 64 << 20, v6: Bool = false) {
        stage = TCPEarlyACK(flowCap: flowCap, networkCap: networkCap, maxFlows: 100)
        self.v6 = v6
    }

    mutating func guest(_ f: TCPFrame) -> (TCPEarlyACK.Verdict, [UInt8]) {
        let bytes = f.bytes
        let v = bytes.withUnsafeBytes { stage.fromGuest($0, port: port, now: now) }
        return (v, v == .rewritten ? stage.guestOutput : bytes)
    }

    mutating func nat(_ f: TCPFrame) -> (TCPEarlyACK.Verdict, [UInt8]) {
        let bytes = f.bytes
        let v = bytes.withUnsafeBytes { stage.fromNAT($0, port: port, now: now) }
        return (v, v == .rewritten ? stage.natOutput : bytes)
    }

    func fromGuest(_ flags: UInt8 = TCPFrame.ackFlag, seq: UInt32? = nil, ack: UInt32, window: UInt16,
                   options: [UInt8] = [], payload: Int = 0) -> TCPFrame {
        var f = TCPFrame.fromGuest(v6: v6)
        f.flags = flags; f.seq = seq ?? guestISN + 1; f.ack = ack; f.window = window; f.options = options
        f.payload = Array(repeating: 0x47, count: payload)
        return f
    }

    func toGuest(_ flags: UInt8 = TCPFrame.ackFlag | TCPFrame.psh, seq: UInt32, window: UInt16 = 512,
                 options: [UInt8] = [], payload: Int = 0) -> TCPFrame {
        var f = TCPFrame.toGuest(v6: v6)
        f.flags = flags; f.seq = seq; f.ack = guestISN + 1; f.window = window; f.options = options
        f.payload = (0..<payload).map { UInt8(truncatingIfNeeded: $0) }
        return f
    }

    /// libslirp's sequence number `n` bytes into its stream.
    func s(_ n: Int) -> UInt32 { slirpISN &+ 1 &+ UInt32(n) }

    /// The guest opens offering `shift`; the SYN-ACK reaches this stage with WS(7) when the shim scaled the flow.
    mutating func open(shift: UInt8? = 7, shimScaled: Bool = true) {
        let ws: [UInt8] = shift.map { [1, 3, 3, $0] } ?? []
        _ = guest(fromGuest(TCPFrame.syn, seq: guestISN, ack: 0, window: 64240, options: [2, 4, 0x05, 0xB4] + ws))
        let synAckOptions: [UInt8] = (shimScaled ? [1, 3, 3, 7] : []) + [2, 4, 0x05, 0xB4]
        _ = nat(toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: slirpISN, window: 65535, options: synAckOptions))
        _ = guest(fromGuest(ack: s(0), window: 1000))  // 1000 << 7 = 128,000 bytes
    }

    /// libslirp sends `length` bytes at offset `n`.
    mutating func data(_ n: Int, _ length: Int = 1000) -> TCPEarlyACK.Verdict {
        nat(toGuest(seq: s(n), payload: length)).0
    }

    mutating func acks() -> [[UInt8]] {
        var out: [[UInt8]] = []
        while let (f, id) = stage.nextACK() {
            #expect(id == port)
            out.append(f)
        }
        return out
    }

    var flow: (held: Int, nxt: UInt32, acked: UInt32, una: UInt32, rto: Int64, established: Bool)? {
        stage.flowState(guest: v6 ? TCPFrame.guest6 : TCPFrame.guest4, guestPort: 40000,
                        remote: v6 ? TCPFrame.gateway6 : TCPFrame.gateway4, remotePort: 80)
    }
}

private func isFromGuest(_ frame: [UInt8], v6: Bool) -> Bool {
    let t = TCPFrame.tcpOffset(frame)
    let source = v6 ? Array(frame[22..<38]) : Array(frame[26..<30])
    return source == (v6 ? TCPFrame.guest6 : TCPFrame.guest4) && read16(frame, t) == 40000 && read16(frame, t + 2) == 80
        && Array(frame[0..<6]) == Array(TCPFrame.toGuest(v6: v6).bytes[6..<12])
}

private func flags(_ frame: [UInt8]) -> UInt8 { frame[TCPFrame.tcpOffset(frame) + 13] }

@Suite("TCPEarlyACK: libslirp's data acknowledged for the guest, resent by slirpd")
struct TCPEarlyACKTests {
    @Test("in-order data is kept and ACKed toward libslirp once per turn, as from the guest", arguments: [false, true])
    func earlyACK(v6: Bool) {
        var h = EarlyHarness(v6: v6)
        h.open()
        #expect(h.flow?.established == true)
        #expect(h.data(0) == .pass)
        #expect(h.data(1000) == .pass)
        #expect(h.data(2000, 500) == .pass)
        #expect(h.flow?.held == 2500)
        let acks = h.acks()
        #expect(acks.count == 1)
        let a = acks[0]
        #expect(TCPFrame.checksumsVerify(a))
        #expect(isFromGuest(a, v6: v6))
        #expect(flags(a) == TCPFrame.ackFlag)
        #expect(TCPFrame.ack(a) == h.s(2500))
        #expect(TCPFrame.seq(a) == h.guestISN + 1)  // libslirp's own ACK of the guest's data
        // The guest offered 128,000 bytes; 2500 are kept: the congestion window (64 KiB to
        // start) leaves 63,035 more, in units of 128.
        #expect(TCPFrame.window(a) == UInt16((65535 - 2500) / 128))
        #expect(h.flow?.acked == h.s(2500))
        #expect(h.acks().isEmpty)
        #expect(h.stage.earlyACKsSent == 1)
    }

    @Test("the guest's ACKs toward libslirp never go backwards; one that says nothing new is absorbed")
    func translation() {
        var h = EarlyHarness(flowCap: 65535)
        h.open()
        _ = h.data(0, 60000)
        let a = h.acks()
        #expect(a.count == 1 && TCPFrame.window(a[0]) == 5535 / 128)  // the cap less what is kept
        // The guest's data segment carries an older ACK: raised to what libslirp was told.
        let (v, out) = h.guest(h.fromGuest(ack: h.s(1000), window: 1000, payload: 100))
        #expect(v == .rewritten)
        #expect(TCPFrame.ack(out) == h.s(60000))
        #expect(TCPFrame.window(out) == 6535 / 128)
        #expect(TCPFrame.checksumsVerify(out))
        #expect(h.flow?.held == 59000)
        // A pure ACK that frees more: the window grows, the ACK stays.
        let (v2, out2) = h.guest(h.fromGuest(ack: h.s(30000), window: 1000))
        #expect(v2 == .rewritten && TCPFrame.ack(out2) == h.s(60000) && TCPFrame.window(out2) == 35535 / 128)
        // The same again tells libslirp nothing: absorbed (it must not count duplicates).
        #expect(h.guest(h.fromGuest(ack: h.s(30000), window: 1000)).0 == .absorbed)
        #expect(h.stage.guestACKsAbsorbed == 1)
        // An older ACK (reordered) never goes backwards, and its stale window is ignored.
        let (_, out4) = h.guest(h.fromGuest(ack: h.s(20000), window: 0, payload: 10))
        #expect(TCPFrame.ack(out4) == h.s(60000) && TCPFrame.window(out4) == 35535 / 128)
    }

    @Test("the third duplicate ACK resends the first kept segment, partial ACKs the next, and halves the congestion window", arguments: [false, true])
    func dupACKRetransmit(v6: Bool) {
        var h = EarlyHarness(v6: v6)
        h.open()
        for k in 0..<5 { _ = h.data(k * 1000) }
        _ = h.acks()
        _ = h.guest(h.fromGuest(ack: h.s(1000), window: 1000))
        for _ in 0..<2 { _ = h.guest(h.fromGuest(ack: h.s(1000), window: 1000)) }
        #expect(h.stage.takeRetransmit() == nil)
        _ = h.guest(h.fromGuest(ack: h.s(1000), window: 1000))
        let r = h.stage.takeRetransmit()
        #expect(r?.1 == h.port)
        #expect(r.map { TCPFrame.seq($0.0) } == h.s(1000))
        #expect(r.map { TCPFrame.checksumsVerify($0.0) } == true)
        #expect(h.stage.fastRetransmits == 1)
        #expect(h.stage.windowCuts == 1)
        // A fourth duplicate does not resend again; a partial ACK resends the next hole.
        _ = h.guest(h.fromGuest(ack: h.s(1000), window: 1000))
        #expect(h.stage.takeRetransmit() == nil)
        _ = h.guest(h.fromGuest(ack: h.s(3000), window: 1000))
        #expect(h.stage.takeRetransmit().map { TCPFrame.seq($0.0) } == h.s(3000))
        #expect(h.stage.takeRetransmit().map { TCPFrame.seq($0.0) } == h.s(4000))  // the run after the hole, to the loss point
        #expect(h.stage.takeRetransmit() == nil)
        // Past the loss point: recovery ends.
        _ = h.guest(h.fromGuest(ack: h.s(5000), window: 1000))
        #expect(h.stage.takeRetransmit() == nil)
        #expect(h.flow?.held == 0)
        #expect(h.stage.nextDeadline == nil)
    }

    @Test("the retransmit timer resends with backoff, learns the RTT, and resets an unanswering guest", arguments: [false, true])
    func timeout(v6: Bool) {
        var h = EarlyHarness(v6: v6)
        h.open()
        _ = h.data(0)
        _ = h.acks()
        let start = h.now
        #expect(h.stage.nextDeadline == start + TCPEarlyACK.initialRTO)
        #expect(h.stage.nextTimeout(now: start + TCPEarlyACK.initialRTO - 1) == nil)
        guard case .retransmit(let frame, let id) = h.stage.nextTimeout(now: start + TCPEarlyACK.initialRTO) else {
            Issue.record("no retransmission")
            return
        }
        #expect(id == h.port && TCPFrame.seq(frame) == h.s(0))
        #expect(h.stage.nextDeadline == start + 3 * TCPEarlyACK.initialRTO)  // doubled
        // The guest ACKs it (a resent segment gives no RTT sample: Karn), then a new one 10 ms later.
        h.now = start + 3_000_000_000
        _ = h.guest(h.fromGuest(ack: h.s(1000), window: 1000))
        #expect(h.stage.nextDeadline == nil)
        _ = h.data(1000)
        _ = h.acks()
        h.now += 10_000_000
        _ = h.guest(h.fromGuest(ack: h.s(2000), window: 1000))
        #expect(h.flow?.rto == TCPEarlyACK.minRTO)  // 10 ms + 4 * 5 ms, raised to the minimum
        // A guest that never answers: resends back off up to the maximum, then the flow is reset both ways.
        _ = h.data(2000)
        _ = h.acks()
        var intervals: [Int64] = []
        var last = h.now
        var reset: TCPEarlyACK.Timeout?
        for _ in 0..<(TCPEarlyACK.maxTries + 1) {
            guard let due = h.stage.nextDeadline else { break }
            intervals.append(due - last)
            last = due
            let t = h.stage.nextTimeout(now: due)
            if case .reset = t { reset = t }
        }
        #expect(intervals.first == TCPEarlyACK.minRTO)
        #expect(intervals.dropFirst().first == 2 * TCPEarlyACK.minRTO)
        #expect(intervals.max() == TCPEarlyACK.maxRTO)
        guard case .reset(let toGuest, let toNAT, let port)? = reset else {
            Issue.record("no reset after \(TCPEarlyACK.maxTries) tries")
            return
        }
        #expect(port == h.port)
        #expect(flags(toGuest) & TCPFrame.rst != 0 && !isFromGuest(toGuest, v6: v6) && TCPFrame.seq(toGuest) == h.s(2000))
        #expect(flags(toNAT) & TCPFrame.rst != 0 && isFromGuest(toNAT, v6: v6) && TCPFrame.seq(toNAT) == h.guestISN + 1)
        #expect(TCPFrame.checksumsVerify(toGuest) && TCPFrame.checksumsVerify(toNAT))
        #expect(h.flow == nil && h.stage.heldBytes == 0 && h.stage.flowsReset == 1)
    }

    @Test("a guest that stops reading closes libslirp's window; a probe into it is not kept")
    func zeroWindow() {
        var h = EarlyHarness()
        h.open()
        _ = h.data(0, 4000)
        _ = h.acks()
        // The guest takes the data but its window closes: libslirp keeps the edge it was
        // shown (61,440 bytes past s(4000): the congestion window's 64 KiB less what was
        // kept, in units of 128), so this ACK tells it nothing new.
        #expect(h.guest(h.fromGuest(ack: h.s(4000), window: 0)).0 == .absorbed)
        let shown: UInt16 = (65535 - 4000) / 128
        // libslirp fills what it was shown, which is kept; the next ACK shows no more room.
        _ = h.data(4000, Int(shown) * 128)
        #expect(h.flow?.held == Int(shown) * 128)
        let acks = h.acks()
        #expect(acks.count == 1 && TCPFrame.window(acks[0]) == 0)
        // A window probe past the edge: delivered, not kept, not acknowledged early.
        let kept = h.flow?.held
        #expect(h.data(4000 + Int(shown) * 128, 1) == .pass)
        #expect(h.flow?.held == kept)
        #expect(h.acks().isEmpty)
        // The guest reads again: libslirp's window reopens.
        let (v, reopened) = h.guest(h.fromGuest(ack: h.s(4000 + Int(shown) * 128), window: 1000))
        #expect(v == .rewritten && TCPFrame.window(reopened) > 0)
    }

    @Test("the per-flow cap bounds what is kept, and the window shown to libslirp")
    func caps() {
        var h = EarlyHarness(flowCap: 65535)
        h.open()
        _ = h.guest(h.fromGuest(ack: h.s(0), window: 65535))  // the guest offers 8 MiB
        _ = h.data(0, 30000)
        let a = h.acks()
        // 65,535 - 30,000 kept = 35,535 of room, in units of 128.
        #expect(TCPFrame.window(a[0]) == UInt16(35535 / 128))
        _ = h.data(30000, 35535)
        #expect(TCPFrame.window(h.acks()[0]) == 0)
        // Past the cap, within the guest's window: kept up to the cap plus libslirp's window, no further.
        #expect(h.data(65535, 60000) == .pass)
        #expect(h.data(125535, 5535) == .pass)
        #expect(h.flow?.held == 65535 + 65535)
        #expect(h.data(131070, 1) == .pass)
        #expect(h.flow?.held == 65535 + 65535)
        #expect(h.stage.heldBytes == h.flow?.held)
    }

    @Test("FIN is never acknowledged early: the guest's ACK of it goes through and frees the flow")
    func finCleanup() {
        var h = EarlyHarness()
        h.open()
        _ = h.data(0, 1000)
        #expect(h.nat(h.toGuest(TCPFrame.ackFlag | TCPFrame.fin, seq: h.s(1000), payload: 200)).0 == .pass)
        let acks = h.acks()
        #expect(acks.count == 1 && TCPFrame.ack(acks[0]) == h.s(1000))
        let (v, out) = h.guest(h.fromGuest(ack: h.s(1201), window: 1000))
        #expect(v != .absorbed && TCPFrame.ack(out) == h.s(1201))
        #expect(h.flow == nil && h.stage.heldBytes == 0)
    }

    @Test("RST from either side frees the flow and what it kept", arguments: [false, true])
    func rstCleanup(fromGuest: Bool) {
        var h = EarlyHarness()
        h.open()
        _ = h.data(0, 1000)
        #expect(h.stage.heldBytes == 1000)
        if fromGuest {
            #expect(h.guest(h.fromGuest(TCPFrame.rst, ack: 0, window: 0)).0 == .pass)
        } else {
            #expect(h.nat(h.toGuest(TCPFrame.rst, seq: h.s(1000))).0 == .pass)
        }
        #expect(h.flow == nil && h.stage.heldBytes == 0 && h.stage.nextDeadline == nil)
        #expect(h.acks().isEmpty)
    }

    @Test("URG and out-of-order segments are not kept; libslirp's resend of kept data is absorbed")
    func oddSegments() {
        var h = EarlyHarness()
        h.open()
        #expect(h.nat(h.toGuest(TCPFrame.ackFlag | 0x20, seq: h.s(0), payload: 10)).0 == .pass)
        #expect(h.flow?.held == 0)
        #expect(h.data(5000) == .pass)
        #expect(h.flow?.held == 0)
        // The guest ACKs past them: in step again.
        _ = h.guest(h.fromGuest(ack: h.s(6000), window: 1000))
        #expect(h.data(6000) == .pass)
        _ = h.acks()
        #expect(h.flow?.held == 1000)
        #expect(h.data(6000) == .absorbed)
    }

    @Test("a flow the shim leaves unscaled gets WS(0) toward the guest; its windows are translated for libslirp", arguments: [false, true])
    func windowScaleZero(v6: Bool) {
        var h = EarlyHarness(v6: v6)
        _ = h.guest(h.fromGuest(TCPFrame.syn, seq: h.guestISN, ack: 0, window: 64240, options: [2, 4, 0xFF, 0xC8, 1, 3, 3, 7]))
        let synAck = h.toGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.slirpISN, window: 65535, options: [2, 4, 0xFF, 0xC8])
        let (v, out) = h.nat(synAck)
        #expect(v == .rewritten)
        #expect(TCPFrame.options(out) == [1, 3, 3, 0, 2, 4, 0xFF, 0xC8])
        #expect(TCPFrame.checksumsVerify(out) && out.count == synAck.bytes.count + 4)
        #expect(h.stage.windowScaleAdded == 1)
        // The guest's window field 1000 is 128,000 bytes: libslirp reads bytes, at most 65,535.
        let (v2, out2) = h.guest(h.fromGuest(ack: h.s(0), window: 1000))
        #expect(v2 == .rewritten && TCPFrame.window(out2) == 65535)
        _ = h.data(0, 65480)
        let a = h.acks()
        // The guest has room for 62,520 more; the congestion window (64 KiB to start) for 55.
        #expect(TCPFrame.window(a[0]) == 65535 - 65480)
        // The guest's ACK grows the congestion window (slow start): room for the rest.
        let (_, grown) = h.guest(h.fromGuest(ack: h.s(65480), window: 1000))
        #expect(TCPFrame.window(grown) == 65535)
        #expect(TCPFrame.ack(a[0]) == h.s(65480))
    }

    @Test("an unscaled guest gets no Window Scale and libslirp never more than the guest's own window")
    func unscaledGuest() {
        var h = EarlyHarness()
        h.open(shift: nil, shimScaled: false)
        #expect(h.stage.windowScaleAdded == 0)
        _ = h.data(0, 1000)
        let a = h.acks()
        // The guest's 1000 bytes are all kept: no room beyond them.
        #expect(a.count == 1 && TCPFrame.window(a[0]) == 0)
    }

    @Test("a host forward (libslirp opens) is tracked too")
    func hostForward() {
        var h = EarlyHarness()
        let (v, out) = h.nat(h.toGuest(TCPFrame.syn, seq: h.slirpISN, window: 65535, options: [1, 3, 3, 7, 2, 4, 0x05, 0xB4]))
        #expect(v == .pass && TCPFrame.options(out) == [1, 3, 3, 7, 2, 4, 0x05, 0xB4])
        _ = h.guest(h.fromGuest(TCPFrame.syn | TCPFrame.ackFlag, seq: h.guestISN, ack: h.s(0), window: 64240,
                                options: [2, 4, 0x05, 0xB4, 1, 3, 3, 7]))
        #expect(h.flow?.established == true)
        _ = h.guest(h.fromGuest(ack: h.s(0), window: 1000))
        _ = h.data(0, 1000)
        #expect(h.acks().count == 1)
        #expect(h.flow?.acked == h.s(1000))
    }

    @Test("a removed port frees its flows")
    func removePort() {
        var h = EarlyHarness()
        h.open()
        _ = h.data(0, 1000)
        h.stage.removePort(h.port)
        #expect(h.flow == nil && h.stage.heldBytes == 0 && h.stage.flowCount == 0)
    }

    @Test("in recovery, three duplicates after a partial ACK resend the hole again at once (its resend was lost)")
    func lostResend() {
        var h = EarlyHarness()
        h.open()
        for k in 0..<10 { _ = h.data(k * 1000) }
        _ = h.acks()
        for _ in 0..<3 { _ = h.guest(h.fromGuest(ack: h.s(0), window: 1000)) }
        #expect(h.stage.takeRetransmit().map { TCPFrame.seq($0.0) } == h.s(0))
        // A partial ACK: the next hole and the run after it go out.
        _ = h.guest(h.fromGuest(ack: h.s(3000), window: 1000))
        var resent: [UInt32] = []
        while let r = h.stage.takeRetransmit() { resent.append(TCPFrame.seq(r.0)) }
        #expect(resent == [h.s(3000), h.s(4000), h.s(5000), h.s(6000)])
        // Segments past the hole arrive, the hole does not: the third duplicate resends it.
        for _ in 0..<2 { _ = h.guest(h.fromGuest(ack: h.s(3000), window: 1000)) }
        #expect(h.stage.takeRetransmit() == nil)
        _ = h.guest(h.fromGuest(ack: h.s(3000), window: 1000))
        #expect(h.stage.takeRetransmit().map { TCPFrame.seq($0.0) } == h.s(3000))
        // Only once per partial ACK.
        for _ in 0..<3 { _ = h.guest(h.fromGuest(ack: h.s(3000), window: 1000)) }
        #expect(h.stage.takeRetransmit() == nil)
        #expect(h.stage.timeoutRetransmits == 0)
    }

    @Test("a fast retransmit sets the window one segment below the flight that lost (a NIC ring's size), and it grows past that only after ceilingProbe lossless windows")
    func ringCeiling() {
        var h = EarlyHarness()
        h.open(shimScaled: false)  // the guest offers 128,000 bytes; libslirp reads the field in bytes
        for k in 0..<10 { _ = h.data(k * 1000) }
        _ = h.acks()
        // The tenth segment's ring slot was missing: three duplicates, one resend.
        for _ in 0..<3 { _ = h.guest(h.fromGuest(ack: h.s(0), window: 1000)) }
        #expect(h.stage.takeRetransmit().map { TCPFrame.seq($0.0) } == h.s(0))
        _ = h.guest(h.fromGuest(ack: h.s(10000), window: 1000))
        // libslirp fills the edge it was shown before the loss (never retracted).
        for k in 10..<65 { #expect(h.data(k * 1000) == .pass) }
        #expect(h.data(65000, 535) == .pass)
        _ = h.acks()
        #expect(h.flow?.held == 55535)
        // 5,535 bytes still in flight: the window is one segment (1,460 until a larger one
        // is seen) below the 10,000 that lost, not the 5,000 halving gives.
        let ceiling = 10000 - 1460
        let (_, out) = h.guest(h.fromGuest(ack: h.s(60000), window: 1000))
        #expect(Int(TCPFrame.window(out)) == ceiling - 5535)
        // Lossless round trips of one segment: the window holds at the ceiling...
        var n = 65535
        _ = h.guest(h.fromGuest(ack: h.s(n), window: 1000))
        var windows: [Int] = []
        for _ in 0..<200 {
            _ = h.data(n, 1000)
            _ = h.acks()
            n += 1000
            windows.append(Int(TCPFrame.window(h.guest(h.fromGuest(ack: h.s(n), window: 1000)).1)))
        }
        #expect(windows[0..<70].allSatisfy { $0 == ceiling })
        // ...until 16 windows' worth came through without a loss: then one segment more.
        #expect(windows.last == ceiling + 1460)
        #expect(h.stage.windowCuts == 1 && h.stage.timeoutRetransmits == 0)
    }
}
