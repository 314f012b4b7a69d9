import Testing
@testable import VhostUser

/// The error's kind, or nil when `body` did not throw.
func failure(_ body: () throws -> Void) -> VhostUserError.Kind? {
    do {
        try body()
        return nil
    } catch {
        return (error as? VhostUserError)?.kind
    }
}

/// Every message QEMU 7.2's vhost-user-net sends, good and malformed, and what happens to
/// the descriptors that come with them.
@Suite struct MessageTests {
    // MARK: Framing

    @Test func assemblerReadsHeaderThenPayloadAndKeepsDescriptors() throws {
        var a = MessageAssembler()
        let wire = VhostUserMessage(request: 13, payload: le64(1)).encoded
        #expect(a.wanted == 12)
        let first = try wire[0..<5].withUnsafeBytes { b in try a.received(b, descriptors: [7]) }
        #expect(first == nil && a.wanted == 7 && a.isMidMessage)
        let second = try wire[5..<12].withUnsafeBytes { b in try a.received(b, descriptors: []) }
        #expect(second == nil && a.wanted == 8)
        let m = try #require(try wire[12...].withUnsafeBytes { b in try a.received(b, descriptors: []) })
        #expect(m.request == 13 && m.payload == le64(1) && m.descriptors == [7])
        #expect(a.wanted == 12 && !a.isMidMessage)
    }

    @Test func assemblerRefusesBadVersionRepliesAndHugePayloads() {
        for (flags, size) in [(UInt32(2), UInt32(0)), (UInt32(0), UInt32(0)), (UInt32(5), UInt32(0)), (UInt32(1), UInt32(4097))] {
            var a = MessageAssembler()
            let header = le32(1) + le32(flags) + le32(size)
            #expect(failure { _ = try header.withUnsafeBytes { b in try a.received(b, descriptors: [9]) } } == .protocolViolation)
            #expect(a.takeDescriptors() == [9], "the caller closes what came with a refused header")
        }
    }

    @Test func assemblerRefusesTooManyDescriptors() {
        var a = MessageAssembler()
        let header = le32(5) + le32(1) + le32(8)
        #expect(failure { _ = try header.withUnsafeBytes { b in try a.received(b, descriptors: Array(0..<9)) } } == .protocolViolation)
        #expect(a.takeDescriptors().count == 9)
    }

    @Test func replyEncoding() {
        let r = VhostUserMessage.reply(to: 1, payload: le64(0x1234))
        #expect(r.encoded == le32(1) + le32(5) + le32(8) + le64(0x1234))
    }

    // MARK: Features and ownership

