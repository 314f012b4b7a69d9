import FrameSwitch

// FramePath, guest -> switch -> NAT (the order is in FramePath.swift's theory of operation).

extension FramePath {
    /// Switches one frame from a guest: to the NAT, slirpd's services, other guests, or nowhere.
    public func fromGuest(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, from port: PortState, now: Int64,
                          sink: any FramePathSink) {
        let verdict = bridge.ingress(from: port.id, source: header.source, destination: header.destination, now: now)
        if case .duplicate(let owner) = verdict {
            refuseDuplicate(port, mac: header.source, owner: owner, sink: sink)
            return
        }
        if case .drop(let reason) = verdict, switchRefused(port, header, reason, sink: sink) { return }
        if port.mac == nil {
            port.mac = header.source
            sink.frameEvent(.macLearned(port.id, header.source))
        } else if let refused = port.refusedFor, refused == header.source {
            port.refusedFor = nil
            sink.frameEvent(.macReclaimed(port.id, header.source))
        }
        if verdict != .drop(.invalidSource), securityRefuses(port, frame, now: now, sink: sink) { return }
        if port.learnsMTU, frame.count - EthernetHeader.length > port.mtu { port.mtu = frame.count - EthernetHeader.length }
        learnNeighbor(frame, header)
        switch verdict {
        case .drop(.invalidSource):
            port.drops += 1
            return
        case .drop, .duplicate:
            return
        case .forward, .flood:
            if sink.serveLocally(frame, header, from: port.id) { return }
        }
        switch verdict {
        case .forward(natPort): if !toNAT(frame, from: port, now: now, sink: sink) { port.drops += 1 }
        case .forward(let id) where id == uplinkPort:
            guard mayCross(frame, header) else { port.drops += 1; return }
            toUplinkCut(frame, header, from: port, sink: sink)
        case .forward(let id):
            // isolate=on: a guest's frames go to the NAT only; one aimed at another guest is dropped.
            guard !settings.isolateGuests else { port.drops += 1; return }
            put(frame, to: id, from: port, sink: sink)
        case .flood:
            _ = toNAT(frame, from: port, now: now, sink: sink)
            guard !settings.isolateGuests, !header.destination.isRoutersOnlyGroup else { return }
            switch arpRequestOwner(frame, header) {
            case .nat: return
            case .guest(let id) where id == uplinkPort:
                if mayCross(frame, header) { toUplinkCut(frame, header, from: port, sink: sink) }
            case .guest(let id): if id != port.id { put(frame, to: id, from: port, sink: sink) }
            case .unknown:
                for id in ports.keys where id != port.id { put(frame, to: id, from: port, sink: sink) }
                // Head-end replication to the other hosts, unless it is this host's gateway's business.
                if mayCross(frame, header) { toUplinkCut(frame, header, from: port, sink: sink) }
            }
        case .drop, .duplicate:
            break
        }
    }

    enum ARPTarget { case nat, guest(PortID), unknown }

    /// Who holds the address a broadcast ARP request asks for, when the switch knows: the
    /// request then goes to that holder alone (ARP suppression, as switches with a neighbour
    /// table do), not to every guest. With 1,000 guests on a /22, flooding each request
    /// cost 1,000 tap writes and slowed the loop until the guests' ARP timed out.
    func arpRequestOwner(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) -> ARPTarget {
        guard header.etherType == ARPPacket.etherType, let arp = ARPPacket.parse(frame: frame),
              arp.operation == ARPPacket.request else { return .unknown }
        if security.addresses.reserved.contains(arp.targetIP) { return .nat }
        guard let mac = neighbors[arp.targetIP], let id = bridge.port(of: mac) else { return .unknown }
        return id == natPort ? .nat : .guest(id)
    }

    /// The same, for a frame whose Ethernet header is not parsed yet (too short: ignored).
    public func fromGuest(_ frame: UnsafeRawBufferPointer, from port: PortState, now: Int64, sink: any FramePathSink) {
        guard let header = EthernetHeader(frame) else { return }
        fromGuest(frame, header, from: port, now: now, sink: sink)
    }

    /// A guest using a MAC another port holds: each frame is dropped and counted; the first
    /// refusal for a MAC mutes the guest (or, for a stream guest, tells the owner to close it).
    private func refuseDuplicate(_ port: PortState, mac: MACAddress, owner: PortID, sink: any FramePathSink) {
        port.drops += 1
        guard port.refusedFor != mac else { return }
        if !port.closesOnDuplicateMAC { port.refusedFor = mac }
        sink.frameEvent(.duplicateMAC(port.id, mac, owner: owner))
    }

