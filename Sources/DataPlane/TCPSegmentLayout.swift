import FrameSwitch

// TCPSegmentLayout: where the parts of an untagged Ethernet frame carrying one TCP segment
// are, for the edge stages that cut (TCPSegmentation) and merge (TCPCoalescer) segments.
//
// Theory of operation. Lengths come from the IP header, never the frame's size, so
// Ethernet padding past the datagram is ignored; a datagram longer than the frame, an
// IPv4 fragment, IPv6 with an extension header before TCP, or a TCP data offset outside
// the segment is no layout at all, and callers pass such frames on untouched.
struct TCPSegmentLayout {
    static let ip = EthernetHeader.length
    var v6: Bool
    /// Offsets in the frame: the TCP header, its payload, and the datagram's end.
    var tcp: Int
    var payload: Int
    var end: Int

    /// A placeholder before any frame was read.
    static let empty = TCPSegmentLayout(v6: false, tcp: ip + 20, payload: ip + 40, end: ip + 40)

    private init(v6: Bool, tcp: Int, payload: Int, end: Int) {
        (self.v6, self.tcp, self.payload, self.end) = (v6, tcp, payload, end)
    }

    var ipHeaderLength: Int { tcp - Self.ip }
    var dataOffset: Int { payload - tcp }
    var payloadLength: Int { end - payload }

    init?(_ frame: UnsafeRawBufferPointer) {
        let ip = Self.ip
        guard frame.count >= ip + 20 else { return nil }
        switch UInt16(frame[12]) << 8 | UInt16(frame[13]) {
        case 0x0800:
            let ihl = Int(frame[ip] & 0x0F) * 4
            let total = Int(frame[ip + 2]) << 8 | Int(frame[ip + 3])
            guard frame[ip] >> 4 == 4, ihl >= 20, total >= ihl + 20, ip + total <= frame.count, frame[ip + 9] == 6,
                  frame[ip + 6] & 0x3F == 0, frame[ip + 7] == 0 else { return nil }  // no MF, offset 0
            v6 = false
            tcp = ip + ihl
            end = ip + total
        case 0x86DD:
            guard frame.count >= ip + 40, frame[ip] >> 4 == 6, frame[ip + 6] == 6 else { return nil }
            let length = Int(frame[ip + 4]) << 8 | Int(frame[ip + 5])
            guard length >= 20, ip + 40 + length <= frame.count else { return nil }
            v6 = true
            tcp = ip + 40
            end = ip + 40 + length
        default:
            return nil
        }
        let dataOffset = Int(frame[tcp + 12] >> 4) * 4
        guard dataOffset >= 20, tcp + dataOffset <= end else { return nil }
        payload = tcp + dataOffset
    }

    /// The folded sum of the pseudo-header's addresses and protocol (RFC 9293 3.1, RFC 8200
    /// 8.1), without the TCP length, which each segment adds for itself.
    func pseudoHeaderSum(_ frame: UnsafeRawBufferPointer) -> UInt16 {
        let ip = Self.ip
        let addresses = v6 ? UnsafeRawBufferPointer(rebasing: frame[(ip + 8)..<(ip + 40)])
            : UnsafeRawBufferPointer(rebasing: frame[(ip + 12)..<(ip + 20)])
        return IPChecksum.sum(addresses, initial: 6)
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Network-order (big-endian) stores and loads; named apart from other helpers of the module.
    func storeNet16(_ value: UInt16, at offset: Int) {
        self[offset] = UInt8(value >> 8)
        self[offset + 1] = UInt8(truncatingIfNeeded: value)
    }

    func storeNet32(_ value: UInt32, at offset: Int) {
        storeNet16(UInt16(value >> 16), at: offset)
        storeNet16(UInt16(truncatingIfNeeded: value), at: offset + 2)
    }

    func loadNet16(at offset: Int) -> UInt16 { UInt16(self[offset]) << 8 | UInt16(self[offset + 1]) }
}
