import DaemonConfig
import DataPlane
import FrameSwitch
import Logging
import NetOptions
import NetServices
import PosixIO
import SlirpAPI
import SlirpKit
import VhostUser

/// One virtual network: a libslirp instance, a switch, its endpoints and guests.
///
/// Theory of operation: `Network` owns the endpoints (sockets, output queues, flushing),
/// libslirp, slirpd's own services (DHCP, DNS: they need sockets) and the control plane;
/// every per-frame decision is DataPlane's `FramePath`, which holds no socket. A frame
/// read from a guest is counted, shown to captures and handed to `framePath.fromGuest`;
/// libslirp's output arrives through the stack's `onOutput` (while the loop is inside a
/// libslirp call), is handed to `framePath.fromNAT` and shown to captures as the guest
/// gets it (after the TCP window shim's rewrite). The frame path
/// answers through `FramePathSink` (NetworkFramePath.swift): `deliver` only enqueues,
/// `inputToNAT` calls libslirp, `serveLocally` asks DHCP/DNS, and its events are counted
/// and logged here, paced. Closing a port is deferred to the end of the iteration.
///
/// Guests are untrusted, so each stage contains them (README, "Guests that share a
/// network"): the switch caps MACs per port and port security checks every frame's
/// addresses (NetworkSecurity.swift); a frame for the NAT is reassembled, checked for
/// lengths libslirp would misread and admitted by the guest's flow budget
/// (NetworkBudget.swift) before the TCP window shim and libslirp; libslirp's frames go only to the port
/// holding their destination address, and its budget sees them on the way (FramePath.swift).
final class Network {
    static let natPort = PortID(0)

    /// Replaced by a reload that changes only forwards.
    var config: NetworkConfig
    let stack: SlirpStack
    let log: Logger
    private(set) var listeners: [StreamListener] = []
    private(set) var datagrams: [DatagramEndpoint] = []
    private(set) var ports: [PortID: GuestPort] = [:]
    /// The per-frame decisions: switch, port security, neighbour proxy, reassembly,
    /// NATIngressCheck, flow budgets (DataPlane).
    let framePath: FramePath
    private var nextPortID: UInt32 = 1
    /// Stream guests with queued output; flushed once per loop iteration.
    private var flushList: [GuestPort] = []
    private var closing: [GuestPort] = []
    /// One receive buffer for every tap: a tap read is one whole frame, switched before the
    /// next read, so taps need not hold 64 KiB each.
    private var tapReceived: ByteBuffer?
    private var sharedTapBuffer: ByteBuffer {
        if let tapReceived { return tapReceived }
        let buffer = ByteBuffer(capacity: TapOffload.receiveCapacity, initial: GuestPort.initialBuffer)
        tapReceived = buffer
        return buffer
    }

    // Control-plane state (NetworkControl.swift).
    var forwards: [ForwardEntry] = []
    var guestForwardRules: [GuestForward] = []
    var leases: [MACAddress: Lease] = [:]
    var leaseSequence = 0
    /// Counters of guests that have left, so network totals never go backwards.
    var closedCounters = Counters()
    var onEvent: ((Event) -> Void)?
    var captures: [Int: CaptureSink] = [:]
    var nextCaptureID = 0
    /// Set while a frame from libslirp is switched with a capture running: its first delivery is captured.
    var capturingNATFrame = false
    var capturingHeldACKs = false

    /// Guests that left with NAT connections open, oldest first (see `resetDepartedConnections`).
    private var departed: [DepartedGuest] = []
    /// NAT connections reset in libslirp for guests that left for good.
    private(set) var natConnectionsReset = 0
    /// vhost-user connections closed for a protocol error, a bad ring or a failed mapping.
    var vhostUserCloses: [VhostUserError.Kind: Int] = [:]
    /// vhost-user guests with frames waiting for RX buffers, and when to look at their rings
    /// again without a kick (`VhostUserLink.rxRetryInterval`).
    var vhostRXWaiting: [GuestPort] = []
    var vhostRXRetryAt: Int64?
    /// Frame bytes moved either way in the current loop turn (`takeTurnBytes`).
    private var turnBytes = 0
    /// The frame path's clock: when the loop woke for this turn (`startTurn`).
    /// A clock read per frame was 3% of slirpd's user time in a bulk transfer; what the
    /// frame path times (RTTs against a 200 ms floor, idle flows, MAC ageing) does not
    /// notice the turn's own length.
    private var frameClock = monotonicNanoseconds()
    /// Peers kept out by guest-uids/guest-gids.
    private(set) var refusedGuests = 0
    /// Datagrams from new peers dropped for want of a descriptor to answer them with.
    private var datagramsWithoutDescriptor = 0
    /// Guests' flow budgets: the daemon's reserve and refusal counts (NetworkBudget.swift).
    var flowAccounting = FlowAccounting()

