/// Reassembles guests' IPv4 fragments before libslirp sees them.
///
/// Theory of operation: libslirp 4.7's own reassembly crashes the process (SIGSEGV or
/// SIGBUS, found by fuzz-frames) on fragment sequences a guest can send at will: a last
/// fragment that arrives before any other fragment of its datagram, or after libslirp
/// has completed and freed the datagram's queue. One such frame from any guest would
/// take down every network of the daemon, and a filter in front of libslirp's queues
/// has to predict when libslirp frees them, which the fuzzer showed is easy to get wrong.
/// So libslirp never gets a fragment: the daemon puts each datagram back together and
/// hands libslirp the whole datagram, which libslirp takes at any length.
///
/// A datagram is the fragments sharing source, destination, ID and protocol. Its header
/// is the first fragment's (offset 0). It is complete when the pieces cover 0 up to the
/// end the last fragment (no more-fragments flag) gives, with no gap. Overlapping pieces
/// drop the datagram (as RFC 5722 requires of IPv6; an exact duplicate is ignored), as do
/// a second, different end, a piece past the end, a non-last piece whose length is not a
/// multiple of 8, and a datagram over 65,535 bytes. Fragments that libslirp would have
/// refused (bad version, header length, total length or checksum) are dropped too. What
/// is held is bounded in datagrams and bytes, and a datagram not complete within
/// `lifetime` is dropped, as IP allows.
public struct IPv4Reassembly: Sendable {
    public enum Outcome: Equatable, Sendable {
        /// Not a fragment: hand the frame on as it is.
        case pass
        /// A fragment kept until its datagram is complete.
        case held
        /// The last missing fragment: this frame is the whole datagram.
        case complete([UInt8])
        /// The fragment, and with it possibly its datagram, is dropped.
        case dropped(String)
    }

    struct Key: Hashable, Sendable {
        var source: UInt32
        var destination: UInt32
        var idAndProtocol: UInt32
    }

    struct Datagram: Sendable {
        var started: Int64
        /// Ethernet and IP header of the fragment at offset 0, once it has come.
        var header: [UInt8]?
        /// Pieces of payload by offset.
        var pieces: [(offset: Int, bytes: [UInt8])] = []
        var received = 0
        /// The payload length, once the last fragment has come.
        var end: Int?
    }

    /// Datagrams held at once, and payload bytes over all of them.
    public static let maximumDatagrams = 64
    public static let maximumBytes = 1 << 20
    /// How long a datagram may take to arrive whole, in nanoseconds.
    public static let lifetime: Int64 = 10_000_000_000

    private var datagrams: [Key: Datagram] = [:]
    private var heldBytes = 0
    /// Datagrams handed on whole.
    public private(set) var reassembled = 0

    public init() {}

    public var held: Int { datagrams.count }

    /// Whether the frame is an IPv4 fragment (more-fragments flag or a non-zero offset): the
    /// only frames `input` does anything with.
    @inlinable
    public static func isFragment<C: RandomAccessCollection<UInt8>>(_ frame: C) -> Bool where C.Index == Int {
        let s = frame.startIndex
        guard frame.count >= 22, frame[s + 12] == 0x08, frame[s + 13] == 0x00 else { return false }
        return frame[s + 20] & 0x3F != 0 || frame[s + 21] != 0
    }

