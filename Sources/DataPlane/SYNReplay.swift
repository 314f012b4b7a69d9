import FrameSwitch

// SYNReplay: makes libslirp read the MSS of a connection the guest opens.
//
// Theory of operation. libslirp 4.7 answers a guest's SYN only once its connect() to the
// host completes; it then replays the saved SYN through tcp_input without its options
// (`optp` is NULL on that path), so the guest's MSS never reaches tcp_mss(). The
// connection keeps t_maxseg = MTU - 40 (32 KiB, its TCP_MAXSEG_MAX, at slirpd's 65520)
// and its initial congestion window (unbounded) instead of one MSS. So it sends whole
// windows in 32 KiB segments, resends a hole as a 32 KiB segment that a small NIC ring
// drops again, and never sends a window update (it waits for the window to open by two
// segments, 64 KiB, more than its window). slirpd keeps each guest SYN it gives libslirp
// and, when libslirp's SYN-ACK for it comes out, gives libslirp the same SYN once more:
// in SYN_RECEIVED a SYN is read for its options (tcp_dooptions -> tcp_mss: t_maxseg =
// the MSS, snd_cwnd = one MSS) and then dropped as old, answered by nothing. tcp_mss
// also empties the socket buffers (sbreserve), so the replay must reach libslirp before
// it can read the host's first bytes: it goes in `pendingToNAT`, which the loop hands
// libslirp at the end of the same turn, before libslirp polls its sockets again (a
// connecting socket is polled for writing only, so nothing is read in the turn itself).
struct SYNReplay {
    /// SYNs waiting for libslirp's answer; the oldest goes first when full (a SYN never
    /// answered, say refused, is simply forgotten).
    static let capacity = 256

    private var waiting: [(key: [UInt8], syn: [UInt8])] = []
    /// SYNs given to libslirp a second time.
    private(set) var replayed = 0

    /// Keeps a guest's SYN (no ACK, with an MSS option) as libslirp is given it.
    mutating func record(_ frame: UnsafeRawBufferPointer) {
        guard let segment = Segment(frame), segment.flags & 0x12 == 0x02, segment.option(frame, kind: 2, length: 4) != nil,
              let layout = TCPSegmentLayout(frame), let key = Self.key(frame, layout, guestIsSource: true) else { return }
        waiting.removeAll { $0.key == key }
        if waiting.count >= Self.capacity { waiting.removeFirst() }
        waiting.append((key, Array(frame)))
    }

    /// For libslirp's SYN-ACK toward a guest: the guest SYN it answers, to give libslirp
    /// again (once), or nil.
    mutating func replay(answeredBy frame: UnsafeRawBufferPointer) -> [UInt8]? {
        guard !waiting.isEmpty, let layout = TCPSegmentLayout(frame), frame[layout.tcp + 13] & 0x12 == 0x12,
              let key = Self.key(frame, layout, guestIsSource: false),
              let index = waiting.firstIndex(where: { $0.key == key }) else { return nil }
        replayed += 1
        return waiting.remove(at: index).syn
    }

    /// Addresses and ports, guest's first.
    private static func key(_ frame: UnsafeRawBufferPointer, _ layout: TCPSegmentLayout, guestIsSource: Bool) -> [UInt8]? {
        let ip = EthernetHeader.length
        let size = layout.v6 ? 16 : 4
        let (source, destination) = layout.v6 ? (ip + 8, ip + 24) : (ip + 12, ip + 16)
        let (guest, remote) = guestIsSource ? (source, destination) : (destination, source)
        let (guestPort, remotePort) = guestIsSource ? (layout.tcp, layout.tcp + 2) : (layout.tcp + 2, layout.tcp)
        return Array(frame[guest..<(guest + size)]) + Array(frame[guestPort..<(guestPort + 2)])
            + Array(frame[remote..<(remote + size)]) + Array(frame[remotePort..<(remotePort + 2)])
    }

}
