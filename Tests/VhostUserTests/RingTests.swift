import DataPlane
import FrameSwitch
import Testing
import TestSupport
@testable import VhostUser

/// Split rings on fake guest memory: TX gathering, indirect tables, hostile chains, RX
/// into mergeable buffers, running out of buffers, and resuming after a reconnect.
@Suite struct RingTests {
    static let header12 = [UInt8](repeating: 0, count: 12)

    // MARK: TX

    @Test func txGathersHeaderAndFrameAcrossDescriptors() throws {
        let g = try FakeGuest()
        let frame = etherFrame(200)
        let head = g.post(1, parts: [Self.header12, Array(frame[0..<50]), Array(frame[50...])])
        let frames = try g.transmittedFrames()
        #expect(frames == [frame])
        #expect(g.usedIndex[1] == 1 && g.usedEntry(1, 0).id == UInt32(head) && g.usedEntry(1, 0).len == 0)
        var calls: [Int32] = []
        g.device.takeNotifications { calls.append($0) }
        #expect(calls == [FakeGuest.callFDs[1]], "one interrupt for the batch")
        g.device.takeNotifications { calls.append($0) }
        #expect(calls.count == 1, "nothing new: no second interrupt")
    }

    @Test func txHonoursNoInterruptWithoutEventIndex() throws {
        let g = try FakeGuest(features: VhostUserDevice.offeredFeatures & ~VhostUserDevice.Feature.eventIdx.bit)
        g.put16(FakeGuest.availOffset(1), 1)  // VRING_AVAIL_F_NO_INTERRUPT
        g.post(1, parts: [Self.header12 + etherFrame(60)])
        #expect(try g.transmittedFrames().count == 1)
        var calls = 0
        g.device.takeNotifications { _ in calls += 1 }
        #expect(calls == 0)
    }

    @Test func txWithEventIndexInterruptsOnlyWhenUsedEventIsPassed() throws {
        let g = try FakeGuest()
        // used_event (after the avail ring) = 1: interrupt once the used index passes 1.
        g.put16(FakeGuest.availOffset(1) + 4 + 2 * g.size, 1)
        g.post(1, parts: [Self.header12 + etherFrame(60)])
        _ = try g.transmittedFrames()
        var calls = 0
        g.device.takeNotifications { _ in calls += 1 }
        #expect(calls == 0, "used index 1 has not passed used_event 1")
        g.post(1, parts: [Self.header12 + etherFrame(60)])
        _ = try g.transmittedFrames()
        g.device.takeNotifications { _ in calls += 1 }
        #expect(calls == 1)
        // And avail_event (after the used ring) asks for a kick at our next index.
        #expect(g.get16(FakeGuest.usedOffset(1) + 4 + 8 * g.size) == 2)
    }

    @Test func txIndirectTable() throws {
        let g = try FakeGuest()
        let frame = etherFrame(100, seed: 9)
        let table = g.allocate(32)
        let a = g.allocate(12), b = g.allocate(frame.count)
        g.write(Self.header12, at: a)
        g.write(frame, at: b)
        g.descriptor(1, 0, addr: UInt64(a), len: 12, flags: 1, next: 1, table: table)
        g.descriptor(1, 1, addr: UInt64(b), len: UInt32(frame.count), flags: 0, table: table)
        g.descriptor(1, 3, addr: UInt64(table), len: 32, flags: 4)
        g.makeAvailable(1, head: 3)
        #expect(try g.transmittedFrames() == [frame])
        #expect(g.usedEntry(1, 0).id == 3)
    }

