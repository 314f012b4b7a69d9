// fuzz-edge: the libFuzzer target for the edge stages, TCPSegmentation (software TSO, both
// forms) and TCPCoalescer (software GRO).
//
// Theory of operation. The first 18 bytes of the input describe a frame and what to do
// with it; the rest is its TCP payload, or (mode bit 1) the whole frame, raw. Crafted
// frames are IPv4 or IPv6 with correct checksums, optional TCP and IPv4 options, Ethernet
// padding, any flags and urgent pointer, and optionally a wrong IP length. The frame is
// segmented at a fuzzed MSS, split at a fuzzed point, and the pieces (or the frame) go
// through a coalescer with a fuzzed cap after an edit program (corrupt, drop, duplicate,
// insert a frame of another protocol). The target traps when a promise breaks:
// - segment/split answer for exactly the frames an independent parser accepts (TCP in
//   IPv4 without fragments or IPv6 without extension headers, lengths that fit), with SYN
//   and RST left alone; every piece is one datagram with valid IPv4 header and TCP
//   checksums (checked byte by byte here), at most MSS bytes, in sequence, FIN/PSH only
//   last, CWR only first, and the pieces' payloads are the frame's payload;
// - the coalescer's output, in order, is its input: each frame sent is either an input as
//   it came (without padding) or the merge of consecutive inputs, which stays within the
//   cap, was made only of ACK or ACK|PSH inputs with valid IPv4 headers, and verifies
//   when every input's TCP checksum did. (With a bad input it may verify or not: the
//   coalescer reads payload sums off the checksums, so an error spoils the merge unless
//   it sits in a header field the merge carries over; TCPCoalescerTests covers payloads.)

import DataPlane
import FrameSwitch

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-edge invariant broken: \(what())") }
}

// MARK: an independent reader of frames, byte by byte

func sum(_ bytes: ArraySlice<UInt8>, _ initial: UInt32 = 0) -> UInt32 {
    var s = initial
    var high = true
    for b in bytes {
        s += high ? UInt32(b) << 8 : UInt32(b)
        high.toggle()
        if s > 0xFFFF_0000 { s = (s & 0xFFFF) + (s >> 16) }
    }
    while s > 0xFFFF { s = (s & 0xFFFF) + (s >> 16) }
    return s
}

func be16(_ f: [UInt8], _ at: Int) -> Int { Int(f[at]) << 8 | Int(f[at + 1]) }
func be32(_ f: [UInt8], _ at: Int) -> UInt32 { UInt32(be16(f, at)) << 16 | UInt32(be16(f, at + 2)) }

struct Parsed {
    var v6: Bool
    var tcp: Int
    var payload: Int
    var end: Int
    var seq: UInt32
    var flags: UInt8

    init?(_ f: [UInt8]) {
        guard f.count >= 34 else { return nil }
        if f[12] == 0x08, f[13] == 0x00 {
            let ihl = Int(f[14] & 0x0F) * 4, total = be16(f, 16)
            let fragment = be16(f, 20) & 0x3FFF
            guard f[14] >> 4 == 4, ihl >= 20, total >= ihl + 20, 14 + total <= f.count, f[23] == 6, fragment == 0
            else { return nil }
            (v6, tcp, end) = (false, 14 + ihl, 14 + total)
        } else if f[12] == 0x86, f[13] == 0xDD {
            guard f.count >= 54, f[14] >> 4 == 6, f[20] == 6 else { return nil }
            let length = be16(f, 18)
            guard length >= 20, 54 + length <= f.count else { return nil }
            (v6, tcp, end) = (true, 54, 54 + length)
        } else {
            return nil
        }
        let dataOffset = Int(f[tcp + 12] >> 4) * 4
        guard dataOffset >= 20, tcp + dataOffset <= end else { return nil }
        payload = tcp + dataOffset
        seq = be32(f, tcp + 4)
        flags = f[tcp + 13]
    }

    /// IPv4 header and TCP checksums verify.
    func valid(_ f: [UInt8]) -> Bool {
        if !v6, sum(f[14..<tcp]) != 0xFFFF { return false }
        let addresses = v6 ? f[22..<54] : f[26..<34]
        return sum(f[tcp..<end], sum(addresses, 6 + UInt32(end - tcp))) == 0xFFFF
    }

    func payloadBytes(_ f: [UInt8]) -> ArraySlice<UInt8> { f[payload..<end] }
}

/// A piece or merge the stages made: exactly one datagram, with valid checksums unless
/// `valid` is nil (a merge of an input with a bad TCP checksum).
func checkMade(_ f: [UInt8], _ what: String, valid: Bool? = true) -> Parsed {
    guard let p = Parsed(f) else { fatalError("fuzz-edge: \(what) does not parse") }
    check(p.end == f.count, "\(what) has bytes past its datagram")
    if valid != nil { check(p.valid(f), "\(what) has a bad checksum") }
    return p
}

