import FrameSwitch

// FramePath, NAT -> switch -> guest (the rules are in FramePath.swift's theory of operation).

extension FramePath {
    /// Switches one frame libslirp sent (its `send_packet`, possibly from inside `inputToNAT`).
    public func fromNAT(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, now: Int64, sink: any FramePathSink) {
        natFrameHeld = false
        if header.etherType == ARPPacket.etherType, answerForGuest(frame) { return }
        if header.etherType == 0x86DD, header.destination.isGroup, answerSolicitation(frame) { return }
        let verdict = bridge.ingress(from: natPort, source: header.source, destination: header.destination, now: now)
        // Port security: a guest address's frames go to the port holding it, whatever the MAC table says.
        if !header.destination.isGroup, let id = natDestinationPort(frame, header), let port = ports[id] {
            return natUnicast(frame, to: port, now: now, sink: sink)
        }
        switch verdict {
        case .forward(let id):
            if let port = ports[id] { natUnicast(frame, to: port, now: now, sink: sink) }
        case .flood where !header.destination.isGroup:
            // Unknown unicast from the NAT is never flooded: it would show a guest's traffic to the others.
            // A guest silent past the MAC aging time still gets it, on the port whose own MAC it is.
            if let port = ports.values.first(where: { $0.mac == header.destination }) {
                natUnicast(frame, to: port, now: now, sink: sink)
            } else {
                natUnknownUnicastDropped += 1
            }
        case .flood:
            if header.etherType == 0x86DD, RouterAdvertisement.isAdvertisement(frame) {
                return advertise(frame, sink: sink)
            }
            if let id = natSolicitationPort(frame, header) {
                if ports[id] != nil { put(frame, to: id, sink: sink) }
            } else {
                for id in ports.keys { put(frame, to: id, sink: sink) }
            }
        case .duplicate(let owner):
            sink.frameEvent(.natMACTaken(owner: owner, header.source))
        case .drop: break
        }
    }

    /// The same, for a frame whose Ethernet header is not parsed yet (too short: ignored).
    public func fromNAT(_ frame: UnsafeRawBufferPointer, now: Int64, sink: any FramePathSink) {
        guard let header = EthernetHeader(frame) else { return }
        fromNAT(frame, header, now: now, sink: sink)
    }

    /// libslirp's router advertisement, to each guest with that port's MTU and slirpd's
    /// DNS options (RouterAdvertisement.swift says why it is rewritten, not replaced).
    private func advertise(_ frame: UnsafeRawBufferPointer, sink: any FramePathSink) {
        for (id, port) in ports {
            if let rewritten = RouterAdvertisement.rewrite(frame, mtu: port.mtu, options: settings.routerAdvertisement) {
                rewritten.withUnsafeBytes { put($0, to: id, sink: sink) }
            } else {
                put(frame, to: id, sink: sink)
            }
        }
    }

    /// A frame from the NAT for one guest: its connections and flow budget see it first.
    private func natUnicast(_ frame: UnsafeRawBufferPointer, to port: PortState, now: Int64, sink: any FramePathSink) {
        port.natConnections.observe(toGuest: frame)
        port.flows.observe(toGuest: frame, now: now)
        if MSSClamp.isSYN(frame), let syn = synReplay.replay(answeredBy: frame) { pendingToNAT.append(syn) }
        toGuest(frame, port, now: now, sink: sink)
    }

    /// The last steps toward a guest: the MSS of libslirp's handshake lowered to the port's
    /// MTU (MSSClamp); the TCP window shim scales libslirp's window (and adds Window Scale to
    /// its SYN or SYN-ACK); the frame is cut to the port's MTU (`put`).
    private func toGuest(_ frame: UnsafeRawBufferPointer, _ port: PortState, now: Int64, sink: any FramePathSink) {
        guard let clamped = MSSClamp.towardGuest(frame, portMTU: port.mtu) else {
            return shimToGuest(frame, port, now: now, sink: sink)
        }
        clamped.withUnsafeBytes { shimToGuest($0, port, now: now, sink: sink) }
    }

