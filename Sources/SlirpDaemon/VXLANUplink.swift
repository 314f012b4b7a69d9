import DataPlane
import FrameSwitch
import Logging
import NetOptions
import PosixIO
import SlirpAPI

// A network's VXLAN uplink: its sockets, remotes and counters (the pure half is
// DataPlane's VXLAN.swift and FramePathUplink.swift).
//
// Theory of operation. One UDP socket bound to `local` (port 4789 by default) receives;
// the loop polls it like any endpoint and reads it until EAGAIN. A datagram is accepted
// only from a configured remote's address (any source port: RFC 7348 senders hash the
// inner flow into it) and only for the configured VNI; the inner frame goes to
// `FramePath.fromUplink`, and when the switch learnt its source MAC on the uplink, the
// remote table learns MAC -> that remote. A local frame for the uplink is encapsulated once
// and sent to the remote its destination was learnt on, or to every remote (head-end
// replication). The outer source port comes from a hash of the inner flow: the uplink
// sends from one of `sendSockets` sockets (ephemeral ports), picked by that hash, so one
// flow keeps one source port (and one ECMP path) and flows spread. Receiving stays on
// `local`. Counters: totals and per remote, drops by reason (Metrics.swift).
//
// A multicast underlay (`group=`, `dev=`), as the kernel's `vxlan ... group G dev IF`: a second
// socket bound to the group's address joins it on `dev`, and a flood goes once to the group
// (plus any configured remotes) instead of to each remote. A datagram on the group socket is
// accepted from any sender but this host, and (once its header is valid) the sender becomes a
// member: a remote learnt like the kernel's fdb learns, to which learnt unicast then goes and
// from which unicast to `local` is accepted. Members are capped at `maximumRemotes`; senders
// beyond that are counted and learnt under the group itself (their unicast goes to the group).
// The senders' multicast leaves by `dev` with TTL 1 and no loopback to this host.
final class VXLANUplink {
    struct RemoteCounters {
        var encapsulatedFrames = 0, encapsulatedBytes = 0
        var decapsulatedFrames = 0, decapsulatedBytes = 0
        var sendErrors = 0
    }

    /// Why a datagram on the uplink socket was dropped before the frame path saw it.
    enum Drop: String, CaseIterable {
        case unknownRemote = "unknown_remote"
        case badHeader = "bad_header"
        case wrongVNI = "wrong_vni"
        case truncated
        case sendFailed = "send_failed"
    }

    /// Sockets the uplink sends from: one flow always uses the same one.
    static let sendSockets = 4

    private(set) var options: VXLANOptions
    let port: PortID
    let socket: Descriptor
    private let senders: [Descriptor]
    let received = ByteBuffer(capacity: 65536)
    private(set) var remotes: [UDPPeer]
    /// The multicast underlay's socket (bound to the group, joined on `dev`) and its address.
    let groupSocket: Descriptor?
    let groupPeer: UDPPeer?
    /// Senders seen on the group, at the group's port (kept across reloads of the remotes).
    private(set) var members = VXLANGroupMembers<UDPPeer>(capacity: VXLANOptions.maximumRemotes)
    var table = VXLANRemoteTable<UDPPeer>()
    var counters: [UDPPeer: RemoteCounters] = [:]
    var drops: [Drop: Int] = [:]
    private var scratch: [UInt8] = []

    init(options: VXLANOptions, port: PortID) throws(IOError) {
        self.options = options
        self.port = port
        socket = try bindUDP(address: options.local.addressBytes, port: options.local.port)
        var senders: [Descriptor] = []
        do {
            for _ in 0..<Self.sendSockets {
                senders.append(try bindUDP(address: options.local.addressBytes, port: 0, receiveBuffer: 4096))
            }
        } catch {
            socket.close()
            for s in senders { s.close() }
            throw error
        }
        self.senders = senders
        remotes = options.remotes.map(Self.peer)
        guard let group = options.group, let device = options.device else {
            groupSocket = nil
            groupPeer = nil
            return
        }
        // Bound to the group's address, this socket gets the group's datagrams and nothing else.
        let joined: Result<Descriptor, IOError> = Result { () throws(IOError) -> Descriptor in
            let index = try interfaceIndex(device)
            for s in senders { try sendIPv4Multicast(s, ifindex: index, ttl: 1) }
            let g = try bindUDP(address: group.addressBytes, port: group.port)
            do throws(IOError) {
                try joinIPv4Multicast(g, group: group.addressBytes, ifindex: index)
            } catch {
                g.close()
                throw error
            }
            return g
        }
        switch joined {
        case .success(let g):
            groupSocket = g
            groupPeer = Self.peer(group)
        case .failure(let error):
            socket.close()
            for s in senders { s.close() }
            throw error
        }
    }