    // Own services (NetworkServices.swift).
    /// Where the lease file and the DNS-over-TCP socket live; nil: no lease file, UDP DNS only.
    let stateDirectory: String?
    var dhcp: DHCPServer?
    var dns: DNSService?
    var dnsOverTCP = false
    /// `tftp=`'s server (TFTPService.swift); nil without `tftp=`.
    var tftp: TFTPServer?
    var tftpAbandoned = 0
    var leasesDirty = false
    var leasesSavedAt: Int64 = 0
    var poolFullCount = 0
    /// Static leases added through the API, kept apart from the configured ones so a
    /// reload does not drop them.
    var apiStaticLeases: [StaticLease] = []
    /// Forwards added through the API, as requested, for the run-time state file (RuntimeState.swift).
    var apiForwards: [ForwardRequest] = []
    var apiGuestForwards: [String] = []
    var restoringRuntimeState = false
    /// QEMU server sockets this network dials (Dialing.swift).
    var dialTargets: [DialTarget] = []
    /// The VXLAN uplink to other hosts (VXLANUplink.swift), with `--vxlan`/`vxlan =`.
    var uplink: VXLANUplink?

    private let relayCommand: (String, UInt16) throws(SlirpError) -> String

    init(config: NetworkConfig, stateDirectory: String?, inherited: InheritedEndpoints,
         relayCommand: @escaping (String, UInt16) throws(SlirpError) -> String) throws(DaemonError) {
        self.config = config
        self.stateDirectory = stateDirectory
        var log = Logger(label: "slirpd")
        log[metadataKey: "network"] = "\(config.name)"
        self.log = log
        framePath = FramePath(natPort: Network.natPort, settings: Self.framePathSettings(config.options))
        framePath.setMACsPerPort(config.options.maxMACs)
        do {
            stack = try SlirpStack(options: config.options, mtu: MSSClamp.natMTU, ownServices: true)
            self.relayCommand = relayCommand
            for rule in config.options.hostForwards {
                try stack.addHostForward(rule)
                forwards.append(ForwardEntry(rule: rule, hostAddress6: nil, guestAddress6: nil, selector: .address(rule.guestAddress), installed: rule))
            }
            for rule in config.options.guestForwards {
                try installGuestForward(rule)
                guestForwardRules.append(rule)
            }
        } catch {
            throw DaemonError(error.message)
        }
        stack.onOutput = { [unowned self] frame in self.fromNAT(frame) }
        stack.onGuestError = { [log] message in log.warning("libslirp reports guest misbehaviour: \(message)") }
        if config.guestAccess.isRestricted, let tcp = config.endpoints.first(where: \.isTCP) {
            stack.close()
            throw DaemonError("network \(config.name): guest-uids and guest-gids check Unix socket peers, and \(tcp) is TCP, whose peers have no credentials; remove one or the other")
        }
        do {
            for spec in config.endpoints {
                switch spec {
                case .tap(let name): try attachTap(name)
                case .connect(let path): dialTargets.append(DialTarget(path: path, fromAPI: false))
                case .stream, .tcp, .vhostUser:
                    listeners.append(try StreamListener(spec: spec, mode: config.socketMode, group: config.socketGroup,
                                                        inherited: inherited.descriptor(for: spec)))
                case .dgram(let path):
                    datagrams.append(try DatagramEndpoint(path: path, mode: config.socketMode, group: config.socketGroup,
                                                          inherited: inherited.descriptor(for: spec)))
                }
            }
        } catch {
            closeEndpoints()
            for port in ports.values { port.socket.close() }
            let failed = config.endpoints[listeners.count + datagrams.count + ports.count + dialTargets.count]
            throw DaemonError("cannot \(failed.isTap ? "open" : "listen on") \(failed): \(error)")
        }
        if let vxlan = config.vxlan {
            do {
                let uplink = try VXLANUplink(options: vxlan, port: allocatePortID())
                self.uplink = uplink
                framePath.uplinkPort = uplink.port
                framePath.uplinkMTU = config.effectiveMTU
                log.info("VXLAN uplink: \(vxlan.summary)")
            } catch {
                closeEndpoints()
                for port in ports.values { port.socket.close() }
                stack.close()
                throw DaemonError("cannot bind the VXLAN uplink on \(vxlan.local): \(error)")
            }
        }
        refreshSecurityAddresses()
        startServices()
        restoreRuntimeState()
    }

