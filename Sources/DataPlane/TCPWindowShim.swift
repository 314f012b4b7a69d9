import FrameSwitch

// TCPWindowShim: lifts libslirp 4.7's 64 KiB TCP window for guests, on the wire.
//
// Theory of operation. libslirp never sends or reads the Window Scale option (its
// tcp_dooptions handles only MSS), so it advertises at most 65,535 bytes and a guest can
// have no more in flight, whatever its round trip. Every frame between a guest and
// libslirp passes this stage, which speaks window scaling to the guest on libslirp's
// behalf and keeps libslirp's own view unscaled:
//
// - Handshake. When the guest's SYN (it opens) or SYN-ACK (a host forward opens) carries
//   Window Scale, its shift is recorded and the option is NOPed out toward libslirp (which
//   would ignore it anyway); libslirp's SYN-ACK or SYN toward the guest gets our own Window
//   Scale (shift 7) prepended to its options (the header grows by 4 bytes). RFC 7323: with
//   either SYN lacking the option, nobody scales, and the flow passes untouched.
// - Guest -> libslirp. The guest's window is unscaled: min(65535, field << shift).
// - libslirp -> guest. libslirp's ack A and window W give its right edge E = A + W. The
//   guest is offered E plus the room this stage will queue for the flow (a per-flow cap,
//   within a per-network total of such commitments), scaled by 128 and never retracted.
// - Guest data. A segment that fits E goes to libslirp now; one beyond E but within the
//   edge offered to the guest is held in the flow's queue (sorted by sequence number) and
//   released, with the guest's latest ACK and window, once libslirp's ACKs move E past
//   its end (or its start, split off, when that is all the window takes: libslirp 4.7
//   announces an opened window only once it has grown by two of its segments, so waiting
//   for all of a large segment to fit could wait for ever); one beyond the offered edge is
//   dropped (the guest retransmits it). Even a guest's resend of what libslirp needs next
//   is held when it reaches past E: passed on, libslirp would drop what its window does
//   not take, and the guest would resend it only on its backed-off retransmission timer.
//   libslirp still sends every ACK, so an ACK toward the guest still means libslirp took
//   the data.
// - Kept until ACKed. What the shim hands libslirp (a release, or a guest's resend of what
//   libslirp needs next) stays with the flow until libslirp's ACK covers it: libslirp may
//   take less than the edge it announced while its host does not read, and then only the
//   shim still has the bytes (at most libslirp's 64 KiB window per flow). A release is
//   kept as it is (its own buffer); a guest's segment is copied only when libslirp's
//   answer, which comes before slirp_input returns, leaves it unACKed (`afterInput`):
//   copying every one cost as much as libslirp's own copy of it.
// - In place. The guest's frames are rewritten where they lie (`fromGuest(inPlace:)`,
//   in a buffer FramePath owns), not copied out to change a window field.
// - Probes. While held data waits on libslirp's window, or libslirp has not ACKed what it
//   was handed, the shim probes it (`nextProbe`, 2 ms backing off to 200 ms): with what it
//   needs next when the shim has that, else with the first held byte. libslirp 4.7 sends
//   no window update when its host reads again unless the window grew by two segments, so
//   without probes a transfer stalled by a host that stopped reading would wait on the
//   guest's retransmission timer. An answer that moves neither libslirp's ACK nor its
//   window is absorbed; a reopened window goes to the guest.
//
// - ACKs. libslirp ACKs every segment it takes; a TCG guest pays for each. A pure ACK of a
//   scaled flow is held to the end of the loop turn (`takeHeldACK`) and replaced by the
//   flow's later ones, so a guest gets one ACK per flow per turn, no later than the
//   turn's other frames. A duplicate (same ACK and window) still goes at once, as the
//   guest counts those for fast retransmit, and anything else libslirp sends supersedes it.
//
// libslirp emits the ACK for an in-order segment synchronously inside slirp_input (header
// prediction sets TF_ACKNOW), so the Network feeds one release, sees the ACK come back
// through `fromNAT` (which may make more of the queue ready) and asks for the next
// release, all in one loop turn. Nothing here calls out: the Network re-enters this
// struct from libslirp's callback between our calls, never during one.
//
// Memory: a flow holds at most what it was offered beyond E (`flowCap`), the network at
// most `networkCap`; when the network's commitments reach its cap, new offers shrink
// (never below what was already offered). Flow state goes on RST, after FINs both ways
// with an empty queue, with the guest's port, or after `idleTimeout` of silence; past
// `maxFlows` new flows are not scaled. A port can give its flows a smaller cap
// (`setFlowCap`: a tap drops what its queue cannot hold). Flows whose MSS exceeds 16 KiB
// are not scaled (`maxScaledMSS`). SACK and timestamps are never on (libslirp does not
// offer them), so neither needs translating.
public struct TCPWindowShim {
    public enum Verdict: Equatable, Sendable {
        /// Forward the frame as it is.
        case pass
        /// Forward `guestOutput` (from `fromGuest`) or `natOutput` (from `fromNAT`) instead.
        case rewritten
        /// Held for libslirp; `nextRelease` hands it over when it fits libslirp's window.
        case queued
        /// Dropped: beyond the window offered to the guest, a duplicate, or over a cap.
        case drop
        /// (From `fromNAT`.) A pure ACK kept until the end of the loop turn (`takeHeldACK`),
        /// where a later one of the same flow replaces it.
        case held
        /// (From `fromNAT`.) libslirp's answer to a window probe (`nextProbe`) that moved
        /// nothing: not for the guest, to which it would be a duplicate ACK.
        case absorbed
    }

