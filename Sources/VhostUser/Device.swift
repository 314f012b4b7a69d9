// VhostUserDevice: the back end of one vhost-user virtio-net connection.
//
// Theory of operation. QEMU (the front end) owns the virtio-net device the guest sees
// and hands us its two queues: it negotiates features (GET/SET_FEATURES, then the
// protocol features), shares the guest's RAM (SET_MEM_TABLE) and, per queue, its size,
// ring addresses, starting index and eventfds (SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR).
// Queue 0 carries frames toward the guest (RX), queue 1 frames from it (TX). A queue
// works once it has a kick eventfd and is enabled (with PROTOCOL_FEATURES negotiated
// queues start disabled until SET_VRING_ENABLE; without, they start enabled), and stops
// at GET_VRING_BASE, whose reply is where QEMU resumes it. After a reconnect QEMU sends
// the whole setup again with the index it read from the used ring; chains complete in
// order here, so the used index is where this back end resumes too (SplitRing).
//
// `handle` takes one message and owns its descriptors: memory fds are mapped then
// closed, eventfds kept until replaced or the connection ends (`close`), every other
// one closed. Anything unknown, malformed or out of order throws, and the daemon closes
// the connection; so do rings that break SplitRing's checks.
//
// Offered: VERSION_1, PROTOCOL_FEATURES, MRG_RXBUF, INDIRECT_DESC, EVENT_IDX, the
// checksum and TSO offloads both ways with ECN, and the REPLY_ACK protocol feature.
// Not offered: MQ (one queue pair per guest), LOG_ALL (no live migration), UFO (slirpd
// takes no UFO frames), USO (QEMU 7.2 does not know it), and MAC/STATUS/MTU, which QEMU
// serves from its own config space for vhost-user unless the CONFIG protocol feature is
// negotiated. Every frame carries the 12-byte virtio_net_hdr_mrg_rxbuf (VERSION_1 or
// MRG_RXBUF) or the legacy 10-byte header; its first 10 bytes are DataPlane's
// VirtioNetHeader, which checks and completes what the guest sends and builds the GSO
// header for large TCP segments toward it.
import DataPlane

public final class VhostUserDevice {
    // MARK: Features

    public enum Feature: Int, CaseIterable, Sendable {
        case csum = 0, guestCSUM = 1, guestTSO4 = 7, guestTSO6 = 8, guestECN = 9, guestUFO = 10
        case hostTSO4 = 11, hostTSO6 = 12, hostECN = 13, hostUFO = 14, mrgRXBuf = 15, status = 16
        case indirectDesc = 28, eventIdx = 29, protocolFeatures = 30, version1 = 32

        public var bit: UInt64 { 1 << UInt64(rawValue) }
    }

    public static let offeredFeatures: UInt64 = {
        let offered: [Feature] = [.csum, .guestCSUM, .guestTSO4, .guestTSO6, .guestECN, .hostTSO4, .hostTSO6, .hostECN,
                                  .mrgRXBuf, .indirectDesc, .eventIdx, .protocolFeatures, .version1]
        return offered.reduce(0) { $0 | $1.bit }
    }()

    /// VHOST_USER_PROTOCOL_F_REPLY_ACK.
    public static let protocolReplyAck: UInt64 = 1 << 3
    public static let offeredProtocolFeatures: UInt64 = protocolReplyAck

    public static let rxQueue = 0
    public static let txQueue = 1
    /// SET_VRING_KICK/CALL/ERR: the index is in the low byte; bit 8 says no descriptor follows.
    static let noDescriptorFlag: UInt64 = 0x100
    /// The largest frame taken from the guest: a 64 KiB IP packet behind Ethernet and VLAN headers.
    public static let maximumFrame = 14 + 4 + 65535

    // MARK: State