// MARK: building frames

struct Reader {
    var bytes: [UInt8]
    var at = 0
    mutating func u8() -> UInt8 {
        defer { at += 1 }
        return at < bytes.count ? bytes[at] : 0
    }
    mutating func u16() -> Int { Int(u8()) << 8 | Int(u8()) }
    mutating func u32() -> UInt32 { UInt32(u16()) << 16 | UInt32(u16()) }
    mutating func rest() -> [UInt8] { at < bytes.count ? Array(bytes[at...]) : [] }
}

let guest4: [UInt8] = [10, 0, 2, 15], gateway4: [UInt8] = [10, 0, 2, 2]
let guest6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x0F]
let gateway6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x02]
let macs: [UInt8] = [0x52, 0x55, 10, 0, 2, 2, 0x52, 0x54, 0, 0x12, 0x34, 0x56]

func crafted(v6: Bool, flags: UInt8, seq: UInt32, urgent: Int, tcpOptions: Bool, ipOptions: Bool, padding: Int,
             lengthDelta: Int, payload: [UInt8]) -> [UInt8] {
    let options: [UInt8] = tcpOptions ? [1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 2, 0] : []
    var seg: [UInt8] = [0x9C, 0x40, 0, 80] + bigEndianBytes(seq) + [0, 0, 3, 9]
        + [UInt8((20 + options.count) / 4) << 4, flags, 0x10, 0] + [0, 0] + bigEndianBytes(UInt16(urgent)) + options + payload
    let (src, dst) = v6 ? (gateway6, guest6) : (gateway4, guest4)
    let c = ~UInt16(sum(seg[...], sum((src + dst)[...], 6 + UInt32(seg.count))))
    seg[16] = UInt8(c >> 8)
    seg[17] = UInt8(c & 0xFF)
    let pad = [UInt8](repeating: 0, count: padding)
    if v6 {
        let length = UInt16(clamping: max(0, seg.count + lengthDelta))
        return macs + [0x86, 0xDD, 0x60, 0, 0, 0] + bigEndianBytes(length) + [6, 64] + src + dst + seg + pad
    }
    let ipo: [UInt8] = ipOptions ? [1, 1, 1, 0] : []
    let total = UInt16(clamping: max(0, 20 + ipo.count + seg.count + lengthDelta))
    var ip: [UInt8] = [UInt8(0x40 | (20 + ipo.count) / 4), 0] + bigEndianBytes(total) + [0x12, 0x34, 0x40, 0, 64, 6, 0, 0]
        + src + dst + ipo
    let h = ~UInt16(sum(ip[...]))
    ip[10] = UInt8(h >> 8)
    ip[11] = UInt8(h & 0xFF)
    return macs + [0x08, 0x00] + ip + seg + pad
}

// MARK: the checks

func checkSegment(_ f: [UInt8], mss: Int) -> [[UInt8]]? {
    let pieces = f.withUnsafeBytes { TCPSegmentation.segment($0, mss: mss) }
    let parsed = Parsed(f)
    let expected = parsed.map { mss > 0 && $0.end - $0.payload > mss && $0.flags & 0x06 == 0 } ?? false
    check((pieces != nil) == expected, "segment answered \(pieces != nil) for a frame it should \(expected ? "" : "not ")cut")
    var scratch: [UInt8] = [], same: [[UInt8]] = []
    let cut = f.withUnsafeBytes { TCPSegmentation.forEachSegment($0, mss: mss, scratch: &scratch) { same.append(Array($0)) } }
    check(cut == (pieces != nil) && same == (pieces ?? []), "forEachSegment differs from segment")
    guard let pieces, let p = parsed else { return nil }
    var offset = 0
    for (i, piece) in pieces.enumerated() {
        let q = checkMade(piece, "piece \(i)")
        let n = q.end - q.payload
        check(n > 0 && n <= mss, "piece \(i) carries \(n) bytes, mss \(mss)")
        check(q.seq == p.seq &+ UInt32(offset), "piece \(i) has seq \(q.seq)")
        check(q.payload - q.tcp == p.payload - p.tcp && q.v6 == p.v6, "piece \(i) changed its headers' size")
        let last = i == pieces.count - 1
        check(q.flags & 0x09 == (last ? p.flags & 0x09 : 0), "piece \(i) FIN/PSH")
        check(q.flags & 0x80 == (i == 0 ? p.flags & 0x80 : 0), "piece \(i) CWR")
        check(q.flags & 0x50 == p.flags & 0x50, "piece \(i) ACK/ECE")
        offset += n
    }
    var carried: [UInt8] = []
    for piece in pieces { carried += Parsed(piece).map { piece[$0.payload..<$0.end] } ?? [] }
    check(carried == Array(p.payloadBytes(f)), "pieces do not carry the payload")
    return pieces
}

