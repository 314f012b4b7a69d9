import FrameSwitch

// TCPEarlyACK: lifts libslirp's 64 KiB window in the host -> guest direction by
// acknowledging libslirp's data on the guest's behalf.
//
// Theory of operation. libslirp 4.7 never scales windows, so it keeps at most 64 KiB
// unacknowledged toward a guest and waits a guest round trip per window. This stage sits
// closest to the guest on both sides (guest -> this -> TCPWindowShim -> libslirp, and
// libslirp -> TCPWindowShim -> this -> FramePath.put) and takes over delivery:
//
// - Data. An in-order data segment from libslirp (flags ACK or ACK|PSH, the next byte of
//   the flow) is delivered as usual and a copy kept, as the shim handed it on (before the
//   cut to the port's MTU: a resend is cut again). At the end of the loop turn libslirp
//   gets one ACK per flow for everything kept (`nextACK`), so its window drains at
//   slirpd's pace. FIN, SYN, RST, URG and out-of-order segments are never kept nor
//   acknowledged early: they pass, and the guest's own ACK of them goes through.
// - Guest ACKs toward libslirp are translated: the ACK is never below what libslirp was
//   already told (it never goes backwards), and the window is what the guest still
//   offers beyond the kept bytes, within a per-flow and a per-network cap, at most 65,535
//   and never retracting the edge libslirp was shown. A pure ACK that would tell libslirp
//   nothing new is absorbed (libslirp must not count spurious duplicates). A guest that
//   stops reading closes its window, so libslirp's closes too.
// - Delivery. The guest's ACKs free the copies (a partly acknowledged segment is cut).
//   On the third duplicate ACK the first kept segment is resent (and again on each
//   partial ACK until the loss point is passed, NewReno-style); a retransmit timer per
//   flow (RFC 6298: SRTT/RTTVAR from the guest's ACKs, Karn's rule, 200 ms to 10 s,
//   doubling) resends it too. Any ACK from the guest resets the try count (a guest at
//   zero window is alive); after `maxTries` unanswered timeouts the flow is reset both
//   ways (`nextTimeout` hands out the RSTs). libslirp no longer sees losses, so this
//   stage does the congestion control toward the guest (Reno: a window that grows with
//   the guest's ACKs, steps below the ring ceiling on a fast retransmit (below), restarts
//   from two segments on a timeout); the window shown to libslirp stays within it,
//   so a small NIC ring or a tap's queue is not flooded.
// - Ring ceiling. A guest's NIC ring loses the tail of any burst longer than it holds
//   (iPXE's ne2k_pci keeps 9 full frames, rtl8139 4: the 10th and 5th of a burst are
//   lost every time, through QEMU's built-in too). That is a hard size, not congestion:
//   a fast retransmit takes the window one segment below what was in flight when the
//   loss happened (not half), and that becomes the flow's ceiling, which the window
//   grows past by one segment (an eighth past 64 KiB) only after `ceilingProbe`
//   lossless windows. Halving
//   instead kept the window swinging between half the ring and a burst that lost
//   its tail, a recovery every other window: with slirpd's round trip (two socket hops
//   where the built-in's is a function call) iPXE's download was 5-10x slower.
// - Lost resends. In recovery, three more duplicate ACKs after a partial ACK mean the
//   hole's resend was lost too: it is resent again at once, not after a retransmit
//   timeout (whose backoff cost seconds each).
// - Window Scale. A flow the shim does not scale (MSS over its limit, table full) but
//   whose guest offered Window Scale gets WS(0) added to libslirp's SYN or SYN-ACK here:
//   the guest then scales its own window (what lets it offer more than 64 KiB), libslirp
//   keeps its unscaled one, and this stage translates every guest window for libslirp.
//
// Flow state goes on RST, after libslirp's FIN is acknowledged by the guest with nothing
// kept, with the guest's port, after `idleTimeout`, and after an unanswered reset.
// Nothing here calls out; FramePath drains `nextACK`, `takeRetransmit` and `nextTimeout`.
public struct TCPEarlyACK {
    public enum Verdict: Equatable, Sendable {
        /// Forward the frame as it is.
        case pass
        /// Forward `guestOutput` (from `fromGuest`) or `natOutput` (from `fromNAT`) instead.
        case rewritten
        /// Nothing to forward: a guest ACK that tells libslirp nothing new, or libslirp
        /// resending data this stage already holds and delivers itself.
        case absorbed
    }

    /// What a timer that fired asks for.
    public enum Timeout: Equatable, Sendable {
        /// Resend this kept segment to the guest on `port` (cut to its MTU as usual).
        case retransmit([UInt8], PortID)
        /// The guest stopped answering: RST to the guest and to libslirp; the flow is gone.
        case reset(toGuest: [UInt8], toNAT: [UInt8], PortID)
    }