    public final class Queue {
        public internal(set) var size = 0
        var base: UInt16 = 0
        var addresses: (desc: UInt64, used: UInt64, avail: UInt64)?
        public internal(set) var kick: Int32?
        public internal(set) var call: Int32?
        public internal(set) var err: Int32?
        public internal(set) var enabled = false
        public internal(set) var started = false
        var ring: SplitRing?
        /// Completed chains not yet signalled through `call`.
        var pendingCall = false

        /// Taking and giving buffers: a kick descriptor, enabled, and a ring.
        public var isActive: Bool { started && enabled && ring != nil }
    }

    public let platform: VhostUserPlatform
    public private(set) var features: UInt64 = 0
    public private(set) var featuresSet = false
    public private(set) var protocolFeatures: UInt64 = 0
    public private(set) var memory = GuestMemory()
    public let queues = [Queue(), Queue()]
    /// Bumped whenever a queue's kick descriptor or state changes, so the daemon refreshes its poll set.
    public private(set) var generation = 0

    private var txPieces: [SplitRing.Piece] = []
    private var rxPieces: [SplitRing.Piece] = []
    private var chains: [(head: UInt16, first: Int, end: Int, capacity: Int)] = []
    private var headerBytes = [UInt8](repeating: 0, count: 12)

    public init(platform: VhostUserPlatform) {
        self.platform = platform
    }

    public func has(_ feature: Feature) -> Bool { features & feature.bit != 0 }

    /// Bytes of virtio-net header before each frame.
    public var headerLength: Int { has(.version1) || has(.mrgRXBuf) ? 12 : 10 }

    /// Whether TCP segments of any size may go to the guest whole (GSO header): it took
    /// checksum offload, TSO4, TSO6 and ECN.
    public var takesLargeSegments: Bool {
        let wanted: [Feature] = [.guestCSUM, .guestTSO4, .guestTSO6, .guestECN]
        return wanted.allSatisfy(has)
    }

    /// The negotiated features by name, for the log.
    public var featureNames: String {
        Feature.allCases.filter(has).map { "\($0)" }.joined(separator: " ")
    }

    /// Closes every descriptor and unmaps the memory: the connection has gone.
    public func close() {
        for q in queues { closeDescriptors(of: q) }
        for q in queues { q.ring = nil }
        memory = GuestMemory()
    }

    private func closeDescriptors(of q: Queue) {
        for fd in [q.kick, q.call, q.err].compactMap({ $0 }) { platform.close(descriptor: fd) }
        q.kick = nil
        q.call = nil
        q.err = nil
        q.started = false
        generation += 1
    }

    // MARK: Messages

    /// Handles one message, taking its descriptors. Returns the reply to send, if any.
    public func handle(_ message: VhostUserMessage) throws(VhostUserError) -> VhostUserMessage? {
        var fds = message.descriptors
        // Whatever the handler does not keep is closed, on every path.
        defer { for fd in fds { platform.close(descriptor: fd) } }
        let reply = try dispatch(message, &fds)
        if reply == nil, message.needsReply, protocolFeatures & Self.protocolReplyAck != 0 {
            var status: [UInt8] = []
            status.appendLE(UInt64(0))
            return .reply(to: message.request, payload: status)
        }
        return reply
    }