    static func peer(_ endpoint: VXLANEndpoint) -> UDPPeer {
        UDPPeer(address: endpoint.addressBytes, port: endpoint.port)
    }

    func close() {
        socket.close()
        groupSocket?.close()
        for s in senders { s.close() }
    }

    /// The configured remote or group member a datagram came from (matched by address), if any.
    func remote(forSender sender: UDPPeer) -> UDPPeer? {
        if let remote = remotes.first(where: { $0.address == sender.address }) { return remote }
        guard let groupPeer else { return nil }
        let member = UDPPeer(address: sender.address, port: groupPeer.port)
        return members.contains(member) ? member : nil
    }

    /// A valid datagram from `sender` arrived on the group: it becomes a member (the group
    /// itself once the members are full).
    func admitMember(_ sender: UDPPeer) -> UDPPeer? {
        guard let groupPeer else { return nil }
        return members.admit(UDPPeer(address: sender.address, port: groupPeer.port), group: groupPeer)
    }

    /// What the counters and the API list: remotes, members (IPv4, as the group), then the group.
    var shownEndpoints: [VXLANEndpoint] {
        let learnt = members.members.compactMap { m -> VXLANEndpoint? in
            guard m.address.count == 4 else { return nil }
            let a = m.address
            return VXLANEndpoint(.v4(IPv4Address(a[0], a[1], a[2], a[3])), port: m.port)
        }
        return options.remotes + learnt + (options.group.map { [$0] } ?? [])
    }

    // MARK: Remotes at run time

    /// Adds a remote; false when it is there already.
    func add(_ endpoint: VXLANEndpoint) -> Bool {
        guard !options.remotes.contains(endpoint) else { return false }
        options.remotes.append(endpoint)
        remotes = options.remotes.map(Self.peer)
        return true
    }

    /// Removes a remote and what was learnt on it; false when it is not there.
    func remove(_ endpoint: VXLANEndpoint) -> Bool {
        guard let index = options.remotes.firstIndex(of: endpoint) else { return false }
        options.remotes.remove(at: index)
        remotes = options.remotes.map(Self.peer)
        table.forget(remote: Self.peer(endpoint))
        return true
    }

    /// Replaces the remote list (a reload), keeping what was learnt on remotes that stay.
    func setRemotes(_ endpoints: [VXLANEndpoint]) {
        let kept = Set(endpoints.map(Self.peer))
        for old in remotes where !kept.contains(old) { table.forget(remote: old) }
        options.remotes = endpoints
        remotes = endpoints.map(Self.peer)
    }

    // MARK: Sending

    /// Encapsulates a local frame and sends it to its remote, or to every remote.
    func send(_ frame: UnsafeRawBufferPointer, destination: MACAddress, now: Int64, log: Logger) {
        let targets: [UDPPeer]
        if let groupPeer {
            // Learnt unicast goes to its remote or member; the rest to the group (and remotes).
            targets = table.targets(for: destination, now: now,
                                    reachable: { $0 == groupPeer || self.members.contains($0) || self.remotes.contains($0) },
                                    flood: remotes + [groupPeer])
        } else {
            targets = table.targets(for: destination, now: now, remotes: remotes)
        }
        guard !targets.isEmpty else { return }
        let needed = VXLANHeader.length + frame.count
        if scratch.count != needed { scratch = [UInt8](repeating: 0, count: needed) }
        VXLANHeader.write(vni: options.vni, into: &scratch)
        scratch.withUnsafeMutableBytes { dst in
            if let base = frame.baseAddress, frame.count > 0 {
                dst.baseAddress!.advanced(by: VXLANHeader.length).copyMemory(from: base, byteCount: frame.count)
            }
        }
        let sender = senders[Int(VXLANHeader.sourcePort(for: frame)) % senders.count]
        for remote in targets {
            do {
                if case .done = try sender.send(scratch, to: remote) {
                    counters[remote, default: RemoteCounters()].encapsulatedFrames += 1
                    counters[remote, default: RemoteCounters()].encapsulatedBytes += frame.count
                    continue
                }
            } catch {
                let n = (drops[.sendFailed] ?? 0) + 1
                if isLoggedOccurrence(n) { log.warning("VXLAN: sending to \(describe(remote)) failed: \(error) (\(n) so far)") }
            }
            drops[.sendFailed, default: 0] += 1
            counters[remote, default: RemoteCounters()].sendErrors += 1
        }
    }

