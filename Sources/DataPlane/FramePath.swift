import FrameSwitch

// FramePath: every per-frame decision between a network's guests and libslirp.
//
// Theory of operation. A guest frame enters at `fromGuest`, a libslirp frame at `fromNAT`;
// what comes out is a call on the owner's `FramePathSink`: `deliver` to a guest port,
// `inputToNAT`, `serveLocally` for DHCP/DNS, and events the owner counts and logs. The
// frame path owns the network's switching state (MAC table, port security, the ARP/NDP
// neighbour tables, IPv4 reassembly, NATIngressCheck, counters) and each guest's
// `PortState`, and no socket, clock or logger: the time comes in with each frame.
//
// Guest -> NAT, in order (FramePathGuest.swift):
//   1. the switch learns the source MAC: a MAC another port holds is refused (`duplicateMAC`),
//      one past the caps or in the NAT's ranges is a port-security drop;
//   2. the guest's first MAC is recorded; a muted guest whose MAC is free again is unmuted;
//   3. port security checks the addresses the frame claims; the ARP/NDP proxy learns them;
//   4. slirpd's own services may take the frame (`serveLocally`);
//   5. for the NAT: no protocol libslirp lacks, IPv4 fragments reassembled, NATIngressCheck,
//      then the guest's FlowBudget admits it, then libslirp (`toLibslirp`);
//      for a guest: forwarded, or flooded with a copy to the NAT; with isolate=on never
//      to another guest.
// NAT -> guest (FramePathNAT.swift): libslirp's ARP requests and Neighbor Solicitations for
// a guest's address are answered here (queued for libslirp, which cannot be re-entered);
// a unicast frame goes to the port holding its destination address, else the MAC table's
// port, else the port whose own MAC it is, else it is dropped (never flooded); the guest's
// NATConnections and FlowBudget see it, then `toGuest` delivers it. Broadcasts are flooded,
// except that with isolate=on a solicitation for a held address goes to its holder only,
// and a router advertisement goes to each guest rewritten for it (RouterAdvertisement.swift).
//
// Re-entrancy: `sink.inputToNAT` runs libslirp, whose output comes back through `fromNAT`
// before it returns. So no call to the sink is made inside a mutating access to a stored
// struct (the switch, port security, reassembly...): each is asked, its answer kept in a
// local, and only then is the sink called. Frames made while libslirp is busy (proxy
// answers, resets of departed guests' connections) wait in `pendingToNAT` for
// `injectPending`, which the owner calls between libslirp's calls.
//
// The TCP window shim (TCPWindowShim.swift) is the last stage each way: `toLibslirp`, after
// flow admission, and `toGuest`, after the guest's NAT connections and flow budget have seen
// the frame. It sees every TCP segment between a guest and libslirp and nothing else; the
// segments it holds are released by `releaseHeld`, after each guest frame and from
// `injectPending`, once libslirp's ACKs have opened its window.
//
// Toward libslirp both TCP stages rewrite a guest's segment where it lies, in a buffer the
// frame path owns (the coalescer's segment; a frame still in the guest's read buffer is
// copied once into `guestScratch`), parsed once for both: copying each segment out to
// change a few header bytes cost as much as libslirp's own copy of it.
//
// TCPEarlyACK (TCPEarlyACK.swift) wraps the shim on the guest's side: a guest's segment
// meets it before the shim, libslirp's after the shim and before the cut to the port's
// MTU. It keeps libslirp's data for the guest and owes libslirp an ACK for it; those ACKs
// go in (through the shim) from `injectPending`, which also runs its retransmit timers
// (`nextRetransmitDeadline`, wired into the loop like the shim's probes).
public final class FramePath {
    /// What the frame path needs of the network's options.
    public struct Settings: Equatable, Sendable {
        /// isolate=on: a guest's frames reach the NAT and slirpd's services, never another guest.
        public var isolateGuests: Bool
        public var ipv6: Bool
        /// The IPv4 network, for the ARP proxy's table.
        public var network: UInt32
        public var mask: UInt32
        /// What every router advertisement toward a guest carries besides libslirp's options.
        public var routerAdvertisement: RouterAdvertisementOptions

