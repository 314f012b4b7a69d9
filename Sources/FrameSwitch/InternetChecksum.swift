// InternetChecksum: the fast path of the Internet checksum (RFC 1071) for the data plane's
// per-segment work (segmentation, coalescing), where every payload byte is summed.
//
// Theory of operation. The one's complement sum does not depend on byte order (RFC 1071
// 2(B)): summing 16-bit words as the host loads them and swapping the folded result gives
// the big-endian sum. So the bytes are read eight at a time as native UInt64 words, whose
// two 32-bit halves go into a 64-bit accumulator (no carry can be lost below 2^32 words),
// and the tail in 4-, 2- and 1-byte steps; the odd last byte is the high half of a
// big-endian word. Sums of pieces combine with `add`; a piece that starts at an odd
// offset of the covered bytes contributes its sum byte-swapped (RFC 1071 2(B) again).
extension IPChecksum {
    /// The folded 16-bit one's complement sum of `bytes` read as big-endian words from an
    /// even offset, plus `initial`; not complemented.
    public static func sum(_ bytes: UnsafeRawBufferPointer, initial: UInt16 = 0) -> UInt16 {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return initial }
        let n = bytes.count
        var a: UInt64 = 0, b: UInt64 = 0
        var i = 0
        while i + 32 <= n {
            let w0 = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let w1 = base.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)
            let w2 = base.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self)
            let w3 = base.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self)
            a &+= (w0 & 0xFFFF_FFFF) &+ (w0 >> 32) &+ (w1 & 0xFFFF_FFFF) &+ (w1 >> 32)
            b &+= (w2 & 0xFFFF_FFFF) &+ (w2 >> 32) &+ (w3 & 0xFFFF_FFFF) &+ (w3 >> 32)
            i += 32
        }
        while i + 8 <= n {
            let w = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            a &+= (w & 0xFFFF_FFFF) &+ (w >> 32)
            i += 8
        }
        if i + 4 <= n {
            a &+= UInt64(base.loadUnaligned(fromByteOffset: i, as: UInt32.self))
            i += 4
        }
        if i + 2 <= n {
            a &+= UInt64(base.loadUnaligned(fromByteOffset: i, as: UInt16.self))
            i += 2
        }
        if i < n {
            // The last byte is the high half of a big-endian word: its low half in the host's order.
            a &+= UInt64(UInt16(bigEndian: UInt16(base.load(fromByteOffset: i, as: UInt8.self)) << 8))
        }
        // a + b cannot overflow: each is below 2^(32+13) for any frame this side of 2^40 bytes.
        var s = a &+ b
        s = (s & 0xFFFF_FFFF) &+ (s >> 32)
        s = (s & 0xFFFF_FFFF) &+ (s >> 32)
        s = (s & 0xFFFF) &+ (s >> 16)
        s = (s & 0xFFFF) &+ (s >> 16)
        return add(UInt16(bigEndian: UInt16(truncatingIfNeeded: s)), initial)
    }

    /// The one's complement sum of two folded sums.
    @inlinable
    public static func add(_ x: UInt16, _ y: UInt16) -> UInt16 {
        let s = UInt32(x) + UInt32(y)
        return UInt16(truncatingIfNeeded: (s & 0xFFFF) + (s >> 16))
    }
}
