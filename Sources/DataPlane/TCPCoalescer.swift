import FrameSwitch

// TCPCoalescer: software GRO for one guest port, merging the in-order TCP segments of one
// flow that arrive in one read batch, so libslirp (whose cost is per segment) handles one
// large segment instead of many.
//
// Theory of operation. The coalescer holds at most one segment (alone or merged). Only
// data segments with flags exactly ACK or ACK|PSH are candidates; IPv4 must carry no
// options and be no fragment, IPv6 must have TCP as its first next header, and an IPv4
// header checksum must verify. The payload is never read here: its sum is read off the
// TCP checksum (TCPSegmentLayout.payloadSumFromChecksum), so a segment with a wrong TCP
// checksum gives the merged segment a wrong one, and libslirp, which verifies every
// checksum, drops the merge (the guest resends it) as it would have dropped that segment.
// (An error in a header field the merge carries over unchecked, the first segment's urgent
// pointer or the last one's window and PSH, cancels out; one in any payload never does.)
// Summing each payload instead cost one more pass over every byte from the guest.
// A candidate extends the held segment when it continues it exactly: same MACs, IP
// version, addresses and ports, sequence number at the held end, same ACK number, same
// TCP data offset, reserved bits and option bytes, same IPv4 TOS, TTL and DF (IPv6
// traffic class, flow label and hop limit), and the merged payload stays within
// `maxPayload`. The merged segment keeps the first's IP header (IPv4 ID included) and
// takes the last one's window and PSH; a PSH segment ends the merge: it is absorbed and
// the merged segment is handed back at once as `flushed` (outcome `.absorbed`).
// Anything else flushes the held segment first (the caller sends it before the new
// frame, so order is kept): a candidate that cannot extend it is held alone instead (a
// PSH one, or one already at `maxPayload`, is `.pass`), any other frame is `.pass`.
// The merged checksum is built from sums: each payload's sum (from its checksum),
// swapped when it lands at an odd offset; the headers are summed once at the flush.
public struct TCPCoalescer {
    public enum Outcome: Equatable { case absorbed; case pass }

    /// Segments absorbed into another (a counter for /metrics).
    public private(set) var merged = 0
    public var isHolding: Bool { segments > 0 }

    /// The most payload an IPv4 datagram can carry behind a full-size TCP header (65535 -
    /// 20 - 60); IPv4 candidates have no IP options, IPv6's payload length allows more.
    public static let payloadLimit = 65535 - 20 - 60

    /// Merged payload never exceeds it (clamped to `payloadLimit`); a change applies from the next offer.
    public var maxPayload: Int {
        didSet { maxPayload = max(1, min(maxPayload, Self.payloadLimit)) }
    }
    /// The held frame (Ethernet header to the end of the payload), its layout, how many
    /// segments it holds, its payload's sum, its pseudo-header's address sum, and the
    /// sequence number that continues it.
    private var held: [UInt8] = []
    private var layout = TCPSegmentLayout.empty
    private var segments = 0
    private var payloadSum: UInt16 = 0
    private var pseudo: UInt16 = 0
    private var nextSeq: UInt32 = 0

    /// e.g. 16384 or 65000: merged payload never exceeds it.
    public init(maxPayload: Int) {
        self.maxPayload = max(1, min(maxPayload, Self.payloadLimit))
    }

    /// Offers a guest frame. `flushed`: the merged segment held so far, which the caller must send first
    /// (non-nil when the new frame cannot extend it). `.absorbed`: the new frame is now held (alone or merged);
    /// `.pass`: the caller sends the new frame itself, after `flushed`.
    public mutating func offer(_ frame: UnsafeRawBufferPointer) -> (flushed: [UInt8]?, outcome: Outcome) {
        guard let (l, sum) = Self.candidate(frame) else { return (flush(), .pass) }
        let push = frame[l.tcp + 13] & TCPSegmentation.psh != 0
        if segments > 0, extends(frame, l) {
            append(frame, l, payloadSum: sum, push: push)
            return (push ? flush() : nil, .absorbed)
        }
        let flushed = flush()
        if push || l.payloadLength >= maxPayload { return (flushed, .pass) }
        hold(frame, l, payloadSum: sum)
        return (flushed, .absorbed)
    }

    /// End of the read batch: the held segment, if any.
    public mutating func flush() -> [UInt8]? {
        guard segments > 0 else { return nil }
        let out: [UInt8]
        if segments == 1 {
            // As it came (without Ethernet padding), copied: the buffer stays for the next one.
            out = Array(held[...])
            held.removeAll(keepingCapacity: true)
        } else {
            finishMerge()
            out = held
            held = []
        }
        segments = 0
        return out
    }

    /// The frame's layout and payload sum when it is a candidate (see the theory of operation).
    private static func candidate(_ frame: UnsafeRawBufferPointer) -> (TCPSegmentLayout, UInt16)? {
        guard let l = TCPSegmentLayout(frame), l.payloadLength > 0,
              frame[l.tcp + 13] & ~TCPSegmentation.psh == 0x10,  // ACK, maybe PSH, nothing else
              frame[l.tcp + 12] & 0x0F == 0,  // reserved bits (and AccECN's) clear
              l.v6 || l.ipHeaderLength == 20,
              let sum = l.payloadSumFromChecksum(frame) else { return nil }
        return (l, sum)
    }

