import Glibc

/// A bounded byte queue: bytes are appended at the tail and consumed from the head.
///
/// Used for a guest's receive buffer (the framer reads frames out of it) and for its
/// bounded output queue (length-prefixed frames waiting for the socket).
///
/// Memory: `capacity` is the most the queue may hold; the storage starts at `initial`
/// bytes and doubles on demand up to `capacity`. An idle guest so costs a few KiB, not
/// the 1 MiB + 128 KiB its queues may reach under load, and `shrinkIfEmpty` (called by
/// the loop's idle sweep, not per frame) gives a grown buffer back once it has drained.
/// In steady state nothing is allocated per frame: growth happens once per burst.
public final class ByteBuffer {
    private var storage: UnsafeMutableRawPointer
    public let capacity: Int
    /// The bytes allocated now (`initial` <= allocated <= capacity).
    public private(set) var allocated: Int
    private let initial: Int
    private var head = 0
    private var tail = 0
    /// After `receiveDatagram`: how many bytes of the datagram did not fit (0 when none).
    public internal(set) var truncatedBy = 0

    /// `initial`: the storage allocated up front (all of `capacity` when nil).
    public init(capacity: Int, initial: Int? = nil) {
        precondition(capacity > 0)
        self.capacity = capacity
        let start = min(capacity, max(16, initial ?? capacity))
        self.initial = start
        allocated = start
        storage = UnsafeMutableRawPointer.allocate(byteCount: start, alignment: 16)
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
        UnsafeMutableRawBufferPointer(start: storage + tail, count: allocated - tail)
    }

    /// Moves the unconsumed bytes into storage of `size` bytes.
    private func reallocate(to size: Int) {
        let n = tail - head
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        if n > 0 { fresh.copyMemory(from: storage + head, byteCount: n) }
        storage.deallocate()
        storage = fresh
        allocated = size
        head = 0
        tail = n
    }

    /// Makes room for `n` more bytes at the tail if `capacity` allows; false when it does not.
    @discardableResult
    public func reserve(_ n: Int) -> Bool {
        if allocated - tail >= n { return true }
        makeRoomAtTail()
        if allocated - tail >= n { return true }
        let needed = tail + n
        guard needed <= capacity else { return false }
        var size = allocated
        while size < needed { size *= 2 }
        reallocate(to: min(size, capacity))
        return true
    }

    /// Set by a read that filled all the free space: more is likely waiting.
    public internal(set) var lastReadFilled = false

    /// Before a stream read: compacts, and doubles when the last read filled the buffer or
    /// less than half of it is free, so a burst soon reads in large pieces and a partial
    /// frame always leaves room for a good-sized read.
    func prepareForRead() {
        makeRoomAtTail()
        if allocated < capacity, lastReadFilled || (allocated - tail) * 2 < allocated { reserve(allocated - tail + 1) }
    }

    /// Before a read that takes one whole frame or datagram: all of `capacity` free.
    func prepareForWholeRead() {
        removeAll()
        if allocated < capacity { reallocate(to: capacity) }
    }

    /// Gives grown storage back when nothing is queued; true when it shrank.
    @discardableResult
    public func shrinkIfEmpty() -> Bool {
        guard head == tail, allocated > initial else { return false }
        reallocate(to: initial)
        return true
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
        guard reserve(needed) else { return false }
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
        guard reserve(bytes.count) else { return false }
        if let base = bytes.baseAddress { (storage + tail).copyMemory(from: base, byteCount: bytes.count) }
        tail += bytes.count
        return true
    }
}