    public static let initialRTO: Int64 = 1_000_000_000
    public static let minRTO: Int64 = 200_000_000
    public static let maxRTO: Int64 = 10_000_000_000
    /// Timeouts in a row without any answer from the guest before the flow is reset.
    public static let maxTries = 12
    public static let defaultIdleTimeout: Int64 = 120_000_000_000
    /// The congestion window a flow starts with: what libslirp alone keeps in flight.
    public static let minWindow = 65535
    /// Kept segments resent on a partial ACK during recovery, the hole first.
    public static let partialACKResends = 4
    /// Lossless windows (of ACKed bytes) before a flow's ring ceiling rises by a segment.
    public static let ceilingProbe = 16

    public let flowCap: Int
    public let networkCap: Int
    public let maxFlows: Int
    public let idleTimeout: Int64
    /// Off: every frame passes untouched (for measuring, and for the fuzzer's baseline).
    public var enabled = true

    public private(set) var guestOutput: [UInt8] = []
    public private(set) var natOutput: [UInt8] = []

    // Counters for /metrics.
    public private(set) var heldBytes = 0
    public private(set) var earlyACKsSent = 0
    public private(set) var guestACKsAbsorbed = 0
    public private(set) var fastRetransmits = 0
    public private(set) var timeoutRetransmits = 0
    public private(set) var flowsReset = 0
    public private(set) var windowScaleAdded = 0
    /// Congestion windows cut for a loss toward a guest.
    public private(set) var windowCuts = 0
    public var retransmits: Int { fastRetransmits + timeoutRetransmits }
    public var flowCount: Int { index.count }

    private var slots: [Flow] = []
    private var freeSlots: [Int] = []
    private var index: [FlowKey: Int] = [:]
    private var ackDue: [Int] = []
    private var rtoDue: [Int: Int64] = [:]
    private var resends: [(Int, Int)] = []
    private var portCaps: [PortID: Int] = [:]

    public init(flowCap: Int = 4 << 20, networkCap: Int = 64 << 20, maxFlows: Int = 65536,
                idleTimeout: Int64 = TCPEarlyACK.defaultIdleTimeout) {
        self.flowCap = max(65535, flowCap)
        self.networkCap = max(0, networkCap)
        self.maxFlows = max(0, maxFlows)
        self.idleTimeout = idleTimeout
    }

    // MARK: Guest -> libslirp

    /// A guest's segment for libslirp (before the window shim); `.rewritten`: a copy with
    /// the ACK and window libslirp should see is in `guestOutput`. (FramePath rewrites the
    /// frame where it lies instead: `fromGuest(inPlace:)`.)
    public mutating func fromGuest(_ frame: UnsafeRawBufferPointer, port: PortID, now: Int64) -> Verdict {
        guard enabled, let h = Segment(frame) else { return .pass }
        var out = guestOutput
        guestOutput = []
        out.removeAll(keepingCapacity: true)
        out.append(contentsOf: frame)
        let key = h.key(frame, guestIsSource: true)
        let verdict = out.withUnsafeMutableBytes { fromGuest(inPlace: $0, h, key, port: port, now: now) }
        guestOutput = out
        return verdict
    }

    /// A guest's segment for libslirp, parsed (`h`, `key`: once for both TCP stages), its
    /// ACK and window rewritten where it lies, in a buffer the caller owns: `.rewritten`
    /// says they changed. Copying each segment out to rewrite 6 bytes cost as much as
    /// libslirp's own copy of it.
    mutating func fromGuest(inPlace frame: UnsafeMutableRawBufferPointer, _ h: Segment, _ key: FlowKey,
                            port: PortID, now: Int64) -> Verdict {
        guard enabled else { return .pass }
        let bytes = UnsafeRawBufferPointer(frame)
        if h.flags & F.rst != 0 {
            if let i = index[key] { free(i) }
            return .pass
        }
        if h.flags & F.syn != 0 {
            if h.flags & F.ack == 0 {
                // The guest opens (a retransmitted SYN keeps the flow it made).
                if let i = index[key], slots[i].phase != .guestSYN { free(i) }
                let i = index[key] ?? create(key, port: port, now: now)
                guard let i else { return .pass }
                slots[i].phase = .guestSYN
                slots[i].guestShift = h.windowScaleOption(bytes).map { min(bytes[$0 + 2], 14) }
                slots[i].synWindow = Int(h.window)
                return .pass
            }
            // The guest answers libslirp's SYN (a host forward).
            guard let i = index[key], slots[i].phase == .slirpSYN else { return .pass }
            slots[i].guestShift = h.windowScaleOption(bytes).map { min(bytes[$0 + 2], 14) }
            guard seqDiff(h.ack, slots[i].nxt) == 0 else { return .pass }
            slots[i].phase = .established
            slots[i].una = h.ack
            slots[i].acked = h.ack
            slots[i].guestWindow = Int(h.window)  // a SYN's window is never scaled
            slots[i].offeredEdge = h.ack &+ UInt32(h.window)
            slots[i].slirpRcvNxt = h.seq &+ 1
            return .pass
        }
        guard let i = index[key], slots[i].phase == .established else { return .pass }
        guard h.flags & F.ack != 0 else { return .pass }
        slots[i].lastActive = now
        slots[i].tries = 0
        guestACK(i, h, now: now)
        return translate(i, frame, h)
    }