    /// The shift offered to guests: 128-byte units, so 65535 covers 8 MiB.
    public static let ourShift: UInt8 = 7
    /// RFC 7323's largest shift.
    public static let maxShift: UInt8 = 14
    /// Flows with a larger MSS are not scaled. libslirp sends a window update only once its
    /// window has opened by two segments (tcp_output), which a 64 KiB window never does
    /// for segments over 32 KiB: held data would then wait for an update that never comes.
    /// Such flows (MTU 65520) already carry one segment per libslirp window.
    public static let maxScaledMSS = 16384
    /// RFC 9293's default when a SYN has no MSS option.
    static let defaultMSS = 536
    public static let defaultIdleTimeout: Int64 = 120_000_000_000
    /// How long held data waits on libslirp's window before the first probe, and the
    /// longest wait between probes (doubling in between).
    public static let firstProbe: Int64 = 2_000_000
    public static let maxProbeInterval: Int64 = 200_000_000

    public let flowCap: Int
    public let networkCap: Int
    public let maxFlows: Int
    public let idleTimeout: Int64

    /// The last rewritten guest frame (for `.rewritten` from `fromGuest`).
    public private(set) var guestOutput: [UInt8] = []
    /// The last rewritten libslirp frame (for `.rewritten` from `fromNAT`).
    public private(set) var natOutput: [UInt8] = []

    /// Payload bytes held in every flow's queue.
    public private(set) var queuedBytes = 0
    /// Payload bytes handed to libslirp and kept until it ACKs them (at most its window per flow).
    public private(set) var retainedBytes = 0
    /// Segments libslirp was handed again because its ACK stayed short of them.
    public private(set) var resends = 0
    /// Bytes offered to guests beyond libslirp's windows, summed over flows.
    public private(set) var committedBytes = 0
    public private(set) var scaledFlowCount = 0
    public private(set) var segmentsQueued = 0
    public private(set) var segmentsReleased = 0
    /// libslirp's pure ACKs replaced by a later one of their flow in the same loop turn.
    public private(set) var acksCoalesced = 0
    /// Whether libslirp's pure ACKs are held to the end of the loop turn (`takeHeldACK`).
    public var coalescesACKs = true
    public private(set) var droppedBeyondEdge = 0
    /// Segments dropped as duplicates of queued data or over a hard memory cap.
    public private(set) var droppedOther = 0
    /// Held segments of which only the start fit libslirp's window, sent in two parts.
    public private(set) var segmentsSplit = 0
    /// Guest resends of held data passed to libslirp to learn its window (see fromGuest).
    public private(set) var windowProbes = 0
    /// Held segments given up for an earlier one over a cap (the guest resends them).
    public private(set) var segmentsEvicted = 0
    /// New flows left unscaled because the table was full.
    public private(set) var flowsRefused = 0

    public var flowCount: Int { index.count }
    public var droppedTotal: Int { droppedBeyondEdge + droppedOther }

    private var slots: [Flow] = []
    /// Flows whose held data waits on libslirp's window, and when each is probed next.
    private var probeDue: [Int: Int64] = [:]
    private var freeSlots: [Int] = []
    private var index: [FlowKey: Int] = [:]
    /// Flows whose first queued segment fits libslirp's window.
    private var ready: [Int] = []
    /// Flows holding a pure ACK for the end of the loop turn.
    private var heldList: [Int] = []
    /// The latest time a caller passed in (nextRelease has none of its own).
    private var clock: Int64 = 0
    /// Per-flow caps below `flowCap` for the flows of some ports (`setFlowCap`).
    private var portCaps: [PortID: Int] = [:]
    /// The segment `fromGuest` last passed that libslirp must ACK before `afterInput`, or the shim keeps a copy.
    private var unconfirmed: Unconfirmed?

    private struct Unconfirmed {
        var slot: Int
        var key: FlowKey
        var seq: UInt32
        var end: UInt32
        var fin: Bool
        /// The window field as the guest sent it (the copy kept gets it back).
        var window: UInt16
    }

    public init(flowCap: Int = 4 << 20, networkCap: Int = 64 << 20, maxFlows: Int = 65536,
                idleTimeout: Int64 = TCPWindowShim.defaultIdleTimeout) {
        // An offer is at most 65535 << 7 past libslirp's ack, 64 KiB of which is its own window.
        self.flowCap = max(0, min(flowCap, (65535 << 7) - 65536))
        self.networkCap = max(0, networkCap)
        self.maxFlows = max(0, maxFlows)
        self.idleTimeout = idleTimeout
    }

    /// The scaled flow of a segment past the handshake, or nil (it passes untouched); a
    /// RST, which passes too, frees its flow.
    private mutating func scaledFlow(_ key: FlowKey, _ h: Segment, now: Int64) -> Int? {
        guard let i = index[key] else { return nil }
        if h.flags & Flag.rst != 0 {
            free(i)
            return nil
        }
        slots[i].lastActive = now
        return slots[i].phase == .scaled ? i : nil
    }

    // MARK: Guest -> libslirp

    /// A guest's frame for libslirp (after NATIngressCheck); `.rewritten`: a copy with the
    /// unscaled window is in `guestOutput`. (FramePath rewrites the frame where it lies
    /// instead, `fromGuest(inPlace:)`, and calls `afterInput` once libslirp has had it.)
    public mutating func fromGuest(_ frame: UnsafeRawBufferPointer, port: PortID, now: Int64) -> Verdict {
        guard let h = Segment(frame) else { return .pass }
        var out = guestOutput
        guestOutput = []
        out.removeAll(keepingCapacity: true)
        out.append(contentsOf: frame)
        let key = h.key(frame, guestIsSource: true)
        let verdict = out.withUnsafeMutableBytes { fromGuest(inPlace: $0, h, key, port: port, now: now) }
        guestOutput = out
        return verdict
    }