    private func dispatch(_ m: VhostUserMessage, _ fds: inout [Int32]) throws(VhostUserError) -> VhostUserMessage? {
        guard let request = VhostUserRequest(rawValue: m.request) else {
            throw VhostUserError(.protocolViolation, "unknown \(VhostUserMessage.name(m.request))")
        }
        if request != .setMemTable, request != .setVringKick, request != .setVringCall, request != .setVringErr, !fds.isEmpty {
            throw VhostUserError(.protocolViolation, "\(request) with \(fds.count) descriptors (expected none)")
        }
        switch request {
        case .getFeatures:
            try expectEmpty(m)
            return .reply(to: m.request, payload: le64(Self.offeredFeatures))
        case .setFeatures:
            let wanted = try m.u64()
            guard wanted & ~Self.offeredFeatures == 0 else {
                throw VhostUserError(.protocolViolation, "SET_FEATURES with 0x\(String(wanted & ~Self.offeredFeatures, radix: 16)) not offered")
            }
            features = wanted
            featuresSet = true
            // Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE: queues are enabled from the start.
            if !has(.protocolFeatures) { for q in queues { q.enabled = true } }
            generation += 1
            return nil
        case .setOwner:
            try expectEmpty(m)
            return nil
        case .resetOwner:
            try expectEmpty(m)
            for q in queues {
                closeDescriptors(of: q)
                q.ring = nil
                q.enabled = false
                q.base = 0
            }
            features = 0
            featuresSet = false
            return nil
        case .getProtocolFeatures:
            try expectEmpty(m)
            return .reply(to: m.request, payload: le64(Self.offeredProtocolFeatures))
        case .setProtocolFeatures:
            let wanted = try m.u64()
            guard wanted & ~Self.offeredProtocolFeatures == 0 else {
                throw VhostUserError(.protocolViolation, "SET_PROTOCOL_FEATURES with 0x\(String(wanted & ~Self.offeredProtocolFeatures, radix: 16)) not offered")
            }
            protocolFeatures = wanted
            return nil
        case .setMemTable:
            try setMemTable(m, &fds)
            return nil
        case .setVringNum:
            let (index, num) = try m.vringState()
            let q = try queue(index, request)
            guard num > 0, num <= SplitRing.maximumSize, num & (num - 1) == 0 else {
                throw VhostUserError(.protocolViolation, "SET_VRING_NUM \(num) for queue \(index) (a power of two up to \(SplitRing.maximumSize))")
            }
            q.size = Int(num)
            dropRing(q)
            q.addresses = nil
            generation += 1
            return nil
        case .setVringAddr:
            guard m.payload.count == 40 else { throw m.sizeError(expected: "40") }
            let q = try queue(m.payload.readLE32(0), request)
            // flags (LOG) at 4 are ignored: LOG_ALL is never offered. Then desc, used, avail, log.
            q.addresses = (m.payload.readLE64(8), m.payload.readLE64(16), m.payload.readLE64(24))
            try resolve(q)
            if q.ring?.resumeFromUsedIndex() == true, let ring = q.ring { q.base = ring.lastAvail }
            generation += 1
            return nil
        case .setVringBase:
            let (index, num) = try m.vringState()
            let q = try queue(index, request)
            guard num <= 0xFFFF else { throw VhostUserError(.protocolViolation, "SET_VRING_BASE \(num) for queue \(index)") }
            q.base = UInt16(num)
            q.ring?.lastAvail = q.base
            return nil
        case .getVringBase:
            let (index, _) = try m.vringState()
            let q = try queue(index, request)
            let last = q.ring?.lastAvail ?? q.base
            q.base = last
            // The queue stops; QEMU starts it again with a new kick descriptor.
            closeDescriptors(of: q)
            var payload: [UInt8] = []
            payload.appendLE(index)
            payload.appendLE(UInt32(last))
            return .reply(to: m.request, payload: payload)
        case .setVringKick, .setVringCall, .setVringErr:
            let value = try m.u64()
            guard value >> 9 == 0 else { throw VhostUserError(.protocolViolation, "\(request) with unknown bits 0x\(String(value, radix: 16))") }
            let q = try queue(UInt32(value & 0xFF), request)
            let noDescriptor = value & Self.noDescriptorFlag != 0
            guard fds.count == (noDescriptor ? 0 : 1) else {
                throw VhostUserError(.protocolViolation, "\(request) with \(fds.count) descriptors (expected \(noDescriptor ? 0 : 1))")
            }
            let fd = fds.popLast()
            switch request {
            case .setVringKick:
                if let old = q.kick { platform.close(descriptor: old) }
                q.kick = fd
                // A queue starts with its kick (libvhost-user's rule), even a polled one without a descriptor.
                q.started = true
                if q.ring == nil, q.addresses != nil { try resolve(q) }
            case .setVringCall:
                if let old = q.call { platform.close(descriptor: old) }
                q.call = fd
            default:
                if let old = q.err { platform.close(descriptor: old) }
                q.err = fd
            }
            generation += 1
            return nil
        case .setVringEnable:
            let (index, num) = try m.vringState()
            let q = try queue(index, request)
            // QEMU 7.2 sends it as soon as PROTOCOL_FEATURES is offered, before SET_FEATURES.
            guard num <= 1 else { throw VhostUserError(.protocolViolation, "SET_VRING_ENABLE \(num) for queue \(index)") }
            q.enabled = num == 1
            generation += 1
            return nil
        case .setLogBase, .setLogFD, .getQueueNum, .sendRARP, .netSetMTU:
            throw VhostUserError(.protocolViolation, "\(request), whose feature was never offered")
        }
    }

