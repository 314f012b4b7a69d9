/// Cuts an IPv6 frame the daemon made into fragments that fit a guest's MTU.
///
/// Theory of operation: as for IPv4 (IPv4Fragmentation.swift), an answer forwarded from
/// the upstream resolver to a guest's IPv6 DNS query can be larger than the guest's link.
/// In IPv6 only the source fragments (RFC 8200 4.5), and for these answers the daemon is
/// the source. The frames it makes carry no extension headers, so the whole payload is
/// fragmentable: each piece is the IPv6 header (payload length adjusted, next header 44)
/// and a Fragment header (the original next header, the offset in 8-byte units, M, and
/// `identification`, the same for every piece of one datagram), then a multiple of 8
/// bytes of the payload but for the last. A frame that fits, is not IPv6, or whose
/// lengths do not add up comes back as it is.
public enum IPv6Fragmentation {
    public static let fragmentHeaderLength = 8

    /// `frame` (Ethernet + IPv6) as frames whose IPv6 packet is at most `mtu` bytes.
    public static func fragments(of frame: [UInt8], mtu: Int, identification: UInt32) -> [[UInt8]] {
        guard frame.count >= 54, frame[12] == 0x86, frame[13] == 0xDD, frame[14] >> 4 == 6 else { return [frame] }
        let payloadLength = Int(read16(frame, 18))
        guard 54 + payloadLength <= frame.count, 40 + payloadLength > mtu else { return [frame] }
        let room = (mtu - 40 - fragmentHeaderLength) / 8 * 8
        guard room >= 8 else { return [frame] }
        let nextHeader = frame[20]
        let payload = frame[54..<(54 + payloadLength)]
        var pieces: [[UInt8]] = []
        var start = payload.startIndex
        while start < payload.endIndex {
            let end = min(start + room, payload.endIndex)
            let offset = start - payload.startIndex
            var piece = Array(frame[0..<54])
            piece.reserveCapacity(54 + fragmentHeaderLength + end - start)
            piece.replaceSubrange(18..<20, with: bigEndianBytes(UInt16(fragmentHeaderLength + end - start)))
            piece[20] = 44
            piece += [nextHeader, 0]
            piece += bigEndianBytes(UInt16(offset) | (end < payload.endIndex ? 1 : 0))
            piece += bigEndianBytes(identification)
            piece += payload[start..<end]
            pieces.append(piece)
            start = end
        }
        return pieces
    }
}