func checkSplit(_ f: [UInt8], at n: Int) {
    let halves = f.withUnsafeBytes { TCPSegmentation.split($0, payloadBytes: n) }
    let parsed = Parsed(f)
    let expected = parsed.map { n > 0 && n < $0.end - $0.payload && $0.flags & 0x06 == 0 } ?? false
    check((halves != nil) == expected, "split answered \(halves != nil) at \(n)")
    guard let (head, tail) = halves, let p = parsed else { return }
    let h = checkMade(head, "head"), t = checkMade(tail, "tail")
    check(h.end - h.payload == n && t.seq == p.seq &+ UInt32(n), "split at the wrong place")
    check(Array(h.payloadBytes(head) + t.payloadBytes(tail)) == Array(p.payloadBytes(f)), "split lost bytes")
}

func checkCoalescer(_ inputs: [[UInt8]], maxPayload: Int) {
    var c = TCPCoalescer(maxPayload: maxPayload)
    var sent: [[UInt8]] = []
    for f in inputs {
        let (flushed, outcome) = f.withUnsafeBytes { c.offer($0) }
        if let flushed { sent.append(flushed) }
        if outcome == .pass { sent.append(f) }
    }
    if let f = c.flush() { sent.append(f) }
    check(!c.isHolding, "holding after flush")
    let cap = min(maxPayload, 65535 - 80)
    // Map each frame sent to the inputs it came from, in order.
    var next = 0
    var merges = 0
    for out in sent {
        check(next < inputs.count, "more frames sent than offered")
        let input = inputs[next]
        let trimmed = Parsed(input).map { Array(input[0..<$0.end]) } ?? input
        if out == input || out == trimmed {
            next += 1
            continue
        }
        guard let o = Parsed(out) else { fatalError("fuzz-edge: a merged segment does not parse") }
        let total = o.end - o.payload
        check(total <= max(cap, 1), "a merge of \(total) bytes, cap \(maxPayload)")
        var bytes: [UInt8] = []
        var first = true
        var allValid = true
        while bytes.count < total, next < inputs.count {
            let f = inputs[next]
            guard let p = Parsed(f) else { fatalError("fuzz-edge: a non-TCP frame was merged") }
            check(p.v6 || sum(f[14..<p.tcp]) == 0xFFFF, "a segment with a bad IPv4 header checksum was merged")
            allValid = allValid && p.valid(f)
            check(p.flags == 0x10 || p.flags == 0x18, "a segment with flags \(p.flags) was merged")
            if first { check(p.seq == o.seq, "a merge starts at the wrong seq") }
            first = false
            bytes += p.payloadBytes(f)
            next += 1
            merges += 1
        }
        merges -= 1
        _ = checkMade(out, "a merged segment", valid: allValid ? true : nil)
        check(bytes == Array(o.payloadBytes(out)), "a merge is not its inputs' payloads")
    }
    check(next == inputs.count, "\(inputs.count - next) frames offered were never sent")
    check(c.merged == merges, "merged counts \(c.merged), saw \(merges)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var r = Reader(bytes: Array(UnsafeBufferPointer(start: data, count: size)))
    let mode = r.u8(), flags = r.u8()
    let mssWord = r.u16()
    let mss = mode & 0x80 != 0 ? mssWord : 1 + mssWord % 1500
    let urgent = r.u16(), splitAt = r.u16() % 5000
    let maxPayload = 1 + r.u16()
    let seq = r.u32()
    let lengthDelta = Int(Int8(bitPattern: r.u8()))
    let program = (0..<3).map { _ in r.u8() }
    let frame: [UInt8]
    if mode & 0x02 != 0 {
        frame = r.rest()
    } else {
        frame = crafted(v6: mode & 0x01 != 0, flags: flags, seq: seq, urgent: urgent, tcpOptions: mode & 0x04 != 0,
                        ipOptions: mode & 0x08 != 0, padding: mode & 0x10 != 0 ? 7 : 0,
                        lengthDelta: mode & 0x20 != 0 ? lengthDelta : 0, payload: r.rest())
    }
    let pieces = checkSegment(frame, mss: mss)
    checkSplit(frame, at: splitAt)

    // The coalescer gets the pieces (or the frame twice, then a continuation) after the edit program.
    var inputs = pieces ?? [frame, frame]
    for op in program where !inputs.isEmpty {
        let i = Int(op & 0x3F) % inputs.count
        switch op >> 6 {
        case 0: if inputs[i].count > 60 { inputs[i][inputs[i].count - 1 - Int(op & 7)] ^= 0x20 }  // corrupt
        case 1: inputs.remove(at: i)
        case 2: inputs.insert(inputs[i], at: i)
        default: inputs.insert(macs + [0x08, 0x06] + [UInt8](repeating: op, count: 28), at: i)  // ARP-like
        }
    }
    checkCoalescer(inputs, maxPayload: maxPayload)
    return 0
}
