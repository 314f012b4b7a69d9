import CLinux

// BusyPoll: whether the loop should spin on poll(0) before it sleeps.
//
// Theory of operation. A request/response exchange through the NAT (a TCP handshake, a
// 1-byte ping-pong, a TFTP block and its ACK, a DNS query) crosses slirpd twice per round
// trip, and each time the loop was asleep in poll(): the wake-up (an IPI to a halted
// vCPU, a reschedule, often onto the other CPU) costs more than the NAT's own work, tens
// of microseconds on a VM. Spinning on a non-blocking poll for up to `maximum` after such
// a turn catches the answer without that cost (as QEMU's iothreads do with poll-max-ns,
// and Linux sockets with busy_poll). It spins only where that pays:
// - the traffic is interactive: the last turn moved at most `interactiveBytes` of frames.
//   Bulk transfers keep their buffers full, so a wake-up costs them nothing and a spin
//   would only burn CPU between a slow guest's frames;
// - the last wait ended within `maximum`: events come densely enough for a spin to catch
//   the next one; after a longer wait (a sparse trickle, an idle network) it stops;
// - nobody else wants the CPU: when the thread was preempted while spinning (involuntary
//   context switches), spinning stays off for `backoff`, so a TCG guest's QEMU on a small
//   machine keeps its core;
// - few descriptors are polled: each poll(0) walks libslirp's sockets (slirpd's own are
//   in epoll, PollSet), and with hundreds of them it costs as much as the wake-up it saves.
public struct BusyPoll: Sendable {
    /// The longest spin, in nanoseconds; 0 turns spinning off.
    public let maximum: Int64
    private var dense = false
    private var interactive = false
    private var closedUntil: Int64 = 0

    public static let interactiveBytes = 4096
    public static let backoff: Int64 = 10_000_000
    public static let largestPollSet = 512

    public init(maximumMicroseconds: Int) {
        maximum = Int64(max(0, maximumMicroseconds)) * 1000
    }

    /// How long to spin before blocking, now, with `descriptors` in the poll set.
    public func spin(now: Int64, descriptors: Int) -> Int64 {
        guard maximum > 0, dense, interactive, now >= closedUntil, descriptors <= Self.largestPollSet else { return 0 }
        return maximum
    }

    /// What the last wait showed: whether spinning caught an event, how long from the
    /// start of the wait to the event or timeout, and whether the thread was preempted.
    public mutating func record(caught: Bool, waited: Int64, preempted: Bool, now: Int64) {
        dense = caught || waited <= maximum
        if preempted { closedUntil = now + Self.backoff }
    }

    /// Frame bytes the turn after the wait moved, both ways.
    public mutating func turnMoved(bytes: Int) {
        interactive = bytes > 0 && bytes <= Self.interactiveBytes
    }
}

/// The calling thread's involuntary context switches so far (getrusage RUSAGE_THREAD).
public func involuntaryContextSwitches() -> Int {
    clinux_thread_involuntary_switches()
}