        public init(isolateGuests: Bool, ipv6: Bool, network: UInt32, mask: UInt32,
                    routerAdvertisement: RouterAdvertisementOptions = RouterAdvertisementOptions()) {
            self.isolateGuests = isolateGuests
            self.ipv6 = ipv6
            self.network = network
            self.mask = mask
            self.routerAdvertisement = routerAdvertisement
        }
    }

    public let natPort: PortID
    public var settings: Settings {
        didSet { refreshNATIdentity() }
    }
    /// The attached guest ports, by ID.
    public internal(set) var ports: [PortID: PortState] = [:]
    var bridge: EthernetSwitch
    /// Which port holds which address, and DHCP snooping.
    public var security = PortSecurity(addresses: PortSecurity.Addresses(network: 0, mask: 0, reserved: [], reserved6: []))
    /// Frames port security dropped, per reason, guests that left included.
    public internal(set) var securityDrops: [SecurityViolation: Int] = [:]
    /// Unicast frames from the NAT to a destination nobody holds, dropped instead of flooded.
    public internal(set) var natUnknownUnicastDropped = 0
    /// Which guest MAC holds which IPv4 address, learnt from guests' ARP and IPv4 frames.
    /// libslirp's own ARP table has 16 entries; past that it keeps asking, and the frame
    /// path answers from here instead of flooding every guest and waiting.
    public internal(set) var neighbors: [UInt32: MACAddress] = [:]
    /// The IPv6 twin of `neighbors`, for libslirp's 16-entry NDP table.
    public internal(set) var neighbors6: [IPv6Key: MACAddress] = [:]
    public internal(set) var arpProxied = 0
    public internal(set) var ndpProxied = 0
    /// Guests' IPv4 fragments for libslirp, put back together first.
    public internal(set) var reassembly = IPv4Reassembly()
    public internal(set) var fragmentsDropped = 0
    /// The last check before libslirp: lengths and the urgent pointer.
    public internal(set) var ingressCheck = NATIngressCheck()
    /// Window scaling toward guests over libslirp's 64 KiB TCP window.
    public internal(set) var tcpShim = TCPWindowShim()
    /// libslirp's data acknowledged on the guests' behalf, and resent to them by slirpd.
    public internal(set) var earlyACK = TCPEarlyACK()
    /// Whether the last frame from libslirp was a pure ACK the shim held for the turn's end.
    public internal(set) var natFrameHeld = false
    var heldACKBuffer: [UInt8] = []
    /// Frames for libslirp made while inside one of its callbacks, which must not call it.
    var pendingToNAT: [[UInt8]] = []
    /// Guest SYNs libslirp gets once more when it answers them (SYNReplay.swift says why).
    var synReplay = SYNReplay()
    public var synsReplayed: Int { synReplay.replayed }
    /// Ports whose coalescer holds a segment for libslirp until the end of the loop turn.
    var holdingPorts: Set<PortID> = []
    /// Ports whose merge holds libslirp's segments for them until the end of the loop turn.
    var mergingPorts: Set<PortID> = []
    /// libslirp's segments merged into the one before them toward a guest.
    public internal(set) var mergedTowardGuests = 0
    /// Frames cut for a guest's MTU: TCP segments (software TSO), IP packets (fragments).
    public internal(set) var segmentedFrames = 0
    public internal(set) var fragmentedFrames = 0
    /// Frames too large for a guest's MTU that could not be cut (IPv4 with DF, not IP).
    public internal(set) var oversizedDropped = 0
    /// Guest TCP segments merged into the one before them for libslirp (software GRO).
    public internal(set) var coalescedSegments = 0
    /// Where TCPSegmentation builds the pieces of a cut toward a guest.
    var segmentScratch: [UInt8] = []
    /// Where a guest's TCP segment the frame path does not own is copied for the TCP
    /// stages, which rewrite it in place (`toLibslirp`).
    var guestScratch: [UInt8] = []
    /// The Identification of the next IPv6 Fragment header slirpd adds.
    var fragmentIdentification: UInt32 = 0
    /// The VXLAN uplink's port, when the network has one (FramePathUplink.swift). It is not
    /// in `ports`: libslirp's frames, floods included, never go to it.
    public var uplinkPort: PortID? {
        didSet { bridge.uplinkPort = uplinkPort }
    }
    /// Frames from the uplink dropped, by reason.
    public internal(set) var uplinkDrops: [UplinkDrop: Int] = [:]
    /// Local guests' frames handed to the uplink.
    public internal(set) var uplinkSent = 0
    /// The largest IP packet the uplink carries inside VXLAN: the network's MTU (the
    /// underlay must carry it plus 50 bytes, or 70 over IPv6).
    public var uplinkMTU = 1500