    /// A guest's frame for libslirp, parsed (`h`, `key`: once for both TCP stages), its
    /// window (or a SYN's Window Scale) rewritten where it lies, in a buffer the caller
    /// owns; `.rewritten` says it changed. A frame that goes on (`.pass`, `.rewritten`)
    /// is followed by `afterInput` once libslirp has had it.
    mutating func fromGuest(inPlace frame: UnsafeMutableRawBufferPointer, _ h: Segment, _ key: FlowKey,
                            port: PortID, now: Int64) -> Verdict {
        clock = now
        unconfirmed = nil
        if h.flags & Flag.syn != 0 {
            if h.flags & Flag.ack == 0 { return guestSYN(frame, h, key, port: port, now: now) }
            return guestSYNACK(frame, h, key, now: now)
        }
        guard let i = scaledFlow(key, h, now: now) else { return .pass }
        let window = UInt16(min(65535, Int(h.window) << Int(slots[i].shift)))
        if h.flags & Flag.ack != 0 {
            if !slots[i].hasGuestAck || seqGT(h.ack, slots[i].guestAck) {
                slots[i].guestAck = h.ack
                slots[i].hasGuestAck = true
            }
            slots[i].guestWindow = window
        }
        let fin = h.flags & Flag.fin != 0
        guard h.payload > 0 || fin else { return rewriteGuest(frame, h, window: window) }
        let end = h.seq &+ UInt32(h.payload)
        let slirpAck = slots[i].slirpAck, edges = slots[i].hasSlirpEdge && slots[i].hasEdge
        guard edges else { return rewriteGuest(frame, h, window: window) }
        let slirpEdge = slots[i].slirpEdge, head = slots[i].head
        let empty = head == slots[i].queue.count
        if seqLE(end, slirpEdge), empty || (!fin && seqLE(end, slots[i].queue[head].seq)) {
            if fin {
                slots[i].guestFin = true
                finishIfDone(i)
            }
            // What libslirp needs next: `afterInput` keeps a copy if libslirp's ACK does
            // not cover it, so that the shim resends it (nextProbe), not the guest's
            // backed-off retransmission timer. libslirp ACKs an in-order segment it takes
            // before slirp_input returns, so in a transfer nothing is copied.
            if seqLE(h.seq, slirpAck), seqGT(end, slirpAck) || fin {
                unconfirmed = Unconfirmed(slot: i, key: key, seq: h.seq, end: end, fin: fin, window: h.window)
            }
            return rewriteGuest(frame, h, window: window)
        }
        guard seqLE(end, slots[i].edge) else {
            droppedBeyondEdge += 1
            return .drop
        }
        // Beyond libslirp's edge, even a resend of what it needs next: passed on, libslirp
        // would drop what its window does not take, and nothing would hold it. Held, it
        // goes (split at the edge) as soon as libslirp's window reaches it.
        let verdict = enqueue(i, UnsafeRawBufferPointer(frame), h, end: end, fin: fin)
        scheduleProbe(i, now: now)
        return verdict
    }

    private mutating func guestSYN(_ frame: UnsafeMutableRawBufferPointer, _ h: Segment, _ key: FlowKey,
                                   port: PortID, now: Int64) -> Verdict {
        var i = index[key]
        if let old = i, slots[old].phase != .guestSYN {
            free(old)  // a new connection on the 4-tuple of an old one
            i = nil
        }
        guard let ws = h.windowScaleOption(UnsafeRawBufferPointer(frame)) else {
            if let i { free(i) }
            return .pass
        }
        guard let slot = i ?? create(key, port: port, now: now) else { return .pass }
        slots[slot].shift = min(frame[ws + 2], Self.maxShift)
        slots[slot].guestMSS = h.mssOption(UnsafeRawBufferPointer(frame)) ?? Self.defaultMSS
        slots[slot].lastActive = now
        return nopOut(frame, h, option: ws)
    }

    private mutating func guestSYNACK(_ frame: UnsafeMutableRawBufferPointer, _ h: Segment, _ key: FlowKey,
                                      now: Int64) -> Verdict {
        guard let i = index[key], slots[i].phase != .guestSYN else { return .pass }
        guard let ws = h.windowScaleOption(UnsafeRawBufferPointer(frame)) else {
            free(i)  // RFC 7323: no scaling unless both SYNs carry the option
            return .pass
        }
        slots[i].shift = min(frame[ws + 2], Self.maxShift)
        slots[i].lastActive = now
        setScaled(i)
        return nopOut(frame, h, option: ws)
    }

    /// Holds a segment beyond libslirp's window, in sequence order.
    private mutating func enqueue(_ i: Int, _ frame: UnsafeRawBufferPointer, _ h: Segment,
                                  end: UInt32, fin: Bool) -> Verdict {
        let seq = h.seq
        // Already handed to libslirp and kept until it ACKs it: the shim resends it itself.
        if slots[i].sent.contains(where: { $0.covers(seq, end, fin) }) {
            droppedOther += 1
            return .drop
        }
        var pos = slots[i].queue.count
        let head = slots[i].head
        while pos > head, seqGE(slots[i].queue[pos - 1].seq, seq) { pos -= 1 }
        // Already held: covered by the one before, or by one starting at the same place.
        if pos > head, slots[i].queue[pos - 1].covers(seq, end, fin) {
            droppedOther += 1
            return .drop
        }
        var j = pos
        while j < slots[i].queue.count, slots[i].queue[j].seq == seq {
            if slots[i].queue[j].covers(seq, end, fin) {
                droppedOther += 1
                return .drop
            }
            j += 1
        }
        // A longer retransmission replaces what it covers.
        var removed = 0
        var k = pos
        while k < slots[i].queue.count, seqLE(slots[i].queue[k].end, end), !slots[i].queue[k].fin || fin {
            removed += slots[i].queue[k].length
            k += 1
        }
        let length = h.payload
        // Over a cap, data held past this segment gives way to it: it fills a hole libslirp
        // needs before any of that (the guest resends what was lost, e.g. in a tap's full
        // queue), and what gives way was never acknowledged, so the guest resends it too.
        // Without this, a full queue behind a hole waits for a segment it keeps refusing.
        var evicted = 0
        var last = slots[i].queue.count
        while last > k, slots[i].bytes - removed - evicted + length > slots[i].cap
                || queuedBytes - removed - evicted + length > networkCap {
            last -= 1
            evicted += slots[i].queue[last].length
        }
        guard slots[i].bytes - removed - evicted + length <= slots[i].cap,
              queuedBytes - removed - evicted + length <= networkCap else {
            droppedOther += 1
            return .drop
        }
        if last < slots[i].queue.count {
            segmentsEvicted += slots[i].queue.count - last
            slots[i].queue.removeSubrange(last...)
            removed += evicted
        }
        if k > pos { slots[i].queue.removeSubrange(pos..<k) }
        let item = Held(seq: seq, end: end, fin: fin, frame: Array(frame[0..<h.ipEnd]))
        slots[i].queue.insert(item, at: pos)
        slots[i].bytes += length - removed
        queuedBytes += length - removed
        segmentsQueued += 1
        markIfReady(i)
        return .queued
    }

