import VhostUser

/// Guest RAM on the heap, handed out by a fake platform in place of mmap.
final class FakeRegion: MappedRegion {
    let base: UnsafeMutableRawPointer
    let length: Int
    /// Set when the last reference goes: the device "unmapped" it.
    var onUnmap: (() -> Void)?

    init(length: Int) {
        self.length = length
        base = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: length)
    }

    deinit {
        onUnmap?()
        base.deallocate()
    }
}

/// Maps descriptor numbers to fake regions and records every close and unmap.
final class FakePlatform: VhostUserPlatform {
    var regions: [Int32: FakeRegion] = [:]
    var closed: [Int32] = []
    var unmapped = 0
    var mapped: [(Int32, Int)] = []

    func map(descriptor: Int32, length: Int) throws(VhostUserError) -> any MappedRegion {
        guard let r = regions[descriptor], length <= r.length else { throw VhostUserError(.mapping, "fake mmap of \(length) bytes from \(descriptor)") }
        mapped.append((descriptor, length))
        return r
    }

    func close(descriptor: Int32) { closed.append(descriptor) }

    /// A region for descriptor `fd` that counts its unmapping; the platform drops its own reference.
    func offer(_ fd: Int32, length: Int) -> FakeRegion {
        let r = FakeRegion(length: length)
        r.onUnmap = { [weak self] in self?.unmapped += 1 }
        regions[fd] = r
        return r
    }
}

func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

enum Msg {
    static func make(_ r: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = [], needReply: Bool = false) -> VhostUserMessage {
        VhostUserMessage(request: r.rawValue, flags: 1 | (needReply ? 8 : 0), payload: payload, descriptors: fds)
    }
    static func u64(_ r: VhostUserRequest, _ v: UInt64, fds: [Int32] = []) -> VhostUserMessage { make(r, le64(v), fds: fds) }
    static func state(_ r: VhostUserRequest, _ index: UInt32, _ num: UInt32) -> VhostUserMessage { make(r, le32(index) + le32(num)) }
    static func memTable(_ regions: [MemoryRegion], fds: [Int32]) -> VhostUserMessage {
        var p = le32(UInt32(regions.count)) + le32(0)
        for r in regions { p += le64(r.guestPhysical) + le64(r.size) + le64(r.userAddress) + le64(r.mmapOffset) }
        return make(.setMemTable, p, fds: fds)
    }
    static func addr(_ index: UInt32, desc: UInt64, used: UInt64, avail: UInt64) -> VhostUserMessage {
        make(.setVringAddr, le32(index) + le32(0) + le64(desc) + le64(used) + le64(avail) + le64(0))
    }
}

/// A guest driver in fake memory: one region (guest-physical 0, QEMU address `userBase`),
/// both queues of `size` entries laid out at fixed places, buffers from `bufferArea` on.
final class FakeGuest {
    static let memorySize = 1 << 20
    static let userBase: UInt64 = 0x7F00_0000_0000
    static let memoryFD: Int32 = 100
    static let kickFDs: [Int32] = [110, 111]
    static let callFDs: [Int32] = [120, 121]
    static let bufferArea = 0x10000

    let platform = FakePlatform()
    let device: VhostUserDevice
    let region: FakeRegion
    let size: Int
    var availIndex: [UInt16] = [0, 0]
    var nextBuffer = FakeGuest.bufferArea
    var nextDescriptor = [0, 0]

    static func descOffset(_ q: Int) -> Int { 0x1000 + q * 0x4000 }
    static func availOffset(_ q: Int) -> Int { 0x2000 + q * 0x4000 }
    static func usedOffset(_ q: Int) -> Int { 0x3000 + q * 0x4000 }

    init(features: UInt64 = VhostUserDevice.offeredFeatures, size: Int = 8, start: Bool = true) throws {
        region = platform.offer(Self.memoryFD, length: Self.memorySize)
        device = VhostUserDevice(platform: platform)
        self.size = size
        guard start else { return }
        _ = try device.handle(Msg.u64(.setFeatures, features))
        _ = try device.handle(Msg.memTable([MemoryRegion(guestPhysical: 0, size: UInt64(Self.memorySize), userAddress: Self.userBase, mmapOffset: 0)],
                                           fds: [Self.memoryFD]))
        for q in 0..<2 { try setUpQueue(q, base: 0) }
    }

    func setUpQueue(_ q: Int, base: UInt32) throws {
        _ = try device.handle(Msg.state(.setVringNum, UInt32(q), UInt32(size)))
        _ = try device.handle(Msg.state(.setVringBase, UInt32(q), base))
        _ = try device.handle(Msg.addr(UInt32(q), desc: Self.userBase + UInt64(Self.descOffset(q)),
                                       used: Self.userBase + UInt64(Self.usedOffset(q)), avail: Self.userBase + UInt64(Self.availOffset(q))))
        _ = try device.handle(Msg.u64(.setVringKick, UInt64(q), fds: [Self.kickFDs[q]]))
        _ = try device.handle(Msg.u64(.setVringCall, UInt64(q), fds: [Self.callFDs[q]]))
        _ = try device.handle(Msg.state(.setVringEnable, UInt32(q), 1))
    }

