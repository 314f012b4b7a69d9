import DataPlane
import FrameSwitch
import TestSupport
import Testing

@Suite struct TCPCoalescerTests {
    static let fin: UInt8 = 0x01, syn: UInt8 = 0x02, rst: UInt8 = 0x04, psh: UInt8 = 0x08, ack: UInt8 = 0x10
    static let urg: UInt8 = 0x20, ece: UInt8 = 0x40, cwr: UInt8 = 0x80

    /// Offers frames in order; returns what the caller sends, in order, and the outcomes.
    struct Run {
        var c: TCPCoalescer
        var sent: [[UInt8]] = []
        var outcomes: [TCPCoalescer.Outcome] = []

        init(maxPayload: Int = 65000) { c = TCPCoalescer(maxPayload: maxPayload) }

        mutating func offer(_ f: [UInt8]) {
            let (flushed, outcome) = f.withUnsafeBytes { c.offer($0) }
            if let flushed { sent.append(flushed) }
            if outcome == .pass { sent.append(f) }
            outcomes.append(outcome)
        }

        mutating func end() {
            if let f = c.flush() { sent.append(f) }
            #expect(!c.isHolding)
        }
    }

    /// `count` in-order segments of `length` bytes each (the stream continues across them).
    func segments(_ count: Int, _ length: Int, v6: Bool = false, from offset: Int = 0,
                  flags: UInt8 = TCPCoalescerTests.ack) -> [[UInt8]] {
        (0..<count).map { Edge.segment(v6: v6, offset: offset + $0 * length, length: length, flags: flags) }
    }