    /// A tap device is one guest port from the start: whatever sits behind it is the guest.
    private func attachTap(_ name: String) throws(IOError) {
        // The MTU behind the tap is the network's: a tap's reads (64 KiB GSO frames) say
        // nothing about it, so it is not learnt (PortState.learnsMTU).
        let (socket, offload) = try TapOffload.open(name: name, mtu: config.effectiveMTU)
        let port = GuestPort(id: allocatePortID(), transport: .tap, peer: "tap \(name)", endpointName: "tap:\(name)",
                             kind: .tap(name: name, received: sharedTapBuffer, offload: offload),
                             socket: socket, now: monotonicNanoseconds())
        offload.onRefused = { [unowned port, log] count in
            port.drops += 1
            if isLoggedOccurrence(count) {
                log.warning("\(port.label): the kernel refused a frame and its virtio-net header as invalid; dropped (\(count) so far)")
            }
        }
        admit(port, on: "tap:\(name)")
        log.info("tap \(name): \(offload.summary)")
        // With the kernel's TSO the tap takes large TCP segments and cuts them itself; its
        // queue of 1,000 frames then holds far more than the shim offers a flow.
        port.state.takesLargeSegments = offload.segmentsTCP
        if !offload.segmentsTCP {
            framePath.setShimFlowCap(Network.tapShimFlowCap(mtu: config.effectiveMTU), for: port.id)
        }
    }

    /// What the TCP shim may offer a flow behind a tap beyond libslirp's window. The tap's
    /// queue (1,000 frames by default) holds what the guest sent and slirpd has not read,
    /// and drops the rest: a 4 MiB offer let a namespace overrun it, and its TCP (libslirp
    /// has no SACK) fell to 0.4x with thousands of retransmissions. 256 frames leave room
    /// for a few flows at once; at MTU 65520 the shim's own 4 MiB cap applies.
    static func tapShimFlowCap(mtu: Int) -> Int {
        max(0, 256 * (mtu - 40) - 65535)
    }

    /// Hands a guest forward to libslirp. The address is resolved (empty means .4) so that
    /// its duplicate check sees the address libslirp uses.
    func installGuestForward(_ rule: GuestForward) throws(SlirpError) {
        let address = rule.resolvedAddress(in: config.options)
        switch rule.target {
        case .command(let command):
            try stack.addGuestExec(address: address, port: rule.port, command: command, rule: rule.rule)
        case .unix(let path):
            try stack.addGuestUnix(address: address, port: rule.port, path: path, rule: rule.rule)
        case .tcp(let host, let port):
            try stack.addGuestExec(address: address, port: rule.port, command: relayCommand(host, port), rule: rule.rule)
        }
    }

    // MARK: Poll set

    enum Source {
        case listener(StreamListener)
        case datagram(DatagramEndpoint)
        case guest(GuestPort)
        /// A vhost-user guest's kick eventfd for queue 0 (RX) or 1 (TX).
        case vhostKick(GuestPort, VhostUserLink, Int)
        case dnsUpstream
        case dnsListener
        case dnsConnection(DNSConnection)
        case uplink(VXLANUplink)
        case uplinkGroup(VXLANUplink)
    }

    func addPollDescriptors(to set: inout PollSet, sources: inout [Source], now: Int64) {
        for l in listeners where l.pausedUntil <= now {
            set.watch(l.socket, .input)
            sources.append(.listener(l))
        }
        for d in datagrams {
            set.watch(d.socket, .input)
            sources.append(.datagram(d))
        }
        if let uplink {
            set.watch(uplink.socket, .input)
            sources.append(.uplink(uplink))
            if let group = uplink.groupSocket {
                set.watch(group, .input)
                sources.append(.uplinkGroup(uplink))
            }
        }
        for port in ports.values where port.closeReason == nil {
            if let link = port.vhostUser {
                // Messages on the socket; TX kicks always; RX kicks only while frames wait for buffers.
                set.watch(port.socket, .input)
                sources.append(.guest(port))
                for (index, queue) in link.device.queues.enumerated() where queue.isActive {
                    guard let kick = queue.kick, index == VhostUserDevice.txQueue || !port.queued.isEmpty else { continue }
                    set.add(kick, .input)
                    sources.append(.vhostKick(port, link, index))
                }
                continue
            }
            // A datagram guest's own socket only sends: poll it only while frames wait.
            let events: PollEvents = port.readsOwnDescriptor ? .input : []
            let wanted = port.queued.isEmpty ? events : events.union(.output)
            guard !wanted.isEmpty else { continue }
            set.watch(port.socket, wanted)
            sources.append(.guest(port))
        }
        guard let dns else { return }
        if let socket = dns.upstreamSocket {
            set.watch(socket, .input)
            sources.append(.dnsUpstream)
        }
        for listener in [dns.listener, dns.listener6] {
            guard let listener else { continue }
            set.watch(listener, .input)
            sources.append(.dnsListener)
        }
        for connection in dns.connections {
            set.watch(connection.socket, connection.output.isEmpty ? .input : [.input, .output])
            sources.append(.dnsConnection(connection))
        }
    }

    /// The loop woke at `now`: the frame path's clock for this turn.
    func startTurn(now: Int64) {
        frameClock = now
    }