    @Test func txIndirectMisuseIsABadRing() throws {
        for misuse in ["nested", "with next", "empty", "odd length", "outside"] {
            let g = try FakeGuest()
            let table = g.allocate(32)
            switch misuse {
            case "nested":
                g.descriptor(1, 0, addr: UInt64(table), len: 16, flags: 4, table: table)
                g.descriptor(1, 0, addr: UInt64(table), len: 16, flags: 4)
            case "with next": g.descriptor(1, 0, addr: UInt64(table), len: 16, flags: 4 | 1, next: 1)
            case "empty": g.descriptor(1, 0, addr: UInt64(table), len: 0, flags: 4)
            case "odd length": g.descriptor(1, 0, addr: UInt64(table), len: 24, flags: 4)
            default: g.descriptor(1, 0, addr: UInt64(FakeGuest.memorySize - 16), len: 32, flags: 4)
            }
            g.makeAvailable(1, head: 0)
            #expect(failure { _ = try g.transmit() } == .badRing, "\(misuse)")
        }
    }

    @Test func txChainLoopIsABadRing() throws {
        let g = try FakeGuest()
        let at = g.allocate(64)
        g.descriptor(1, 0, addr: UInt64(at), len: 32, flags: 1, next: 1)
        g.descriptor(1, 1, addr: UInt64(at), len: 32, flags: 1, next: 0)
        g.makeAvailable(1, head: 0)
        #expect(failure { _ = try g.transmit() } == .badRing)
    }

    @Test func txIndirectLoopIsABadRing() throws {
        let g = try FakeGuest()
        let table = g.allocate(32), at = g.allocate(64)
        g.descriptor(1, 0, addr: UInt64(at), len: 32, flags: 1, next: 1, table: table)
        g.descriptor(1, 1, addr: UInt64(at), len: 32, flags: 1, next: 0, table: table)
        g.descriptor(1, 0, addr: UInt64(table), len: 32, flags: 4)
        g.makeAvailable(1, head: 0)
        #expect(failure { _ = try g.transmit() } == .badRing)
    }

    @Test func txOutOfBoundsAddressesAndIndicesAreBadRings() throws {
        let cases: [(String, (FakeGuest) -> Void)] = [
            ("beyond memory", { $0.descriptor(1, 0, addr: UInt64(FakeGuest.memorySize), len: 64, flags: 0) }),
            ("straddling the end", { $0.descriptor(1, 0, addr: UInt64(FakeGuest.memorySize - 10), len: 64, flags: 0) }),
            ("wrapping", { $0.descriptor(1, 0, addr: .max - 4, len: 64, flags: 0) }),
            ("next beyond the table", { g in
                g.descriptor(1, 0, addr: 0x10000, len: 12, flags: 1, next: 8)
            }),
        ]
        for (what, setUp) in cases {
            let g = try FakeGuest()
            setUp(g)
            g.makeAvailable(1, head: 0)
            #expect(failure { _ = try g.transmit() } == .badRing, "\(what)")
        }
        let g = try FakeGuest()
        g.makeAvailable(1, head: 8)
        #expect(failure { _ = try g.transmit() } == .badRing, "a head beyond the table")
        let h = try FakeGuest()
        h.put16(FakeGuest.availOffset(1) + 2, 9)
        #expect(failure { _ = try h.transmit() } == .badRing, "an available index more than the queue size ahead")
    }

    @Test func txWritableDescriptorIsABadRing() throws {
        let g = try FakeGuest()
        g.post(1, parts: [Self.header12 + etherFrame(60)], writable: true)
        #expect(failure { _ = try g.transmit() } == .badRing)
    }

    @Test func txMalformedHeaderOrShortFrameIsDroppedNotFatal() throws {
        let g = try FakeGuest()
        g.post(1, parts: [[0x80] + [UInt8](repeating: 0, count: 11) + etherFrame(60)])
        g.post(1, parts: [Self.header12 + [1, 2, 3]])
        g.post(1, parts: [Self.header12 + etherFrame(60)])
        let out = try g.transmit()
        #expect(out.count == 3)
        guard case .malformed = out[0], case .malformed = out[1], case .frame = out[2] else {
            Issue.record("expected two malformed chains and a frame: \(out)")
            return
        }
        #expect(g.usedIndex[1] == 3, "dropped chains are still given back")
    }