    /// Whether the switch dropped a guest's frame for port security (counted and reported).
    private func switchRefused(_ port: PortState, _ header: EthernetHeader, _ reason: EthernetSwitch.DropReason,
                               sink: any FramePathSink) -> Bool {
        switch reason {
        case .natMAC: refuse(port, .natMAC, .mac(header.source), owner: natPort, sink: sink)
        case .portMACLimit, .tableFull: refuse(port, .macLimit, .mac(header.source), owner: nil, sink: sink)
        case .invalidSource, .sameSegment: return false
        }
        return true
    }

    /// Whether port security drops this guest frame for the addresses it claims (counted and reported).
    private func securityRefuses(_ port: PortState, _ frame: UnsafeRawBufferPointer, now: Int64, sink: any FramePathSink) -> Bool {
        guard case .drop(let violation, let claim, let owner) = security.inspect(frame: frame, from: port.id, now: now) else { return false }
        refuse(port, violation, claim, owner: owner, sink: sink)
        return true
    }

    /// Hands a guest's frame to libslirp; false when it is dropped instead. libslirp gets
    /// no IPv4 protocol it does not implement (natAcceptsFrame) and no fragment: those are
    /// reassembled here first, as libslirp 4.7's own reassembly crashes on some.
    func toNAT(_ frame: UnsafeRawBufferPointer, from port: PortState, now: Int64, sink: any FramePathSink) -> Bool {
        guard natAcceptsFrame(frame) else { return false }
        guard IPv4Reassembly.isFragment(frame) else { return checkedInput(frame, from: port, now: now, sink: sink) }
        let outcome = reassembly.input(frame, now: now)
        switch outcome {
        case .pass: return checkedInput(frame, from: port, now: now, sink: sink)
        case .held: break
        case .complete(let datagram): return datagram.withUnsafeBytes { checkedInput($0, from: port, now: now, sink: sink) }
        case .dropped(let reason):
            fragmentsDropped += 1
            sink.frameEvent(.fragmentDropped(port.id, reason: reason, count: fragmentsDropped))
            return false
        }
        return true
    }

    /// Hands a guest's whole (reassembled) frame to libslirp once NATIngressCheck has
    /// passed or fixed it and the guest's flow budget admits it; false when it is dropped.
    func checkedInput(_ frame: UnsafeRawBufferPointer, from port: PortState, now: Int64, sink: any FramePathSink) -> Bool {
        let verdict = ingressCheck.inspect(frame)
        switch verdict {
        case .pass:
            guard admitFlow(frame, from: port, now: now, sink: sink) else { return false }
            coalesce(frame, from: port, now: now, sink: sink)
        case .rewritten(let fixed):
            sink.frameEvent(.natIngressRewritten(port.id, count: ingressCheck.rewritten))
            guard fixed.withUnsafeBytes({ admitFlow($0, from: port, now: now, sink: sink) }) else { return false }
            fixed.withUnsafeBytes { coalesce($0, from: port, now: now, sink: sink) }
        case .drop(let reason):
            sink.frameEvent(.natIngressDropped(port.id, reason, count: ingressCheck.dropped[reason.rawValue]))
            return false
        }
        return true
    }

    /// Whether a guest's whole datagram may go to libslirp; a refused new flow is answered
    /// (RST, ICMP unreachable) or dropped, and reported.
    private func admitFlow(_ frame: UnsafeRawBufferPointer, from port: PortState, now: Int64, sink: any FramePathSink) -> Bool {
        let limits = sink.flowLimits
        let verdict = port.flows.admit(frame, now: now, limits: limits) { sink.isShortOfDescriptors(now: now) }
        guard case .refuse(let kind, let shortage, let reply) = verdict else { return true }
        if let reply { sink.send(reply, to: port.id) }
        sink.frameEvent(.flowRefused(port.id, kind, shortage: shortage))
        return false
    }

    /// The last steps toward libslirp for a frame the frame path does not own (it lies in
    /// the guest's read buffer): a TCP segment is copied once into `guestScratch`, where
    /// the TCP stages rewrite it; any other frame goes as it is.
    func toLibslirp(_ frame: UnsafeRawBufferPointer, from port: PortState, now: Int64, sink: any FramePathSink) {
        guard Segment(frame) != nil else {
            // Nothing for the MSS clamp or the TCP stages, which pass it.
            if MSSClamp.isSYN(frame) { synReplay.record(frame) }
            sink.inputToNAT(frame)
            return releaseHeld(sink)
        }
        // Taken out while in use: were the frame path re-entered, it would not share it.
        var copy = guestScratch
        guestScratch = []
        copy.removeAll(keepingCapacity: true)
        copy.append(contentsOf: frame)
        copy.withUnsafeMutableBytes { toLibslirp(owned: $0, from: port, now: now, sink: sink) }
        guestScratch = copy
    }