    /// libslirp has had the frame `fromGuest(inPlace:)` passed last (its answer, when it
    /// had one at once, has come back through `fromNAT`): when that frame is what libslirp
    /// needs next and its ACK does not cover it, a copy is kept until it does (see "Kept
    /// until ACKed"), with the guest's window as the guest sent it.
    public mutating func afterInput(_ frame: UnsafeRawBufferPointer) {
        guard let u = unconfirmed else { return }
        unconfirmed = nil
        let i = u.slot
        // Gone (an RST from libslirp, or the guest's FIN closed it), or the slot reused.
        guard slots[i].live, slots[i].key == u.key, slots[i].phase == .scaled else { return }
        if slots[i].hasSlirpEdge, seqGE(slots[i].slirpAck, u.fin ? u.end &+ 1 : u.end) { return }
        guard let h = Segment(frame), h.seq == u.seq else { return }
        var copy = Array(frame[0..<h.ipEnd])
        TCPRewrite.setWord(&copy, at: h.tcp + 14, u.window, checksumAt: h.tcp + 16)
        retain(i, Held(seq: u.seq, end: u.end, fin: u.fin, frame: copy), now: clock)
    }

    // MARK: libslirp -> guest

    /// libslirp's frame for the guest on `port`.
    public mutating func fromNAT(_ frame: UnsafeRawBufferPointer, port: PortID, now: Int64) -> Verdict {
        guard let h = Segment(frame) else { return .pass }
        clock = now
        let key = h.key(frame, guestIsSource: false)
        if h.flags & Flag.syn != 0 {
            if h.flags & Flag.ack == 0 { return natSYN(frame, h, key, port: port, now: now) }
            return natSYNACK(frame, h, key, now: now)
        }
        guard let i = scaledFlow(key, h, now: now) else { return .pass }
        if h.flags & Flag.fin != 0 { slots[i].slirpFin = true }
        guard h.flags & Flag.ack != 0 else { return .pass }
        let ackBefore = slots[i].slirpAck, edgeBefore = slots[i].slirpEdge
        let field = offer(i, ack: h.ack, window: h.window)
        pruneSent(i)
        markIfReady(i)
        scheduleProbe(i, now: now)
        finishIfDone(i)
        let pureACK = h.flags == Flag.ack && h.payload == 0
        if slots[i].live, slots[i].probeOutstanding, pureACK {
            slots[i].probeOutstanding = false
            // Only an answer that moves nothing is absorbed: a reopened window goes to the
            // guest (libslirp 4.7 may announce it to nobody else).
            if seqLE(h.ack, ackBefore), slots[i].slirpEdge == edgeBefore { return .absorbed }
        }
        // libslirp moved on: the next wait on its window starts probing from the shortest interval.
        if seqGT(h.ack, ackBefore) { slots[i].probeInterval = Self.firstProbe }
        if slots[i].live, coalescesACKs {
            if pureACK, holdACK(i, frame, h, field: field) { return .held }
            // Anything else libslirp sends carries the same or a later ACK: the held one is stale.
            if !pureACK { slots[i].heldACK.removeAll(keepingCapacity: true) }
        }
        guard field != h.window else { return .pass }
        natOutput.removeAll(keepingCapacity: true)
        natOutput.append(contentsOf: frame)
        TCPRewrite.setWord(&natOutput, at: h.tcp + 14, field, checksumAt: h.tcp + 16)
        return .rewritten
    }

    /// Keeps libslirp's pure ACK as the flow's one ACK for this loop turn, replacing an
    /// earlier one; false when it must go now: a duplicate of the held one (same ACK and
    /// window: the guest counts duplicates for fast retransmit) goes at once.
    private mutating func holdACK(_ i: Int, _ frame: UnsafeRawBufferPointer, _ h: Segment, field: UInt16) -> Bool {
        let held = slots[i].heldACK
        if !held.isEmpty, let old = held.withUnsafeBytes({ Segment($0) }),
           old.ack == h.ack, old.window == field { return false }
        slots[i].heldACK.removeAll(keepingCapacity: true)
        slots[i].heldACK.append(contentsOf: frame[0..<h.ipEnd])
        TCPRewrite.setWord(&slots[i].heldACK, at: h.tcp + 14, field, checksumAt: h.tcp + 16)
        if !slots[i].inHeldList {
            slots[i].inHeldList = true
            heldList.append(i)
        }
        acksCoalesced += held.isEmpty ? 0 : 1
        return true
    }

    /// The next ACK held for the end of the loop turn, copied into `frame`, and its guest's
    /// port; nil when none is left. Call it in a loop once libslirp is done for the turn.
    public mutating func takeHeldACK(into frame: inout [UInt8]) -> PortID? {
        while let i = heldList.popLast() {
            guard slots[i].inHeldList else { continue }
            slots[i].inHeldList = false
            guard slots[i].live, !slots[i].heldACK.isEmpty else { continue }
            frame.removeAll(keepingCapacity: true)
            frame.append(contentsOf: slots[i].heldACK)
            slots[i].heldACK.removeAll(keepingCapacity: true)
            return slots[i].port
        }
        return nil
    }

    private mutating func natSYN(_ frame: UnsafeRawBufferPointer, _ h: Segment, _ key: FlowKey,
                                 port: PortID, now: Int64) -> Verdict {
        var i = index[key]
        if let old = i, slots[old].phase != .slirpSYN {
            free(old)
            i = nil
        }
        guard (h.mssOption(frame) ?? Self.defaultMSS) <= Self.maxScaledMSS else {
            if let i { free(i) }
            return .pass
        }
        guard let slot = i ?? create(key, port: port, now: now) else { return .pass }
        slots[slot].phase = .slirpSYN
        slots[slot].lastActive = now
        guard appendWindowScale(frame, h) else {
            free(slot)
            return .pass
        }
        return .rewritten
    }