    /// Whether the candidate continues the held segment exactly.
    private func extends(_ frame: UnsafeRawBufferPointer, _ l: TCPSegmentLayout) -> Bool {
        guard l.v6 == layout.v6, l.payload == layout.payload,
              layout.payloadLength + l.payloadLength <= maxPayload,
              Self.seq(frame, l.tcp) == nextSeq else { return false }
        return held.withUnsafeBytes { h in
            func same(_ range: Range<Int>) -> Bool { Self.equal(h, frame, range) }
            let ip = TCPSegmentLayout.ip, t = l.tcp
            let ipSame = l.v6 ? same(ip..<(ip + 4)) && h[ip + 7] == frame[ip + 7] && same((ip + 8)..<(ip + 40))
                : h[ip + 1] == frame[ip + 1] && h[ip + 6] & 0x40 == frame[ip + 6] & 0x40 && h[ip + 8] == frame[ip + 8]
                    && same((ip + 12)..<(ip + 20))
            // MACs; ports; ACK number; data offset and reserved bits; options.
            return ipSame && same(0..<12) && same(t..<(t + 4)) && same((t + 8)..<(t + 13))
                && same((t + 20)..<l.payload)
        }
    }

    private mutating func hold(_ frame: UnsafeRawBufferPointer, _ l: TCPSegmentLayout, payloadSum sum: UInt16) {
        held.removeAll(keepingCapacity: true)
        held.reserveCapacity(l.payload + maxPayload)
        Self.append(UnsafeRawBufferPointer(rebasing: frame[0..<l.end]), to: &held)
        layout = l
        segments = 1
        payloadSum = sum
        pseudo = l.pseudoHeaderSum(frame)
        nextSeq = Self.seq(frame, l.tcp) &+ UInt32(l.payloadLength)
    }

    private mutating func append(_ frame: UnsafeRawBufferPointer, _ l: TCPSegmentLayout, payloadSum sum: UInt16,
                                 push: Bool) {
        // A payload that lands at an odd offset of the merged one contributes its sum byte-swapped.
        payloadSum = IPChecksum.add(payloadSum, layout.payloadLength & 1 == 0 ? sum : sum.byteSwapped)
        Self.append(UnsafeRawBufferPointer(rebasing: frame[l.payload..<l.end]), to: &held)
        layout.end += l.payloadLength
        let t = layout.tcp
        held[t + 14] = frame[l.tcp + 14]  // the last segment's window
        held[t + 15] = frame[l.tcp + 15]
        if push { held[t + 13] |= TCPSegmentation.psh }
        nextSeq = nextSeq &+ UInt32(l.payloadLength)
        segments += 1
        merged += 1
    }

    /// Lengths and checksums of the merged segment.
    private mutating func finishMerge() {
        let l = layout, sum = payloadSum, pseudo = pseudo
        held.withUnsafeMutableBytes { out in
            let ip = TCPSegmentLayout.ip, t = l.tcp
            if l.v6 {
                out.storeNet16(UInt16(l.end - t), at: ip + 4)
            } else {
                out.storeNet16(UInt16(l.end - ip), at: ip + 2)
                out.storeNet16(0, at: ip + 10)
                out.storeNet16(~IPChecksum.sum(UnsafeRawBufferPointer(rebasing: out[ip..<t])), at: ip + 10)
            }
            out.storeNet16(0, at: t + 16)
            let headerSum = IPChecksum.sum(UnsafeRawBufferPointer(rebasing: out[t..<l.payload]))
            let total = IPChecksum.add(IPChecksum.add(pseudo, UInt16(l.end - t)), IPChecksum.add(headerSum, sum))
            out.storeNet16(~total, at: t + 16)
        }
    }

    /// Whether two buffers hold the same bytes in `range`, compared eight at a time.
    private static func equal(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        guard range.upperBound <= a.count, range.upperBound <= b.count else { return false }
        var i = range.lowerBound
        if let pa = a.baseAddress, let pb = b.baseAddress {
            while i + 8 <= range.upperBound {
                if pa.loadUnaligned(fromByteOffset: i, as: UInt64.self) != pb.loadUnaligned(fromByteOffset: i, as: UInt64.self) {
                    return false
                }
                i += 8
            }
        }
        while i < range.upperBound {
            if a[i] != b[i] { return false }
            i += 1
        }
        return true
    }

    private static func seq(_ frame: UnsafeRawBufferPointer, _ t: Int) -> UInt32 {
        UInt32(frame[t + 4]) << 24 | UInt32(frame[t + 5]) << 16 | UInt32(frame[t + 6]) << 8 | UInt32(frame[t + 7])
    }

    private static func append(_ bytes: UnsafeRawBufferPointer, to array: inout [UInt8]) {
        bytes.withMemoryRebound(to: UInt8.self) { array.append(contentsOf: $0) }
    }
}
