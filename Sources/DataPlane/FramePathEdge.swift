import FrameSwitch

// FramePath at the guest edge: where libslirp's jumbo MTU meets each port's own.
//
// Theory of operation. libslirp runs at MSSClamp.natMTU; a guest port keeps its MTU
// (PortState.mtu). Every frame toward a guest, from libslirp or from another guest, goes
// through `put`: one that fits the port's MTU is delivered as it is; a larger TCP segment
// is cut into segments of the port's MSS (software TSO: TCPSegmentation), unless the
// port's writer does that itself (`takesLargeSegments`); a larger IPv4 packet is cut into
// fragments, and a larger IPv6 packet gets a Fragment header, as its sender's stack would
// have done for a link of that MTU. What cannot be cut (IPv4 with DF, anything else) is
// dropped and counted, as the guest's link would drop it; a guest that sent an IPv4
// packet with DF is told the MTU (Fragmentation Needed), as a router would tell it.
//
// Toward libslirp, a guest's in-order TCP segments of one flow are merged within a loop
// turn (software GRO: TCPCoalescer, one per port), so libslirp, whose cost is per segment,
// sees a few large segments instead of many small ones. Anything that cannot extend the
// held segment sends it first, so the guest's frames keep their order; `flushCoalesced`
// sends what is held at the end of the turn, before `injectPending` lets libslirp's ACKs
// release the TCP shim's queue.
//
// Toward a guest that takes large segments (a tap with TSO, vhost-user with GUEST_TSO:
// PortState.mergeLimit), libslirp's in-order segments of one flow are merged the same way
// (`putFromNAT`, one TCPCoalescer per port): four of natMSS make one 64 KiB frame, which
// the guest's kernel or driver takes as one segment instead of four. Any other frame for
// that port sends the held one first (in `put`, and `deliverNow` for what skips `put`),
// and `flushMerged` sends the rest at the end of the turn. Only libslirp's frames are
// merged: their checksums are whole, which the merge reads the payload's sum from; a
// guest's may be partial (checksum offload).
extension FramePath {
    /// Puts a frame from libslirp on a guest port's output, merged with the segments
    /// before it when the port takes them together (see above), else as `put` does.
    func putFromNAT(_ frame: UnsafeRawBufferPointer, to port: PortState, sink: any FramePathSink) {
        // A segment larger than natMSS (a jumbo guest's, up to 32 KiB) shares no frame with
        // the next: merging would only copy it.
        guard let limit = port.mergeLimit, frame.count <= Self.mergeableFrame else { return put(frame, to: port.id, sink: sink) }
        port.fromNATMerge.maxPayload = limit
        let before = port.fromNATMerge.merged, wasHolding = port.fromNATMerge.isHolding
        let (flushed, outcome) = port.fromNATMerge.offer(frame)
        mergedTowardGuests += port.fromNATMerge.merged - before
        if port.fromNATMerge.isHolding, !wasHolding { mergingPorts.insert(port.id) }
        if let flushed { flushed.withUnsafeBytes { cut($0, to: port, sink: sink) } }
        if outcome == .pass { cut(frame, to: port, sink: sink) }
    }

    /// The largest frame `putFromNAT` merges: natMSS behind Ethernet, IPv6 and a full TCP header.
    static let mergeableFrame = EthernetHeader.length + 40 + 60 + MSSClamp.natMSS

    /// Sends every segment merged toward a guest and still held (the end of a loop turn).
    public func flushMerged(_ sink: any FramePathSink) {
        while let id = mergingPorts.popFirst() {
            if let port = ports[id] { sendMerged(port, sink: sink) }
        }
    }

    /// Sends what the port's merge holds, if anything.
    private func sendMerged(_ port: PortState, sink: any FramePathSink) {
        guard port.fromNATMerge.isHolding, let held = port.fromNATMerge.flush() else { return }
        held.withUnsafeBytes { cut($0, to: port, sink: sink) }
    }

    /// Delivers a frame as it is, after what the port's merge holds (so it keeps its place).
    func deliverNow(_ frame: UnsafeRawBufferPointer, to id: PortID, sink: any FramePathSink) {
        if let port = ports[id] { sendMerged(port, sink: sink) }
        sink.deliver(frame, to: id)
    }

    /// Puts a frame on a guest port's output, cut to the port's MTU. `source`: the guest
    /// that sent it, told the MTU (ICMP Fragmentation Needed, as a router would) when its
    /// IPv4 packet with DF is too large, so its path MTU discovery adapts.
    func put(_ frame: UnsafeRawBufferPointer, to id: PortID, from source: PortState? = nil, sink: any FramePathSink) {
        guard let port = ports[id] else { return sink.deliver(frame, to: id) }
        sendMerged(port, sink: sink)
        cut(frame, to: port, from: source, sink: sink)
    }