    /// The guest's ACK frees what it covers and drives retransmission.
    private mutating func guestACK(_ i: Int, _ h: Segment, now: Int64) {
        let a = h.ack
        let window = Int(h.window) << slots[i].guestScale
        let f = slots[i]
        if seqGT(a, f.una) {
            if seqGT(a, f.nxt) {
                // Beyond what was kept: a FIN or data that passed unkept; all is delivered.
                dropHeld(i, upTo: f.nxt, now: now)
                slots[i].nxt = a
                slots[i].una = a
            } else {
                dropHeld(i, upTo: a, now: now)
                slots[i].una = a
            }
            slots[i].dupACKs = 0
            if slots[i].recover == nil { growWindow(i, acked: Int(seqDiff(a, f.una))) }
            if let recover = slots[i].recover {
                if seqLT(a, recover), !slots[i].held.isEmpty {
                    // A partial ACK: the next hole, and the segments after it up to the
                    // loss point (a small NIC ring drops runs of frames, not single ones).
                    queueResend(i, segments: Self.partialACKResends, before: recover)
                    slots[i].partialACKed = true
                } else {
                    slots[i].recover = nil
                    slots[i].resentEnd = nil
                    slots[i].partialACKed = false
                }
            }
            slots[i].backoff = 0
            restartTimer(i, now: now)
        } else if seqDiff(a, f.una) == 0, h.payload == 0, h.flags & ~F.psh == F.ack, !f.held.isEmpty,
                  window == f.guestWindow {
            slots[i].dupACKs += 1
            if slots[i].dupACKs == 3, slots[i].recover == nil {
                slots[i].recover = slots[i].nxt
                slots[i].resentEnd = nil
                shrinkWindow(i, timeout: false)
                fastRetransmits += 1
                queueResend(i, counted: false)
            } else if slots[i].dupACKs == 3, slots[i].partialACKed {
                // Three segments past the hole arrived after a partial ACK, the hole did
                // not: its resend was lost as well (a NIC ring drops FIFO, it never
                // reorders). Resend it now rather than wait out the timer.
                slots[i].partialACKed = false
                fastRetransmits += 1
                resends.append((i, 0))
            }
        } else if seqLT(a, f.una) {
            return  // an old ACK, reordered: its window is stale
        }
        slots[i].guestWindow = window
    }

    /// The guest's frame given the ACK and window libslirp should see, or absorbed.
    private mutating func translate(_ i: Int, _ frame: UnsafeMutableRawBufferPointer, _ h: Segment) -> Verdict {
        let f = slots[i]
        let ack = seqGT(h.ack, f.acked) ? h.ack : f.acked
        let field = windowField(i, ack: ack)
        let pure = h.payload == 0 && h.flags & ~F.psh == F.ack
        let done = f.slirpFin && f.held.isEmpty && seqGT(ack, f.finSeq)
        if pure, f.hasSent, seqDiff(ack, f.sentACK) == 0, field == f.sentField, !done {
            guestACKsAbsorbed += 1
            return .absorbed
        }
        told(i, ack: ack, field: field)
        if done { free(i) }
        guard seqDiff(ack, h.ack) != 0 || field != h.window else { return .pass }
        TCPRewrite.setWord(frame, at: h.tcp + 8, UInt16(ack >> 16), checksumAt: h.tcp + 16)
        TCPRewrite.setWord(frame, at: h.tcp + 10, UInt16(ack & 0xFFFF), checksumAt: h.tcp + 16)
        TCPRewrite.setWord(frame, at: h.tcp + 14, field, checksumAt: h.tcp + 16)
        return .rewritten
    }