    func handle(_ source: Source, events: PollEvents, now: Int64) {
        switch source {
        case .listener(let l): acceptAll(l, now: now)
        case .datagram(let d): receiveAll(d, now: now)
        case .vhostKick(let port, let link, let queue): vhostKicked(port, link, queue: queue)
        case .guest(let port):
            if events.contains(.output) { flush(port) }
            if port.readsOwnDescriptor, !events.isDisjoint(with: [.input, .hangup, .error]) { readAll(port) }
        case .dnsUpstream: dns?.receiveUpstream()
        case .dnsListener: dns?.acceptConnections()
        case .dnsConnection(let connection): dns?.service(connection, events: events, now: now)
        case .uplink(let uplink): receiveUplink(uplink, now: now)
        case .uplinkGroup(let uplink): receiveUplink(uplink, fromGroup: true, now: now)
        }
    }

    /// Work due by time rather than by a descriptor: DNS timeouts, the lease file.
    func runTimers(now: Int64) {
        dialDue(now: now)
        resetDepartedConnections(now: now)
        dns?.expire(now: now)
        dns?.reapConnections()
        runTFTPTimers(now: now)
        if let at = vhostRXRetryAt, now >= at { retryVhostRX(now: now) }
        saveLeases()
    }

    /// Offers waiting frames to the rings of the guests in `vhostRXWaiting` whose retry is
    /// due (flushVhost sets the next one, or clears it when nothing waits any more); keeps
    /// those that still wait.
    private func retryVhostRX(now: Int64) {
        for port in vhostRXWaiting where port.closeReason == nil {
            if let at = port.vhostUser?.rxRetryAt, at <= now { flush(port) }
        }
        vhostRXWaiting.removeAll { port in
            guard let link = port.vhostUser else { return true }
            guard port.closeReason == nil, link.rxRetryAt != nil else {
                link.rxWaiting = false
                return true
            }
            return false
        }
        vhostRXRetryAt = vhostRXWaiting.lazy.compactMap { $0.vhostUser?.rxRetryAt }.min()
    }

    /// The earliest time `runTimers` has something to do.
    var nextServiceDeadline: Int64? {
        // Asked every loop turn: no array of candidates, just the running minimum.
        var earliest: Int64?
        func consider(_ d: Int64?) {
            if let d, d < (earliest ?? .max) { earliest = d }
        }
        consider(dns?.nextDeadline)
        consider(tftp?.nextDeadline)
        consider(leasesDirty ? leasesSavedAt + 1_000_000_000 : nil)
        consider(nextDialAttempt)
        consider(departed.first?.resetAt)
        consider(framePath.nextProbeDeadline)
        consider(framePath.nextRetransmitDeadline)
        consider(vhostRXRetryAt)
        return earliest
    }

    // MARK: Stream guests

    private func acceptAll(_ listener: StreamListener, now: Int64) {
        while true {
            // Guests stop short of the descriptor limit: the rest are for the NAT's own
            // connections and the control API, whose HTTP server spins when accept() fails
            // for want of descriptors. The guest waits in the backlog meanwhile.
            if let shortage = descriptorShortage() {
                pause(listener, now: now, shortage)
                return
            }
            let accepted: (Descriptor, String)
            do {
                guard case .done(let a) = try listener.socket.accept() else { return }
                accepted = a
            } catch {
                // EMFILE and friends: the socket stays readable, so polling it again at once
                // would spin. The guest waits in the backlog while the listener rests.
                pause(listener, now: now, "\(error)")
                return
            }
            listener.failedAccepts = 0
            let (socket, peer) = accepted
            if listener.transport == .tcp { socket.setNoDelay() }
            if config.guestAccess.isRestricted {
                let cred = socket.peerCredentials()
                guard let cred, config.guestAccess.admits(uid: cred.uid, groups: [cred.gid] + cred.groups, ownUID: currentUserID()) else {
                    socket.close()
                    refuseGuest(on: "\(listener.spec)", who: cred.map { "pid \($0.pid) uid \($0.uid) gid \($0.gid)" } ?? "a peer without credentials")
                    continue
                }
            }
            let kind: GuestPort.Kind = listener.transport == .vhostUser
                ? .vhostUser(VhostUserLink()) : .stream(received: GuestPort.receiveBuffer())
            let port = GuestPort(id: allocatePortID(), transport: listener.transport, peer: peer, endpointName: "\(listener.spec)",
                                 kind: kind, socket: socket, now: now)
            admit(port, on: "\(listener.spec)")
        }
    }

    /// Rests a listener that cannot take a guest now. Every retry is logged at debug; the
    /// 1st, 2nd, 4th... of a streak as errors, so a long shortage does not flood the log.
    private func pause(_ listener: StreamListener, now: Int64, _ reason: String) {
        listener.pausedUntil = now + StreamListener.pauseAfterError
        listener.failedAccepts += 1
        let level: Logger.Level = isLoggedOccurrence(listener.failedAccepts) ? .error : .debug
        log.log(level: level, "cannot accept a guest on \(listener.spec): \(reason); retrying in \(StreamListener.pauseAfterError / 1_000_000) ms (\(listener.failedAccepts) in a row)")
    }

