import FrameSwitch

// TCPSegmentLayout: where the parts of an untagged Ethernet frame carrying one TCP segment
// are, for the edge stages that cut (TCPSegmentation) and merge (TCPCoalescer) segments.
//
// Theory of operation. IPLayers finds the packet (lengths from the IP header, no
// fragments, no IPv6 extension headers); a packet that is not TCP, or whose TCP data
// offset falls outside the segment, is no layout at all, and callers pass such frames on
// untouched.
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
        guard let l = IPLayers(frame, minimumL4: 20), l.proto == 6 else { return nil }
        v6 = !l.isIPv4
        tcp = l.l4
        end = l.end
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