    private mutating func natSYNACK(_ frame: UnsafeRawBufferPointer, _ h: Segment, _ key: FlowKey,
                                    now: Int64) -> Verdict {
        guard let i = index[key], slots[i].phase != .slirpSYN else { return .pass }
        guard min(h.mssOption(frame) ?? Self.defaultMSS, slots[i].guestMSS) <= Self.maxScaledMSS,
              appendWindowScale(frame, h) else {
            free(i)
            return .pass
        }
        slots[i].lastActive = now
        setScaled(i)
        // A SYN-ACK's window is never scaled: the guest reads it as it is. Its ACK is
        // libslirp's first: without it `slirpAck` stayed 0, which every later ACK of a
        // guest whose sequence numbers lie 2^31 or more from 0 failed to pass (seqGT), so
        // releases thought libslirp had it all and dropped held data unsent (the stall).
        slots[i].slirpAck = h.ack
        let edge = h.ack &+ UInt32(h.window)
        advanceSlirpEdge(i, edge)
        if !slots[i].hasEdge || seqGT(edge, slots[i].edge) {
            slots[i].edge = edge
            slots[i].hasEdge = true
        }
        recommit(i)
        return .rewritten
    }

    /// The scaled window field to offer the guest with libslirp's `ack` and `window`, and
    /// the edge it makes (recorded: it never moves back).
    private mutating func offer(_ i: Int, ack: UInt32, window: UInt16) -> UInt16 {
        if !slots[i].hasSlirpEdge || seqGT(ack, slots[i].slirpAck) { slots[i].slirpAck = ack }
        advanceSlirpEdge(i, ack &+ UInt32(window))
        let flow = slots[i]
        let others = committedBytes - flow.committed
        let room = max(0, min(flow.cap, networkCap - others))
        let base = max(0, Int(seqDiff(flow.slirpEdge, ack)))
        // libslirp's own window rounded up, so the guest can always fill it; the room
        // rounded down, so the caps hold.
        var field = max((base + 127) >> 7, (base + room) >> 7)
        if flow.hasEdge, seqGT(flow.edge, ack) {
            // Never retract: round the edge already offered up (as Linux does). Each such
            // rounding can add up to 127 bytes, so past the cap by more than that the
            // edge is rounded down instead (the guest's view shrinks by < 128 bytes,
            // RFC 7323 2.4; what it already sent up to the old edge is still accepted).
            let keep = Int(seqDiff(flow.edge, ack))
            var kept = (keep + 127) >> 7
            if (kept << 7) - base > flow.cap + 127 { kept = keep >> 7 }
            field = max(field, kept)
        }
        field = min(field, 65535)
        let edge = ack &+ UInt32(field << 7)
        if !flow.hasEdge || seqGT(edge, flow.edge) {
            slots[i].edge = edge
            slots[i].hasEdge = true
        }
        recommit(i)
        return UInt16(field)
    }

    // MARK: Releases, ports, age

    /// The next held segment that now fits libslirp's window, rewritten with its flow's
    /// latest ACK and window; nil when none does. Call it in a loop, feeding each to
    /// libslirp, outside libslirp's callbacks.
    public mutating func nextRelease() -> [UInt8]? {
        while let i = ready.last {
            guard slots[i].live, slots[i].head < slots[i].queue.count,
                  slots[i].queue[slots[i].head].starts(before: slots[i].slirpEdge) else {
                ready.removeLast()
                slots[i].ready = false
                continue
            }
            let head = slots[i].head
            var item = slots[i].queue[head]
            if seqGT(item.end, slots[i].slirpEdge) {
                // Only its start fits libslirp's window: that part goes now, the rest stays at
                // the head. Waiting for all of it to fit could wait for ever: libslirp 4.7
                // announces an opened window only once it has grown by two of its segments.
                let fit = Int(seqDiff(slots[i].slirpEdge, item.seq))
                guard let (first, rest) = item.frame.withUnsafeBytes({ TCPSegmentation.split($0, payloadBytes: fit) }) else {
                    ready.removeLast()
                    slots[i].ready = false
                    continue
                }
                slots[i].queue[head] = Held(seq: slots[i].slirpEdge, end: item.end, fin: item.fin, frame: rest)
                item = Held(seq: item.seq, end: slots[i].slirpEdge, fin: false, frame: first)
                segmentsSplit += 1
                // (A FIN at the edge contradicts the rest's data: it goes.)
                _ = trimBehind(i, from: head + 1, releasedTo: item.end, fin: true)
            } else {
                slots[i].queue[head].frame = []
                slots[i].head += 1
                if trimBehind(i, from: head + 1, releasedTo: item.end, fin: item.fin),
                   let h = item.frame.withUnsafeBytes({ Segment($0) }) {
                    item.fin = true
                    TCPRewrite.setWord(&item.frame, at: h.tcp + 12, read16(item.frame, h.tcp + 12) | UInt16(Flag.fin),
                                       checksumAt: h.tcp + 16)
                }
                compact(i)
            }
            slots[i].bytes -= item.length
            queuedBytes -= item.length
            if slots[i].head == slots[i].queue.count
                || !slots[i].queue[slots[i].head].starts(before: slots[i].slirpEdge) {
                ready.removeLast()
                slots[i].ready = false
            }
            // libslirp already has all of it (a window probe carried it): nothing to send.
            if !item.fin, seqLE(item.end, slots[i].slirpAck) { continue }
            segmentsReleased += 1
            withGuestACK(i, &item.frame)
            if item.fin { slots[i].guestFin = true }
            // Kept (the same buffer, no copy) until libslirp's ACK covers it: should libslirp
            // take less than its window announced, the shim resends the rest (nextProbe).
            // Dropped once released, it would wait for the guest's retransmission timer,
            // backed off for as long as libslirp's window was closed.
            retain(i, item, now: clock)
            return item.frame
        }
        return nil
    }