    // MARK: Counters

    var totals: RemoteCounters {
        counters.values.reduce(into: RemoteCounters()) { sum, c in
            sum.encapsulatedFrames += c.encapsulatedFrames
            sum.encapsulatedBytes += c.encapsulatedBytes
            sum.decapsulatedFrames += c.decapsulatedFrames
            sum.decapsulatedBytes += c.decapsulatedBytes
            sum.sendErrors += c.sendErrors
        }
    }
}

extension Network {
    /// Reads the uplink socket (or its group socket) until EAGAIN; each accepted frame goes
    /// to the frame path.
    func receiveUplink(_ uplink: VXLANUplink, fromGroup: Bool = false, now: Int64) {
        guard let socket = fromGroup ? uplink.groupSocket : uplink.socket else { return }
        while true {
            let sender: UDPPeer
            do {
                guard case .done(let s) = try socket.receiveUDP(into: uplink.received) else { return }
                sender = s
            } catch {
                log.error("VXLAN: receiving on \(fromGroup ? uplink.options.group ?? uplink.options.local : uplink.options.local) failed: \(error)")
                return
            }
            // Our own flood, looped back by another socket of this host: not news.
            if fromGroup, sender.address == uplink.options.local.addressBytes { continue }
            let known = uplink.remote(forSender: sender)
            guard known != nil || fromGroup else {
                uplinkDropped(uplink, .unknownRemote, "a datagram from \(describe(sender)), which is not a configured remote")
                continue
            }
            guard uplink.received.truncatedBy == 0 else {
                uplinkDropped(uplink, .truncated, "a datagram from \(describe(sender)) larger than \(uplink.received.capacity) bytes")
                continue
            }
            let datagram = uplink.received.readable
            switch VXLANHeader.decode(datagram, vni: uplink.options.vni) {
            case .failure(.wrongVNI(let vni)):
                uplinkDropped(uplink, .wrongVNI, "a frame from \(describe(sender)) for VNI \(vni) (this network is VNI \(uplink.options.vni))")
            case .failure(let error):
                uplinkDropped(uplink, .badHeader, "a datagram from \(describe(sender)): \(error)")
            case .success(let range):
                let frame = UnsafeRawBufferPointer(rebasing: datagram[range])
                guard let header = EthernetHeader(frame), let remote = known ?? uplink.admitMember(sender) else { continue }
                uplink.counters[remote, default: VXLANUplink.RemoteCounters()].decapsulatedFrames += 1
                uplink.counters[remote, default: VXLANUplink.RemoteCounters()].decapsulatedBytes += frame.count
                if !captures.isEmpty { capture(frame, header) }
                let dropped = framePath.fromUplink(frame, header, now: now, sink: self)
                if dropped == nil, framePath.port(of: header.source) == uplink.port {
                    _ = uplink.table.learn(header.source, on: remote, now: now, isLocal: false)
                }
            }
        }
    }

    private func uplinkDropped(_ uplink: VXLANUplink, _ reason: VXLANUplink.Drop, _ what: String) {
        uplink.drops[reason, default: 0] += 1
        let n = uplink.drops[reason, default: 0]
        if isLoggedOccurrence(n) { log.warning("VXLAN: dropped \(what) (\(n) such so far)") }
    }