    @Test func txCompletesAPartialChecksum() throws {
        let g = try FakeGuest()
        var tcp = TCPFrame.fromGuest()
        tcp.payload = Array(repeating: 7, count: 100)
        var frame = tcp.bytes
        let l4 = 14 + 20
        frame[l4 + 16] = 0x12  // garbage where the partial sum goes; NEEDS_CSUM recomputes it
        frame[l4 + 17] = 0x34
        let header = VirtioNetHeader(flags: VirtioNetHeader.needsChecksum, checksumStart: UInt16(l4), checksumOffset: 16).bytes + [0, 0]
        let reference = tcp.bytes
        // Put the folded pseudo-header sum in the field, so the completed sum is the real one.
        let src = Array(reference[26..<34])
        let length = UInt16(reference.count - l4)
        let p = src.withUnsafeBytes { IPChecksum.sum($0, initial: IPChecksum.add(6, length)) }
        frame[l4 + 16] = UInt8(p >> 8)
        frame[l4 + 17] = UInt8(p & 0xFF)
        g.post(1, parts: [header, frame])
        #expect(try g.transmittedFrames() == [reference])
    }

    @Test func txStopsAtTheBatchLimitAndSaysMoreWait() throws {
        let g = try FakeGuest()
        for _ in 0..<5 { g.post(1, parts: [Self.header12 + etherFrame(60)]) }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 12 + VhostUserDevice.maximumFrame, alignment: 16)
        defer { scratch.deallocate() }
        let first = try g.device.transmit(scratch: scratch, limit: 3) { _ in }
        #expect(first.count == 3 && first.more)
        let second = try g.device.transmit(scratch: scratch, limit: 3) { _ in }
        #expect(second.count == 2 && !second.more)
    }

    @Test func txAcrossTwoRegions() throws {
        // Two regions adjacent in guest-physical space, far apart in QEMU's: a buffer may cross.
        let p = FakePlatform()
        let r = p.offer(1, length: 0x20000)
        let d = VhostUserDevice(platform: p)
        _ = try d.handle(Msg.u64(.setFeatures, VhostUserDevice.offeredFeatures))
        _ = try d.handle(Msg.memTable([MemoryRegion(guestPhysical: 0, size: 0x10000, userAddress: 0x1000_0000, mmapOffset: 0),
                                       MemoryRegion(guestPhysical: 0x10000, size: 0x10000, userAddress: 0x9000_0000, mmapOffset: 0x10000)],
                                      fds: [1, 1]))
        _ = try d.handle(Msg.state(.setVringNum, 1, 8))
        _ = try d.handle(Msg.addr(1, desc: 0x1000_1000, used: 0x1000_3000, avail: 0x1000_2000))
        _ = try d.handle(Msg.u64(.setVringKick, 1, fds: [5]))
        _ = try d.handle(Msg.state(.setVringEnable, 1, 1))
        let frame = etherFrame(300)
        let bytes = Self.header12 + frame
        let at = 0x10000 - 100
        bytes.withUnsafeBytes { (r.base + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        (r.base + 0x1000).storeBytes(of: UInt64(at), as: UInt64.self)
        (r.base + 0x1008).storeBytes(of: UInt32(bytes.count), as: UInt32.self)
        (r.base + 0x2004).storeBytes(of: UInt16(0), as: UInt16.self)
        (r.base + 0x2002).storeBytes(of: UInt16(1), as: UInt16.self)
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 12 + VhostUserDevice.maximumFrame, alignment: 16)
        defer { scratch.deallocate() }
        var got: [UInt8] = []
        _ = try d.transmit(scratch: scratch, limit: 8) { if case .frame(let f) = $0 { got = Array(f) } }
        #expect(got == frame)
    }

    // MARK: RX

    @Test func rxMergeableAcrossBuffers() throws {
        let g = try FakeGuest()
        let buffers = (0..<3).map { _ in g.postRX(64) }
        let frame = etherFrame(150)
        #expect(try g.device.receive(frame.withUnsafeBytes { $0 }, mtu: 1500) == .delivered)
        #expect(g.usedIndex[0] == 3)
        #expect((0..<3).map { g.usedEntry(0, $0).len } == [64, 64, 34])
        let written = buffers.flatMap { g.read($0, 64) }
        #expect(Array(written[0..<10]) == [UInt8](repeating: 0, count: 10), "a plain header: complete checksums, no GSO")
        #expect(written[10] == 3 && written[11] == 0, "num_buffers")
        #expect(Array(written[12..<162]) == frame)
    }

    @Test func rxWithoutBuffersReportsNoRoomAndConsumesNothing() throws {
        let g = try FakeGuest()
        let frame = etherFrame(150)
        #expect(try frame.withUnsafeBytes { b in try g.device.receive(b, mtu: 1500) } == .noRoom)
        g.postRX(64)
        // One 64-byte buffer is not enough for 162 bytes: still no room, and the buffer stays posted.
        #expect(try frame.withUnsafeBytes { b in try g.device.receive(b, mtu: 1500) } == .noRoom)
        #expect(g.usedIndex[0] == 0 && g.device.rxHasBuffers)
        // It asked for a kick at the next buffer it needs (EVENT_IDX's avail_event).
        #expect(g.get16(FakeGuest.usedOffset(0) + 4 + 8 * g.size) == 0)
        g.postRX(128)
        #expect(try frame.withUnsafeBytes { b in try g.device.receive(b, mtu: 1500) } == .delivered)
        #expect(g.usedIndex[0] == 2)
    }

    @Test func rxOnAStoppedQueueIsNoRoom() throws {
        let g = try FakeGuest()
        g.postRX(2048)
        _ = try g.device.handle(Msg.state(.setVringEnable, 0, 0))
        #expect(try etherFrame(60).withUnsafeBytes { b in try g.device.receive(b, mtu: 1500) } == .noRoom)
    }

    @Test func rxLargerThanTheWholeRingIsTooLarge() throws {
        let g = try FakeGuest()
        for _ in 0..<8 { g.postRX(64) }
        #expect(try etherFrame(1000).withUnsafeBytes { b in try g.device.receive(b, mtu: 1500) } == .tooLarge)
        #expect(g.usedIndex[0] == 0, "nothing consumed")
    }

    @Test func rxWithoutMergeableBuffersUsesOneChain() throws {
        let features = VhostUserDevice.offeredFeatures & ~VhostUserDevice.Feature.mrgRXBuf.bit
        let g = try FakeGuest(features: features)
        #expect(g.device.headerLength == 12, "VERSION_1 keeps the 12-byte header")
        g.postRX(64)
        #expect(try etherFrame(150).withUnsafeBytes { b in try g.device.receive(b, mtu: 1500) } == .tooLarge)
        #expect(g.usedIndex[0] == 1 && g.usedEntry(0, 0).len == 0, "the too-small chain goes back empty")
        let a = g.allocate(100), b = g.allocate(100)
        g.descriptor(0, 1, addr: UInt64(a), len: 100, flags: 2 | 1, next: 2)
        g.descriptor(0, 2, addr: UInt64(b), len: 100, flags: 2)
        g.makeAvailable(0, head: 1)
        let frame = etherFrame(150)
        #expect(try frame.withUnsafeBytes { b in try g.device.receive(b, mtu: 1500) } == .delivered)
        #expect(g.usedEntry(0, 1).len == 162 && Array((g.read(a, 100) + g.read(b, 100))[12..<162]) == frame)
    }

    @Test func rxLargeTCPSegmentGetsAGSOHeader() throws {
        let g = try FakeGuest()
        for _ in 0..<4 { g.postRX(4096) }
        var tcp = TCPFrame.toGuest()
        tcp.payload = Array(repeating: 0x42, count: 9000)
        let frame = tcp.bytes
        #expect(try frame.withUnsafeBytes { b in try g.device.receive(b, mtu: 1500) } == .delivered)
        let out = (0..<3).flatMap { g.read(FakeGuest.bufferArea + 4096 * $0, 4096) }
        let header = try #require(out.withUnsafeBytes { VirtioNetHeader.parse($0) })
        #expect(header.gsoType == .tcpv4 && header.gsoSize == 1460 && header.needsChecksumCompleted)
        #expect(out[10] == 3, "num_buffers")
        #expect(Array(out[12..<(12 + 50)]) == Array(frame[0..<50]), "headers as sent, but for the checksum field")
        #expect(Array(out[(12 + 54)..<(12 + frame.count)]) == Array(frame[54...]))
    }

    @Test func rxRingWithBadDescriptorIsABadRing() throws {
        let g = try FakeGuest()
        g.descriptor(0, 0, addr: UInt64(FakeGuest.memorySize), len: 100, flags: 2)
        g.makeAvailable(0, head: 0)
        #expect(failure { _ = try etherFrame(60).withUnsafeBytes { b in try g.device.receive(b, mtu: 1500) } } == .badRing)
    }

    @Test func aNewMemTableKeepsEachRingWhereItStood() throws {
        let g = try FakeGuest()
        for _ in 0..<2 { g.post(1, parts: [Self.header12 + etherFrame(60)]) }
        #expect(try g.transmittedFrames().count == 2)
        // QEMU sends the table again (memory hot-plug, say); the rings are rebuilt on it.
        _ = try g.device.handle(Msg.memTable([MemoryRegion(guestPhysical: 0, size: UInt64(FakeGuest.memorySize), userAddress: FakeGuest.userBase, mmapOffset: 0)],
                                             fds: [FakeGuest.memoryFD]))
        let frame = etherFrame(70, seed: 3)
        g.post(1, parts: [Self.header12 + frame])
        #expect(try g.transmittedFrames() == [frame])
        #expect(try g.device.handle(Msg.state(.getVringBase, 1, 0))?.payload == le32(1) + le32(3))
    }

    // MARK: Reconnect

    @Test func reconnectResumesFromTheUsedIndex() throws {
        let g = try FakeGuest()
        for _ in 0..<3 { g.post(1, parts: [Self.header12 + etherFrame(60)]) }
        #expect(try g.transmittedFrames().count == 3)
        // slirpd restarts: a new device; QEMU sends the setup again with a stale base.
        let fresh = VhostUserDevice(platform: g.platform)
        _ = try fresh.handle(Msg.u64(.setFeatures, VhostUserDevice.offeredFeatures))
        _ = try fresh.handle(Msg.memTable([MemoryRegion(guestPhysical: 0, size: UInt64(FakeGuest.memorySize), userAddress: FakeGuest.userBase, mmapOffset: 0)],
                                          fds: [FakeGuest.memoryFD]))
        _ = try fresh.handle(Msg.state(.setVringNum, 1, 8))
        _ = try fresh.handle(Msg.state(.setVringBase, 1, 1))
        _ = try fresh.handle(Msg.addr(1, desc: FakeGuest.userBase + UInt64(FakeGuest.descOffset(1)),
                                      used: FakeGuest.userBase + UInt64(FakeGuest.usedOffset(1)), avail: FakeGuest.userBase + UInt64(FakeGuest.availOffset(1))))
        _ = try fresh.handle(Msg.u64(.setVringKick, 1, fds: [200]))
        _ = try fresh.handle(Msg.state(.setVringEnable, 1, 1))
        let frame = etherFrame(80, seed: 4)
        g.post(1, parts: [Self.header12 + frame])
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 12 + VhostUserDevice.maximumFrame, alignment: 16)
        defer { scratch.deallocate() }
        var got: [[UInt8]] = []
        _ = try fresh.transmit(scratch: scratch, limit: 8) { if case .frame(let f) = $0 { got.append(Array(f)) } }
        #expect(got == [frame], "only the new chain, not the three already used")
        #expect(g.usedIndex[1] == 4)
        #expect(try fresh.handle(Msg.state(.getVringBase, 1, 0))?.payload == le32(1) + le32(4))
    }
}