    /// Reads until the socket is drained, switching each complete frame.
    private func readAll(_ port: GuestPort) {
        if case .tap(let name, let received, let offload) = port.kind { return readTap(port, name, received, offload) }
        if let link = port.vhostUser { return readVhostMessages(port, link) }
        guard case .stream(let received) = port.kind else { return }
        while port.closeReason == nil {
            let result: IOResult<Int>
            do {
                result = try port.socket.read(into: received)
            } catch {
                port.close("read failed: \(error)")
                break
            }
            guard case .done(let n) = result else { return }
            if n == 0 {
                port.close(received.isEmpty ? "disconnected" : "disconnected in the middle of a frame")
                break
            }
            scanFrames(port, received)
            // A stream has no message bounds, so a read that left free space emptied the
            // socket: poll says when more comes, and the read that would fail with EAGAIN is saved.
            if !received.lastReadFilled { break }
        }
        scheduleClose(port)
    }

    /// A tap gives one frame per read; it has no connection to reset, so bad frames are dropped.
    /// Behind a virtio-net header a frame may be a 64 KiB TCP segment (it goes on whole:
    /// libslirp takes it) or a UDP super-frame (cut into its datagrams here).
    private func readTap(_ port: GuestPort, _ name: String, _ received: ByteBuffer, _ offload: TapOffload) {
        while port.closeReason == nil {
            let result: IOResult<Int>
            do {
                result = try port.socket.readFrame(into: received)
            } catch {
                port.close("tap \(name) failed: \(error)")
                break
            }
            guard case .done(let n) = result, n > 0 else { return }
            let bytes = received.mutableReadable
            switch offload.read(bytes) {
            case .frame(let range):
                guard range.count >= StreamFraming.minimumFrame else {
                    port.drops += 1
                    continue
                }
                fromGuest(port, UnsafeRawBufferPointer(rebasing: bytes[range]))
            case .udpSegments(let range, let header):
                header.udpSegments(UnsafeRawBufferPointer(rebasing: bytes[range])) { fromGuest(port, $0) }
            case .malformed(let why):
                port.drops += 1
                let count = offload.malformedTotal
                if isLoggedOccurrence(count) {
                    log.warning("\(port.label): dropped a frame whose virtio-net header is malformed (\(why?.rawValue ?? "unreadable header")), \(count) so far")
                }
            }
        }
        scheduleClose(port)
    }

    private func scanFrames(_ port: GuestPort, _ received: ByteBuffer) {
        while port.closeReason == nil {
            let bytes = received.readable
            switch StreamFraming.scan(bytes) {
            case .needMore:
                return
            case .badLength(let length):
                port.close("bad frame length \(length) from guest (valid: \(StreamFraming.minimumFrame)-\(StreamFraming.maximumFrame)); resetting its connection")
                return
            case .frame(let length):
                let frame = UnsafeRawBufferPointer(rebasing: bytes[StreamFraming.prefixLength..<(StreamFraming.prefixLength + length)])
                fromGuest(port, frame)
                received.consume(StreamFraming.prefixLength + length)
            }
        }
    }

    /// Writes queued frames until the queue is empty or the guest's socket is full.
    private func flush(_ port: GuestPort) {
        guard port.closeReason == nil else { return }
        if let link = port.vhostUser {
            flushVhost(port, link)
            return scheduleClose(port)
        }
        while !port.queued.isEmpty {
            do {
                let result = if port.isStream { try port.socket.write(from: port.queued) }
                    else if let tap = port.tapOffload { try tap.writeFrames(from: port.queued, to: port.socket) }
                    else { try port.socket.writeFrames(from: port.queued) }
                guard case .done = result else { return }
            } catch {
                writeFailed(port, error, unqueued: 0)
                break
            }
        }
        scheduleClose(port)
    }

    /// `unqueued`: frames that failed outside the queue (a direct write), counted if dropped.
    private func writeFailed(_ port: GuestPort, _ error: IOError, unqueued: Int) {
        if !port.isStream, error.peerIsGone {
            port.closeAsGone()
        } else if error.interfaceDown {
            // A tap whose interface is down refuses frames until it is up: drop them.
            port.drops += unqueued + port.queued.removeAllFrames()
        } else {
            port.close("write failed: \(error)")
        }
    }

    /// Writes every queue that gained frames this iteration.
    func flushPending() {
        for port in flushList {
            port.inFlushList = false
            flush(port)
        }
        flushList.removeAll(keepingCapacity: true)
    }

    // MARK: Datagram guests