    /// Applies a reloaded `vxlan` setting without touching the guests: new remotes in
    /// place, a new VNI or local address on a new socket; returns 1 if anything changed.
    func applyUplink(_ new: VXLANOptions?) -> Int {
        let old = uplink?.options
        guard old != new else { return 0 }
        if let uplink, let new, uplink.options.vni == new.vni, uplink.options.local == new.local,
           uplink.options.group == new.group, uplink.options.device == new.device {
            uplink.setRemotes(new.remotes)
            log.notice("reload: VXLAN remotes now \(new.remotes.map(\.description).joined(separator: ", "))")
            return 1
        }
        if let uplink {
            for mac in framePath.forgetUplink() { uplink.table.forget(mac) }
            uplink.close()
            self.uplink = nil
            framePath.uplinkPort = nil
            log.notice("reload: VXLAN uplink on \(uplink.options.local) closed")
        }
        guard let new else { return 1 }
        do {
            let fresh = try VXLANUplink(options: new, port: allocatePortID())
            uplink = fresh
            framePath.uplinkPort = fresh.port
            framePath.uplinkMTU = config.effectiveMTU
            log.notice("reload: VXLAN uplink: \(new.summary)")
        } catch {
            log.error("reload: cannot bind the VXLAN uplink on \(new.local): \(error); the network runs without it")
        }
        return 1
    }

    func toUplink(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) {
        uplink?.send(frame, destination: header.destination, now: monotonicNanoseconds(), log: log)
    }
}

// MARK: The control API

extension Network {
    private func requireUplink() throws(APIError) -> VXLANUplink {
        guard let uplink else { throw .notFound("network \(config.name) has no VXLAN uplink (set vxlan = \"...\" or --vxlan)") }
        return uplink
    }

    func vxlanInfo() throws(APIError) -> VXLANInfo {
        let uplink = try requireUplink()
        let now = monotonicNanoseconds()
        let learnt = uplink.table.entries(now: now)
        let remotes = uplink.shownEndpoints.map { endpoint in
            let peer = VXLANUplink.peer(endpoint)
            let c = uplink.counters[peer] ?? VXLANUplink.RemoteCounters()
            return VXLANRemoteInfo(remote: endpoint.description, encapsulatedFrames: c.encapsulatedFrames,
                                   encapsulatedBytes: c.encapsulatedBytes, decapsulatedFrames: c.decapsulatedFrames,
                                   decapsulatedBytes: c.decapsulatedBytes,
                                   macs: learnt.filter { $0.remote == peer }.map { "\($0.mac)" })
        }
        var drops: [String: Int] = [:]
        for reason in VXLANUplink.Drop.allCases { drops[reason.rawValue] = uplink.drops[reason, default: 0] }
        for reason in FramePath.UplinkDrop.allCases { drops[reason.rawValue] = framePath.uplinkDrops[reason, default: 0] }
        return VXLANInfo(network: config.name, vni: uplink.options.vni, local: uplink.options.local.description,
                         remotes: remotes, drops: drops)
    }

    func addVXLANRemote(_ text: String) throws(APIError) -> VXLANInfo {
        let uplink = try requireUplink()
        let remote: VXLANEndpoint
        do {
            remote = try VXLANOptions.checkedRemote(text, local: uplink.options.local)
        } catch {
            throw .badRequest(error.message)
        }
        guard uplink.options.remotes.count < VXLANOptions.maximumRemotes else {
            throw .conflict("network \(config.name) already has \(VXLANOptions.maximumRemotes) VXLAN remotes")
        }
        guard uplink.add(remote) else { throw .conflict("\(remote) is already a VXLAN remote of network \(config.name)") }
        log.notice("VXLAN remote added: \(remote)")
        return try vxlanInfo()
    }

    func removeVXLANRemote(_ text: String) throws(APIError) -> VXLANInfo {
        let uplink = try requireUplink()
        guard let remote = VXLANEndpoint(text), uplink.remove(remote) else {
            throw .notFound("'\(text)' is not a VXLAN remote of network \(config.name)")
        }
        // The switch forgets the MACs behind the uplink; the next flood finds those still reachable.
        framePath.forgetUplink()
        log.notice("VXLAN remote removed: \(remote)")
        return try vxlanInfo()
    }
}
