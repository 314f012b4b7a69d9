import FrameSwitch

// NATIngressCheck: the last stage before libslirp. Every guest frame bound for the NAT
// (after IPv4 reassembly) is checked here, so libslirp never reads past what a guest sent.
//
// Theory of operation. libslirp 4.7 trusts some lengths and pointers in a guest's frame.
// Each is listed here with who makes it safe ("libslirp" cites the function that checks
// it in 4.7.0; "here" means this stage drops or fixes the frame):
//
// - TCP urgent pointer (here: URG and the pointer are cleared). tcp_input sets
//   so_urgc = so_rcv.sb_cc + (ti_seq + ti_urp - rcv_nxt), checking only that it fits the
//   receive buffer's size, not the data in it; sosendoob then sends min(so_urgc, 2048)
//   bytes from so_rcv with MSG_OOB and subtracts them from sb_cc, which wraps, so sowrite
//   keeps sending the buffer's stale heap (another guest's data) to the host peer. Clamping
//   the pointer to the segment's payload is not enough: so_urgc is relative to rcv_nxt, so
//   an out-of-order segment (queued by tcp_reass) or one whose tail tcp_input trims to the
//   window (ti_urp is not adjusted there) still counts bytes that are not in so_rcv, and
//   this stage does not know rcv_nxt. With URG clear, tcp_input never sets so_urgc and
//   sosendoob never runs. The cost: urgent data reaches the host peer in line, in order.
//   (Unchecked, a 10-byte segment with pointer 65535 made libslirp send a loopback
//   listener 67,584 bytes at once, and 64 MiB per connection within a second.)
//   The TCP checksum is updated incrementally (RFC 1624), so a segment with a wrong
//   checksum stays wrong and libslirp still drops it.
// - IPv4 IHL and total length (libslirp, and here): ip_input checks IHL >= 20, IHL <= the
//   frame, total >= IHL and total <= the frame, and trims Ethernet padding (m_adj). This
//   stage checks the same, so the checks below can rely on them.
// - IPv4 fragment offsets (here): fragments are reassembled by slirpd (IPv4Reassembly);
//   one that still reaches this stage is dropped, so libslirp's ip_reass never runs.
// - TCP data offset (libslirp, and here): tcp_input drops off < 20 or off > segment, but
//   reads ti_off before knowing the segment holds a TCP header ("XXX Check if too short"),
//   so segments shorter than 20 bytes are dropped here.
// - TCP options (here): tcp_dooptions reads an option's length byte even when only the
//   kind byte is left, and copies MSS's two bytes without checking they are inside the
//   options. A segment whose options do not fit its header, or with an MSS option not 4
//   bytes long or a window-scale option not 3, is dropped (no real stack sends one).
// - UDP length (here): udp_input and udp6_input drop a length above the IP payload but
//   not one below 8; they then trim the mbuf to it and hand sendto a negative length.
//   Lengths below 8 or above the IP payload are dropped here.
// - IPv6 payload length (libslirp, and here): ip6_input checks 40 + payload <= the frame,
//   but unlike ip_input does not cut what follows, and tcp_input appends the whole mbuf
//   to the socket buffer: bytes past the payload reach the host peer outside the sequence
//   space (SlirpKitTests shows it). Frames too short are dropped; bytes past are cut.
// - IPv6 extension headers (libslirp): ip6_input walks none; any next header other than
//   TCP, UDP and ICMPv6 is freed unread.
// - ICMP (libslirp, and here) and ICMPv6 (libslirp): icmp_input needs 8 bytes and handles
//   only echo requests, which it answers or forwards at the length ip_input checked;
//   errors a guest sends (unreachable, time exceeded, ...) are freed without reading the
//   quoted header. icmp6_input needs 4 bytes, answers echo to its own address by copying
//   40 + the checked payload length, checks each NDP message's minimum length
//   (ndp_input), and frees ICMPv6 errors unread. ICMP shorter than 8 bytes is dropped here.
// - ARP (libslirp): arp_input checks the frame holds the whole ARP header.
//
// Everything else passes byte for byte, and the common case (no URG, IPv4, correct
// lengths) costs a few comparisons and no copy.
public struct NATIngressCheck: Sendable {
    /// Why a frame was dropped.
    public enum Reason: Int, CaseIterable, Sendable, CustomStringConvertible {
        case ipv4Header, ipv4TotalLength, ipv4Fragment, ipv6Header, ipv6PayloadLength
        case tcpHeader, tcpDataOffset, tcpOptions, udpLength, icmpLength