    /// Takes a guest's frame bound for libslirp.
    public mutating func input<C: RandomAccessCollection<UInt8>>(_ frame: C, now: Int64) -> Outcome where C.Index == Int {
        guard Self.isFragment(frame) else { return .pass }
        let bytes = Array(frame)
        guard let (key, headerLength, totalLength) = Self.parse(bytes) else {
            return .dropped("a malformed IPv4 fragment (bad header length, total length or checksum)")
        }
        let more = bytes[20] & 0x20 != 0
        let offset = (Int(bytes[20] & 0x1F) << 8 | Int(bytes[21])) * 8
        let payload = Array(bytes[(14 + headerLength)..<(14 + totalLength)])
        if more, payload.count % 8 != 0 { return drop(key, "a fragment before the last whose length is not a multiple of 8") }
        if offset + payload.count > 65_535 - headerLength { return drop(key, "fragments of a datagram over 65,535 bytes") }

        if datagrams[key] == nil {
            expire(now: now)
            guard datagrams.count < Self.maximumDatagrams else {
                return .dropped("an IPv4 fragment: \(Self.maximumDatagrams) datagrams are already being reassembled")
            }
            datagrams[key] = Datagram(started: now)
        }
        guard heldBytes + payload.count <= Self.maximumBytes else {
            return drop(key, "an IPv4 fragment: \(Self.maximumBytes) bytes are already held for reassembly")
        }
        guard var datagram = datagrams[key] else { return .held }
        for piece in datagram.pieces where piece.offset < offset + payload.count && offset < piece.offset + piece.bytes.count {
            if piece.offset == offset, piece.bytes == payload { return .held }
            return drop(key, "overlapping IPv4 fragments")
        }
        if !more {
            if let end = datagram.end, end != offset + payload.count { return drop(key, "IPv4 fragments with two different ends") }
            datagram.end = offset + payload.count
        }
        if let end = datagram.end, offset + payload.count > end || datagram.pieces.contains(where: { $0.offset + $0.bytes.count > end }) {
            return drop(key, "an IPv4 fragment past its datagram's end")
        }
        if offset == 0 { datagram.header = Array(bytes[0..<(14 + headerLength)]) }
        datagram.pieces.append((offset, payload))
        datagram.received += payload.count
        heldBytes += payload.count
        guard let end = datagram.end, datagram.received == end, let header = datagram.header else {
            datagrams[key] = datagram
            return .held
        }
        datagrams[key] = nil
        heldBytes -= datagram.received
        // The first fragment's header, for the whole datagram: its length, no fragment fields, a new checksum.
        let total = header.count - 14 + end
        guard total <= 65_535 else { return .dropped("fragments of a datagram over 65,535 bytes") }
        reassembled += 1
        var ip = Array(header[14...])
        ip.replaceSubrange(2..<4, with: bigEndianBytes(UInt16(total)))
        ip[6] &= 0x40   // keep DF only
        ip[7] = 0
        ip.replaceSubrange(10..<12, with: [0, 0])
        IPChecksum.store(in: &ip, at: 10)
        var whole = Array(header[0..<14]) + ip
        whole.reserveCapacity(header.count + end)
        for piece in datagram.pieces.sorted(by: { $0.offset < $1.offset }) { whole += piece.bytes }
        return .complete(whole)
    }

    /// Drops datagrams older than `lifetime`; returns how many.
    @discardableResult
    public mutating func expire(now: Int64) -> Int {
        let old = datagrams.filter { now - $0.value.started >= Self.lifetime }
        for (key, datagram) in old {
            datagrams[key] = nil
            heldBytes -= datagram.received
        }
        return old.count
    }

    private mutating func drop(_ key: Key, _ reason: String) -> Outcome {
        if let datagram = datagrams.removeValue(forKey: key) { heldBytes -= datagram.received }
        return .dropped(reason)
    }

    /// The datagram key, header length and total length of an IPv4 frame whose header
    /// libslirp would accept: version 4, a header of at least 20 bytes, a total length that
    /// covers it and fits in the frame, a valid checksum.
    static func parse(_ frame: [UInt8]) -> (Key, Int, Int)? {
        guard frame.count >= 34, frame[14] >> 4 == 4 else { return nil }
        let headerLength = Int(frame[14] & 0x0F) * 4
        let totalLength = Int(read16(frame, 16))
        guard headerLength >= 20, totalLength >= headerLength, 14 + totalLength <= frame.count,
              IPChecksum.sum(Array(frame[14..<(14 + headerLength)])) == 0xFFFF else { return nil }
        let id = UInt32(read16(frame, 18))
        return (Key(source: read32(frame, 26), destination: read32(frame, 30), idAndProtocol: id << 8 | UInt32(frame[23])),
                headerLength, totalLength)
    }
}