    private func receiveAll(_ endpoint: DatagramEndpoint, now: Int64) {
        while true {
            let sender: UnixAddress
            do {
                guard case .done(let s) = try endpoint.socket.receiveDatagram(into: endpoint.received) else { return }
                sender = s
            } catch {
                log.error("receiving on \(endpoint.spec) failed: \(error)")
                return
            }
            let frame = endpoint.received.readable
            if endpoint.received.truncatedBy > 0 || frame.count < StreamFraming.minimumFrame {
                // No connection to reset: drop it, and log the 1st, 2nd, 4th, 8th... so a flood cannot flood the log.
                endpoint.badDatagrams += 1
                if isLoggedOccurrence(endpoint.badDatagrams) {
                    log.warning("bad datagram of \(frame.count + endpoint.received.truncatedBy) bytes from \(sender) on \(endpoint.spec) (valid: \(StreamFraming.minimumFrame)-\(StreamFraming.maximumFrame)); dropped (\(endpoint.badDatagrams) so far)")
                }
                continue
            }
            guard let port = datagramPort(endpoint, sender, now: now) else { continue }
            fromGuest(port, frame)
            scheduleClose(port)
        }
    }

    private func datagramPort(_ endpoint: DatagramEndpoint, _ sender: UnixAddress, now: Int64) -> GuestPort? {
        if let port = endpoint.peers[sender] { return port }
        guard sender.isNamed else {
            log.warning("dropping a datagram from an unnamed socket on \(endpoint.spec): replies need the sender's local.path")
            return nil
        }
        if config.guestAccess.isRestricted {
            let owner = fileOwner(sender.path)
            guard let owner, config.guestAccess.admits(uid: owner.uid, groups: [owner.gid], ownUID: currentUserID()) else {
                refuseGuest(on: "\(endpoint.spec)", who: owner.map { "\(sender.path) (owner uid \($0.uid) gid \($0.gid))" } ?? "\(sender.path) (owner unknown)")
                return nil
            }
        }
        if let shortage = descriptorShortage() {
            // Logged the 1st, 2nd, 4th... time: a flood of new senders must not flood the log.
            datagramsWithoutDescriptor += 1
            if isLoggedOccurrence(datagramsWithoutDescriptor) {
                log.error("dropping a datagram from new guest \(sender) on \(endpoint.spec): \(shortage) (\(datagramsWithoutDescriptor) dropped so far)")
            }
            return nil
        }
        guard endpoint.peers.count < DatagramEndpoint.maximumPeers else {
            log.warning("dropping a datagram from \(sender): \(endpoint.spec) already has \(DatagramEndpoint.maximumPeers) peers")
            return nil
        }
        let socket: Descriptor
        do {
            socket = try connectUnix(to: sender, kind: .datagram)
            socket.setBufferSizes(send: 1 << 20, receive: 4096)
        } catch {
            log.warning("dropping a datagram from \(sender) on \(endpoint.spec): cannot answer it: \(error)")
            return nil
        }
        let port = GuestPort(id: allocatePortID(), transport: .dgram, peer: sender.path, endpointName: "\(endpoint.spec)",
                             kind: .datagram(endpoint: endpoint, peer: sender), socket: socket, now: now)
        endpoint.peers[sender] = port
        admit(port, on: "\(endpoint.spec)")
        return port
    }

    // MARK: Switching

    /// Counts a frame handed to a guest (written, or queued for writing).
    private func countSent(_ frame: UnsafeRawBufferPointer, to port: GuestPort) {
        port.countSent(frame)
        turnBytes += frame.count
    }

    /// Frame bytes moved either way since the last call (what the loop's busy polling weighs).
    func takeTurnBytes() -> Int {
        defer { turnBytes = 0 }
        return turnBytes
    }

    func fromGuest(_ port: GuestPort, _ frame: UnsafeRawBufferPointer) {
        guard let header = EthernetHeader(frame) else { return }
        port.rxFrames += 1
        port.rxBytes += frame.count
        turnBytes += frame.count
        if !captures.isEmpty { capture(frame, header) }
        if let tcp6 = dns?.tcp6, let redirected = tcp6.towardNAT(frame) {  // DNSOverTCP6.swift
            return redirected.withUnsafeBytes { framePath.fromGuest($0, header, from: port.state, now: frameClock, sink: self) }
        }
        framePath.fromGuest(frame, header, from: port.state, now: frameClock, sink: self)
    }

    /// A capture records libslirp's frame as the guest gets it, after the TCP shim's rewrite
    /// (the first delivery of it, see `deliver(_:to:)`), or as libslirp sent it when no
    /// guest gets it.
    private func fromNAT(_ frame: UnsafeRawBufferPointer) {
        guard let header = EthernetHeader(frame) else { return }
        if let tcp6 = dns?.tcp6, let restored = tcp6.towardGuest(frame) {  // DNSOverTCP6.swift
            return restored.withUnsafeBytes { fromNAT($0) }
        }
        guard !captures.isEmpty else { return framePath.fromNAT(frame, header, now: frameClock, sink: self) }
        capturingNATFrame = true
        framePath.fromNAT(frame, header, now: frameClock, sink: self)
        if capturingNATFrame, !framePath.natFrameHeld { capture(frame, header) }
        capturingNATFrame = false
    }