        /// The reason as a /metrics label value.
        public var label: String {
            switch self {
            case .ipv4Header: "ipv4_header"
            case .ipv4TotalLength: "ipv4_total_length"
            case .ipv4Fragment: "ipv4_fragment"
            case .ipv6Header: "ipv6_header"
            case .ipv6PayloadLength: "ipv6_payload_length"
            case .tcpHeader: "tcp_header"
            case .tcpDataOffset: "tcp_data_offset"
            case .tcpOptions: "tcp_options"
            case .udpLength: "udp_length"
            case .icmpLength: "icmp_length"
            }
        }

        public var description: String {
            switch self {
            case .ipv4Header: "an IPv4 frame with a short or malformed header (version, IHL)"
            case .ipv4TotalLength: "an IPv4 frame whose total length is below its header or past the frame"
            case .ipv4Fragment: "an IPv4 fragment that was not reassembled"
            case .ipv6Header: "an IPv6 frame with a short or malformed header"
            case .ipv6PayloadLength: "an IPv6 frame whose payload length is past the frame"
            case .tcpHeader: "a TCP segment shorter than its 20-byte header"
            case .tcpDataOffset: "a TCP segment whose data offset is below 20 or past the segment"
            case .tcpOptions: "a TCP segment whose options overrun its header or have a bad MSS/window-scale length"
            case .udpLength: "a UDP datagram whose length is below 8 or past the IP payload"
            case .icmpLength: "an ICMP message shorter than 8 bytes"
            }
        }
    }

    public enum Verdict: Equatable, Sendable {
        /// Hand the frame to libslirp as it is.
        case pass
        /// Hand libslirp this frame instead (URG cleared, or IPv6 trailing bytes cut).
        case rewritten([UInt8])
        case drop(Reason)
    }

    /// Frames dropped, by reason, and frames rewritten (URG cleared, IPv6 trailing bytes cut).
    public private(set) var dropped: [Int] = Array(repeating: 0, count: Reason.allCases.count)
    public private(set) var rewritten = 0

    public init() {}

    public var totalDropped: Int { dropped.reduce(0, +) }

    /// Checks a frame and counts the outcome.
    public mutating func inspect(_ frame: UnsafeRawBufferPointer) -> Verdict {
        let verdict = Self.verdict(frame)
        switch verdict {
        case .pass: break
        case .rewritten: rewritten += 1
        case .drop(let reason): dropped[reason.rawValue] += 1
        }
        return verdict
    }

    /// The verdict on one guest frame for libslirp (see the theory of operation).
    public static func verdict(_ frame: UnsafeRawBufferPointer) -> Verdict {
        guard frame.count >= EthernetHeader.length else { return .pass }
        switch UInt16(frame[12]) << 8 | UInt16(frame[13]) {
        case 0x0800: return ipv4(frame)
        case 0x86DD: return ipv6(frame)
        default: return .pass
        }
    }

    public static func verdict(_ frame: [UInt8]) -> Verdict {
        frame.withUnsafeBytes { verdict($0) }
    }

    private static let ip = EthernetHeader.length

