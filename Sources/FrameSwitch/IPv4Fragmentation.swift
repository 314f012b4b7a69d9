/// Cuts an IPv4 frame the daemon made into fragments that fit a guest's MTU.
///
/// Theory of operation: the daemon answers some datagrams itself (DNS over UDP), and an
/// answer forwarded from the upstream resolver can be larger than the guest's link (a
/// guest that advertised a 4,096-byte EDNS buffer may get 4,000 bytes back). A frame over
/// the MTU is dropped by the guest's driver or stack, so the daemon does what a router on
/// the path would do (RFC 791 3.2): the IP payload is cut into pieces of a multiple of 8
/// bytes, each behind a copy of the header with its own total length, offset, more-fragments
/// flag and checksum. Options are copied into every fragment, which is only wrong for the
/// few options not marked "copied"; the daemon's own frames carry none. A frame that fits,
/// that is not plain IPv4, whose lengths do not add up, or that has DF set, comes back as it
/// is: the caller delivers it unchanged, as before.
public enum IPv4Fragmentation {
    /// `frame` (Ethernet + IPv4) as frames whose IP part is at most `mtu` bytes.
    public static func fragments(of frame: [UInt8], mtu: Int) -> [[UInt8]] {
        guard frame.count >= 34, frame[12] == 0x08, frame[13] == 0x00, frame[14] >> 4 == 4 else { return [frame] }
        let headerLength = Int(frame[14] & 0x0F) * 4
        let total = Int(read16(frame, 16))
        guard headerLength >= 20, total >= headerLength, 14 + total <= frame.count, total > mtu else { return [frame] }
        let flags = read16(frame, 20)
        guard flags & 0x4000 == 0 else { return [frame] }   // DF: the sender asked for it whole
        // Each piece but the last carries a multiple of 8 bytes; the header must leave room for 8.
        let room = (mtu - headerLength) / 8 * 8
        guard room >= 8 else { return [frame] }
        let ethernet = Array(frame[0..<14])
        let header = Array(frame[14..<(14 + headerLength)])
        let payload = frame[(14 + headerLength)..<(14 + total)]
        // A datagram that is itself a fragment keeps its offset and, on its last piece, its MF.
        let baseOffset = Int(flags & 0x1FFF) * 8
        let finalMore = flags & 0x2000 != 0
        var pieces: [[UInt8]] = []
        var start = payload.startIndex
        while start < payload.endIndex {
            let end = min(start + room, payload.endIndex)
            let more = end < payload.endIndex || finalMore
            var ip = header
            ip.replaceSubrange(2..<4, with: bigEndianBytes(UInt16(headerLength + end - start)))
            let offset = UInt16((baseOffset + start - payload.startIndex) / 8)
            ip.replaceSubrange(6..<8, with: bigEndianBytes((flags & 0x8000) | (more ? 0x2000 : 0) | offset))
            ip.replaceSubrange(10..<12, with: [0, 0])
            IPChecksum.store(in: &ip, at: 10)
            var piece = ethernet
            piece.reserveCapacity(14 + headerLength + end - start)
            piece += ip
            piece += payload[start..<end]
            pieces.append(piece)
            start = end
        }
        return pieces
    }
}