    /// Held segments from `from` on that start before `end`, where a release just ended,
    /// lose what it carried: one it covers goes, one that runs past it is cut to start at
    /// `end`. They are guest retransmissions cut differently from what they overlap; left
    /// whole, they would follow the release with bytes libslirp already has, and the rest
    /// of a head split at libslirp's edge would sit ahead of one that starts before it,
    /// out of sequence order. True when one that went had a FIN at `end` the release
    /// lacks (`fin` false): the release takes it on.
    private mutating func trimBehind(_ i: Int, from: Int, releasedTo end: UInt32, fin: Bool) -> Bool {
        var j = from, finLeft = false
        while j < slots[i].queue.count, seqLT(slots[i].queue[j].seq, end) {
            let held = slots[i].queue[j]
            var cut = held.length
            if seqGT(held.end, end) {
                let carried = Int(seqDiff(end, held.seq))
                guard let (_, rest) = held.frame.withUnsafeBytes({ TCPSegmentation.split($0, payloadBytes: carried) })
                else { break }
                cut = carried
                slots[i].queue[j] = Held(seq: end, end: held.end, fin: held.fin, frame: rest)
                j += 1
            } else {
                if held.fin, held.end == end, !fin { finLeft = true }
                slots[i].queue.remove(at: j)
                droppedOther += 1
            }
            slots[i].bytes -= cut
            queuedBytes -= cut
        }
        return finLeft
    }

    /// Gives a held segment the guest's latest ACK and (unscaled) window.
    private func withGuestACK(_ i: Int, _ frame: inout [UInt8]) {
        guard let h = frame.withUnsafeBytes({ Segment($0) }) else { return }
        if h.flags & Flag.ack != 0, slots[i].hasGuestAck, seqGT(slots[i].guestAck, h.ack) {
            let ack = slots[i].guestAck
            TCPRewrite.setWord(&frame, at: h.tcp + 8, UInt16(ack >> 16), checksumAt: h.tcp + 16)
            TCPRewrite.setWord(&frame, at: h.tcp + 10, UInt16(ack & 0xFFFF), checksumAt: h.tcp + 16)
        }
        let window = slots[i].hasGuestAck ? slots[i].guestWindow
            : UInt16(min(65535, Int(h.window) << Int(slots[i].shift)))
        TCPRewrite.setWord(&frame, at: h.tcp + 14, window, checksumAt: h.tcp + 16)
    }

    // MARK: Window probes

    /// When the next window probe is due, if any flow's held data waits on libslirp.
    public var nextProbeDeadline: Int64? { probeDue.values.min() }

    /// A window probe due by `now`, for a flow whose libslirp ACK stays short of data the
    /// shim holds. It is what libslirp needs next when the shim has it (a segment libslirp
    /// was handed and did not take all of), else the first byte of held data libslirp's
    /// window does not reach. libslirp 4.7 announces an opened window only once it has grown
    /// by two of its segments, which a window that closed part way may never do, and a guest
    /// behind the shim, offered more, never probes it itself. libslirp keeps what it has room
    /// for and ACKs with its window either way; an answer that moves neither its ACK nor its
    /// window is absorbed, not shown to the guest. Probes back off from 2 to 200 ms while
    /// libslirp's ACK does not move, so data held when a host stops reading goes at most
    /// 200 ms after it reads again, however far the guest's own retransmission timer backed off.
    public mutating func nextProbe(now: Int64) -> [UInt8]? {
        clock = now
        for (i, due) in probeDue where due <= now {
            let f = slots[i]
            var probe: [UInt8]
            if f.live, let next = f.sent.first(where: { $0.holds(f.slirpAck) }) {
                probe = next.frame
                resends += 1
            } else if f.live, f.head < f.queue.count, !f.queue[f.head].starts(before: f.slirpEdge) {
                let held = f.queue[f.head]
                probe = held.length > 1
                    ? held.frame.withUnsafeBytes({ TCPSegmentation.split($0, payloadBytes: 1) })?.head ?? held.frame
                    : held.frame
            } else if f.live, let first = f.sent.first {
                // libslirp needs bytes the shim never held (the guest resends those): this
                // only asks for libslirp's window.
                probe = first.frame
            } else {
                probeDue[i] = nil
                continue
            }
            slots[i].probeInterval = min(max(f.probeInterval, Self.firstProbe) * 2, Self.maxProbeInterval)
            probeDue[i] = now + slots[i].probeInterval
            slots[i].probeOutstanding = true
            windowProbes += 1
            withGuestACK(i, &probe)
            return probe
        }
        return nil
    }

    /// Starts probing a flow whose held data libslirp's window does not reach, or whose
    /// data handed to libslirp its ACK does not cover yet; stops when neither is left.
    private mutating func scheduleProbe(_ i: Int, now: Int64) {
        let f = slots[i]
        if f.live, !f.sent.isEmpty || (f.head < f.queue.count && !f.queue[f.head].starts(before: f.slirpEdge)) {
            if probeDue[i] == nil { probeDue[i] = now + max(f.probeInterval, Self.firstProbe) }
        } else if probeDue[i] != nil {
            probeDue[i] = nil
        }
    }

    /// Keeps a segment handed to libslirp until its ACK covers it (see `nextProbe`).
    private mutating func retain(_ i: Int, _ item: Held, now: Int64) {
        guard !slots[i].sent.contains(where: { $0.covers(item.seq, item.end, item.fin) }) else { return }
        var removed = 0
        slots[i].sent.removeAll { old in
            guard item.covers(old.seq, old.end, old.fin) else { return false }
            removed += old.length
            return true
        }
        var pos = slots[i].sent.count
        while pos > 0, seqGT(slots[i].sent[pos - 1].seq, item.seq) { pos -= 1 }
        slots[i].sent.insert(item, at: pos)
        slots[i].sentBytes += item.length - removed
        retainedBytes += item.length - removed
        scheduleProbe(i, now: now)
    }

