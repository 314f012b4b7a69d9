import FrameSwitch

// MSSClamp: the MSS each side of a TCP handshake is told, now that libslirp runs at a
// jumbo MTU whatever the guests' MTUs are.
//
// Theory of operation. libslirp's cost is per segment, so inside slirpd it runs at MTU
// and MRU `natMTU` (65520) and each guest port keeps its own MTU (PortState.mtu). The
// handshake is where the two meet:
// - Toward libslirp, a guest's SYN or SYN-ACK whose MSS is at least what its port's MTU
//   carries (the usual case: the guest offers MTU - 40) is raised to `natMSS` when the
//   port takes large segments whole (a tap with TSO, vhost-user with GUEST_TSO), so libslirp
//   sends it large segments. Other ports keep their MSS: libslirp counts its congestion
//   window and resends in segments, and a resent 16 KiB segment cut to the MTU is a burst
//   that a small NIC ring drops again (FramePathGuest.toLibslirp, SYNReplay). A smaller MSS
//   (the guest asked for less than its MTU allows) is left alone: libslirp then never
//   sends more than the guest asked for, and nothing needs cutting; so is a larger one
//   (a jumbo guest: libslirp sends it up to 32 KiB, its TCP_MAXSEG_MAX, uncut).
// - Toward a guest, libslirp's SYN or SYN-ACK (its MSS comes from the 65520 MTU) is
//   lowered to what the port's MTU carries, so the guest never sends more than its own
//   link takes.
// `natMSS` is 16 KiB, not 64: libslirp sends a window update only once its 64 KiB window
// has opened by two segments (tcp_output), which larger segments never do, and the TCP
// window shim needs those updates to release what it holds (TCPWindowShim.maxScaledMSS).
// It is a little under 16 KiB so that four of libslirp's segments fill one 64 KiB frame
// toward the guest (FramePathEdge.putFromNAT, TCPCoalescer.payloadLimit).
public enum MSSClamp {
    /// libslirp's MTU and MRU inside slirpd (its largest).
    public static let natMTU = 65520
    /// The MSS libslirp is told for guests that take full-sized segments.
    public static let natMSS = TCPCoalescer.payloadLimit / 4

    /// A guest's SYN or SYN-ACK with its MSS raised for libslirp, or nil when it needs none.
    public static func towardNAT(_ frame: UnsafeRawBufferPointer, portMTU: Int) -> [UInt8]? {
        guard let (segment, offset) = mssOption(frame) else { return nil }
        let mss = Int(read16(frame, offset + 2))
        let carried = portMTU - (segment.v6 ? 60 : 40)
        guard mss >= carried, mss < natMSS else { return nil }
        return rewrite(frame, segment, at: offset, to: natMSS)
    }

    /// The packet size a guest's SYN or SYN-ACK says it takes: its MSS plus the IP and TCP
    /// headers (RFC 9293 3.7.1: the MSS is the largest segment it can receive).
    public static func mtuOffered(_ frame: UnsafeRawBufferPointer) -> Int? {
        guard let (segment, offset) = mssOption(frame) else { return nil }
        return Int(read16(frame, offset + 2)) + (segment.v6 ? 60 : 40)
    }

    /// libslirp's SYN or SYN-ACK with its MSS lowered to what the guest's MTU carries, or nil.
    public static func towardGuest(_ frame: UnsafeRawBufferPointer, portMTU: Int) -> [UInt8]? {
        guard let (segment, offset) = mssOption(frame) else { return nil }
        let carried = max(portMTU - (segment.v6 ? 60 : 40), 536)
        guard Int(read16(frame, offset + 2)) > carried else { return nil }
        return rewrite(frame, segment, at: offset, to: carried)
    }

    /// A SYN's parsed header and the offset of its MSS option; nil for any other frame.
    private static func mssOption(_ frame: UnsafeRawBufferPointer) -> (Segment, Int)? {
        guard isSYN(frame), let segment = Segment(frame), let offset = segment.option(frame, kind: 2, length: 4) else { return nil }
        return (segment, offset)
    }

    /// Whether the frame is a TCP segment with SYN set, read without parsing the rest (every
    /// frame passes here; only handshakes go further).
    @inline(__always)
    static func isSYN(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard frame.count >= 54 else { return false }
        switch (frame[12], frame[13]) {
        case (0x08, 0x00):
            let tcp = 14 + Int(frame[14] & 0x0F) * 4
            return frame[23] == 6 && tcp + 14 <= frame.count && frame[tcp + 13] & 0x02 != 0
        case (0x86, 0xDD):
            return frame.count >= 68 && frame[20] == 6 && frame[54 + 13] & 0x02 != 0
        default:
            return false
        }
    }

    private static func rewrite(_ frame: UnsafeRawBufferPointer, _ segment: Segment, at offset: Int, to mss: Int) -> [UInt8] {
        var out = Array(frame)
        let old = read16(out, offset + 2), new = UInt16(mss)
        out[offset + 2] = UInt8(new >> 8)
        out[offset + 3] = UInt8(new & 0xFF)
        let c = segment.tcp + 16
        let sum = IPChecksum.adjusted(read16(out, c), replacing: old, with: new)
        out[c] = UInt8(sum >> 8)
        out[c + 1] = UInt8(sum & 0xFF)
        return out
    }
}
