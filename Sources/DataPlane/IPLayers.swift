import FrameSwitch

// IPLayers: where the IP packet and its transport header are in an untagged Ethernet
// frame, the one parse the data plane's stages build on (VirtioNetHeader,
// TCPSegmentLayout, and through it the TCP shim's and the edge stages' segments).
//
// Theory of operation. Lengths come from the IP header, never the frame's size, so
// Ethernet padding past the packet is ignored; a packet longer than the frame, an IPv4
// fragment (MF or an offset: no transport header past the first, and libslirp never sees
// one), IPv6 whose next header is an extension header, or a transport header shorter
// than the caller's minimum is no layout at all.
struct IPLayers {
    var isIPv4: Bool
    /// Offsets in the frame: the IP header, the transport header, the packet's end.
    var ip: Int
    var l4: Int
    var proto: UInt8
    var end: Int

    init?(_ frame: UnsafeRawBufferPointer, minimumL4: Int) {
        let e = EthernetHeader.length
        guard frame.count >= e + 20 else { return nil }
        ip = e
        switch UInt16(frame[12]) << 8 | UInt16(frame[13]) {
        case 0x0800:
            let ihl = Int(frame[e] & 0x0F) * 4
            let total = Int(frame[e + 2]) << 8 | Int(frame[e + 3])
            guard frame[e] >> 4 == 4, ihl >= 20, total >= ihl, e + total <= frame.count,
                  frame[e + 6] & 0x3F == 0, frame[e + 7] == 0 else { return nil }
            isIPv4 = true
            l4 = e + ihl
            proto = frame[e + 9]
            end = e + total
        case 0x86DD:
            guard frame.count >= e + 40, frame[e] >> 4 == 6 else { return nil }
            let payload = Int(frame[e + 4]) << 8 | Int(frame[e + 5])
            guard e + 40 + payload <= frame.count else { return nil }
            isIPv4 = false
            l4 = e + 40
            proto = frame[e + 6]
            end = e + 40 + payload
        default:
            return nil
        }
        guard l4 + minimumL4 <= end else { return nil }
    }
}