    /// Every frame sent is valid and the payloads, in order, are the stream's first `total` bytes.
    func expectStream(_ sent: [[UInt8]], _ total: Int, from offset: Int = 0) {
        for f in sent { #expect(Edge.valid(f)) }
        #expect(sent.flatMap(Edge.payload) == Edge.stream(offset, total))
        var seq = Edge.seq(sent.first ?? [])
        for f in sent {
            #expect(Edge.seq(f) == seq)
            seq &+= UInt32(Edge.payload(f).count)
        }
    }

    @Test(arguments: [false, true])
    func mergesInOrderSegments(v6: Bool) {
        var run = Run()
        var input = segments(5, 1448, v6: v6)
        input[4] = Edge.with(input[4]) { $0[Edge.tcp($0) + 14] = 0x12; $0[Edge.tcp($0) + 15] = 0x34 }  // a new window
        for f in input { run.offer(f) }
        #expect(run.outcomes == Array(repeating: .absorbed, count: 5))
        #expect(run.sent.isEmpty && run.c.isHolding)
        run.end()
        #expect(run.sent.count == 1)
        expectStream(run.sent, 5 * 1448)
        let merged = run.sent[0]
        #expect(Edge.window(merged) == 0x1234)
        #expect(Edge.flags(merged) == Self.ack)
        if !v6 { #expect(Edge.ipID(merged) == Edge.ipID(input[0])) }
        #expect(run.c.merged == 4)
    }

    @Test(arguments: [false, true])
    func oddLengthsMerge(v6: Bool) {
        var run = Run()
        var offset = 0
        for length in [1, 3, 2, 5, 7, 1, 1000, 999] {
            run.offer(Edge.segment(v6: v6, offset: offset, length: length))
            offset += length
        }
        run.end()
        #expect(run.sent.count == 1)
        expectStream(run.sent, offset)
    }

    @Test(arguments: [false, true])
    func pushEndsTheMergeAtOnce(v6: Bool) {
        var run = Run()
        let input = segments(2, 1000, v6: v6) + [Edge.segment(v6: v6, offset: 2000, length: 500, flags: Self.ack | Self.psh)]
        for f in input { run.offer(f) }
        #expect(run.outcomes == [.absorbed, .absorbed, .absorbed])
        #expect(run.sent.count == 1 && !run.c.isHolding)
        #expect(Edge.flags(run.sent[0]) == Self.ack | Self.psh)
        expectStream(run.sent, 2500)
        // A PSH segment with nothing to join goes on by itself.
        var alone = Run()
        alone.offer(Edge.segment(v6: v6, length: 100, flags: Self.ack | Self.psh))
        #expect(alone.outcomes == [.pass] && !alone.c.isHolding)
    }

    /// Flags that stop a merge: the held segment is flushed and the frame passes after it.
    @Test(arguments: [fin, syn, rst, urg, ece, cwr])
    func stopFlags(flag: UInt8) {
        for v6 in [false, true] {
            var run = Run()
            for f in segments(2, 700, v6: v6) { run.offer(f) }
            let stop = Edge.segment(v6: v6, offset: 1400, length: 300, flags: Self.ack | flag)
            run.offer(stop)
            #expect(run.outcomes == [.absorbed, .absorbed, .pass])
            #expect(run.sent.count == 2 && run.sent[1] == stop && !run.c.isHolding)
            expectStream(run.sent, 1700)
        }
    }

    @Test func pureACKFlushesAndPasses() {
        var run = Run()
        for f in segments(2, 700) { run.offer(f) }
        let pure = Edge.segment(offset: 1400, length: 0)
        run.offer(pure)
        #expect(run.outcomes.last == .pass && run.sent.count == 2 && run.sent[1] == pure)
        expectStream(run.sent, 1400)
    }

    /// A candidate that cannot extend the held segment flushes it and is held alone.
    func expectRestart(_ first: [[UInt8]], _ next: [UInt8], _ what: Comment) {
        var run = Run()
        for f in first { run.offer(f) }
        run.offer(next)
        #expect(run.outcomes == Array(repeating: .absorbed, count: first.count + 1), what)
        #expect(run.sent.count == 1, what)
        #expect(run.sent.first.map(Edge.payload) == first.flatMap(Edge.payload), what)
        #expect(run.c.isHolding, what)
        run.end()
        #expect(run.sent.last == next, what)
        for f in run.sent { #expect(Edge.valid(f), what) }
    }

    @Test(arguments: [false, true])
    func changesThatStopAMerge(v6: Bool) {
        let first = segments(2, 600, v6: v6)
        let next = Edge.segment(v6: v6, offset: 1200, length: 600)
        let t = Edge.tcp(next)
        expectRestart(first, Edge.segment(v6: v6, offset: 1201, length: 600), "gap")
        expectRestart(first, Edge.segment(v6: v6, offset: 1199, length: 600), "overlap")
        expectRestart(first, Edge.with(next) { $0[t + 1] &+= 1 }, "other destination port")
        expectRestart(first, Edge.with(next) { $0[t] &+= 1 }, "other source port")
        expectRestart(first, Edge.with(next) { $0[t + 11] &+= 1 }, "ACK number")
        expectRestart(first, Edge.with(next) { $0[5] ^= 1 }, "source MAC")
        let source = v6 ? 37 : 29  // last byte of the source address
        expectRestart(first, Edge.with(next) { $0[source] &+= 1 }, "other source address")
        let options: [UInt8] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]
        let withOptions = Edge.segment(v6: v6, offset: 1200, length: 600, options: options)
        expectRestart(first, withOptions, "data offset")
        let timestamped = (0..<2).map { Edge.segment(v6: v6, offset: $0 * 600, length: 600, options: options) }
        expectRestart(timestamped, Edge.with(withOptions) { $0[t + 27] = 9 }, "option bytes")
        if v6 {
            expectRestart(first, Edge.with(next) { $0[15] |= 0x01 }, "traffic class")
            expectRestart(first, Edge.with(next) { $0[17] = 0x42 }, "flow label")
            expectRestart(first, Edge.with(next) { $0[21] = 63 }, "hop limit")
        } else {
            expectRestart(first, Edge.with(next) { $0[15] = 0x10 }, "TOS")
            expectRestart(first, Edge.with(next) { $0[22] = 63 }, "TTL")
            expectRestart(first, Edge.with(next) { $0[20] &= ~0x40 }, "DF")
        }
        // Timestamps that match merge.
        var run = Run()
        for f in timestamped + [withOptions] { run.offer(f) }
        run.end()
        #expect(run.sent.count == 1)
        expectStream(run.sent, 1800)
    }

    @Test func staysWithinMaxPayload() {
        var run = Run(maxPayload: 3000)
        for f in segments(5, 1000) { run.offer(f) }
        run.end()
        #expect(run.sent.map { Edge.payload($0).count } == [3000, 2000])
        expectStream(run.sent, 5000)
        #expect(run.c.merged == 3)
        // A segment already at the cap has nothing to gain from being held.
        var full = Run(maxPayload: 1000)
        full.offer(Edge.segment(length: 1000))
        #expect(full.outcomes == [.pass] && !full.c.isHolding)
    }

    @Test(arguments: [false, true])
    func aBadTCPChecksumSpoilsTheMergeItJoins(v6: Bool) {
        let input = segments(4, 500, v6: v6)
        var corrupt = input[2]
        corrupt[corrupt.count - 1] ^= 0x40  // payload changed, checksum not
        var run = Run()
        for f in [input[0], input[1], corrupt, input[3]] { run.offer(f) }
        run.end()
        // Merged without reading the payload: the error carries into the merged checksum,
        // so libslirp, which verifies it, drops the merge rather than taking bad data.
        #expect(run.outcomes == [.absorbed, .absorbed, .absorbed, .absorbed] && run.sent.count == 1)
        #expect(Edge.payload(run.sent[0]).count == 2000 && !Edge.valid(run.sent[0]))
        // Without the corrupt one the same merge verifies.
        var good = Run()
        for f in input { good.offer(f) }
        good.end()
        #expect(good.sent.count == 1 && Edge.valid(good.sent[0]))
        // Alone, a corrupt segment goes on as it came.
        var alone = Run()
        alone.offer(corrupt)
        alone.end()
        #expect(alone.sent == [corrupt])
        if !v6 {
            var badHeader = input[1]
            badHeader[24] ^= 0x01  // IPv4 header checksum
            var run = Run()
            run.offer(input[0])
            run.offer(badHeader)
            #expect(run.outcomes == [.absorbed, .pass] && run.sent == [input[0], badHeader])
        }
    }

    @Test func ipv4OptionsFragmentsAndOtherProtocolsPass() {
        let first = segments(1, 500)
        let withIPOptions = Edge.segment(offset: 500, length: 500, ipOptions: [1, 1, 1, 0])
        let moreFragments = Edge.with(Edge.segment(offset: 500, length: 500)) { $0[20] |= 0x20 }
        let udp = Edge.with(Edge.segment(offset: 500, length: 500)) { $0[23] = 17 }
        let arp = MACAddress(raw: 0xFFFF_FFFF_FFFF).bytes + MACAddress(raw: 0x5254_0012_3456).bytes + [0x08, 0x06]
            + [UInt8](repeating: 1, count: 28)
        let v6NotTCP = Edge.with(Edge.segment(v6: true, offset: 500, length: 500)) { $0[20] = 17 }
        let runt: [UInt8] = [1, 2, 3]
        let reservedBit = Edge.with(Edge.segment(offset: 500, length: 500)) { $0[34 + 12] |= 0x01 }
        for other in [withIPOptions, moreFragments, udp, arp, v6NotTCP, runt, reservedBit] {
            var run = Run()
            run.offer(first[0])
            run.offer(other)
            #expect(run.outcomes == [.absorbed, .pass])
            #expect(run.sent == [first[0], other])
        }
    }

    @Test(arguments: [false, true])
    func segmentingThenCoalescingGivesTheOriginalBack(v6: Bool) {
        for (length, mss) in [(64000, 1460), (65000, 1001), (9001, 1448), (3, 1)] {
            let original = Edge.segment(v6: v6, fromGuest: true, seq: 0xFFFF_FF00, length: length, flags: Self.ack | Self.psh)
            let pieces = original.withUnsafeBytes { TCPSegmentation.segment($0, mss: mss) } ?? []
            var run = Run()
            for p in pieces { run.offer(p) }
            run.end()
            #expect(run.sent == [original], "payload \(length), mss \(mss)")
            #expect(run.c.merged == pieces.count - 1)
        }
    }

    @Test func paddedFramesMergeWithoutTheirPadding() {
        var run = Run()
        for i in 0..<3 { run.offer(Edge.segment(offset: i * 4, length: 4, padding: 2)) }
        run.end()
        #expect(run.sent.count == 1)
        expectStream(run.sent, 12)
    }

    @Test func malformedFramesNeverCrash() {
        var rng = SeededGenerator(state: 22)
        // With every mutated frame's checksums fixed, whatever is merged verifies; with
        // half of them left bad, bad sums may spoil merges (libslirp drops those), but
        // nothing crashes and every frame offered still leaves in some form.
        for (v6, fixAll) in [(false, true), (true, true), (false, false), (true, false)] {
            let input = segments(3, 40, v6: v6)
            var run = Run(maxPayload: 100)
            var offered: Set<[UInt8]> = []
            for n in 0...input[0].count {
                offered.insert(Array(input[0][0..<n]))
                run.offer(Array(input[0][0..<n]))
            }
            for _ in 0..<3000 {
                var g = input[Int.random(in: 0..<3, using: &rng)]
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    g[Int.random(in: 0..<g.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                if fixAll || Bool.random(using: &rng), g.count >= 54 { Edge.fix(&g) }
                offered.insert(g)
                run.offer(g)
            }
            run.end()
            #expect(!run.sent.isEmpty && !run.c.isHolding)
            guard fixAll else { continue }
            // What was not sent as it came was merged (or held alone): it verifies.
            for f in run.sent where !offered.contains(f) {
                #expect(Edge.valid(f) && f.withUnsafeBytes { TCPSegmentation.hasValidChecksums($0) })
            }
        }
    }
}