    /// Records what libslirp was told.
    private mutating func told(_ i: Int, ack: UInt32, field: UInt16) {
        slots[i].acked = ack
        slots[i].sentACK = ack
        slots[i].sentField = field
        slots[i].hasSent = true
        let edge = ack &+ UInt32(min(65535, Int(field) << slots[i].fieldShift))
        if seqGT(edge, slots[i].offeredEdge) { slots[i].offeredEdge = edge }
    }

    /// The window field (in the units the next stage reads) for an ACK of `ack`: the
    /// guest's room beyond the kept bytes, within the caps, at most 65,535, and never
    /// retracting the edge libslirp was shown.
    private func windowField(_ i: Int, ack: UInt32) -> UInt16 {
        let f = slots[i]
        let guestEdge = f.una &+ UInt32(truncatingIfNeeded: f.guestWindow)
        var w = Int(seqDiff(guestEdge, ack))
        w = min(w, f.cap - f.heldBytes, networkCap - heldBytes)
        // In flight toward the guest (kept, and past `ack`): at most the congestion window.
        w = min(w, f.cwnd - Int(seqDiff(ack, f.una)))
        w = max(0, min(w, 65535))
        // Rounded down to the field's units, so the caps hold; up only where the edge
        // already shown needs it.
        var field = w >> f.fieldShift
        if seqGT(f.offeredEdge, ack) {
            let shown = min(65535, Int(seqDiff(f.offeredEdge, ack)))
            if field << f.fieldShift < shown { field = (shown + (1 << f.fieldShift) - 1) >> f.fieldShift }
        }
        return UInt16(min(65535, field))
    }

    /// The next ACK libslirp is owed for data kept this turn, and the guest's port; nil
    /// when none is left. Feed each to libslirp (through the shim) outside its callbacks.
    public mutating func nextACK() -> ([UInt8], PortID)? {
        while let i = ackDue.popLast() {
            slots[i].ackDue = false
            let f = slots[i]
            guard f.live, f.phase == .established, seqGT(f.nxt, f.acked), let template = f.template else { continue }
            let field = windowField(i, ack: f.nxt)
            told(i, ack: f.nxt, field: field)
            earlyACKsSent += 1
            return (Self.build(template, towardNAT: true, seq: f.slirpRcvNxt, ack: f.nxt, flags: F.ack, window: field), f.port)
        }
        return nil
    }

    // MARK: libslirp -> guest

    /// libslirp's frame for the guest on `port`, after the window shim.
    public mutating func fromNAT(_ frame: UnsafeRawBufferPointer, port: PortID, now: Int64) -> Verdict {
        guard enabled, let h = Segment(frame) else { return .pass }
        let key = h.key(frame, guestIsSource: false)
        if h.flags & F.rst != 0 {
            if let i = index[key] { free(i) }
            return .pass
        }
        if h.flags & F.syn != 0 { return natSYN(frame, h, key, port: port, now: now) }
        guard let i = index[key], slots[i].phase == .established else { return .pass }
        slots[i].lastActive = now
        if h.flags & F.ack != 0, seqGT(h.ack, slots[i].slirpRcvNxt) { slots[i].slirpRcvNxt = h.ack }
        let end = h.seq &+ UInt32(h.payload)
        if h.flags & F.fin != 0 {
            slots[i].slirpFin = true
            slots[i].finSeq = end
            return .pass
        }
        guard h.payload > 0 else { return .pass }
        let f = slots[i]
        if seqLE(end, f.nxt), seqLE(end, f.acked) {
            // libslirp resends what it was told was received: held (or delivered) already.
            return .absorbed
        }
        // Kept: the next byte, within the edge libslirp was shown or the room the guest
        // offers (libslirp may skip a window update whose sequence number is older than
        // a guest segment's), and within the hard caps. Anything else (a window probe
        // into a closed window, a resend) passes, and the guest's own ACK covers it.
        let fits = seqLE(end, f.offeredEdge) || seqLE(end, f.una &+ UInt32(truncatingIfNeeded: f.guestWindow))
        guard h.flags & ~F.psh == F.ack, !f.slirpFin, seqDiff(h.seq, f.nxt) == 0, fits,
              f.heldBytes + h.payload <= f.cap + 65535, heldBytes + h.payload <= networkCap + 65535 else { return .pass }
        let copy = Array(frame[0..<h.ipEnd])
        if f.template == nil { slots[i].template = Array(copy[0..<(h.tcp + 20)]) }
        slots[i].held.append(Kept(seq: h.seq, end: end, sentAt: now, resent: false, frame: copy))
        slots[i].heldBytes += h.payload
        heldBytes += h.payload
        slots[i].nxt = end
        if h.payload > slots[i].mss { slots[i].mss = min(h.payload, 65535) }
        if rtoDue[i] == nil { rtoDue[i] = now + slots[i].rto }
        if !slots[i].ackDue {
            slots[i].ackDue = true
            ackDue.append(i)
        }
        return .pass
    }

