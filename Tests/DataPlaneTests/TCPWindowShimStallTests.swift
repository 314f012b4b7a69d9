import DataPlane
import FrameSwitch
import TestSupport
import Testing

/// libslirp's receiving side as the shim meets it: it takes in-order bytes up to `room`
/// past its ACK (its socket buffer's free space), keeps nothing out of order, and answers
/// every segment with an ACK announcing `announced` (its window, never retracted) or, when
/// that is nil, its room. The stall in test_tcp_shim_faults.py came from libslirp taking
/// less than an edge it had announced while its host did not read.
struct SlirpReceiver {
    var next: UInt32
    var room: Int
    var announced: Int?
    /// Segments it was handed, and how many of them carried a byte it took.
    var segments = 0
    var useful = 0

    static func payloadLength(_ frame: [UInt8]) -> Int {
        let ip = 14, tcp = TCPFrame.tcpOffset(frame)
        let dataOffset = Int(frame[tcp + 12] >> 4) * 4
        let total = Int(read16(frame, ip + 2))
        return total - (tcp - ip) - dataOffset
    }

    /// Takes what it can of a guest segment; returns the ACK's (ack, window).
    mutating func input(_ frame: [UInt8]) -> (UInt32, UInt16) {
        segments += 1
        let seq = TCPFrame.seq(frame), end = seq &+ UInt32(Self.payloadLength(frame))
        if seqDiff(seq, next) <= 0, seqDiff(end, next) > 0 {
            let take = min(Int(end &- next), room)
            if take > 0 { useful += 1 }
            next &+= UInt32(take)
            room -= take
        }
        return (next, UInt16(min(65535, announced ?? room)))
    }

    private func seqDiff(_ a: UInt32, _ b: UInt32) -> Int32 { Int32(bitPattern: a &- b) }
}

extension ShimHarness {
    /// Hands libslirp `frames`, then whatever their ACKs release, as the Network does in a
    /// loop turn; returns the ACKs the guest is shown.
    @discardableResult
    mutating func feed(_ frames: [[UInt8]], to slirp: inout SlirpReceiver) -> [[UInt8]] {
        var pending = frames, shown: [[UInt8]] = []
        while !pending.isEmpty {
            let (ack, window) = slirp.input(pending.removeFirst())
            let (verdict, out) = nat(toGuest(seq: slirpISN + 1, ack: ack, window: window))
            if verdict != .absorbed { shown.append(out) }
            pending += releases()
        }
        return shown
    }

    /// Hands libslirp one guest frame the shim passed, as FramePath does: libslirp's answer
    /// comes back through the shim before `afterInput`.
    mutating func feedGuest(_ frame: [UInt8], to slirp: inout SlirpReceiver) {
        let (ack, window) = slirp.input(frame)
        _ = nat(toGuest(seq: slirpISN + 1, ack: ack, window: window))
        frame.withUnsafeBytes { shim.afterInput($0) }
    }

    /// Runs the shim's window probes due up to `now + duration`, stepping 1 ms.
    mutating func probe(for duration: Int64, to slirp: inout SlirpReceiver) -> [[UInt8]] {
        var shown: [[UInt8]] = []
        let end = now + duration
        while now < end {
            now += 1_000_000
            while let p = shim.nextProbe(now: now) { shown += feed([p], to: &slirp) }
        }
        return shown
    }
}