    private func shimToGuest(_ frame: UnsafeRawBufferPointer, _ port: PortState, now: Int64, sink: any FramePathSink) {
        switch tcpShim.fromNAT(frame, port: port.id, now: now) {
        case .rewritten:
            let out = tcpShim.natOutput
            out.withUnsafeBytes { earlyToGuest($0, port, now: now, sink: sink) }
        case .held, .absorbed:
            natFrameHeld = true
            // A pure ACK: TCPEarlyACK learns libslirp's ACK of the guest's data from it.
            _ = earlyACK.fromNAT(frame, port: port.id, now: now)
        case .pass, .queued, .drop:
            earlyToGuest(frame, port, now: now, sink: sink)
        }
    }

    /// TCPEarlyACK keeps a copy of libslirp's data for the guest (and adds Window Scale
    /// where the shim did not); then the frame is cut to the port's MTU (`put`).
    private func earlyToGuest(_ frame: UnsafeRawBufferPointer, _ port: PortState, now: Int64, sink: any FramePathSink) {
        switch earlyACK.fromNAT(frame, port: port.id, now: now) {
        case .pass: putFromNAT(frame, to: port, sink: sink)
        case .rewritten:
            let out = earlyACK.natOutput
            out.withUnsafeBytes { putFromNAT($0, to: port, sink: sink) }
        case .absorbed: natFrameHeld = true
        }
    }

    /// Delivers the pure ACKs the TCP shim held for the end of the loop turn, one per flow.
    public func deliverHeldACKs(_ sink: any FramePathSink) {
        while let id = tcpShim.takeHeldACK(into: &heldACKBuffer) {
            let frame = heldACKBuffer
            frame.withUnsafeBytes { deliverNow($0, to: id, sink: sink) }
        }
    }

    /// Answers libslirp's ARP request for an attached guest's address; true when answered.
    private func answerForGuest(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard let arp = ARPPacket.parse(frame: frame), arp.operation == ARPPacket.request,
              let mac = neighbors[arp.targetIP], bridge.port(of: mac) != nil else { return false }
        pendingToNAT.append(arp.reply(from: mac))
        arpProxied += 1
        return true
    }

    /// Answers libslirp's Neighbor Solicitation for an attached guest's IPv6 address.
    private func answerSolicitation(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard let solicitation = NeighborSolicitation.parse(frame: frame), let mac = neighbors6[solicitation.targetKey],
              bridge.port(of: mac) != nil else { return false }
        pendingToNAT.append(solicitation.advertisement(from: mac))
        ndpProxied += 1
        return true
    }

    /// The guest port that holds the destination address of a unicast frame from the NAT.
    func natDestinationPort(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) -> PortID? {
        switch header.etherType {
        case 0x0800:
            guard frame.count >= 34 else { return nil }
            return security.holder(ofIPv4: read32(frame, 30))
        case 0x86DD:
            guard frame.count >= 54 else { return nil }
            return security.holder(ofIPv6: IPv6Key(frame, at: 38))
        case ARPPacket.etherType:
            return ARPPacket.parse(frame: frame).flatMap { security.holder(ofIPv4: $0.targetIP) }
        default:
            return nil
        }
    }

    /// With isolate=on, the NAT's ARP requests and Neighbor Solicitations for a held
    /// address go to its holder only, not to every guest.
    func natSolicitationPort(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) -> PortID? {
        guard settings.isolateGuests else { return nil }
        if header.etherType == ARPPacket.etherType, let arp = ARPPacket.parse(frame: frame), arp.operation == ARPPacket.request {
            return security.holder(ofIPv4: arp.targetIP)
        }
        if header.etherType == 0x86DD, let solicitation = NeighborSolicitation.parse(frame: frame) {
            return security.holder(ofIPv6: solicitation.targetKey)
        }
        return nil
    }
}
