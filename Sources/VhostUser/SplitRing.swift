// SplitRing: one split virtqueue in guest memory, read and written defensively.
//
// Theory of operation. A split virtqueue is three tables the guest shares with us: the
// descriptor table (addr u64, len u32, flags u16, next u16), the available ring (flags,
// idx, ring[size], used_event) the guest fills with chain heads, and the used ring
// (flags, idx, {id u32, len u32}[size], avail_event) we fill with finished chains. All
// three live in guest memory, so every value read from them is untrusted:
// - a head or `next` index at or beyond the table size, a chain longer than the table
//   (which is also how a loop ends), an indirect table that is empty, not a multiple of
//   16 bytes, longer than the queue allows, nested, or combined with NEXT, a buffer whose
//   address and length do not lie in mapped memory, and an available index more than
//   `size` ahead of ours all throw `.badRing`: the device is broken or hostile, and the
//   daemon closes its connection.
// - each field is read once into a local, so the guest changing it afterwards changes
//   nothing we decided.
// Buffers are returned as pieces of mapped memory; one descriptor may yield several when
// it crosses from one region into the next. Chains complete in the order they are taken
// (`lastAvail` == used index between calls), which is what lets a reconnect resume from the
// used index (`resume`). Notification: with EVENT_IDX unnegotiated, the guest asks for no
// interrupt with VRING_AVAIL_F_NO_INTERRUPT; with it, used_event says when.
import Synchronization

public struct SplitRing {
    public static let maximumSize = 32768
    /// Indirect tables longer than this are refused (Linux uses at most MAX_SKB_FRAGS + 2).
    public static let maximumIndirect = 1024

    static let descNext: UInt16 = 1
    static let descWrite: UInt16 = 2
    static let descIndirect: UInt16 = 4
    static let availNoInterrupt: UInt16 = 1

    public let size: Int
    let desc: UnsafeMutableRawPointer
    let avail: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer
    let memory: GuestMemory
    let eventIndex: Bool
    /// The next available entry to take.
    public internal(set) var lastAvail: UInt16
    /// The used index as we last published it.
    public internal(set) var usedIndex: UInt16
    /// The used index when the guest was last notified (EVENT_IDX).
    var signalledUsed: UInt16

    /// The byte sizes of the three tables for a queue of `size` entries.
    public static func tableSizes(size: Int) -> (desc: Int, avail: Int, used: Int) {
        (16 * size, 6 + 2 * size, 6 + 8 * size)
    }

    /// Checks and resolves the tables at QEMU's virtual addresses; throws when any of them is outside mapped memory.
    public init(size: Int, descUser: UInt64, availUser: UInt64, usedUser: UInt64, memory: GuestMemory,
                lastAvail: UInt16, eventIndex: Bool) throws(VhostUserError) {
        guard size > 0, size <= Self.maximumSize, size & (size - 1) == 0 else {
            throw VhostUserError(.badRing, "queue size \(size) (a power of two up to \(Self.maximumSize) expected)")
        }
        let sizes = Self.tableSizes(size: size)
        guard let d = memory.pointer(userAddress: descUser, length: sizes.desc),
              let a = memory.pointer(userAddress: availUser, length: sizes.avail),
              let u = memory.pointer(userAddress: usedUser, length: sizes.used) else {
            throw VhostUserError(.badRing, "ring tables outside the guest's memory")
        }
        self.size = size
        desc = d
        avail = a
        used = u
        self.memory = memory
        self.eventIndex = eventIndex
        self.lastAvail = lastAvail
        usedIndex = Self.load16(u, 2)
        signalledUsed = usedIndex
    }

    /// Resumes after a reconnect: chains complete in order here, so everything up to the
    /// guest's used index was done by the previous connection (libvhost-user does the same
    /// for in-order queues). Returns whether the index moved.
    @discardableResult
    public mutating func resumeFromUsedIndex() -> Bool {
        usedIndex = Self.load16(used, 2)
        signalledUsed = usedIndex
        guard lastAvail != usedIndex else { return false }
        lastAvail = usedIndex
        return true
    }

    // MARK: Reading chains

    /// A buffer piece of a chain: mapped bytes, and whether the device may write them.
    public struct Piece {
        public var bytes: UnsafeMutableRawBufferPointer
        public var writable: Bool
    }

    /// Entries the guest has made available and we have not taken.
    public func pending() throws(VhostUserError) -> Int {
        let idx = Self.load16(avail, 2)
        // The ring entries this index publishes are read after it.
        atomicMemoryFence(ordering: .acquiring)
        let n = Int(idx &- lastAvail)
        guard n <= size else {
            throw VhostUserError(.badRing, "available index \(idx) is \(n) entries ahead of \(lastAvail) in a queue of \(size) (used index \(usedIndex), \(Self.load16(used, 2)) in the ring)")
        }
        return n
    }

