import FrameSwitch
import Testing

@Suite("IPv4 reassembly before libslirp")
struct IPv4ReassemblyTests {
    static let second: Int64 = 1_000_000_000

    /// A UDP datagram of `length` bytes (header included) from 10.0.2.15 to 10.0.2.2.
    static func udp(_ length: Int) -> [UInt8] {
        [0x13, 0x88, 0, 7, UInt8(length >> 8), UInt8(length & 0xFF), 0, 0] + (8..<length).map { UInt8(truncatingIfNeeded: $0 * 7) }
    }

    /// A fragment carrying `payload` at byte `offset`, with a valid header checksum.
    static func fragment(_ payload: ArraySlice<UInt8>, offset: Int, more: Bool, id: UInt16 = 7, dontFragment: Bool = false) -> [UInt8] {
        let flags = UInt16(more ? 0x2000 : 0) | UInt16(dontFragment ? 0x4000 : 0) | UInt16(offset / 8)
        let total = 20 + payload.count
        var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), UInt8(id >> 8), UInt8(id & 0xFF),
                           UInt8(flags >> 8), UInt8(flags & 0xFF), 64, 17, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2]
        IPChecksum.store(in: &ip, at: 10)
        return [0x52, 0x55, 10, 0, 2, 2, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00] + ip + payload
    }

    /// The datagram cut at `cuts` (byte offsets, multiples of 8), as fragments in order.
    static func fragments(_ datagram: [UInt8], cuts: [Int], id: UInt16 = 7) -> [[UInt8]] {
        let bounds = [0] + cuts + [datagram.count]
        return (0..<(bounds.count - 1)).map { i in
            fragment(datagram[bounds[i]..<bounds[i + 1]], offset: bounds[i], more: i < bounds.count - 2, id: id)
        }
    }

    /// What the whole datagram must look like: one unfragmented IPv4 frame, valid checksum.
    static func expectWhole(_ outcome: IPv4Reassembly.Outcome, _ datagram: [UInt8]) {
        guard case .complete(let frame) = outcome else {
            Issue.record("expected the whole datagram, got \(outcome)")
            return
        }
        #expect(Array(frame[34...]) == datagram)
        #expect(Int(frame[16]) << 8 | Int(frame[17]) == 20 + datagram.count)
        #expect(frame[20] & 0x3F == 0 && frame[21] == 0)
        #expect(IPChecksum.sum(Array(frame[14..<34])) == 0xFFFF)
        #expect(!IPv4Reassembly.isFragment(frame))
    }

    @Test("whole datagrams and other frames pass untouched")
    func passes() {
        var r = IPv4Reassembly()
        let whole = Self.fragment(Self.udp(100)[...], offset: 0, more: false, dontFragment: true)
        #expect(r.input(whole, now: 0) == .pass)
        var arp = whole
        arp[13] = 0x06
        #expect(r.input(arp, now: 0) == .pass)
        #expect(r.held == 0)
    }

    @Test("every order of arrival gives the same whole datagram, the last fragment first included")
    func orders() {
        let datagram = Self.udp(3008)
        let pieces = Self.fragments(datagram, cuts: [1480, 2960])
        for order in [[0, 1, 2], [2, 1, 0], [2, 0, 1], [1, 2, 0], [0, 2, 1]] {
            var r = IPv4Reassembly()
            for i in order.dropLast() { #expect(r.input(pieces[i], now: 0) == .held) }
            Self.expectWhole(r.input(pieces[order.last!], now: 0), datagram)
            #expect(r.held == 0 && r.reassembled == 1)
        }
    }

    @Test("a lone last fragment is held, never handed on, and expires")
    func loneLast() {
        var r = IPv4Reassembly()
        let datagram = Self.udp(3008)
        #expect(r.input(Self.fragments(datagram, cuts: [1480])[1], now: 0) == .held)
        #expect(r.expire(now: IPv4Reassembly.lifetime - 1) == 0)
        #expect(r.expire(now: IPv4Reassembly.lifetime) == 1)
        #expect(r.held == 0)
    }

    @Test("an exact duplicate is ignored; overlaps, two ends and pieces past the end drop the datagram")
    func conflicts() {
        let datagram = Self.udp(3008)
        let pieces = Self.fragments(datagram, cuts: [1480])
        var r = IPv4Reassembly()
        #expect(r.input(pieces[0], now: 0) == .held)
        #expect(r.input(pieces[0], now: 0) == .held)
        Self.expectWhole(r.input(pieces[1], now: 0), datagram)

        r = IPv4Reassembly()
        #expect(r.input(pieces[0], now: 0) == .held)
        guard case .dropped = r.input(Self.fragment(datagram[1472..<2000], offset: 1472, more: true), now: 0) else {
            Issue.record("an overlap was not dropped")
            return
        }
        #expect(r.held == 0)
        // Everything after a drop starts afresh: the late last fragment alone is held, not completed.
        #expect(r.input(pieces[1], now: 0) == .held)

        r = IPv4Reassembly()
        #expect(r.input(pieces[1], now: 0) == .held)
        if case .dropped = r.input(Self.fragment(datagram[1480..<1600], offset: 1480, more: false), now: 0) {} else {
            Issue.record("a second end was not dropped")
        }
        r = IPv4Reassembly()
        #expect(r.input(pieces[1], now: 0) == .held)
        if case .dropped = r.input(Self.fragment(datagram[2960..<3008] + [0, 0, 0, 0, 0, 0, 0, 0], offset: 3008, more: true), now: 0) {} else {
            Issue.record("a piece past the end was not dropped")
        }
    }

    @Test("malformed fragments are dropped, not held")
    func malformed() {
        let good = Self.fragments(Self.udp(3008), cuts: [1480])[0]
        var badSum = good
        badSum[24] ^= 0xFF
        var badTotal = good
        badTotal[16] = 0xFF
        let unaligned = Self.fragment(Self.udp(3008)[0..<1477], offset: 0, more: true)
        let huge = Self.fragment(Self.udp(100)[0..<16], offset: 65_528, more: false)
        for frame in [badSum, badTotal, unaligned, huge] {
            var r = IPv4Reassembly()
            if case .dropped = r.input(frame, now: 0) {} else { Issue.record("not dropped: \(frame.prefix(40))") }
            #expect(r.held == 0)
        }
    }

    @Test("what is held is bounded in datagrams and in bytes")
    func bounded() {
        var r = IPv4Reassembly()
        let datagram = Self.udp(3008)
        for id in 0..<UInt16(IPv4Reassembly.maximumDatagrams) {
            #expect(r.input(Self.fragments(datagram, cuts: [1480], id: id)[0], now: 0) == .held)
        }
        if case .dropped = r.input(Self.fragments(datagram, cuts: [1480], id: 999)[0], now: 0) {} else {
            Issue.record("a datagram past the limit was held")
        }
        // Old ones expire and make room.
        #expect(r.input(Self.fragments(datagram, cuts: [1480], id: 999)[0], now: IPv4Reassembly.lifetime) == .held)
        #expect(r.held == 1)

        r = IPv4Reassembly()
        let big = Self.udp(65_000)
        let cuts = Array(stride(from: 1480, to: 65_000, by: 1480))
        var heldBytes = 0, dropped = false
        for id in 0..<UInt16(40) where !dropped {
            for piece in Self.fragments(big, cuts: cuts, id: id).dropLast() {
                if case .dropped = r.input(piece, now: 0) { dropped = true; break }
                heldBytes += 1480
            }
        }
        #expect(dropped && heldBytes <= IPv4Reassembly.maximumBytes)
    }
}
