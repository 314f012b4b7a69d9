import Glibc

/// A fixed-capacity byte queue: bytes are appended at the tail and consumed from the head.
///
/// Used for a guest's receive buffer (the framer reads frames out of it) and for its
/// bounded output queue (length-prefixed frames waiting for the socket). The storage is
/// allocated once per port, so the steady-state frame path allocates nothing.
public final class ByteBuffer {
    private let storage: UnsafeMutableRawPointer
    public let capacity: Int
    private var head = 0
    private var tail = 0
    /// After `receiveDatagram`: how many bytes of the datagram did not fit (0 when none).
    public internal(set) var truncatedBy = 0

    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    public var count: Int { tail - head }
    public var isEmpty: Bool { head == tail }

    /// The bytes not consumed yet. Valid until the next mutation.
    public var readable: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage + head, count: tail - head)
    }

    /// The same bytes, writable in place (a tap frame's checksum completed). Valid until the next mutation.
    public var mutableReadable: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: storage + head, count: tail - head)
    }

    var freeSpace: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: storage + tail, count: capacity - tail)
    }

    func didWrite(_ n: Int) { tail += n }

    public func consume(_ n: Int) {
        precondition(n <= count)
        head += n
        if head == tail { head = 0; tail = 0 }
    }

    public func removeAll() { head = 0; tail = 0 }

    /// Moves unconsumed bytes to the front so the tail has room; cheap when little is left.
    func makeRoomAtTail() {
        guard head > 0 else { return }
        let n = tail - head
        if n > 0 { memmove(storage, storage + head, n) }
        head = 0
        tail = n
    }

    /// Appends a 4-byte big-endian length and the frame, or returns false when it does not fit.
    public func appendFrame(_ frame: UnsafeRawBufferPointer) -> Bool {
        let needed = 4 + frame.count
        if capacity - tail < needed { makeRoomAtTail() }
        guard capacity - tail >= needed else { return false }
        let p = storage + tail
        p.storeBytes(of: UInt32(frame.count).bigEndian, as: UInt32.self)
        if let base = frame.baseAddress { (p + 4).copyMemory(from: base, byteCount: frame.count) }
        tail += needed
        return true
    }

    /// Drops every queued length-prefixed frame; returns how many there were.
    public func removeAllFrames() -> Int {
        var frames = 0
        var bytes = readable
        while bytes.count >= 4 {
            let length = Int(UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self)))
            frames += 1
            bytes = UnsafeRawBufferPointer(rebasing: bytes.dropFirst(min(bytes.count, 4 + length)))
        }
        removeAll()
        return frames
    }

    /// Appends raw bytes (tests and tools use it to build input).
    public func append(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if capacity - tail < bytes.count { makeRoomAtTail() }
        guard capacity - tail >= bytes.count else { return false }
        if let base = bytes.baseAddress { (storage + tail).copyMemory(from: base, byteCount: bytes.count) }
        tail += bytes.count
        return true
    }
}
