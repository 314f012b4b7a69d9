import FrameSwitch

// TCPSegmentation: software TSO, cutting a large TCP segment (libslirp runs at MTU 65520)
// into segments a guest's MTU carries.
//
// Theory of operation. Each piece is the frame's Ethernet, IP and TCP headers (IP and TCP
// options included) followed by its share of the payload, with the fields a sender's
// stack would give it:
// - sequence number: the original plus the payload bytes before the piece;
// - flags: FIN and PSH only on the last piece, CWR only on the first, the rest (ACK, ECE)
//   on all; SYN or RST segments are never cut (nil: the caller passes them on);
// - URG, as Linux's TSO does: kept on every piece that starts before the urgent mark
//   (seq + urgent pointer) with the pointer made relative to the piece, cleared (pointer
//   0) on the pieces at or past it; the first piece keeps the original pointer as it is;
// - IPv4: total length, identification + piece index (the first keeps the original; DF
//   and the other fields are copied), header checksum; IPv6: payload length;
// - TCP checksum computed afresh for every piece, pseudo-header included. The input's own
//   checksum is not read, so a frame that carries only the pseudo-header sum (a vnet
//   header's NEEDS_CSUM) is cut as well as a complete one; a caller that takes frames
//   from a guest and must not make a bad segment look good checks
//   `hasValidChecksums` first.
// The payload is copied once and summed with word loads (IPChecksum.sum on raw bytes),
// headers are summed per piece; Ethernet padding past the IP datagram is dropped.
// `forEachSegment` builds the pieces one after another in a reused buffer, for a caller
// that sends each at once: half the cost of `segment`'s array per piece (about 10 us
// against 20 for 64 KiB at MSS 1460 in a release build here).
public enum TCPSegmentation {
    static let fin: UInt8 = 0x01, syn: UInt8 = 0x02, rst: UInt8 = 0x04, psh: UInt8 = 0x08
    static let urg: UInt8 = 0x20, cwr: UInt8 = 0x80

    /// Cuts a TCP segment whose payload exceeds `mss` into segments of at most `mss` payload bytes;
    /// nil when the frame is not a well-formed IPv4/IPv6 TCP frame (caller passes it on unchanged) or needs no cut.
    public static func segment(_ frame: UnsafeRawBufferPointer, mss: Int) -> [[UInt8]]? {
        guard mss > 0, let layout = TCPSegmentLayout(frame), layout.payloadLength > mss,
              frame[layout.tcp + 13] & (syn | rst) == 0 else { return nil }
        let total = layout.payloadLength
        let count = (total + mss - 1) / mss
        let pseudo = layout.pseudoHeaderSum(frame)
        var pieces: [[UInt8]] = []
        pieces.reserveCapacity(count)
        var offset = 0
        for index in 0..<count {
            let length = min(mss, total - offset)
            pieces.append(piece(frame, layout, pseudo: pseudo, offset: offset, length: length, index: index,
                                last: index == count - 1))
            offset += length
        }
        return pieces
    }

    /// The same cut as `segment` without an allocation per piece: each piece is built in
    /// `scratch` (grown once, reused across calls) and handed to `body`, which must be done
    /// with the bytes before it returns. False, and `body` never called, where `segment`
    /// answers nil.
    public static func forEachSegment(_ frame: UnsafeRawBufferPointer, mss: Int, scratch: inout [UInt8],
                                      _ body: (UnsafeRawBufferPointer) -> Void) -> Bool {
        guard mss > 0, let layout = TCPSegmentLayout(frame), layout.payloadLength > mss,
              frame[layout.tcp + 13] & (syn | rst) == 0 else { return false }
        let total = layout.payloadLength
        let count = (total + mss - 1) / mss
        let pseudo = layout.pseudoHeaderSum(frame)
        if scratch.count < layout.payload + mss { scratch = [UInt8](repeating: 0, count: layout.payload + mss) }
        scratch.withUnsafeMutableBytes { out in
            var offset = 0
            for index in 0..<count {
                let length = min(mss, total - offset)
                let piece = UnsafeMutableRawBufferPointer(rebasing: out[0..<(layout.payload + length)])
                write(piece, from: frame, layout, pseudo: pseudo, offset: offset, index: index, last: index == count - 1)
                body(UnsafeRawBufferPointer(piece))
                offset += length
            }
        }
        return true
    }

    /// Splits a TCP segment after `payloadBytes` (0 < payloadBytes < payload length): (head, tail), both valid segments.
    public static func split(_ frame: UnsafeRawBufferPointer, payloadBytes: Int) -> (head: [UInt8], tail: [UInt8])? {
        guard let layout = TCPSegmentLayout(frame), payloadBytes > 0, payloadBytes < layout.payloadLength,
              frame[layout.tcp + 13] & (syn | rst) == 0 else { return nil }
        let pseudo = layout.pseudoHeaderSum(frame)
        return (piece(frame, layout, pseudo: pseudo, offset: 0, length: payloadBytes, index: 0, last: false),
                piece(frame, layout, pseudo: pseudo, offset: payloadBytes, length: layout.payloadLength - payloadBytes,
                      index: 1, last: true))
    }