    /// Forgets what libslirp's ACK now covers (a FIN takes one more sequence number).
    private mutating func pruneSent(_ i: Int) {
        guard !slots[i].sent.isEmpty else { return }
        let ack = slots[i].slirpAck
        var removed = 0
        slots[i].sent.removeAll { old in
            guard seqLE(old.fin ? old.end &+ 1 : old.end, ack) else { return false }
            removed += old.length
            return true
        }
        slots[i].sentBytes -= removed
        retainedBytes -= removed
    }

    /// Caps what each new flow of `port` may be offered beyond libslirp's window below
    /// `flowCap`: a guest behind a tap drops what its device's queue cannot hold (1,000
    /// frames by default) instead of waiting, so its offer must fit that queue.
    public mutating func setFlowCap(_ bytes: Int, for port: PortID) {
        portCaps[port] = max(0, bytes)
    }

    /// Forgets the flows of a guest whose port closed.
    public mutating func removePort(_ port: PortID) {
        portCaps[port] = nil
        for i in slots.indices where slots[i].live && slots[i].port == port { free(i) }
    }

    /// Forgets flows silent for `idleTimeout` (housekeeping).
    public mutating func expire(now: Int64) {
        for i in slots.indices where slots[i].live && now - slots[i].lastActive > idleTimeout { free(i) }
    }

    /// For tests and the fuzzer: a flow's libslirp edge, offered edge, queued and committed
    /// bytes, whether it is scaled and whether both edges are known yet.
    public func flowState(guest: [UInt8], guestPort: UInt16, remote: [UInt8], remotePort: UInt16)
        -> (slirpEdge: UInt32, edge: UInt32, queued: Int, committed: Int, scaled: Bool, hasEdges: Bool)? {
        guard let key = FlowKey(guest: guest, guestPort: guestPort, remote: remote, remotePort: remotePort),
              let i = index[key] else { return nil }
        let f = slots[i]
        return (f.slirpEdge, f.edge, f.bytes, f.committed, f.phase == .scaled, f.hasEdge && f.hasSlirpEdge)
    }

    // MARK: Flow table

    private mutating func create(_ key: FlowKey, port: PortID, now: Int64) -> Int? {
        guard index.count < maxFlows else {
            flowsRefused += 1
            return nil
        }
        var flow = Flow(port: port, lastActive: now)
        flow.cap = min(flowCap, portCaps[port] ?? flowCap)
        let i: Int
        if let reused = freeSlots.popLast() {
            i = reused
            slots[i] = flow
        } else {
            i = slots.count
            slots.append(flow)
        }
        slots[i].key = key
        index[key] = i
        return i
    }

    private mutating func free(_ i: Int) {
        guard slots[i].live else { return }
        if slots[i].phase == .scaled { scaledFlowCount -= 1 }
        queuedBytes -= slots[i].bytes
        retainedBytes -= slots[i].sentBytes
        committedBytes -= slots[i].committed
        index[slots[i].key] = nil
        probeDue[i] = nil
        // A stale entry in `ready` is skipped by nextRelease (the slot is not live or is
        // a later flow, whose own queue it then checks).
        slots[i] = Flow(port: slots[i].port, lastActive: 0)
        slots[i].live = false
        freeSlots.append(i)
    }

    private mutating func setScaled(_ i: Int) {
        guard slots[i].phase != .scaled else { return }
        slots[i].phase = .scaled
        scaledFlowCount += 1
    }

    private mutating func advanceSlirpEdge(_ i: Int, _ edge: UInt32) {
        if !slots[i].hasSlirpEdge || seqGT(edge, slots[i].slirpEdge) {
            slots[i].slirpEdge = edge
            slots[i].hasSlirpEdge = true
        }
    }

    private mutating func recommit(_ i: Int) {
        let f = slots[i]
        let c = f.hasEdge && f.hasSlirpEdge ? max(0, Int(seqDiff(f.edge, f.slirpEdge))) : 0
        committedBytes += c - f.committed
        slots[i].committed = c
    }

    private mutating func markIfReady(_ i: Int) {
        let f = slots[i]
        guard !f.ready, f.head < f.queue.count, f.queue[f.head].starts(before: f.slirpEdge) else { return }
        slots[i].ready = true
        ready.append(i)
    }

    private mutating func finishIfDone(_ i: Int) {
        let f = slots[i]
        if f.guestFin, f.slirpFin, f.head == f.queue.count, f.sent.isEmpty { free(i) }
    }

    private mutating func compact(_ i: Int) {
        if slots[i].head == slots[i].queue.count {
            slots[i].queue.removeAll(keepingCapacity: true)
            slots[i].head = 0
        } else if slots[i].head >= 64, slots[i].head * 2 >= slots[i].queue.count {
            slots[i].queue.removeFirst(slots[i].head)
            slots[i].head = 0
        }
    }

    // MARK: Rewriting

    private func rewriteGuest(_ frame: UnsafeMutableRawBufferPointer, _ h: Segment, window: UInt16) -> Verdict {
        guard window != h.window else { return .pass }
        TCPRewrite.setWord(frame, at: h.tcp + 14, window, checksumAt: h.tcp + 16)
        return .rewritten
    }

    /// The guest's frame with its Window Scale option (3 bytes at `option`) turned into NOPs.
    private func nopOut(_ frame: UnsafeMutableRawBufferPointer, _ h: Segment, option: Int) -> Verdict {
        for p in option..<(option + 3) {
            // The checksum sums 16-bit words counted from the TCP header's start.
            let word = h.tcp + ((p - h.tcp) & ~1)
            var changed = frame.loadNet16(at: word)
            if p == word { changed = 1 << 8 | changed & 0xFF } else { changed = changed & 0xFF00 | 1 }
            TCPRewrite.setWord(frame, at: word, changed, checksumAt: h.tcp + 16)
        }
        return .rewritten
    }

