import DataPlane
import FrameSwitch
import TestSupport
import Testing

@Suite struct TCPSegmentationTests {
    static let fin: UInt8 = 0x01, psh: UInt8 = 0x08, ack: UInt8 = 0x10, urg: UInt8 = 0x20
    static let ece: UInt8 = 0x40, cwr: UInt8 = 0x80

    func segment(_ f: [UInt8], mss: Int) -> [[UInt8]]? { f.withUnsafeBytes { TCPSegmentation.segment($0, mss: mss) } }
    func split(_ f: [UInt8], _ n: Int) -> (head: [UInt8], tail: [UInt8])? {
        f.withUnsafeBytes { TCPSegmentation.split($0, payloadBytes: n) }
    }

    /// Every piece is valid, at most `mss` bytes, in sequence, and together they carry the payload.
    func expectPieces(_ pieces: [[UInt8]], of original: [UInt8], mss: Int) {
        var offset = 0
        for p in pieces {
            #expect(Edge.valid(p))
            let payload = Edge.payload(p)
            #expect(payload.count <= mss && !payload.isEmpty)
            #expect(Edge.seq(p) == Edge.seq(original) &+ UInt32(offset))
            #expect(Array(p[0..<Edge.payloadStart(p)]).count == Edge.payloadStart(original))
            offset += payload.count
        }
        #expect(pieces.flatMap(Edge.payload) == Edge.payload(original))
    }