    /// Whether a well-formed TCP frame's IPv4 header checksum (if IPv4) and TCP checksum
    /// verify; false for anything TCPSegmentLayout does not accept.
    public static func hasValidChecksums(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard let layout = TCPSegmentLayout(frame) else { return false }
        return layout.checksumsVerify(frame) != nil
    }

    /// The piece of `length` payload bytes at `offset`, the `index`th of its frame.
    private static func piece(_ frame: UnsafeRawBufferPointer, _ l: TCPSegmentLayout, pseudo: UInt16, offset: Int,
                              length: Int, index: Int, last: Bool) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: l.payload + length) { buffer, initialized in
            write(UnsafeMutableRawBufferPointer(buffer), from: frame, l, pseudo: pseudo, offset: offset, index: index,
                  last: last)
            initialized = l.payload + length
        }
    }

    /// Writes the piece into `out`, whose size is the headers' plus the piece's payload.
    private static func write(_ out: UnsafeMutableRawBufferPointer, from frame: UnsafeRawBufferPointer,
                              _ l: TCPSegmentLayout, pseudo: UInt16, offset: Int, index: Int, last: Bool) {
        let headers = l.payload, length = out.count - headers
        out.copyMemory(from: UnsafeRawBufferPointer(rebasing: frame[0..<headers]))
        let source = l.payload + offset
        UnsafeMutableRawBufferPointer(rebasing: out[headers...])
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: frame[source..<(source + length)]))
        let ip = TCPSegmentLayout.ip, t = l.tcp
        if l.v6 {
            out.storeNet16(UInt16(l.dataOffset + length), at: ip + 4)
        } else {
            out.storeNet16(UInt16(l.ipHeaderLength + l.dataOffset + length), at: ip + 2)
            out.storeNet16(out.loadNet16(at: ip + 4) &+ UInt16(truncatingIfNeeded: index), at: ip + 4)
            out.storeNet16(0, at: ip + 10)
            out.storeNet16(~IPChecksum.sum(UnsafeRawBufferPointer(rebasing: out[ip..<t])), at: ip + 10)
        }
        let seq = UInt32(out[t + 4]) << 24 | UInt32(out[t + 5]) << 16 | UInt32(out[t + 6]) << 8 | UInt32(out[t + 7])
        out.storeNet32(seq &+ UInt32(truncatingIfNeeded: offset), at: t + 4)
        var flags = out[t + 13]
        if !last { flags &= ~(fin | psh) }
        if index > 0 {
            flags &= ~cwr
            if flags & urg != 0 {
                let pointer = Int(out.loadNet16(at: t + 18))
                if offset < pointer {
                    out.storeNet16(UInt16(pointer - offset), at: t + 18)
                } else {
                    flags &= ~urg
                    out.storeNet16(0, at: t + 18)
                }
            }
        }
        out[t + 13] = flags
        out.storeNet16(0, at: t + 16)
        let headerSum = IPChecksum.sum(UnsafeRawBufferPointer(rebasing: out[t..<headers]))
        let payloadSum = IPChecksum.sum(UnsafeRawBufferPointer(rebasing: out[headers..<(headers + length)]))
        let sum = IPChecksum.add(IPChecksum.add(pseudo, UInt16(l.dataOffset + length)),
                                 IPChecksum.add(headerSum, payloadSum))
        out.storeNet16(~sum, at: t + 16)
    }
}

extension TCPSegmentLayout {
    /// The folded sum of the payload when the IPv4 header checksum (if IPv4) and the TCP
    /// checksum verify, else nil.
    func checksumsVerify(_ frame: UnsafeRawBufferPointer) -> UInt16? {
        if !v6, IPChecksum.sum(UnsafeRawBufferPointer(rebasing: frame[Self.ip..<tcp])) != 0xFFFF { return nil }
        let payloadSum = IPChecksum.sum(UnsafeRawBufferPointer(rebasing: frame[payload..<end]))
        let headerSum = IPChecksum.sum(UnsafeRawBufferPointer(rebasing: frame[tcp..<payload]))
        let sum = IPChecksum.add(IPChecksum.add(pseudoHeaderSum(frame), UInt16(end - tcp)),
                                 IPChecksum.add(headerSum, payloadSum))
        return sum == 0xFFFF ? payloadSum : nil
    }

    /// The folded sum of the payload read off the TCP checksum, without reading the payload;
    /// nil when the IPv4 header checksum fails. A right checksum makes pseudo-header, header
    /// and payload sum to 0xFFFF, so the payload's sum is the complement of the rest; a wrong
    /// one gives a sum wrong by the same amount, which carries into any checksum built from it.
    func payloadSumFromChecksum(_ frame: UnsafeRawBufferPointer) -> UInt16? {
        if !v6, IPChecksum.sum(UnsafeRawBufferPointer(rebasing: frame[Self.ip..<tcp])) != 0xFFFF { return nil }
        let headerSum = IPChecksum.sum(UnsafeRawBufferPointer(rebasing: frame[tcp..<payload]))
        return ~IPChecksum.add(IPChecksum.add(pseudoHeaderSum(frame), UInt16(end - tcp)), headerSum)
    }
}