    private mutating func natSYN(_ frame: UnsafeRawBufferPointer, _ h: Segment, _ key: FlowKey,
                                 port: PortID, now: Int64) -> Verdict {
        let shimScaled = h.windowScaleOption(frame) != nil
        if h.flags & F.ack == 0 {
            // libslirp opens toward the guest (a host forward).
            if let i = index[key], slots[i].phase != .slirpSYN { free(i) }
            guard let i = index[key] ?? create(key, port: port, now: now) else { return .pass }
            slots[i].phase = .slirpSYN
            slots[i].nxt = h.seq &+ 1
            slots[i].natShift = shimScaled ? 7 : nil
            slots[i].fieldScaled = shimScaled
            guard !shimScaled, addWindowScale(frame, h) else { return .pass }
            // Whether the guest answers with Window Scale decides; WS(0) is ours.
            if slots[i].natShift == nil { windowScaleAdded += 1 }
            slots[i].natShift = 0
            return .rewritten
        }
        guard let i = index[key] else { return .pass }
        if slots[i].phase == .guestSYN {
            slots[i].phase = .established
            slots[i].fieldScaled = shimScaled
            slots[i].natShift = shimScaled ? 7 : nil
            let n = h.seq &+ 1
            slots[i].nxt = n
            slots[i].una = n
            slots[i].acked = n
            slots[i].slirpRcvNxt = h.ack
            // libslirp's window toward the guest is what the guest's SYN said, unscaled.
            slots[i].guestWindow = slots[i].synWindow
            // libslirp sends nothing before the guest's ACK, whose translation sets the edge.
            slots[i].offeredEdge = n
        } else if slots[i].phase != .established {
            return .pass
        }
        // The shim left the flow unscaled, the guest offered scaling: WS(0) lets the guest
        // scale its own window (a resent SYN-ACK gets it again).
        guard !shimScaled, slots[i].guestShift != nil, slots[i].natShift != 7, addWindowScale(frame, h) else { return .pass }
        if slots[i].natShift == nil { windowScaleAdded += 1 }
        slots[i].natShift = 0
        return .rewritten
    }

    // MARK: Retransmission

    /// When a retransmit timer is due, if any.
    public var nextDeadline: Int64? { rtoDue.values.min() }

    /// Resends asked for by the guest's duplicate or partial ACKs, and its port.
    public mutating func takeRetransmit() -> ([UInt8], PortID)? {
        while let (i, k) = resends.popLast() {
            guard slots[i].live, k < slots[i].held.count else { continue }
            if k == 0 { slots[i].held.markFirstResent() }
            return (slots[i].held[k].frame, slots[i].port)
        }
        return nil
    }

    /// A timer due by `now`: a resend of the flow's first kept segment (the timer backs
    /// off), or, past `maxTries` unanswered, the flow's reset both ways.
    public mutating func nextTimeout(now: Int64) -> Timeout? {
        for (i, due) in rtoDue where due <= now {
            guard slots[i].live, let first = slots[i].held.first, let template = slots[i].template else {
                rtoDue[i] = nil
                continue
            }
            if slots[i].tries >= Self.maxTries {
                let f = slots[i]
                let toGuest = Self.build(template, towardNAT: false, seq: f.una, ack: f.slirpRcvNxt, flags: F.rst | F.ack, window: 0)
                let toNAT = Self.build(template, towardNAT: true, seq: f.slirpRcvNxt, ack: f.acked, flags: F.rst | F.ack, window: 0)
                flowsReset += 1
                free(i)
                return .reset(toGuest: toGuest, toNAT: toNAT, f.port)
            }
            slots[i].tries += 1
            slots[i].backoff = min(slots[i].backoff + 1, 16)
            slots[i].held.markFirstResent()
            if slots[i].tries == 1 { shrinkWindow(i, timeout: true) }
            slots[i].recover = slots[i].nxt
            slots[i].resentEnd = first.end
            slots[i].dupACKs = 0
            rtoDue[i] = now + currentRTO(i)
            timeoutRetransmits += 1
            return .retransmit(first.frame, slots[i].port)
        }
        return nil
    }