    private func expectEmpty(_ m: VhostUserMessage) throws(VhostUserError) {
        guard m.payload.isEmpty else { throw m.sizeError(expected: "0") }
    }

    private func queue(_ index: UInt32, _ request: VhostUserRequest) throws(VhostUserError) -> Queue {
        guard index < UInt32(queues.count) else {
            throw VhostUserError(.protocolViolation, "\(request) for queue \(index) (this device has \(queues.count))")
        }
        return queues[Int(index)]
    }

    private func le64(_ v: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        out.appendLE(v)
        return out
    }

    private func setMemTable(_ m: VhostUserMessage, _ fds: inout [Int32]) throws(VhostUserError) {
        guard m.payload.count >= 8 else { throw m.sizeError(expected: "8 + 32 per region") }
        let count = Int(m.payload.readLE32(0))
        guard count >= 1, count <= VhostUserMessage.maximumDescriptors else {
            throw VhostUserError(.protocolViolation, "SET_MEM_TABLE with \(count) regions (1-\(VhostUserMessage.maximumDescriptors))")
        }
        guard m.payload.count == 8 + 32 * count else { throw m.sizeError(expected: "\(8 + 32 * count) for \(count) regions") }
        guard fds.count == count else {
            throw VhostUserError(.protocolViolation, "SET_MEM_TABLE with \(count) regions and \(fds.count) descriptors")
        }
        let table = (0..<count).map { i in
            let at = 8 + 32 * i
            return MemoryRegion(guestPhysical: m.payload.readLE64(at), size: m.payload.readLE64(at + 8),
                                userAddress: m.payload.readLE64(at + 16), mmapOffset: m.payload.readLE64(at + 24))
        }
        // The old table goes (and is unmapped) only once the new one is mapped.
        let mapped = try GuestMemory.map(table, descriptors: fds, platform: platform)
        for q in queues { dropRing(q) }
        memory = mapped
        // The mappings stay; the descriptors are no longer needed (closed by handle's defer).
        for q in queues where q.addresses != nil {
            try resolve(q)
        }
        generation += 1
    }

    /// Forgets a ring's pointers (its memory or size is changing), keeping where it stood.
    private func dropRing(_ q: Queue) {
        if let ring = q.ring { q.base = ring.lastAvail }
        q.ring = nil
    }

    /// Builds a queue's ring from its size, addresses and base once memory is mapped.
    private func resolve(_ q: Queue) throws(VhostUserError) {
        guard let a = q.addresses else { return }
        guard !memory.isEmpty else { throw VhostUserError(.protocolViolation, "ring addresses before SET_MEM_TABLE") }
        guard q.size > 0 else { throw VhostUserError(.protocolViolation, "ring addresses before SET_VRING_NUM") }
        q.ring = try SplitRing(size: q.size, descUser: a.desc, availUser: a.avail, usedUser: a.used, memory: memory,
                               lastAvail: q.ring?.lastAvail ?? q.base, eventIndex: has(.eventIdx))
    }