    public init(natPort: PortID, settings: Settings) {
        self.natPort = natPort
        self.settings = settings
        bridge = EthernetSwitch(natPort: natPort)
    }

    /// Tells the switch which 52:55/52:56 MACs are the NAT's, from the network and the
    /// NAT's IPv6 addresses; call after port security's addresses change.
    public func refreshNATIdentity() {
        bridge.natIdentity = EthernetSwitch.NATIdentity(
            network: settings.network, mask: settings.mask,
            suffixes6: Set(security.addresses.reserved6.map { UInt32(truncatingIfNeeded: $0.low) }))
    }

    /// Whether `mac` is one of the NAT's (see `EthernetSwitch.isNATMAC`).
    func isNATMAC(_ mac: MACAddress) -> Bool {
        EthernetSwitch.isNATMAC(mac, identity: bridge.natIdentity)
    }

    /// A network's `max-macs=`: the MACs each guest port may use at once (the switch) and
    /// the DHCP clients it may have (port security).
    public func setMACsPerPort(_ count: Int) {
        bridge.macsPerPort = count
        security.limits.dhcpClientsPerPort = count
    }

    // MARK: Ports

    public func addPort(_ port: PortState) {
        ports[port.id] = port
    }

    /// Caps what the TCP shim offers each flow of `port` beyond libslirp's window.
    public func setShimFlowCap(_ bytes: Int, for port: PortID) {
        tcpShim.setFlowCap(bytes, for: port)
        // What a flow may keep for the guest: its offer plus libslirp's own window.
        earlyACK.setFlowCap(bytes + 65535, for: port)
    }

    /// Forgets a port that has gone: its MACs, its addresses and what the neighbour tables
    /// learnt from them, and its TCP flows. Returns the MACs the switch had learnt on it.
    @discardableResult
    public func removePort(_ id: PortID) -> [MACAddress] {
        ports[id] = nil
        holdingPorts.remove(id)
        tcpShim.removePort(id)
        earlyACK.removePort(id)
        let macs = bridge.removePort(id)
        for key in security.removePort(id) { neighbors6[key] = nil }
        if !macs.isEmpty {
            neighbors = neighbors.filter { !macs.contains($0.value) }
            neighbors6 = neighbors6.filter { !macs.contains($0.value) }
        }
        return macs
    }

    /// Forgets the MACs learnt behind the uplink (it is being replaced or removed).
    @discardableResult
    public func forgetUplink() -> [MACAddress] {
        guard let uplink = uplinkPort else { return [] }
        return bridge.removePort(uplink)
    }

    /// Every 10 s: ages the MAC table, idle IPv6 bindings, unfinished fragments, flows
    /// libslirp has timed out and the TCP shim's idle flows.
    public func housekeeping(now: Int64) {
        bridge.expire(now: now)
        for key in security.expire(now: now) { neighbors6[key] = nil }
        reassembly.expire(now: now)
        for port in ports.values { port.flows.expire(now: now) }
        tcpShim.expire(now: now)
        earlyACK.expire(now: now)
    }