    @Test func getFeaturesOffersTheOffloadsAndNoMQOrLog() throws {
        let d = VhostUserDevice(platform: FakePlatform())
        let reply = try #require(try d.handle(Msg.make(.getFeatures)))
        let v = reply.payload.readLE64(0)
        #expect(reply.flags == 5 && reply.payload.count == 8 && v == VhostUserDevice.offeredFeatures)
        for bit in [0, 1, 7, 8, 9, 11, 12, 13, 15, 28, 30, 32] { #expect(v & (1 << UInt64(bit)) != 0, "bit \(bit)") }
        for bit in [5, 16, 22, 26, 3, 10, 14] { #expect(v & (1 << UInt64(bit)) == 0, "bit \(bit) (MAC, STATUS, MQ, LOG_ALL, MTU, UFO)") }
        #expect(failure { _ = try d.handle(Msg.make(.getFeatures, [0])) } == .protocolViolation)
    }

    @Test func setFeaturesTakesOnlyWhatWasOffered() throws {
        let d = VhostUserDevice(platform: FakePlatform())
        #expect(try d.handle(Msg.u64(.setFeatures, VhostUserDevice.offeredFeatures)) == nil)
        #expect(d.takesLargeSegments && d.headerLength == 12)
        #expect(failure { _ = try d.handle(Msg.u64(.setFeatures, 1 << 22)) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.make(.setFeatures, le32(1))) } == .protocolViolation)
        // Legacy: no VERSION_1, no MRG_RXBUF: the 10-byte header; no TSO: segments cut for it.
        let legacy = VhostUserDevice(platform: FakePlatform())
        _ = try legacy.handle(Msg.u64(.setFeatures, VhostUserDevice.Feature.csum.bit))
        #expect(legacy.headerLength == 10 && !legacy.takesLargeSegments)
        let enabled = legacy.queues.allSatisfy(\.enabled)
        #expect(enabled, "without PROTOCOL_FEATURES queues start enabled")
    }

    @Test func ownerMessagesTakeNoPayload() throws {
        let d = VhostUserDevice(platform: FakePlatform())
        #expect(try d.handle(Msg.make(.setOwner)) == nil)
        #expect(failure { _ = try d.handle(Msg.make(.setOwner, [1])) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.make(.resetOwner, le64(0))) } == .protocolViolation)
    }

    @Test func resetOwnerStopsQueuesAndClosesTheirDescriptors() throws {
        let g = try FakeGuest()
        _ = try g.device.handle(Msg.make(.resetOwner))
        let active = g.device.queues.contains(where: \.isActive)
        #expect(!active)
        #expect(Set(g.platform.closed).isSuperset(of: FakeGuest.kickFDs + FakeGuest.callFDs))
    }

    @Test func protocolFeaturesAndReplyAck() throws {
        let d = VhostUserDevice(platform: FakePlatform())
        let offered = try #require(try d.handle(Msg.make(.getProtocolFeatures))).payload.readLE64(0)
        #expect(offered == VhostUserDevice.protocolReplyAck)
        // Before REPLY_ACK is negotiated, need_reply gets nothing.
        #expect(try d.handle(Msg.make(.setOwner, needReply: true)) == nil)
        #expect(try d.handle(Msg.u64(.setProtocolFeatures, offered)) == nil)
        let ack = try #require(try d.handle(Msg.make(.setOwner, needReply: true)))
        #expect(ack.request == VhostUserRequest.setOwner.rawValue && ack.payload == le64(0) && ack.flags & 4 != 0)
        #expect(failure { _ = try d.handle(Msg.u64(.setProtocolFeatures, 1)) } == .protocolViolation, "MQ was not offered")
    }

    @Test func unofferedAndUnknownRequestsClose() {
        let p = FakePlatform()
        let d = VhostUserDevice(platform: p)
        for r in [VhostUserRequest.setLogBase, .setLogFD, .getQueueNum, .sendRARP, .netSetMTU] {
            #expect(failure { _ = try d.handle(Msg.u64(r, 0)) } == .protocolViolation, "\(r)")
        }
        #expect(failure { _ = try d.handle(VhostUserMessage(request: 99, descriptors: [42])) } == .protocolViolation)
        #expect(p.closed == [42], "an unknown message's descriptor is closed")
    }

    @Test func descriptorsOnMessagesThatTakeNoneAreClosed() {
        let p = FakePlatform()
        let d = VhostUserDevice(platform: p)
        #expect(failure { _ = try d.handle(Msg.make(.getFeatures, fds: [5, 6])) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.state(.setVringNum, 0, 8).withFDs([7])) } == .protocolViolation)
        #expect(p.closed == [5, 6, 7])
    }

    // MARK: Memory

    static let region = MemoryRegion(guestPhysical: 0, size: 1 << 20, userAddress: 0x7F00_0000_0000, mmapOffset: 0)

    @Test func memTableMapsRegionsClosesTheirDescriptorsAndUnmapsTheOldTable() throws {
        let p = FakePlatform()
        _ = p.offer(1, length: 1 << 20)
        _ = p.offer(2, length: 2 << 20)
        let d = VhostUserDevice(platform: p)
        let second = MemoryRegion(guestPhysical: 1 << 20, size: 1 << 20, userAddress: 0x7F00_0010_0000, mmapOffset: 1 << 20)
        #expect(try d.handle(Msg.memTable([Self.region], fds: [1])) == nil)
        #expect(p.closed == [1] && d.memory.regionCount == 1)
        p.regions[1] = nil
        #expect(try d.handle(Msg.memTable([Self.region, second], fds: [2, 2])) == nil)
        #expect(p.unmapped == 1, "the first table's mapping went with it")
        #expect(d.memory.regionCount == 2 && p.mapped.map(\.1) == [1 << 20, 1 << 20, 2 << 20])
        #expect(p.closed == [1, 2, 2])
        d.close()
        #expect(p.unmapped == 1 && d.memory.isEmpty)
        p.regions[2] = nil
        #expect(p.unmapped == 2, "close() dropped the mapping")
    }

    @Test func memTableRefusesBadSizesCountsAndDescriptors() {
        let p = FakePlatform()
        _ = p.offer(1, length: 1 << 20)
        let d = VhostUserDevice(platform: p)
        var short = Msg.memTable([Self.region], fds: [1])
        short.payload.removeLast()
        #expect(failure { _ = try d.handle(short) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.memTable([Self.region], fds: [])) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.memTable([Self.region], fds: [1, 3])) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.memTable([], fds: [])) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.memTable(Array(repeating: Self.region, count: 9), fds: [])) } == .protocolViolation)
        // Overlapping regions, and a size that overflows.
        #expect(failure { _ = try d.handle(Msg.memTable([Self.region, Self.region], fds: [1, 1])) } == .protocolViolation)
        let huge = MemoryRegion(guestPhysical: .max - 10, size: 100, userAddress: 0, mmapOffset: 0)
        #expect(failure { _ = try d.handle(Msg.memTable([huge], fds: [1])) } == .protocolViolation)
        // A region larger than its file (the fake's mmap refuses, as PosixIO's fstat check does).
        let big = MemoryRegion(guestPhysical: 0, size: 2 << 20, userAddress: 0, mmapOffset: 0)
        #expect(failure { _ = try d.handle(Msg.memTable([big], fds: [1])) } == .mapping)
        #expect(p.closed == [1, 1, 3, 1, 1, 1, 1], "every descriptor of every refused table is closed")
        #expect(d.memory.isEmpty)
    }

    // MARK: Rings

    @Test func vringNumAddrAndIndexChecks() throws {
        let g = try FakeGuest(start: false)
        let d = g.device
        #expect(failure { _ = try d.handle(Msg.state(.setVringNum, 0, 100)) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.state(.setVringNum, 0, 65536)) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.state(.setVringNum, 2, 8)) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.make(.setVringNum, le32(0))) } == .protocolViolation)
        _ = try d.handle(Msg.state(.setVringNum, 0, 8))
        let base = FakeGuest.userBase
        #expect(failure { _ = try d.handle(Msg.addr(0, desc: base, used: base + 0x1000, avail: base + 0x2000)) } == .protocolViolation,
                "addresses before SET_MEM_TABLE")
        _ = try d.handle(Msg.memTable([MemoryRegion(guestPhysical: 0, size: UInt64(FakeGuest.memorySize), userAddress: base, mmapOffset: 0)],
                                      fds: [FakeGuest.memoryFD]))
        #expect(failure { _ = try d.handle(Msg.addr(0, desc: base + UInt64(FakeGuest.memorySize) - 64, used: base, avail: base)) } == .badRing,
                "a descriptor table running off the end of memory")
        #expect(failure { _ = try d.handle(Msg.addr(0, desc: 0x1000, used: base, avail: base)) } == .badRing, "a guest-physical address is not QEMU's")
        var addr = Msg.addr(0, desc: base, used: base + 0x1000, avail: base + 0x2000)
        addr.payload.append(0)
        #expect(failure { _ = try d.handle(addr) } == .protocolViolation)
        #expect(try d.handle(Msg.addr(0, desc: base, used: base + 0x1000, avail: base + 0x2000)) == nil)
        #expect(failure { _ = try d.handle(Msg.state(.setVringBase, 0, 0x10000)) } == .protocolViolation)
    }