    @Test(arguments: [false, true])
    func boundaries(v6: Bool) {
        // (payload, mss, pieces): nil when no cut is needed.
        let cases: [(Int, Int, Int?)] = [(1460, 1460, nil), (1, 1460, nil), (1461, 1460, 2), (2920, 1460, 2),
                                        (2921, 1460, 3), (4381, 1460, 4), (1000, 7, 143), (3, 1, 3), (999, 2, 500),
                                        (65000, 1460, 45), (8999, 8960, 2)]
        for (length, mss, count) in cases {
            let f = Edge.segment(v6: v6, fromGuest: false, length: length, flags: Self.ack | Self.psh)
            let pieces = segment(f, mss: mss)
            #expect(pieces?.count == count, "payload \(length), mss \(mss)")
            // The allocation-free form builds the same pieces in one reused buffer.
            var scratch: [UInt8] = [], same: [[UInt8]] = []
            let cut = f.withUnsafeBytes { TCPSegmentation.forEachSegment($0, mss: mss, scratch: &scratch) { same.append(Array($0)) } }
            #expect(cut == (pieces != nil) && same == (pieces ?? []))
            guard let pieces else { continue }
            expectPieces(pieces, of: f, mss: mss)
            for p in pieces.dropLast() { #expect(Edge.payload(p).count == mss) }
        }
    }

    @Test(arguments: [false, true])
    func flagsOnTheRightPieces(v6: Bool) {
        let f = Edge.segment(v6: v6, fromGuest: false, length: 5000,
                             flags: Self.ack | Self.psh | Self.fin | Self.cwr | Self.ece)
        let pieces = segment(f, mss: 1448) ?? []
        #expect(pieces.count == 4)
        for (i, p) in pieces.enumerated() {
            let flags = Edge.flags(p)
            #expect(flags & Self.ack != 0 && flags & Self.ece != 0)
            #expect((flags & Self.cwr != 0) == (i == 0))
            #expect((flags & Self.fin != 0) == (i == 3))
            #expect((flags & Self.psh != 0) == (i == 3))
        }
        expectPieces(pieces, of: f, mss: 1448)
    }

    @Test func ipv4IdentificationDFAndHeaderFields() {
        var f = Edge.segment(fromGuest: false, length: 3000, ipOptions: [1, 1, 1, 0])
        f = Edge.with(f) { g in
            g[18] = 0xFF; g[19] = 0xFE  // ID 0xFFFE: the third piece wraps to 0
            g[15] = 0x28  // TOS
            g[22] = 17  // TTL
        }
        let pieces = segment(f, mss: 1000) ?? []
        #expect(pieces.map(Edge.ipID) == [0xFFFE, 0xFFFF, 0x0000])
        for p in pieces {
            #expect(p[20] & 0x40 != 0)  // DF
            #expect(p[15] == 0x28 && p[22] == 17)
            #expect(Array(p[34..<38]) == [1, 1, 1, 0])  // IP options on every piece
            #expect(Int(read16(p, 16)) == 24 + 20 + Edge.payload(p).count)
        }
        expectPieces(pieces, of: f, mss: 1000)
    }

    @Test(arguments: [false, true])
    func tcpOptionsOnEveryPieceAndPaddingDropped(v6: Bool) {
        let options: [UInt8] = [1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8]
        let f = Edge.segment(v6: v6, fromGuest: false, length: 2001, options: options, padding: 13)
        let pieces = segment(f, mss: 1000) ?? []
        #expect(pieces.count == 3)
        for p in pieces { #expect(Array(p[(Edge.tcp(p) + 20)..<Edge.payloadStart(p)]) == options) }
        #expect(pieces.last.map(Edge.payload)?.count == 1)
        expectPieces(pieces, of: f, mss: 1000)  // valid() also wants no padding
    }

    @Test(arguments: [false, true])
    func sequenceNumbersWrap(v6: Bool) {
        let f = Edge.segment(v6: v6, fromGuest: false, seq: 0xFFFF_FE00, length: 1000)
        let pieces = segment(f, mss: 300) ?? []
        #expect(pieces.map(Edge.seq) == [0xFFFF_FE00, 0xFFFF_FF2C, 0x0000_0058, 0x0000_0184])
        expectPieces(pieces, of: f, mss: 300)
    }

    @Test func urgentPointerFollowsTheMark() {
        let f = Edge.with(Edge.segment(fromGuest: false, length: 5000, flags: Self.ack | Self.urg)) { g in
            g[34 + 18] = 0x0B; g[34 + 19] = 0xB8  // 3000: the mark is inside the fourth piece
        }
        let pieces = segment(f, mss: 900) ?? []
        #expect(pieces.count == 6)
        #expect(pieces.map { Edge.flags($0) & Self.urg != 0 } == [true, true, true, true, false, false])
        #expect(pieces.map(Edge.urgent) == [3000, 2100, 1200, 300, 0, 0])
        expectPieces(pieces, of: f, mss: 900)
    }

    @Test(arguments: [false, true])
    func splitMakesTwoValidSegments(v6: Bool) {
        let f = Edge.segment(v6: v6, fromGuest: false, length: 1001, flags: Self.ack | Self.psh | Self.fin | Self.cwr)
        for n in [1, 2, 500, 999, 1000] {
            guard let (head, tail) = split(f, n) else {
                Issue.record("no split at \(n)")
                continue
            }
            #expect(Edge.valid(head) && Edge.valid(tail))
            #expect(Edge.payload(head) == Array(Edge.payload(f)[0..<n]))
            #expect(Edge.payload(tail) == Array(Edge.payload(f)[n...]))
            #expect(Edge.seq(tail) == Edge.seq(f) &+ UInt32(n))
            #expect(Edge.flags(head) == Self.ack | Self.cwr)
            #expect(Edge.flags(tail) == Self.ack | Self.psh | Self.fin)
            if !v6 { #expect(Edge.ipID(tail) == Edge.ipID(head) &+ 1) }
        }
        for n in [0, -1, 1001, 5000] { #expect(split(f, n) == nil) }
    }

    @Test func refusesWhatItMustNotCut() {
        let good = Edge.segment(fromGuest: false, length: 3000)
        #expect(segment(good, mss: 1000) != nil)
        #expect(segment(good, mss: 0) == nil)
        #expect(segment(good, mss: -5) == nil)
        let syn = Edge.segment(fromGuest: false, length: 3000, flags: 0x12)
        let rst = Edge.segment(fromGuest: false, length: 3000, flags: 0x14)
        let moreFragments = Edge.with(good) { $0[20] |= 0x20 }
        let offset = Edge.with(good) { $0[21] = 0x10 }
        let truncated = Array(good.dropLast())
        let totalTooShort = Edge.with(good) { $0[16] = 0; $0[17] = 39 }  // IHL 20 + 19 bytes of TCP header
        let notTCP = Edge.with(good) { $0[23] = 17 }
        let dataOffsetTooSmall = Edge.with(good) { $0[34 + 12] = 0x40 }
        let dataOffsetPastEnd = Edge.with(Edge.segment(fromGuest: false, length: 10)) { $0[34 + 12] = 0xF0 }
        let ihlTooSmall = Edge.with(good) { $0[14] = 0x44 }
        let v6HopByHop = Edge.with(Edge.segment(v6: true, fromGuest: false, length: 3000)) { $0[20] = 0 }
        let v6Truncated = Array(Edge.segment(v6: true, fromGuest: false, length: 3000).dropLast(2))
        let vlan = Array(good[0..<12]) + [0x81, 0x00, 0x00, 0x05] + Array(good[12...])
        for f in [syn, rst, moreFragments, offset, truncated, totalTooShort, notTCP, dataOffsetTooSmall,
                  dataOffsetPastEnd, ihlTooSmall, v6HopByHop, v6Truncated, vlan] {
            #expect(segment(f, mss: 100) == nil)
            #expect(split(f, 5) == nil)
        }
    }

    @Test func malformedFramesNeverCrash() {
        var rng = SeededGenerator(state: 16)
        for v6 in [false, true] {
            let f = Edge.segment(v6: v6, fromGuest: false, length: 300, options: [2, 4, 5, 0xB4])
            for n in 0...f.count {  // every prefix
                let prefix = Array(f[0..<n])
                _ = segment(prefix, mss: 7)
                _ = split(prefix, 3)
            }
            for _ in 0..<3000 {  // random bytes in the headers
                var g = f
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    g[Int.random(in: 12..<(Edge.tcp(f) + 24), using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                if let pieces = segment(g, mss: Int.random(in: 1...400, using: &rng)) {
                    for p in pieces { #expect(Edge.valid(p)) }
                }
                _ = split(g, Int.random(in: -1...400, using: &rng))
            }
        }
    }

    /// The word-at-a-time sum against the byte-at-a-time one, at every length and alignment.
    @Test func fastSumMatchesNaiveSum() {
        var rng = SeededGenerator(state: 1071)
        let bytes = (0..<700).map { _ in UInt8.random(in: 0...255, using: &rng) }
        bytes.withUnsafeBytes { raw in
            for start in 0..<9 {
                for end in start...bytes.count where (end - start) < 80 || end % 37 == 0 {
                    let fast = IPChecksum.sum(UnsafeRawBufferPointer(rebasing: raw[start..<end]), initial: 0x1234)
                    #expect(UInt32(fast) == Edge.naiveSum(bytes[start..<end], 0x1234), "\(start)..<\(end)")
                }
            }
        }
        let ones = [UInt8](repeating: 0xFF, count: 70_000)
        #expect(IPChecksum.sum(ones) == 0xFFFF)
    }
}