    /// Reno toward the guest, which libslirp no longer sees lose anything: slow start
    /// below `ssthresh`, then a segment per window of ACKs, within the ring ceiling; it
    /// starts at the 64 KiB libslirp itself would have had in flight.
    private mutating func growWindow(_ i: Int, acked: Int) {
        let f = slots[i]
        let grown = f.cwnd < f.ssthresh ? f.cwnd + acked : f.cwnd + max(1, f.mss * f.mss / f.cwnd)
        var limit = f.cap
        if let ceiling = f.ceiling {
            // Probe past the ring ceiling after enough lossless windows: by a segment (a
            // ring's slot), or an eighth past 64 KiB, more than any emulated ring holds (a
            // fast guest's one-off loss must not pin its window).
            slots[i].sinceLoss += acked
            if slots[i].sinceLoss >= Self.ceilingProbe * ceiling {
                slots[i].ceiling = ceiling + (ceiling > Self.minWindow ? max(f.mss, ceiling / 8) : f.mss)
                slots[i].sinceLoss = 0
            }
            limit = min(limit, slots[i].ceiling ?? limit)
        }
        slots[i].cwnd = max(f.cwnd, min(grown, limit))
    }

    /// A loss: a fast retransmit sets the ring ceiling (see the theory above), and a timeout
    /// starts again from two segments (RFC 5681).
    /// A NIC with a small receive ring (iPXE's e1000, pcnet) drops the rest of a burst:
    /// held at 64 KiB, every recovery burst lost most of itself again, and iPXE's 50 MiB
    /// download crawled from one timeout to the next.
    private mutating func shrinkWindow(_ i: Int, timeout: Bool) {
        let flight = Int(seqDiff(slots[i].nxt, slots[i].una))
        let floor = 2 * slots[i].mss
        if timeout {
            slots[i].ssthresh = max(flight / 2, floor)
            slots[i].cwnd = floor
        } else {
            // A ring's size, not congestion: one segment below the flight that lost.
            let ceiling = max(flight - slots[i].mss, floor)
            slots[i].ceiling = min(ceiling, slots[i].ceiling ?? ceiling)
            slots[i].sinceLoss = 0
            slots[i].ssthresh = max(ceiling, floor)
            slots[i].cwnd = min(slots[i].cwnd, slots[i].ssthresh)
        }
        windowCuts += 1
    }

    private func currentRTO(_ i: Int) -> Int64 {
        let base = slots[i].rto
        return min(Self.maxRTO, base << Int64(slots[i].backoff))
    }

    /// Queues up to `segments` kept segments for resending (all before `end` when given,
    /// else just one), starting after what this recovery already resent: resending that
    /// again on every partial ACK multiplied the frames a small NIC ring already dropped.
    private mutating func queueResend(_ i: Int, counted: Bool = true, segments: Int = 1, before end: UInt32? = nil) {
        let held = slots[i].held
        var k = 0
        if let r = slots[i].resentEnd {
            while k < held.count, seqLT(held[k].seq, r) { k += 1 }
        }
        var picked: [Int] = []
        while picked.count < segments, k < held.count, end.map({ seqLT(held[k].seq, $0) }) ?? picked.isEmpty {
            picked.append(k)
            k += 1
        }
        if let last = picked.last { slots[i].resentEnd = held[last].end }
        if counted { fastRetransmits += picked.count }
        // Taken from the end: the first kept segment goes first.
        for k in picked.reversed() { resends.append((i, k)) }
    }

    private mutating func restartTimer(_ i: Int, now: Int64) {
        rtoDue[i] = slots[i].held.isEmpty ? nil : now + currentRTO(i)
    }

    /// Frees the kept segments the guest's ACK up to `a` covers; cuts one it covers in
    /// part; takes an RTT sample from the last whole one never resent (Karn).
    private mutating func dropHeld(_ i: Int, upTo a: UInt32, now: Int64) {
        var n = 0
        var freed = 0
        var sample: Int64?
        while n < slots[i].held.count, seqLE(slots[i].held[n].end, a) {
            let k = slots[i].held[n]
            freed += k.length
            sample = k.resent ? nil : now - k.sentAt
            n += 1
        }
        if n > 0 { slots[i].held.removeFirst(n) }
        if let first = slots[i].held.first, seqGT(a, first.seq) {
            let cut = Int(seqDiff(a, first.seq))
            if let (_, tail) = first.frame.withUnsafeBytes({ TCPSegmentation.split($0, payloadBytes: cut) }) {
                slots[i].held.replaceFirst(Kept(seq: a, end: first.end, sentAt: first.sentAt, resent: first.resent, frame: tail))
                freed += cut
            }
        }
        slots[i].heldBytes -= freed
        heldBytes -= freed
        if let sample { rttSample(i, max(0, sample)) }
    }