    /// libslirp's SYN or SYN-ACK with NOP + Window Scale(7) before its options, into
    /// `natOutput`; false when the header has no room (60 bytes at most).
    private mutating func appendWindowScale(_ frame: UnsafeRawBufferPointer, _ h: Segment) -> Bool {
        guard let out = TCPRewrite.prependingOption([1, 3, 3, Self.ourShift], to: frame, h) else { return false }
        natOutput = out
        return true
    }
}

// MARK: Sequence numbers (RFC 9293: compared modulo 2^32)

@inline(__always) func seqDiff(_ a: UInt32, _ b: UInt32) -> Int32 { Int32(bitPattern: a &- b) }
@inline(__always) func seqLT(_ a: UInt32, _ b: UInt32) -> Bool { seqDiff(a, b) < 0 }
@inline(__always) func seqLE(_ a: UInt32, _ b: UInt32) -> Bool { seqDiff(a, b) <= 0 }
@inline(__always) func seqGT(_ a: UInt32, _ b: UInt32) -> Bool { seqDiff(a, b) > 0 }
@inline(__always) func seqGE(_ a: UInt32, _ b: UInt32) -> Bool { seqDiff(a, b) >= 0 }

private enum Flag {
    static let fin: UInt8 = 0x01
    static let syn: UInt8 = 0x02
    static let rst: UInt8 = 0x04
    static let ack: UInt8 = 0x10
}

/// A TCP segment's layout (TCPSegmentLayout) and the header fields the shim reads.
struct Segment {
    var v6: Bool
    var tcp: Int
    var ipEnd: Int
    var dataOffset: Int
    var payload: Int
    var flags: UInt8
    var seq: UInt32
    var ack: UInt32
    var window: UInt16

    init?(_ frame: UnsafeRawBufferPointer) {
        guard let layout = TCPSegmentLayout(frame) else { return nil }
        v6 = layout.v6
        tcp = layout.tcp
        ipEnd = layout.end
        dataOffset = layout.dataOffset
        payload = layout.payloadLength
        flags = frame[tcp + 13]
        seq = read32(frame, tcp + 4)
        ack = read32(frame, tcp + 8)
        window = read16(frame, tcp + 14)
    }

    /// Reads the ACK and window again, after a stage rewrote them in place.
    mutating func rereadACK(_ frame: UnsafeRawBufferPointer) {
        ack = read32(frame, tcp + 8)
        window = read16(frame, tcp + 14)
    }

    func key(_ frame: UnsafeRawBufferPointer, guestIsSource: Bool) -> FlowKey {
        FlowKey(frame, self, guestIsSource: guestIsSource)
    }

    /// The value of a well-formed MSS option (kind 2, length 4), if any.
    func mssOption(_ frame: UnsafeRawBufferPointer) -> Int? {
        option(frame, kind: 2, length: 4).map { Int(read16(frame, $0 + 2)) }
    }

    /// The offset of a well-formed Window Scale option (kind 3, length 3), if any.
    func windowScaleOption(_ frame: UnsafeRawBufferPointer) -> Int? {
        option(frame, kind: 3, length: 3)
    }

    /// The offset of option `kind` if it is present and `length` bytes long.
    func option(_ frame: UnsafeRawBufferPointer, kind wanted: UInt8, length wantedLength: Int) -> Int? {
        var found: Int?
        let wellFormed = TCPOptions.walk(frame, from: tcp + 20, to: tcp + dataOffset) { kind, offset, length in
            guard kind == wanted else { return true }
            found = length == wantedLength ? offset : nil
            return false
        }
        return wellFormed ? found : nil
    }
}

private struct Held {
    var seq: UInt32
    var end: UInt32
    var fin: Bool
    var frame: [UInt8]

    var length: Int { Int(end &- seq) }

    /// Whether libslirp's window, up to `edge`, takes all of it or at least its first byte.
    func starts(before edge: UInt32) -> Bool {
        seqLE(end, edge) || (end != seq && seqLT(seq, edge))
    }

    /// Whether this segment carries sequence number `s` (its data, or its FIN).
    func holds(_ s: UInt32) -> Bool {
        seqLE(seq, s) && (seqLT(s, end) || (fin && s == end))
    }

    /// Whether this segment holds all of [seq, end) (and the FIN, if that has one).
    func covers(_ s: UInt32, _ e: UInt32, _ f: Bool) -> Bool {
        seqLE(seq, s) && seqGE(end, e) && (fin || !f)
    }
}

private struct Flow {
    enum Phase { case guestSYN, slirpSYN, scaled }

    var key = FlowKey()
    var port: PortID
    var phase: Phase = .guestSYN
    var shift: UInt8 = 0
    /// The MSS in the guest's SYN, when it opened.
    var guestMSS = TCPWindowShim.defaultMSS
    /// libslirp's right edge (its ack + window), only ever moved forward.
    var slirpEdge: UInt32 = 0
    /// libslirp's latest ACK: the first byte it still needs.
    var slirpAck: UInt32 = 0
    var probeInterval: Int64 = 0
    /// A probe went to libslirp; its answer, if it moves nothing, is not for the guest.
    var probeOutstanding = false
    var hasSlirpEdge = false
    /// The right edge offered to the guest, only ever moved forward.
    var edge: UInt32 = 0
    var hasEdge = false
    var guestAck: UInt32 = 0
    var hasGuestAck = false
    var guestWindow: UInt16 = 0
    /// Held segments, sorted by sequence number from `head` on.
    var queue: [Held] = []
    /// Segments handed to libslirp (released, or a guest's resend of what it needed next)
    /// that its ACK does not cover yet, by sequence number; their payload bytes.
    var sent: [Held] = []
    var sentBytes = 0
    var head = 0
    var bytes = 0
    var committed = 0
    /// What the flow may be offered beyond libslirp's window: `flowCap`, or its port's.
    var cap = 0
    var guestFin = false
    var slirpFin = false
    var lastActive: Int64
    var ready = false
    var live = true
    /// libslirp's latest pure ACK this loop turn, window already scaled; empty: none.
    var heldACK: [UInt8] = []
    var inHeldList = false

    init(port: PortID, lastActive: Int64) {
        self.port = port
        self.lastActive = lastActive
    }
}