    /// Takes the next available chain and appends its pieces to `pieces`. Returns the
    /// head's index, or nil when none is available.
    public mutating func nextChain(_ pieces: inout [Piece]) throws(VhostUserError) -> UInt16? {
        guard try pending() > 0 else { return nil }
        // The entry is read after the index (pending's fence), as the guest wrote them in the other order.
        let head = Self.load16(avail, 4 + 2 * (Int(lastAvail) % size))
        guard Int(head) < size else { throw VhostUserError(.badRing, "chain head \(head) in a queue of \(size)") }
        try walk(head: head, into: &pieces)
        lastAvail &+= 1
        return head
    }

    private func walk(head: UInt16, into pieces: inout [Piece]) throws(VhostUserError) {
        let first = pieces.count
        var table = desc
        var tableSize = size
        var index = Int(head)
        var seen = 0
        var indirect = false
        while true {
            seen += 1
            guard seen <= tableSize else { throw VhostUserError(.badRing, "a descriptor chain longer than its table (\(tableSize)): a loop") }
            let entry = table + 16 * index
            let addr = entry.loadUnaligned(as: UInt64.self).littleEndian
            let len = Int((entry + 8).loadUnaligned(as: UInt32.self).littleEndian)
            let flags = (entry + 12).loadUnaligned(as: UInt16.self).littleEndian
            let next = Int((entry + 14).loadUnaligned(as: UInt16.self).littleEndian)
            if flags & Self.descIndirect != 0 {
                guard !indirect else { throw VhostUserError(.badRing, "an indirect descriptor inside an indirect table") }
                guard flags & Self.descNext == 0 else { throw VhostUserError(.badRing, "an indirect descriptor with NEXT set") }
                guard len > 0, len % 16 == 0, len / 16 <= Self.maximumIndirect else {
                    throw VhostUserError(.badRing, "an indirect table of \(len) bytes")
                }
                guard let t = memory.pointer(guestAddress: addr, length: len) else {
                    throw VhostUserError(.badRing, "an indirect table outside the guest's memory")
                }
                indirect = true
                table = t
                tableSize = len / 16
                index = 0
                seen = 0
                continue
            }
            try appendPieces(address: addr, length: len, writable: flags & Self.descWrite != 0, to: &pieces, first: first)
            guard flags & Self.descNext != 0 else { return }
            guard next < tableSize else { throw VhostUserError(.badRing, "next descriptor \(next) in a table of \(tableSize)") }
            index = next
        }
    }

    private func appendPieces(address: UInt64, length: Int, writable: Bool, to pieces: inout [Piece], first: Int) throws(VhostUserError) {
        guard length > 0 else { return }
        guard address <= UInt64.max - UInt64(length) else { throw VhostUserError(.badRing, "a buffer that wraps the address space") }
        var at = address
        var left = length
        while left > 0 {
            // A handful of pieces per chain is normal; thousands means a hostile chain.
            guard pieces.count - first < 4 * Self.maximumIndirect, let piece = memory.piece(guestAddress: at, length: left) else {
                throw VhostUserError(.badRing, "a buffer of \(length) bytes at 0x\(String(address, radix: 16)) outside the guest's memory")
            }
            pieces.append(Piece(bytes: piece, writable: writable))
            at += UInt64(piece.count)
            left -= piece.count
        }
    }

    // MARK: Completing chains

    /// Gives back chains taken but not used (none completed since): the guest sees nothing.
    public mutating func rewind(to index: UInt16) {
        lastAvail = index
    }

    /// Puts a finished chain in the used ring and publishes the new used index.
    public mutating func complete(head: UInt16, written: Int) {
        let slot = 4 + 8 * (Int(usedIndex) % size)
        (used + slot).storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        (used + slot + 4).storeBytes(of: UInt32(truncatingIfNeeded: written).littleEndian, as: UInt32.self)
        usedIndex &+= 1
        // The entry must be visible before the index that publishes it.
        atomicMemoryFence(ordering: .releasing)
        (used + 2).storeBytes(of: usedIndex.littleEndian, as: UInt16.self)
    }

    /// Whether the guest wants an interrupt for what was completed since the last one;
    /// records that it gets one.
    public mutating func shouldNotify() -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        defer { signalledUsed = usedIndex }
        if eventIndex {
            let event = Self.load16(avail, 4 + 2 * size)
            let old = signalledUsed, new = usedIndex
            // vring_need_event: notify when used_event lies in (old, new].
            return new &- event &- 1 < new &- old
        }
        guard signalledUsed != usedIndex else { return false }
        return Self.load16(avail, 0) & Self.availNoInterrupt == 0
    }

    /// With EVENT_IDX, tells the guest which available index we want a kick for (the next one).
    public func requestKick() {
        guard eventIndex else { return }
        (used + 4 + 8 * size).storeBytes(of: lastAvail.littleEndian, as: UInt16.self)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    static func load16(_ base: UnsafeMutableRawPointer, _ offset: Int) -> UInt16 {
        (base + offset).loadUnaligned(as: UInt16.self).littleEndian
    }
}