    /// Hands libslirp the frames made while it was busy (between its calls, never inside one);
    /// then, libslirp being done for the loop turn, delivers the pure ACKs the TCP shim held
    /// (one per flow), each captured as delivered.
    func injectPending() {
        framePath.injectPending(now: frameClock, self)
        capturingHeldACKs = !captures.isEmpty
        framePath.deliverHeldACKs(self)
        capturingHeldACKs = false
    }

    /// Descriptors new guests may not take (see acceptAll).
    static let descriptorReserve = 16

    /// Why a new guest cannot have a descriptor now, or nil when it can.
    private func descriptorShortage() -> String? {
        guard let usage = descriptorUsage(), usage.open + Network.descriptorReserve >= usage.limit else { return nil }
        return "\(usage.open) of \(usage.limit) descriptors in use and \(Network.descriptorReserve) kept for the NAT and the control API"
    }

    /// Frames at least this large go to a tap or datagram guest at once when nothing is queued.
    static let directWriteMinimum = 16 * 1024

    /// Sends a frame to a guest, or queues it for the end of the iteration.
    ///
    /// Frames are normally queued, and the queue is written once libslirp is done for this
    /// iteration: a burst of frames then reaches the guest's kernel together, which
    /// measured 15-20% faster than writing each as libslirp makes it (namespace behind a
    /// tap, MTU 1500, host to guest). Jumbo frames are the exception on transports that
    /// take one frame per write (tap, datagram): there the transfer is bound by libslirp's
    /// 64 KiB window, not per-frame costs, so writing at once saves a 64 KiB copy and a
    /// slice of round trip (about 10% faster at MTU 65520).
    func deliver(_ frame: UnsafeRawBufferPointer, to port: GuestPort) {
        guard port.closeReason == nil, port.refusedFor == nil else { return }
        if let link = port.vhostUser, port.queued.isEmpty, case let outcome = vhostDeliver(frame, to: port, link), outcome != .wait {
            // Written into the guest's buffers (or dropped as too large); its interrupt goes
            // out with the flush list, once per loop turn.
            if outcome == .written { countSent(frame, to: port) }
            if !port.inFlushList {
                port.inFlushList = true
                flushList.append(port)
            }
            return scheduleClose(port)
        }
        if frame.count >= Network.directWriteMinimum, port.queued.isEmpty, !port.isStream, port.vhostUser == nil {
            do {
                let result = if let tap = port.tapOffload { try tap.write(frame, to: port.socket) } else { try port.socket.writeFrame(frame) }
                if case .done = result { return countSent(frame, to: port) }
            } catch {
                writeFailed(port, error, unqueued: 1)
                scheduleClose(port)
                return
            }
        }
        guard port.queued.appendFrame(frame) else {
            port.drops += 1
            return
        }
        if !port.inFlushList {
            port.inFlushList = true
            flushList.append(port)
        }
        countSent(frame, to: port)
    }

    // MARK: Lifecycle

    /// Logs a peer that guest-uids/guest-gids keep out: the 1st, 2nd, 4th, 8th... time,
    /// so a local user retrying in a loop cannot flood the log.
    private func refuseGuest(on endpoint: String, who: String) {
        refusedGuests += 1
        guard isLoggedOccurrence(refusedGuests) else { return }
        log.warning("refusing a guest on \(endpoint): \(who) is not in guest-uids or guest-gids (\(refusedGuests) refused so far)")
    }

    /// Adds a new guest port, logging where it came in.
    func admit(_ port: GuestPort, on endpoint: String) {
        port.flows = FlowBudget(dnsAddress: config.options.ipv4 ? config.options.dns.value : nil)
        port.state.mtu = config.effectiveMTU
        // A tap's reads and a vhost-user guest's TX chains are 64 KiB GSO frames: not its MTU.
        port.state.learnsMTU = port.transport != .tap && port.transport != .vhostUser
        ports[port.id] = port
        framePath.addPort(port.state)
        log.info("\(port.label) attached on \(endpoint)")
        emit(.guestAttached, guest: port, detail: endpoint)
    }

    func allocatePortID() -> PortID {
        defer { nextPortID &+= 1 }
        if nextPortID == 0 { nextPortID = 1 }
        return PortID(nextPortID)
    }

    func scheduleClose(_ port: GuestPort) {
        guard port.closeReason != nil, ports[port.id] === port else { return }
        if !closing.contains(where: { $0 === port }) { closing.append(port) }
    }