    /// Which port the switch has learnt `mac` on.
    public func port(of mac: MACAddress) -> PortID? { bridge.port(of: mac) }

    // MARK: Frames for libslirp made between its calls

    /// Queues frames for libslirp until `injectPending`.
    public func queueForNAT(_ frames: [[UInt8]]) {
        pendingToNAT += frames
    }

    public var hasPendingForNAT: Bool { !pendingToNAT.isEmpty }

    /// Hands libslirp the segments the coalescers held for the turn's end, the frames made
    /// while it was busy (between its calls, never inside one), and the TCP shim's held
    /// segments its window now takes.
    public func injectPending(now: Int64, _ sink: any FramePathSink) {
        flushCoalesced(now: now, sink: sink)
        while !pendingToNAT.isEmpty {
            let batch = pendingToNAT
            pendingToNAT.removeAll()
            for frame in batch { frame.withUnsafeBytes { sink.inputToNAT($0) } }
        }
        releaseHeld(sink)
        // Held data libslirp's window has not reached for a while: ask libslirp for its window.
        while let probe = tcpShim.nextProbe(now: now) {
            probe.withUnsafeBytes { sink.inputToNAT($0) }
            releaseHeld(sink)
        }
        sendEarlyACKs(now: now, sink: sink)
        runRetransmitTimers(now: now, sink: sink)
        flushMerged(sink)
    }

    /// When `injectPending` has a window probe to send, if ever.
    public var nextProbeDeadline: Int64? { tcpShim.nextProbeDeadline }

    /// When `injectPending` has a retransmission toward a guest to make, if ever.
    public var nextRetransmitDeadline: Int64? { earlyACK.nextDeadline }

    /// Resends toward guests whose retransmit timers fired; resets flows whose guest stopped answering.
    func runRetransmitTimers(now: Int64, sink: any FramePathSink) {
        while let timeout = earlyACK.nextTimeout(now: now) {
            switch timeout {
            case .retransmit(let frame, let id):
                frame.withUnsafeBytes { put($0, to: id, sink: sink) }
            case .reset(let toGuest, let toNAT, let id):
                sink.frameEvent(.earlyACKReset(id, count: earlyACK.flowsReset))
                toGuest.withUnsafeBytes { deliverNow($0, to: id, sink: sink) }
                toNAT.withUnsafeBytes { sink.inputToNAT($0) }
            }
        }
    }

    // MARK: Neighbours (the ARP/NDP proxy's tables)

    /// Records that `mac` holds the IPv4 `address` (from a guest's frame, or a DHCP lease).
    public func learnNeighbor(_ address: UInt32, _ mac: MACAddress) {
        guard address != 0, address & settings.mask == settings.network & settings.mask, neighbors[address] != mac else { return }
        neighbors[address] = mac
    }

    func learnNeighbor(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) {
        let address: UInt32
        if header.etherType == ARPPacket.etherType {
            guard let arp = ARPPacket.parse(frame: frame), arp.senderMAC == header.source else { return }
            address = arp.senderIP
        } else if header.etherType == 0x86DD {
            // Port security has bound the source to this port, within its caps.
            guard settings.ipv6, let source = ipv6Source(frame: frame), neighbors6[source] != header.source else { return }
            neighbors6[source] = header.source
            return
        } else {
            guard let source = ipv4Source(frame: frame) else { return }
            address = source
        }
        learnNeighbor(address, header.source)
    }

    // MARK: Port security

    /// Counts a guest frame port security dropped and reports it.
    public func refuse(_ port: PortState, _ violation: SecurityViolation, _ claim: ClaimedAddress, owner: PortID?,
                       sink: any FramePathSink) {
        port.drops += 1
        port.securityDrops[violation, default: 0] += 1
        securityDrops[violation, default: 0] += 1
        sink.frameEvent(.securityDrop(port.id, violation, claim, owner: owner, count: port.securityDrops[violation, default: 0]))
    }
}