    // MARK: Frames

    /// Call descriptors of queues whose guest wants an interrupt for the chains completed
    /// since the last one (after a batch, not per frame).
    public func takeNotifications(_ body: (Int32) -> Void) {
        for q in queues where q.pendingCall {
            q.pendingCall = false
            guard var ring = q.ring else { continue }
            let notify = ring.shouldNotify()
            q.ring = ring
            if notify, let call = q.call { body(call) }
        }
    }

    /// What one chain from the TX queue held.
    public enum Transmitted {
        /// A frame (checksum completed) to switch.
        case frame(UnsafeRawBufferPointer)
        /// A UDP super-frame: switch each of `header.udpSegments`.
        case udpSegments(UnsafeRawBufferPointer, VirtioNetHeader)
        /// Dropped: a header that does not describe its frame, or a frame too short or long.
        case malformed(String)
    }

    /// Takes up to `limit` chains from the TX queue, each gathered into `scratch` (which
    /// must hold a header and `maximumFrame`) and handed to `body`. Returns how many were
    /// taken; `more` says whether the guest has posted others.
    public func transmit(scratch: UnsafeMutableRawBufferPointer, limit: Int,
                         _ body: (Transmitted) -> Void) throws(VhostUserError) -> (count: Int, more: Bool) {
        let q = queues[Self.txQueue]
        guard q.isActive else { return (0, false) }
        var count = 0
        if let r = q.ring, r.lastAvail != r.usedIndex { throw VhostUserError(.badRing, "internal: TX ring taken to \(r.lastAvail) but used to \(r.usedIndex)") }
        while count < limit {
            txPieces.removeAll(keepingCapacity: true)
            guard let head = try q.ring?.nextChain(&txPieces) else { break }
            count += 1
            var length = 0
            var tooLong = false
            for piece in txPieces {
                guard !piece.writable else { throw VhostUserError(.badRing, "a device-writable buffer in a TX chain") }
                guard length + piece.bytes.count <= scratch.count else {
                    tooLong = true
                    break
                }
                UnsafeMutableRawBufferPointer(rebasing: scratch[length..<(length + piece.bytes.count)])
                    .copyMemory(from: UnsafeRawBufferPointer(piece.bytes))
                length += piece.bytes.count
            }
            q.ring?.complete(head: head, written: 0)
            q.pendingCall = true
            body(classify(UnsafeMutableRawBufferPointer(rebasing: scratch[0..<length]), tooLong: tooLong))
        }
        q.ring?.requestKick()
        return (count, try (q.ring?.pending() ?? 0) > 0)
    }

    private func classify(_ bytes: UnsafeMutableRawBufferPointer, tooLong: Bool) -> Transmitted {
        let size = headerLength
        guard !tooLong else { return .malformed("a frame over \(Self.maximumFrame) bytes") }
        guard bytes.count >= size + 14, let header = VirtioNetHeader.parse(UnsafeRawBufferPointer(bytes)) else {
            return .malformed(bytes.count < size + 14 ? "a chain of \(bytes.count) bytes, too short for a frame" : "an unreadable virtio-net header")
        }
        let frame = UnsafeMutableRawBufferPointer(rebasing: bytes[size...])
        switch header.inbound(frame) {
        case .frame: return .frame(UnsafeRawBufferPointer(frame))
        case .udpSegments: return .udpSegments(UnsafeRawBufferPointer(frame), header)
        case .malformed(let why): return .malformed(why.rawValue)
        }
    }

    /// The outcome of offering a frame to the guest.
    public enum Delivery: Equatable, Sendable {
        case delivered
        /// The guest has no (or not enough) buffers posted, or its RX queue is not running:
        /// keep the frame and try again after its next RX kick.
        case noRoom
        /// The frame can never fit what the guest posts; dropped.
        case tooLarge
    }

