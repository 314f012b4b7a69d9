/// Which of a guest's IPv4 fragments may reach libslirp.
///
/// Theory of operation: libslirp 4.7 crashes (SIGSEGV or SIGBUS, found by fuzz-frames)
/// when the last fragment of a datagram (offset above 0, no more-fragments flag) opens a
/// reassembly queue: that is, when no earlier fragment of the datagram is queued. One
/// such frame from any guest would take down every network of the daemon. Any other
/// fragment is safe: a first or middle one opens a queue, and a last one joining a queue
/// completes or extends it (tried: in order, out of order, with gaps, overlapping).
///
/// So the guard remembers, per datagram (source, destination, ID, protocol), that a
/// fragment with more to come has gone to libslirp, and lets a last fragment through
/// only while that queue must still exist in libslirp:
/// - it is forgotten when its last fragment passes (only a last fragment can complete a
///   queue, and libslirp frees the queue on completion);
/// - when a whole datagram with the same key passes (libslirp frees the queue then);
/// - after `lifetime`, well inside libslirp's own 30 s (IPFRAGTTL, 60 ticks of 500 ms).
/// Only fragments libslirp's ip_input would queue count, so one it drops first (bad
/// checksum, bad lengths, TTL 0) cannot make a later last fragment look safe.
/// A datagram whose last fragment comes first is lost, which IP allows.
public struct FragmentGuard: Sendable {
    @usableFromInline
    struct Key: Hashable, Sendable {
        @usableFromInline var source: UInt32
        @usableFromInline var destination: UInt32
        @usableFromInline var idAndProtocol: UInt32

        @inlinable
        init(source: UInt32, destination: UInt32, idAndProtocol: UInt32) {
            self.source = source
            self.destination = destination
            self.idAndProtocol = idAndProtocol
        }
    }

    /// Datagrams being reassembled that the guard keeps track of; past it, a new
    /// datagram's fragments still pass, but its last fragment is dropped.
    public static let capacity = 256
    /// How long a queue is trusted to exist in libslirp, in nanoseconds.
    public static let lifetime: Int64 = 10_000_000_000

    @usableFromInline var open: [Key: Int64] = [:]
    @usableFromInline var droppedCount = 0

    /// Last fragments dropped because no queue was known for them.
    public var dropped: Int { droppedCount }

    public init() {}

    public var tracked: Int { open.count }

    /// Whether libslirp may be given this frame; false only for a last IPv4 fragment with
    /// no queue known to be open for it. Records what passes.
    @inlinable
    public mutating func admits<C: RandomAccessCollection<UInt8>>(_ frame: C, now: Int64) -> Bool where C.Index == Int {
        let s = frame.startIndex
        guard frame.count >= 34, frame[s + 12] == 0x08, frame[s + 13] == 0x00 else { return true }
        let moreFragments = frame[s + 20] & 0x20 != 0
        let offset = Int(frame[s + 20] & 0x1F) << 8 | Int(frame[s + 21])
        // Most frames: not a fragment, and no datagram in reassembly.
        if !moreFragments, offset == 0, open.isEmpty { return true }
        guard let key = queuedKey(frame) else { return true }  // libslirp drops it before reassembly
        if moreFragments {
            if open[key] == nil, open.count >= Self.capacity { expire(now: now) }
            if open[key] != nil || open.count < Self.capacity { open[key] = now }
            return true
        }
        if offset == 0 {
            open.removeValue(forKey: key)
            return true
        }
        guard let since = open.removeValue(forKey: key), now - since < Self.lifetime else {
            droppedCount += 1
            return false
        }
        return true
    }

    /// The datagram key of an IPv4 frame libslirp's ip_input would take as far as its
    /// reassembly step, or nil: it checks the version, header length and checksum, that
    /// the total length covers the header and fits in the frame, and a non-zero TTL.
    @inlinable
    func queuedKey<C: RandomAccessCollection<UInt8>>(_ frame: C) -> Key? where C.Index == Int {
        let s = frame.startIndex + 14
        let available = frame.count - 14
        guard frame[s] >> 4 == 4 else { return nil }
        let headerLength = Int(frame[s] & 0x0F) * 4
        guard headerLength >= 20, headerLength <= available else { return nil }
        let totalLength = Int(frame[s + 2]) << 8 | Int(frame[s + 3])
        guard totalLength >= headerLength, totalLength <= available, frame[s + 8] != 0 else { return nil }
        var sum: UInt32 = 0
        for i in stride(from: 0, to: headerLength, by: 2) { sum += UInt32(frame[s + i]) << 8 | UInt32(frame[s + i + 1]) }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        guard sum == 0xFFFF else { return nil }
        func u32(_ at: Int) -> UInt32 {
            UInt32(frame[s + at]) << 24 | UInt32(frame[s + at + 1]) << 16 | UInt32(frame[s + at + 2]) << 8 | UInt32(frame[s + at + 3])
        }
        let id = UInt32(frame[s + 4]) << 8 | UInt32(frame[s + 5])
        return Key(source: u32(12), destination: u32(16), idAndProtocol: id << 8 | UInt32(frame[s + 9]))
    }

    @usableFromInline
    mutating func expire(now: Int64) {
        open = open.filter { now - $0.value < Self.lifetime }
    }
}