    private static func ipv4(_ frame: UnsafeRawBufferPointer) -> Verdict {
        guard frame.count >= ip + 20, frame[ip] >> 4 == 4 else { return .drop(.ipv4Header) }
        let headerLength = Int(frame[ip] & 0x0F) * 4
        guard headerLength >= 20 else { return .drop(.ipv4Header) }
        let total = Int(read16(frame, ip + 2))
        guard total >= headerLength, total <= frame.count - ip else { return .drop(.ipv4TotalLength) }
        guard frame[ip + 6] & 0x3F == 0, frame[ip + 7] == 0 else { return .drop(.ipv4Fragment) }
        let l4 = ip + headerLength
        let l4Length = total - headerLength
        switch frame[ip + 9] {
        case 6: return tcp(frame, at: l4, length: l4Length, trimTo: nil)
        case 17: return udp(frame, at: l4, length: l4Length)
        case 1: return l4Length >= 8 ? .pass : .drop(.icmpLength)
        default: return .pass
        }
    }

    private static func ipv6(_ frame: UnsafeRawBufferPointer) -> Verdict {
        guard frame.count >= ip + 40, frame[ip] >> 4 == 6 else { return .drop(.ipv6Header) }
        let payload = Int(read16(frame, ip + 4))
        let end = ip + 40 + payload
        guard end <= frame.count else { return .drop(.ipv6PayloadLength) }
        let trim = end < frame.count ? end : nil
        let verdict: Verdict
        switch frame[ip + 6] {
        case 6: verdict = tcp(frame, at: ip + 40, length: payload, trimTo: trim)
        case 17: verdict = udp(frame, at: ip + 40, length: payload)
        default: verdict = .pass
        }
        if case .pass = verdict, let trim { return .rewritten(Array(frame[0..<trim])) }
        return verdict
    }

    private static func tcp(_ frame: UnsafeRawBufferPointer, at t: Int, length: Int,
                            trimTo trim: Int?) -> Verdict {
        guard length >= 20 else { return .drop(.tcpHeader) }
        let offset = Int(frame[t + 12] >> 4) * 4
        guard offset >= 20, offset <= length else { return .drop(.tcpDataOffset) }
        guard optionsFit(frame, from: t + 20, to: t + offset) else { return .drop(.tcpOptions) }
        let flags = frame[t + 13]
        let urgent = Int(read16(frame, t + 18))
        guard flags & 0x20 != 0 || urgent != 0 else { return .pass }
        var bytes = Array(frame[0..<(trim ?? frame.count)])
        let oldFlagsWord = UInt16(bytes[t + 12]) << 8 | UInt16(flags)
        bytes[t + 13] = flags & ~0x20
        bytes[t + 18] = 0
        bytes[t + 19] = 0
        var checksum = UInt16(bytes[t + 16]) << 8 | UInt16(bytes[t + 17])
        checksum = IPChecksum.adjusted(checksum, replacing: oldFlagsWord, with: oldFlagsWord & ~0x20)
        checksum = IPChecksum.adjusted(checksum, replacing: UInt16(urgent), with: 0)
        bytes[t + 16] = UInt8(checksum >> 8)
        bytes[t + 17] = UInt8(checksum & 0xFF)
        return .rewritten(bytes)
    }

    /// Whether every TCP option between `start` and `end` lies inside them, with the
    /// lengths RFC 9293 and RFC 7323 give MSS (4) and window scale (3).
    private static func optionsFit(_ frame: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Bool {
        var lengthsRight = true
        let inside = TCPOptions.walk(frame, from: start, to: end) { kind, _, length in
            lengthsRight = !(kind == 2 && length != 4) && !(kind == 3 && length != 3)
            return lengthsRight
        }
        return inside && lengthsRight
    }

    private static func udp(_ frame: UnsafeRawBufferPointer, at u: Int, length: Int) -> Verdict {
        guard length >= 8 else { return .drop(.udpLength) }
        let udpLength = Int(read16(frame, u + 4))
        return udpLength >= 8 && udpLength <= length ? .pass : .drop(.udpLength)
    }
}

extension IPChecksum {
    /// An Internet checksum after one 16-bit word of the bytes it covers changed from `old`
    /// to `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')). Unlike recomputing with
    /// `store`, a checksum that was wrong stays wrong, so the receiver still drops it.
    public static func adjusted(_ checksum: UInt16, replacing old: UInt16, with new: UInt16) -> UInt16 {
        var sum = UInt32(~checksum) + UInt32(~old) + UInt32(new)
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }
}
