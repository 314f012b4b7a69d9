// GuestMemory: the guest's RAM as the front end shared it (SET_MEM_TABLE), and address
// translation into it.
//
// Theory of operation. QEMU sends up to 8 regions, each a descriptor to map with its
// guest-physical address, size, QEMU's own virtual address for it (ring addresses in
// SET_VRING_ADDR are in that space) and an offset into the descriptor. Mapping and
// closing are the platform's (`VhostUserPlatform`: PosixIO's mmap in the daemon, plain
// heap buffers in tests and the fuzzer); this type only translates, and every
// translation is checked: an address and length must lie inside one region, with
// arithmetic that cannot overflow. Guest memory changes under us at any time (the guest
// owns it), so callers read each ring field once and copy frames out before parsing them.

/// One mapping of a region descriptor; unmapped when the last reference goes.
public protocol MappedRegion: AnyObject {
    /// The start of the mapping (offset 0 of the descriptor).
    var base: UnsafeMutableRawPointer { get }
    var length: Int { get }
}

/// What the device needs from the system: mapping region descriptors, closing descriptors.
public protocol VhostUserPlatform: AnyObject {
    /// Maps `length` bytes of `descriptor` from offset 0, shared and writable. Does not
    /// take the descriptor (the device closes it after mapping).
    func map(descriptor: Int32, length: Int) throws(VhostUserError) -> any MappedRegion
    func close(descriptor: Int32)
}

/// A region of guest memory as mapped here.
public struct MemoryRegion: Sendable, Equatable {
    public var guestPhysical: UInt64
    public var size: UInt64
    public var userAddress: UInt64
    public var mmapOffset: UInt64

    public init(guestPhysical: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
        self.guestPhysical = guestPhysical
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
    }
}

/// The mapped regions; replaced whole by each SET_MEM_TABLE (the old mappings go with it).
public final class GuestMemory {
    struct Mapped {
        var region: MemoryRegion
        /// The region's first byte (the mapping's base plus the mmap offset).
        var start: UnsafeMutableRawPointer
        var mapping: (any MappedRegion)?
    }

    private(set) var regions: [Mapped] = []

    public init() {}

    /// For tests and the fuzzer: memory at `start` (not owned) described by `region`.
    public init(unowned start: UnsafeMutableRawPointer, region: MemoryRegion) {
        regions = [Mapped(region: region, start: start, mapping: nil)]
    }

    init(_ regions: [Mapped]) {
        self.regions = regions
    }

    public var regionCount: Int { regions.count }
    public var isEmpty: Bool { regions.isEmpty }

    /// Guest RAM in bytes, for the log.
    public var totalSize: UInt64 { regions.reduce(0) { $0 &+ $1.region.size } }

    /// `length` bytes at QEMU's virtual address `address`, if they lie inside one region.
    public func pointer(userAddress address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        for m in regions {
            if let offset = Self.offset(of: address, length: UInt64(length), from: m.region.userAddress, size: m.region.size) {
                return m.start + Int(offset)
            }
        }
        return nil
    }

    /// `length` bytes at guest-physical `address`, if they lie inside one region.
    public func pointer(guestAddress address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        for m in regions {
            if let offset = Self.offset(of: address, length: UInt64(length), from: m.region.guestPhysical, size: m.region.size) {
                return m.start + Int(offset)
            }
        }
        return nil
    }

    /// The longest contiguous piece (at most `length` bytes) starting at guest-physical
    /// `address`, for buffers that may cross from one region into the next.
    public func piece(guestAddress address: UInt64, length: Int) -> UnsafeMutableRawBufferPointer? {
        for m in regions {
            let r = m.region
            guard address >= r.guestPhysical else { continue }
            let offset = address - r.guestPhysical
            guard offset < r.size else { continue }
            let n = min(UInt64(length), r.size - offset)
            return UnsafeMutableRawBufferPointer(start: m.start + Int(offset), count: Int(n))
        }
        return nil
    }

    /// The offset of [address, address + length) inside [base, base + size), or nil.
    static func offset(of address: UInt64, length: UInt64, from base: UInt64, size: UInt64) -> UInt64? {
        guard address >= base else { return nil }
        let offset = address - base
        guard offset <= size, length <= size - offset else { return nil }
        return offset
    }

    /// Maps a table's regions: validates them (non-empty, no overflow, no overlap in either
    /// address space), then maps each through `platform`. Takes no descriptor.
    static func map(_ table: [MemoryRegion], descriptors: [Int32], platform: VhostUserPlatform) throws(VhostUserError) -> GuestMemory {
        for (i, r) in table.enumerated() {
            guard r.size > 0, r.size <= UInt64(Int.max) / 2,
                  r.guestPhysical <= UInt64.max - r.size, r.userAddress <= UInt64.max - r.size,
                  r.mmapOffset <= UInt64(Int.max) / 2 - r.size else {
                throw VhostUserError(.protocolViolation, "memory region \(i) has an impossible size or address")
            }
            for other in table[..<i] {
                let overlapsGuest = r.guestPhysical < other.guestPhysical + other.size && other.guestPhysical < r.guestPhysical + r.size
                let overlapsUser = r.userAddress < other.userAddress + other.size && other.userAddress < r.userAddress + r.size
                guard !overlapsGuest, !overlapsUser else {
                    throw VhostUserError(.protocolViolation, "memory region \(i) overlaps another")
                }
            }
        }
        var mapped: [Mapped] = []
        for (r, fd) in zip(table, descriptors) {
            // Mapped from offset 0: the mmap offset need not be page-aligned (as libvhost-user does).
            let mapping = try platform.map(descriptor: fd, length: Int(r.size + r.mmapOffset))
            mapped.append(Mapped(region: r, start: mapping.base + Int(r.mmapOffset), mapping: mapping))
        }
        return GuestMemory(mapped)
    }
}