    @Test func kickCallErrKeepReplaceAndRefuseDescriptors() throws {
        let p = FakePlatform()
        let d = VhostUserDevice(platform: p)
        _ = try d.handle(Msg.u64(.setVringKick, 1, fds: [10]))
        _ = try d.handle(Msg.u64(.setVringCall, 1, fds: [11]))
        _ = try d.handle(Msg.u64(.setVringErr, 1, fds: [12]))
        #expect(d.queues[1].kick == 10 && d.queues[1].call == 11 && d.queues[1].started && p.closed.isEmpty)
        _ = try d.handle(Msg.u64(.setVringCall, 1, fds: [13]))
        #expect(d.queues[1].call == 13 && p.closed == [11], "the replaced call descriptor is closed")
        _ = try d.handle(Msg.u64(.setVringCall, 1 | 0x100))
        #expect(d.queues[1].call == nil && p.closed == [11, 13], "NOFD: no call descriptor")
        #expect(failure { _ = try d.handle(Msg.u64(.setVringKick, 0)) } == .protocolViolation, "a missing descriptor")
        #expect(failure { _ = try d.handle(Msg.u64(.setVringKick, 0x100, fds: [14])) } == .protocolViolation, "NOFD with a descriptor")
        #expect(failure { _ = try d.handle(Msg.u64(.setVringKick, 0, fds: [15, 16])) } == .protocolViolation, "an extra descriptor")
        #expect(failure { _ = try d.handle(Msg.u64(.setVringCall, 2, fds: [17])) } == .protocolViolation, "queue 2")
        #expect(failure { _ = try d.handle(Msg.u64(.setVringErr, 0x200, fds: [18])) } == .protocolViolation, "unknown bits")
        #expect(p.closed == [11, 13, 14, 15, 16, 17, 18])
        d.close()
        #expect(Set(p.closed).isSuperset(of: [10, 12]), "close() closes the kept ones")
    }