    /// RFC 6298's estimate.
    private mutating func rttSample(_ i: Int, _ r: Int64) {
        if slots[i].srtt == 0 {
            slots[i].srtt = max(1, r)
            slots[i].rttvar = r / 2
        } else {
            let delta = abs(slots[i].srtt - r)
            slots[i].rttvar = (3 * slots[i].rttvar + delta) / 4
            slots[i].srtt = max(1, (7 * slots[i].srtt + r) / 8)
        }
        slots[i].rto = max(Self.minRTO, min(Self.maxRTO, slots[i].srtt + max(1_000_000, 4 * slots[i].rttvar)))
    }

    // MARK: Ports, caps, age

    /// Caps what each new flow of `port` may keep below `flowCap` (a tap's queue).
    public mutating func setFlowCap(_ bytes: Int, for port: PortID) {
        portCaps[port] = max(65535, bytes)
    }

    public mutating func removePort(_ port: PortID) {
        portCaps[port] = nil
        for i in slots.indices where slots[i].live && slots[i].port == port { free(i) }
    }

    /// Forgets flows silent for `idleTimeout` (housekeeping).
    public mutating func expire(now: Int64) {
        // A flow this stage added Window Scale to must keep translating the guest's windows
        // while it lives: it is forgotten only after ten times as long.
        for i in slots.indices where slots[i].live {
            let limit = slots[i].natShift == 0 ? idleTimeout * 10 : idleTimeout
            if now - slots[i].lastActive > limit { free(i) }
        }
    }

    /// For tests and the fuzzer: a flow's kept bytes, the next byte libslirp sends, what
    /// it was told was received, the guest's ACK, and the retransmit timeout.
    public func flowState(guest: [UInt8], guestPort: UInt16, remote: [UInt8], remotePort: UInt16)
        -> (held: Int, nxt: UInt32, acked: UInt32, una: UInt32, rto: Int64, established: Bool)? {
        guard let key = FlowKey(guest: guest, guestPort: guestPort, remote: remote, remotePort: remotePort),
              let i = index[key] else { return nil }
        let f = slots[i]
        return (f.heldBytes, f.nxt, f.acked, f.una, currentRTO(i), f.phase == .established)
    }

    private mutating func create(_ key: FlowKey, port: PortID, now: Int64) -> Int? {
        guard index.count < maxFlows else { return nil }
        var flow = Flow(port: port, lastActive: now)
        flow.cap = min(flowCap, portCaps[port] ?? flowCap)
        flow.key = key
        let i: Int
        if let reused = freeSlots.popLast() {
            i = reused
            slots[i] = flow
        } else {
            i = slots.count
            slots.append(flow)
        }
        index[key] = i
        return i
    }

    private mutating func free(_ i: Int) {
        guard slots[i].live else { return }
        heldBytes -= slots[i].heldBytes
        index[slots[i].key] = nil
        rtoDue[i] = nil
        // Stale entries in `ackDue` and `resends` are skipped (not live, or no longer due).
        slots[i] = Flow(port: slots[i].port, lastActive: 0)
        slots[i].live = false
        freeSlots.append(i)
    }

    // MARK: Frames

    /// libslirp's SYN or SYN-ACK with NOP + Window Scale(0) before its options, into `natOutput`.
    private mutating func addWindowScale(_ frame: UnsafeRawBufferPointer, _ h: Segment) -> Bool {
        guard let out = TCPRewrite.prependingOption([1, 3, 3, 0], to: frame, h) else { return false }
        natOutput = out
        return true
    }

    /// A bare TCP segment (no options, no payload) of the flow `template` (a frame from
    /// libslirp toward the guest) belongs to, toward libslirp or toward the guest.
    static func build(_ template: [UInt8], towardNAT: Bool, seq: UInt32, ack: UInt32, flags: UInt8, window: UInt16) -> [UInt8] {
        let v6 = read16(template, 12) == 0x86DD
        let ip = EthernetHeader.length
        var out: [UInt8] = towardNAT ? Array(template[6..<12]) + Array(template[0..<6]) : Array(template[0..<12])
        let (src, dst) = v6 ? (Array(template[(ip + 8)..<(ip + 24)]), Array(template[(ip + 24)..<(ip + 40)]))
            : (Array(template[(ip + 12)..<(ip + 16)]), Array(template[(ip + 16)..<(ip + 20)]))
        let (s, d) = towardNAT ? (dst, src) : (src, dst)
        if v6 {
            out += [0x86, 0xDD, 0x60, 0, 0, 0, 0, 20, 6, 64] + s + d
        } else {
            out += [0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0] + s + d
        }
        let t = out.count
        let tcpStart = template.count - 20
        let ports = Array(template[tcpStart..<(tcpStart + 4)])
        out += towardNAT ? Array(ports[2..<4]) + Array(ports[0..<2]) : ports
        out += bigEndianBytes(seq) + bigEndianBytes(ack) + [5 << 4, flags] + bigEndianBytes(window) + [0, 0, 0, 0]
        TCPRewrite.finish(&out, v6: v6, tcp: t)
        return out
    }
}