    /// Removes the ports closed during this iteration.
    func reapClosed() {
        for port in closing {
            guard let reason = port.closeReason, ports.removeValue(forKey: port.id) != nil else { continue }
            let macs = framePath.removePort(port.id)
            dhcp?.removePort(port.id)
            port.socket.close()
            port.vhostUser?.close()
            if case .datagram(let endpoint, let peer) = port.kind { endpoint.peers[peer] = nil }
            let now = monotonicNanoseconds()
            dialledPortClosed(port, now: now)
            if !port.natConnections.isEmpty {
                departed.append(DepartedGuest(label: port.label, connections: port.natConnections, resetAt: now + Network.returnGrace))
            }
            let stats = "rx \(port.rxFrames) frames/\(port.rxBytes) B, tx \(port.txFrames) frames/\(port.txBytes) B, dropped \(port.drops)"
            closedCounters = closedCounters + port.counters
            emit(.guestDetached, guest: port, detail: reason)
            let level: Logger.Level = reason == "disconnected" ? .info : .warning
            log.log(level: level, "\(port.label) detached: \(reason) (\(stats)\(macs.isEmpty ? "" : "; forgot \(macs.count) MAC"))")
        }
        closing.removeAll(keepingCapacity: true)
    }

    // MARK: Departed guests' NAT connections

    struct DepartedGuest {
        var label: String
        var connections: NATConnections
        var resetAt: Int64
    }

    /// How long a departed guest's NAT connections wait for it to come back. QEMU 8's
    /// `reconnect=` brings the same guest, with its TCP state, back within seconds.
    static let returnGrace: Int64 = 5_000_000_000

    /// A guest that comes back with the MAC of a departed one takes up its connections.
    func takeUpConnections(_ port: GuestPort, mac: MACAddress) {
        guard !departed.isEmpty else { return }
        var taken = 0
        for i in departed.indices {
            let mine = departed[i].connections.take(guestMAC: mac)
            taken += mine.count
            port.natConnections.merge(mine)
        }
        departed.removeAll { $0.connections.isEmpty }
        if taken > 0 { log.info("\(port.label) takes up \(taken) NAT connection\(taken == 1 ? "" : "s") its MAC left open") }
    }

    /// Resets in libslirp the NAT connections of guests gone for `returnGrace`: libslirp
    /// would otherwise keep each, with its host socket, for about ten minutes (NATConnections.swift).
    func resetDepartedConnections(now: Int64) {
        while let first = departed.first, first.resetAt <= now {
            departed.removeFirst()
            framePath.queueForNAT(first.connections.resets())
            let n = first.connections.count
            natConnectionsReset += n
            let unrecorded = first.connections.unrecorded > 0
                ? "; it had more open than the \(NATConnections.capacity) recorded, and libslirp times those out itself" : ""
            log.info("reset \(n) NAT connection\(n == 1 ? "" : "s") of \(first.label), gone for \(Network.returnGrace / 1_000_000_000) s\(unrecorded)")
        }
    }

    /// The earliest time a paused listener wants polling again.
    var nextListenerResume: Int64? {
        var earliest: Int64?
        for l in listeners where l.pausedUntil > 0 { earliest = min(earliest ?? .max, l.pausedUntil) }
        return earliest
    }

    /// Housekeeping, every 10 s: ages the switch's MAC table, unfinished fragments and
    /// flows (FramePath), and asks after datagram peers.
    func housekeeping(now: Int64) {
        framePath.housekeeping(now: now)
        uplink?.table.expire(now: now)
        probeDatagramPeers()
        shrinkBuffers()
    }

    /// Gives back what a burst grew: every drained queue and receive buffer returns to its
    /// initial size (GuestPort.swift). Runs with housekeeping, so a busy guest regrows at
    /// most once per interval.
    func shrinkBuffers() {
        for port in ports.values {
            port.queued.shrinkIfEmpty()
            if case .stream(let received) = port.kind { received.shrinkIfEmpty() }
        }
        tapReceived?.shrinkIfEmpty()
    }

    /// A datagram peer that has gone (QEMU killed or quit) sends no goodbye, and a send to it
    /// fails only when there is something to send: on a quiet network it would hold its
    /// port, its descriptor and its NAT connections indefinitely. Connecting its socket
    /// again asks the kernel whether the peer is still there without sending it anything.
    private func probeDatagramPeers() {
        for port in ports.values where port.closeReason == nil {
            guard case .datagram(_, let peer) = port.kind else { continue }
            do {
                try port.socket.reconnect(to: peer)
            } catch where error.peerIsGone {
                port.closeAsGone()
                scheduleClose(port)
            } catch {
                log.debug("\(port.label): cannot check its socket: \(error)")
            }
        }
    }

    var guestCount: Int { ports.count }

    func closeEndpoints() {
        for l in listeners { l.close() }
        for d in datagrams { d.close() }
        uplink?.close()
        uplink = nil
    }

    func shutdown() {
        stopServices()
        finishCaptures()
        for port in ports.values {
            port.socket.close()
            port.vhostUser?.close()
        }
        ports.removeAll()
        closeEndpoints()
        stack.close()
    }
}

/// Whether the `count`-th occurrence of a repeatable problem is logged: the 1st, 2nd,
/// 4th, 8th..., so a peer that repeats it in a loop cannot flood the log.
func isLoggedOccurrence(_ count: Int) -> Bool {
    count > 0 && count & (count - 1) == 0
}