    /// Writes one frame and its header into the guest's RX buffers. `mtu` is the guest's:
    /// a longer TCP frame gets a GSO header when the guest takes large segments.
    public func receive(_ frame: UnsafeRawBufferPointer, mtu: Int) throws(VhostUserError) -> Delivery {
        let q = queues[Self.rxQueue]
        guard q.isActive, var ring = q.ring else { return .noRoom }
        defer { q.ring = ring }
        if ring.lastAvail != ring.usedIndex { throw VhostUserError(.badRing, "internal: RX ring taken to \(ring.lastAvail) but used to \(ring.usedIndex)") }
        let headerSize = headerLength
        let total = headerSize + frame.count
        let mergeable = has(.mrgRXBuf)
        let start = ring.lastAvail
        var capacity = 0
        var retried = false
        rxPieces.removeAll(keepingCapacity: true)
        chains.removeAll(keepingCapacity: true)
        while capacity < total {
            let first = rxPieces.count
            guard let head = try ring.nextChain(&rxPieces) else {
                let taken = chains.count
                ring.rewind(to: start)
                rxPieces.removeAll(keepingCapacity: true)
                chains.removeAll(keepingCapacity: true)
                capacity = 0
                guard taken < ring.size else { return .tooLarge }
                // Ask for a kick, then look once more: the guest may have posted in between.
                ring.requestKick()
                guard !retried, try ring.pending() > taken else { return .noRoom }
                retried = true
                continue
            }
            var room = 0
            for piece in rxPieces[first...] where piece.writable { room += piece.bytes.count }
            chains.append((head, first, rxPieces.count, room))
            capacity += room
            guard mergeable else { break }
        }
        if capacity < total {
            // One chain without MRG_RXBUF: too small for this frame. Give it back empty.
            ring.complete(head: chains[0].head, written: 0)
            q.pendingCall = true
            return .tooLarge
        }
        let (header, patch) = takesLargeSegments ? VirtioNetHeader.header(forOutgoing: frame, mtu: mtu) : (VirtioNetHeader(), nil)
        headerBytes.withUnsafeMutableBytes { bytes in
            header.write(to: bytes)
            let buffers = UInt16(chains.count)
            bytes[10] = UInt8(buffers & 0xFF)
            bytes[11] = UInt8(buffers >> 8)
        }
        headerBytes.withUnsafeBytes { write(UnsafeRawBufferPointer(rebasing: $0[0..<headerSize]), at: 0) }
        write(frame, at: headerSize)
        if let patch {
            let value = [UInt8(patch.value >> 8), UInt8(patch.value & 0xFF)]
            value.withUnsafeBytes { write($0, at: headerSize + patch.offset) }
        }
        var left = total
        for chain in chains {
            let n = min(left, chain.capacity)
            ring.complete(head: chain.head, written: n)
            left -= n
        }
        q.pendingCall = true
        return .delivered
    }

    /// Copies `source` to logical offset `at` of the writable pieces of the chains taken.
    private func write(_ source: UnsafeRawBufferPointer, at: Int) {
        var skip = at
        var from = 0
        for chain in chains {
            for piece in rxPieces[chain.first..<chain.end] where piece.writable {
                guard from < source.count else { return }
                if skip >= piece.bytes.count {
                    skip -= piece.bytes.count
                    continue
                }
                let n = min(piece.bytes.count - skip, source.count - from)
                UnsafeMutableRawBufferPointer(rebasing: piece.bytes[skip..<(skip + n)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[from..<(from + n)]))
                from += n
                skip = 0
            }
        }
    }

    /// Whether the RX queue has buffers posted (for retrying queued frames).
    public var rxHasBuffers: Bool {
        guard let ring = queues[Self.rxQueue].ring, queues[Self.rxQueue].isActive else { return false }
        return ((try? ring.pending()) ?? 0) > 0
    }
}