@Suite("TCPWindowShim: recovery after libslirp's window closes and reopens (the host-stops-reading stall)")
struct TCPWindowShimStallTests {
    /// libslirp ACKs 65,000 with a window to 65,535, but its host stopped reading: it takes
    /// 200 bytes of the 535 the shim releases to that edge, and then has no room.
    func stalled(_ h: inout ShimHarness) -> SlirpReceiver {
        h.fillSlirpWindow()
        for n in 65..<80 { #expect(h.send(n * 1000).0 == .queued) }
        var slirp = SlirpReceiver(next: h.g(65_000), room: 200)
        _ = h.nat(h.toGuest(seq: h.slirpISN + 1, ack: h.g(65_000), window: 535))
        h.feed(h.releases(), to: &slirp)
        return slirp
    }

    @Test("data libslirp was handed but did not take goes again once its window reopens, without the guest's resend")
    func releasedButNotTaken() {
        var h = ShimHarness(flowCap: 1 << 20)
        var slirp = stalled(&h)
        #expect(slirp.next == h.g(65_200))      // the shim released to 65,535; libslirp kept 200 bytes
        // The host does not read for 8 s: probes back off, their answers are not the guest's.
        let shownWhileStalled = h.probe(for: 8_000_000_000, to: &slirp)
        #expect(shownWhileStalled.isEmpty)
        #expect(slirp.next == h.g(65_200))
        // The host reads again; libslirp announces nothing. Within one probe interval
        // everything held reaches it, and the guest sees the ACK of all of it.
        slirp.room = 1 << 20
        let shown = h.probe(for: TCPWindowShim.maxProbeInterval + 2_000_000, to: &slirp)
        #expect(slirp.next == h.g(80_000))
        #expect(shown.last.map(TCPFrame.ack) == h.g(80_000))
        #expect(h.shim.queuedBytes == 0 && h.shim.retainedBytes == 0)
    }

    @Test("the guest's resend of what libslirp needs next, beyond its closed window: held, not passed to be dropped")
    func resendBeyondClosedWindowIsHeld() {
        var h = ShimHarness(flowCap: 1 << 20)
        var slirp = stalled(&h)
        // The guest's retransmission timer resends 65,200..66,200 while libslirp has no room.
        let (verdict, out) = h.send(65_200, 1000)
        #expect(verdict == .queued)
        if verdict != .queued { h.feed([out], to: &slirp) }
        h.feed(h.releases(), to: &slirp)
        #expect(slirp.next == h.g(65_200))
        _ = h.probe(for: 1_000_000_000, to: &slirp)
        // Its window reopens silently: the held resend and all after it go at the next probe.
        slirp.room = 1 << 20
        let shown = h.probe(for: TCPWindowShim.maxProbeInterval + 2_000_000, to: &slirp)
        #expect(slirp.next == h.g(80_000))
        #expect(shown.last.map(TCPFrame.ack) == h.g(80_000))
    }

    @Test("a probe whose answer reopens libslirp's window (same ACK) is shown to the guest, not absorbed")
    func reopenedWindowShown() {
        var h = ShimHarness(flowCap: 1 << 20)
        h.fillSlirpWindow()
        _ = h.slirpAck(65_000, window: 0)
        #expect(h.send(66_000).0 == .queued)     // held past a hole at 65,000 the guest will fill
        h.now += TCPWindowShim.firstProbe
        let probe = h.shim.nextProbe(now: h.now)
        #expect(probe.map(TCPFrame.seq) == h.g(66_000))
        // libslirp still needs 65,000 but now has room: its ACK is a window update.
        let (verdict, out) = h.nat(h.toGuest(seq: h.slirpISN + 1, ack: h.g(65_000), window: 65535))
        #expect(verdict != .absorbed)
        #expect(TCPFrame.ack(out) == h.g(65_000))
    }

    @Test("a guest whose sequence numbers lie 2^31 or more from 0: held data all reaches libslirp once its window opens",
          arguments: [0x8000_0000, 0x9ABC_DEF0, 0xFFFF_0000] as [UInt32])
    func upperHalfSequenceNumbers(isn: UInt32) {
        var h = ShimHarness(flowCap: 1 << 20, guestISN: isn)
        h.fillSlirpWindow()
        for n in 65..<80 { #expect(h.send(n * 1000).0 == .queued) }
        var slirp = SlirpReceiver(next: h.g(65_000), room: 1 << 20)
        _ = h.nat(h.toGuest(seq: h.slirpISN + 1, ack: h.g(65_000), window: 65535))
        h.feed(h.releases(), to: &slirp)
        #expect(slirp.next == h.g(80_000))
        #expect(h.shim.queuedBytes == 0)
    }

    @Test("a guest's segment libslirp ACKs at once is not kept; one it does not take is, and the shim resends it")
    func guestSegmentKeptOnlyWhenNotTaken() {
        var h = ShimHarness(flowCap: 1 << 20)
        h.open()
        _ = h.slirpAck(0)
        var slirp = SlirpReceiver(next: h.g(0), room: 1 << 20)
        let (v1, out1) = h.send(0)
        #expect(v1 == .rewritten)
        h.feedGuest(out1, to: &slirp)
        #expect(slirp.next == h.g(1000))
        #expect(h.shim.retainedBytes == 0 && h.shim.nextProbeDeadline == nil)
        // libslirp's host stopped reading: it ACKs nothing of the next one.
        slirp.room = 0
        let (v2, out2) = h.send(1000)
        #expect(v2 == .rewritten)
        h.feedGuest(out2, to: &slirp)
        #expect(h.shim.retainedBytes == 1000 && h.shim.nextProbeDeadline != nil)
        // It reads again: the shim's probe carries the kept bytes, with no resend from the guest.
        slirp.room = 1 << 20
        _ = h.probe(for: 10_000_000, to: &slirp)
        #expect(slirp.next == h.g(2000))
        #expect(h.shim.retainedBytes == 0)
    }

    @Test("released data is kept only until libslirp's ACK covers it")
    func retainedUntilACKed() {
        var h = ShimHarness(flowCap: 1 << 20)
        h.fillSlirpWindow()
        #expect(h.send(65_000).0 == .queued)
        _ = h.slirpAck(65_000, window: 65535)
        #expect(h.releases().map(TCPFrame.seq) == [h.g(65_000)])
        #expect(h.shim.retainedBytes == 1000 && h.shim.nextProbeDeadline != nil)
        _ = h.slirpAck(66_000, window: 65535)
        #expect(h.shim.retainedBytes == 0 && h.shim.nextProbeDeadline == nil)
    }
}