    /// `put` once the port's merge is out of the way.
    private func cut(_ frame: UnsafeRawBufferPointer, to port: PortState, from source: PortState? = nil, sink: any FramePathSink) {
        let id = port.id
        guard frame.count - EthernetHeader.length > port.mtu else {
            return sink.deliver(frame, to: id)
        }
        if let tcpHeaders = Self.tcpHeaderLength(frame) {
            if port.takesLargeSegments { return sink.deliver(frame, to: id) }
            // `deliver` copies each piece out and never re-enters the frame path, so one
            // scratch buffer serves every cut.
            if TCPSegmentation.forEachSegment(frame, mss: port.mtu - tcpHeaders, scratch: &segmentScratch, {
                sink.deliver($0, to: id)
            }) {
                segmentedFrames += 1
                return
            }
        } else if let pieces = fragments(frame, mtu: port.mtu) {
            fragmentedFrames += 1
            for piece in pieces { piece.withUnsafeBytes { sink.deliver($0, to: id) } }
            return
        }
        oversizedDropped += 1
        port.drops += 1
        if let source, let packet = Packet(frame), packet.isIPv4, packet.proto != 1 || frame[packet.payload] == 8 {
            // Type 3 code 4 with the next-hop MTU (RFC 1191); never about an ICMP error.
            let mtu = bigEndianBytes(UInt16(0)) + bigEndianBytes(UInt16(clamping: port.mtu))
            sink.send(ICMPError.about(frame, packet, type: 3, code: 4, rest: mtu), to: source.id)
        }
    }

    /// Hands a local guest's frame to the VXLAN uplink cut to `uplinkMTU`, as `put` does
    /// for a guest port: a tap's 64 KiB TCP super-frame becomes MSS-sized segments (a
    /// kernel VXLAN peer would drop it whole), a large IP packet becomes fragments, and what
    /// cannot be cut is dropped and its IPv4 DF sender told the MTU.
    func toUplinkCut(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, from source: PortState, sink: any FramePathSink) {
        uplinkSent += 1
        guard frame.count - EthernetHeader.length > uplinkMTU else { return sink.toUplink(frame, header) }
        if let tcpHeaders = Self.tcpHeaderLength(frame) {
            if TCPSegmentation.forEachSegment(frame, mss: uplinkMTU - tcpHeaders, scratch: &segmentScratch, {
                sink.toUplink($0, header)
            }) {
                segmentedFrames += 1
                return
            }
        } else if let pieces = fragments(frame, mtu: uplinkMTU) {
            fragmentedFrames += 1
            for piece in pieces { piece.withUnsafeBytes { sink.toUplink($0, header) } }
            return
        }
        oversizedDropped += 1
        source.drops += 1
        if let packet = Packet(frame), packet.isIPv4, packet.proto != 1 || frame[packet.payload] == 8 {
            let mtu = bigEndianBytes(UInt16(0)) + bigEndianBytes(UInt16(clamping: uplinkMTU))
            sink.send(ICMPError.about(frame, packet, type: 3, code: 4, rest: mtu), to: source.id)
        }
    }

    /// An IP packet cut to `mtu`, or nil when it cannot be (not IP, DF set, malformed).
    private func fragments(_ frame: UnsafeRawBufferPointer, mtu: Int) -> [[UInt8]]? {
        let pieces: [[UInt8]]
        switch read16(frame, 12) {
        case 0x0800:
            pieces = IPv4Fragmentation.fragments(of: Array(frame), mtu: mtu)
        case 0x86DD:
            fragmentIdentification &+= 1
            pieces = IPv6Fragmentation.fragments(of: Array(frame), mtu: mtu, identification: fragmentIdentification)
        default:
            return nil
        }
        // Both hand back the frame unchanged when they cannot cut it.
        return pieces.count > 1 ? pieces : nil
    }

    /// The IP and TCP header bytes of a TCP segment (IPv4 not fragmented, or IPv6 with TCP
    /// next), or nil for any other frame.
    static func tcpHeaderLength(_ frame: UnsafeRawBufferPointer) -> Int? {
        guard let segment = Segment(frame) else { return nil }
        return segment.tcp - EthernetHeader.length + segment.dataOffset
    }

    // MARK: Toward libslirp

    /// Merges a guest's TCP segment for libslirp with the ones before it, or hands over
    /// what cannot be merged (after what was held, to keep the guest's order). A segment
    /// larger than the port's MTU (a tap's GSO frame) goes whole when libslirp's MRU takes
    /// it, else it is cut to the coalescer's limit first (checked first: cutting recomputes
    /// checksums, which must not make a damaged segment look whole).
    func coalesce(_ frame: UnsafeRawBufferPointer, from port: PortState, now: Int64, sink: any FramePathSink) {
        if frame.count - EthernetHeader.length > port.mtu, let l = TCPSegmentLayout(frame),
           l.payloadLength > port.coalescer.maxPayload, TCPSegmentation.hasValidChecksums(frame),
           let pieces = TCPSegmentation.segment(frame, mss: port.coalescer.maxPayload) {
            for piece in pieces { piece.withUnsafeBytes { coalesce($0, from: port, now: now, sink: sink) } }
            return
        }
        let before = port.coalescer.merged, wasHolding = port.coalescer.isHolding
        let (flushed, outcome) = port.coalescer.offer(frame)
        coalescedSegments += port.coalescer.merged - before
        // A port whose coalescer held a segment already is in the set (flushCoalesced
        // takes it out with the segment): no hashing per frame.
        if port.coalescer.isHolding, !wasHolding { holdingPorts.insert(port.id) }
        // The coalescer's segment is the frame path's own: the TCP stages rewrite it in place.
        if var flushed { flushed.withUnsafeMutableBytes { toLibslirp(owned: $0, from: port, now: now, sink: sink) } }
        if outcome == .pass { toLibslirp(frame, from: port, now: now, sink: sink) }
    }

    /// Sends libslirp every segment the coalescers hold (the end of a loop turn).
    public func flushCoalesced(now: Int64, sink: any FramePathSink) {
        while let id = holdingPorts.popFirst() {
            guard let port = ports[id], var held = port.coalescer.flush() else { continue }
            held.withUnsafeMutableBytes { toLibslirp(owned: $0, from: port, now: now, sink: sink) }
        }
    }

}