    var memory: UnsafeMutableRawPointer { region.base }

    func put16(_ at: Int, _ v: UInt16) { (memory + at).storeBytes(of: v.littleEndian, as: UInt16.self) }
    func put32(_ at: Int, _ v: UInt32) { (memory + at).storeBytes(of: v.littleEndian, as: UInt32.self) }
    func put64(_ at: Int, _ v: UInt64) { (memory + at).storeBytes(of: v.littleEndian, as: UInt64.self) }
    func get16(_ at: Int) -> UInt16 { (memory + at).loadUnaligned(as: UInt16.self).littleEndian }
    func get32(_ at: Int) -> UInt32 { (memory + at).loadUnaligned(as: UInt32.self).littleEndian }

    func write(_ bytes: [UInt8], at: Int) { bytes.withUnsafeBytes { (memory + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
    func read(_ at: Int, _ n: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: memory + at, count: n)) }

    /// Room for `n` bytes of buffer, 16-byte aligned; returns its guest-physical address.
    func allocate(_ n: Int) -> Int {
        defer { nextBuffer += (n + 15) & ~15 }
        return nextBuffer
    }

    /// Writes descriptor `index` of queue `q`'s table (or of a table at `table`).
    func descriptor(_ q: Int, _ index: Int, addr: UInt64, len: UInt32, flags: UInt16, next: UInt16 = 0, table: Int? = nil) {
        let at = (table ?? Self.descOffset(q)) + 16 * index
        put64(at, addr)
        put32(at + 8, len)
        put16(at + 12, flags)
        put16(at + 14, next)
    }

    /// Publishes `head` in queue `q`'s available ring.
    func makeAvailable(_ q: Int, head: UInt16) {
        put16(Self.availOffset(q) + 4 + 2 * (Int(availIndex[q]) % size), head)
        availIndex[q] &+= 1
        put16(Self.availOffset(q) + 2, availIndex[q])
    }

    /// Posts a chain of buffers holding `parts` (TX: readable) or of `sizes` writable bytes (RX).
    @discardableResult
    func post(_ q: Int, parts: [[UInt8]], writable: Bool = false) -> UInt16 {
        let head = nextDescriptor[q]
        for (i, part) in parts.enumerated() {
            let at = allocate(part.count)
            write(part, at: at)
            let last = i == parts.count - 1
            let index = (head + i) % size
            descriptor(q, index, addr: UInt64(at), len: UInt32(part.count), flags: (last ? 0 : 1) | (writable ? 2 : 0),
                       next: UInt16((head + i + 1) % size))
        }
        nextDescriptor[q] = (head + parts.count) % size
        makeAvailable(q, head: UInt16(head))
        return UInt16(head)
    }

    /// Posts one writable RX buffer of `n` bytes; returns its guest-physical address.
    @discardableResult
    func postRX(_ n: Int) -> Int {
        let head = nextDescriptor[0]
        let at = allocate(n)
        descriptor(0, head, addr: UInt64(at), len: UInt32(n), flags: 2)
        nextDescriptor[0] = (head + 1) % size
        makeAvailable(0, head: UInt16(head))
        return at
    }

    var usedIndex: [UInt16] { [get16(Self.usedOffset(0) + 2), get16(Self.usedOffset(1) + 2)] }

    func usedEntry(_ q: Int, _ i: Int) -> (id: UInt32, len: UInt32) {
        let at = Self.usedOffset(q) + 4 + 8 * (i % size)
        return (get32(at), get32(at + 4))
    }

    /// Takes TX chains, recording what each held.
    func transmit(limit: Int = 64) throws(VhostUserError) -> [VhostUserDevice.Transmitted] {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 12 + VhostUserDevice.maximumFrame, alignment: 16)
        defer { scratch.deallocate() }
        var out: [VhostUserDevice.Transmitted] = []
        _ = try device.transmit(scratch: scratch, limit: limit) { out.append($0) }
        return out
    }

    func transmittedFrames(limit: Int = 64) throws(VhostUserError) -> [[UInt8]?] {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 12 + VhostUserDevice.maximumFrame, alignment: 16)
        defer { scratch.deallocate() }
        var out: [[UInt8]?] = []
        _ = try device.transmit(scratch: scratch, limit: limit) { t in
            if case .frame(let f) = t { out.append(Array(f)) } else { out.append(nil) }
        }
        return out
    }
}

/// A plausible Ethernet frame of `n` bytes (not IP: it passes the header checks untouched).
func etherFrame(_ n: Int, seed: UInt8 = 1) -> [UInt8] {
    let header: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x55, 10, 0, 2, 2, 0x88, 0xB5]
    return header + (0..<(n - 14)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
}