    /// The last steps toward libslirp for a frame in a buffer the frame path owns (a
    /// coalescer's segment, a cut piece, the scratch copy): the MSS of a handshake raised
    /// (MSSClamp) for a port that takes large segments, then the TCP stages, which rewrite
    /// the frame where it lies.
    func toLibslirp(owned frame: UnsafeMutableRawBufferPointer, from port: PortState, now: Int64, sink: any FramePathSink) {
        let bytes = UnsafeRawBufferPointer(frame)
        if port.learnsMTU, let offered = MSSClamp.mtuOffered(bytes), offered > port.mtu {
            port.mtu = min(offered, MSSClamp.natMTU)
        }
        // Only a port that takes large segments whole gets them: cut for the others, a
        // resent large segment is a burst a small NIC ring drops again (SYNReplay.swift).
        guard port.takesLargeSegments, var clamped = MSSClamp.towardNAT(bytes, portMTU: port.mtu) else {
            return earlyToLibslirp(frame, from: port, now: now, sink: sink)
        }
        clamped.withUnsafeMutableBytes { earlyToLibslirp($0, from: port, now: now, sink: sink) }
    }

    /// TCPEarlyACK translates the guest's ACK and window (or absorbs an ACK that tells
    /// libslirp nothing new) and may ask for resends toward the guest; then the shim. The
    /// segment is parsed, and its flow's key made, once for both.
    private func earlyToLibslirp(_ frame: UnsafeMutableRawBufferPointer, from port: PortState, now: Int64, sink: any FramePathSink) {
        let bytes = UnsafeRawBufferPointer(frame)
        guard var h = Segment(bytes) else {
            if MSSClamp.isSYN(bytes) { synReplay.record(bytes) }
            sink.inputToNAT(bytes)
            return releaseHeld(sink)
        }
        let key = h.key(bytes, guestIsSource: true)
        switch earlyACK.fromGuest(inPlace: frame, h, key, port: port.id, now: now) {
        case .pass: shimToLibslirp(frame, h, key, from: port, now: now, sink: sink)
        case .rewritten:
            h.rereadACK(bytes)
            shimToLibslirp(frame, h, key, from: port, now: now, sink: sink)
        case .absorbed: break
        }
        while let (frame, id) = earlyACK.takeRetransmit() {
            frame.withUnsafeBytes { put($0, to: id, sink: sink) }
        }
    }

    /// Gives libslirp the ACKs TCPEarlyACK owes it for data kept this turn, through the
    /// shim (which unscales the window). Each may let libslirp send more at once, which is
    /// kept and owed in turn: the loop ends when libslirp has nothing more to send or the
    /// windows are full (bounded, in case).
    func sendEarlyACKs(now: Int64, sink: any FramePathSink) {
        var rounds = 0
        while rounds < 1024, let (ack, id) = earlyACK.nextACK() {
            rounds += 1
            guard let port = ports[id] else { continue }
            var frame = ack
            frame.withUnsafeMutableBytes { out in
                let bytes = UnsafeRawBufferPointer(out)
                guard let h = Segment(bytes) else { return sink.inputToNAT(bytes) }
                shimToLibslirp(out, h, h.key(bytes, guestIsSource: true), from: port, now: now, sink: sink)
            }
        }
    }

    /// The TCP window shim passes, rewrites (in place), holds or drops the segment; what
    /// libslirp does not ACK of what it passed the shim keeps (`afterInput`); then whatever
    /// libslirp's ACKs have made room for is released.
    private func shimToLibslirp(_ frame: UnsafeMutableRawBufferPointer, _ h: Segment, _ key: FlowKey, from port: PortState,
                                now: Int64, sink: any FramePathSink) {
        let bytes = UnsafeRawBufferPointer(frame)
        let isSYN = MSSClamp.isSYN(bytes)
        switch tcpShim.fromGuest(inPlace: frame, h, key, port: port.id, now: now) {
        case .pass, .rewritten:
            if isSYN { synReplay.record(bytes) }
            // libslirp's answer re-enters the shim (fromNAT) before this returns; the frame
            // is the frame path's, not the shim's, so nothing it holds is overwritten.
            sink.inputToNAT(bytes)
            tcpShim.afterInput(bytes)
        case .queued, .held, .absorbed:
            break
        case .drop:
            sink.frameEvent(.shimDropped(port.id, count: tcpShim.droppedTotal))
            return
        }
        releaseHeld(sink)
    }

    /// Feeds libslirp the held segments its window now takes, one at a time: each one's
    /// ACK comes back through `fromNAT` during `inputToNAT` and may open the window further.
    public func releaseHeld(_ sink: any FramePathSink) {
        while let frame = tcpShim.nextRelease() {
            frame.withUnsafeBytes { sink.inputToNAT($0) }
        }
    }
}