    @Test func vringEnable() throws {
        let d = VhostUserDevice(platform: FakePlatform())
        _ = try d.handle(Msg.state(.setVringEnable, 0, 1))
        #expect(d.queues[0].enabled)
        _ = try d.handle(Msg.state(.setVringEnable, 0, 0))
        #expect(!d.queues[0].enabled)
        #expect(failure { _ = try d.handle(Msg.state(.setVringEnable, 0, 2)) } == .protocolViolation)
        #expect(failure { _ = try d.handle(Msg.state(.setVringEnable, 5, 1)) } == .protocolViolation)
    }

    @Test func getVringBaseStopsTheQueueAndRepliesWithItsIndex() throws {
        let g = try FakeGuest()
        g.post(1, parts: [[UInt8](repeating: 0, count: 12) + etherFrame(60)])
        g.post(1, parts: [[UInt8](repeating: 0, count: 12) + etherFrame(60)])
        #expect(try g.transmittedFrames().count == 2)
        let reply = try #require(try g.device.handle(Msg.state(.getVringBase, 1, 0)))
        #expect(reply.payload == le32(1) + le32(2))
        #expect(!g.device.queues[1].isActive)
        #expect(g.platform.closed.contains(FakeGuest.kickFDs[1]) && g.platform.closed.contains(FakeGuest.callFDs[1]))
        #expect(failure { _ = try g.device.handle(Msg.make(.getVringBase, le64(0) + [0])) } == .protocolViolation)
    }
}

extension VhostUserMessage {
    func withFDs(_ fds: [Int32]) -> VhostUserMessage {
        var m = self
        m.descriptors = fds
        return m
    }
}