private enum F {
    static let fin: UInt8 = 0x01
    static let syn: UInt8 = 0x02
    static let rst: UInt8 = 0x04
    static let psh: UInt8 = 0x08
    static let ack: UInt8 = 0x10
}

/// A segment kept for the guest until it acknowledges it.
private struct Kept {
    var seq: UInt32
    var end: UInt32
    var sentAt: Int64
    var resent: Bool
    var frame: [UInt8]

    var length: Int { Int(end &- seq) }
}

/// A flow's kept segments in sequence order: a consumed prefix is skipped, not moved, on
/// every ACK (compacted once it is half the array), so an ACK costs what it frees.
private struct KeptQueue {
    private var items: [Kept] = []
    private var head = 0

    var isEmpty: Bool { head == items.count }
    var count: Int { items.count - head }
    var first: Kept? { isEmpty ? nil : items[head] }
    subscript(n: Int) -> Kept { items[head + n] }

    mutating func append(_ k: Kept) { items.append(k) }
    mutating func markFirstResent() { if !isEmpty { items[head].resent = true } }
    mutating func replaceFirst(_ k: Kept) { if !isEmpty { items[head] = k } }

    mutating func removeFirst(_ n: Int) {
        for j in head..<(head + n) { items[j].frame = [] }
        head += n
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 64, head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
    }
}

private struct Flow {
    enum Phase { case guestSYN, slirpSYN, established }

    var key: FlowKey
    var port: PortID
    var phase: Phase = .guestSYN
    var live = true
    /// The shift in the guest's SYN or SYN-ACK (nil: no Window Scale).
    var guestShift: UInt8?
    /// The shift toward the guest: 7 when the shim added Window Scale, 0 when this stage
    /// did, nil when nobody did.
    var natShift: UInt8?
    /// Whether the shim scales the flow: it then reads the guest's window field scaled.
    var fieldScaled = false
    var synWindow = 0
    /// The next byte libslirp sends (the end of what is kept, when in order).
    var nxt: UInt32 = 0
    /// The guest's latest ACK.
    var una: UInt32 = 0
    /// The highest ACK libslirp was given.
    var acked: UInt32 = 0
    /// The last ACK and window field libslirp was given.
    var sentACK: UInt32 = 0
    var sentField: UInt16 = 0
    var hasSent = false
    /// The right edge libslirp was shown (never retracted).
    var offeredEdge: UInt32 = 0
    /// libslirp's latest ACK of the guest's data: the sequence number of our ACKs.
    var slirpRcvNxt: UInt32 = 0
    /// The guest's window, in bytes.
    var guestWindow = 0
    var held = KeptQueue()
    var heldBytes = 0
    var cap = 0
    var template: [UInt8]?
    var ackDue = false
    var dupACKs = 0
    var recover: UInt32?
    /// In recovery, the end of what was resent so far: a partial ACK goes on after it, as
    /// the earlier resends are still in flight.
    var resentEnd: UInt32?
    var srtt: Int64 = 0
    var rttvar: Int64 = 0
    var rto: Int64 = TCPEarlyACK.initialRTO
    var backoff = 0
    var tries = 0
    /// The congestion window toward the guest (bytes), its threshold, and the largest segment seen.
    var cwnd = TCPEarlyACK.minWindow
    var ssthresh = Int.max / 2
    var mss = 1460
    /// The window a fast retransmit found the guest's NIC ring holds (nil: never lost),
    /// and the bytes ACKed since that loss.
    var ceiling: Int?
    var sinceLoss = 0
    /// In recovery, a partial ACK came and no duplicate since has resent the hole.
    var partialACKed = false
    var slirpFin = false
    var finSeq: UInt32 = 0
    var lastActive: Int64

    init(port: PortID, lastActive: Int64) {
        self.port = port
        self.lastActive = lastActive
        key = FlowKey()
    }

    /// How the guest's window field is scaled: both SYNs carried Window Scale.
    var guestScale: Int { guestShift != nil && natShift != nil ? Int(guestShift!) : 0 }
    /// How the next stage (the shim, then libslirp) reads the window field this stage writes.
    var fieldShift: Int { fieldScaled && guestShift != nil ? Int(guestShift!) : 0 }
}

