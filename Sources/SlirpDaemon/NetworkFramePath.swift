import DataPlane
import FrameSwitch
import Logging
import NetOptions
import PosixIO

// The network's side of its frame path (DataPlane's FramePath): the sockets, libslirp and
// services the frame path calls out to, and its events counted and logged.
//
// Theory of operation. FramePath decides; this file acts. `deliver` and `send` put frames
// on a guest's port (looked up by PortID), `inputToNAT` is libslirp's input (which may
// call back into `fromNAT`), `serveLocally` is DHCP/DNS (NetworkServices.swift). Events
// are logged with the wording and pacing (`isLoggedOccurrence` of the count the event
// carries) slirpd has always used, naming the guest by `port.label`.

extension Network: FramePathSink {
    static func framePathSettings(_ o: NetworkOptions) -> FramePath.Settings {
        // DNSSL: the dnssearch= list, else the domainname= guests get from DHCP.
        let search = o.dnsSearch.isEmpty ? (o.domainName.map { [$0] } ?? []) : o.dnsSearch
        let ra = RouterAdvertisementOptions(dns: o.ipv6 ? o.ipv6DNS.bytes : nil, searchDomains: search)
        return FramePath.Settings(isolateGuests: o.isolateGuests, ipv6: o.ipv6, network: o.network.address.value,
                                  mask: o.network.mask, routerAdvertisement: ra)
    }

    func deliver(_ frame: UnsafeRawBufferPointer, to id: PortID) {
        if capturingNATFrame || capturingHeldACKs, let header = EthernetHeader(frame) {
            capturingNATFrame = false
            capture(frame, header)
        }
        guard let port = ports[id] else { return }
        deliver(frame, to: port)
    }

    func send(_ frame: [UInt8], to id: PortID) {
        guard let port = ports[id] else { return }
        sendToGuest(frame, port)
    }

    func inputToNAT(_ frame: UnsafeRawBufferPointer) {
        stack.input(frame)
    }

    func serveLocally(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, from id: PortID) -> Bool {
        // IPv4 TCP to any address but the DNS one is no local service's (serveLocally below
        // says no to it too): answered before the port's lookup, as it is most frames.
        if header.etherType == 0x0800, frame.count >= 34, frame[23] == 6, read32(frame, 30) != config.options.dns.value {
            return false
        }
        guard let port = ports[id] else { return false }
        return serveLocally(port, frame, header)
    }

    func isShortOfDescriptors(now: Int64) -> Bool {
        flowShortage(now: now) != nil
    }

    /// Why `holder` is no longer there, or nil if it is (or cannot be told): a datagram
    /// peer whose socket is closed or whose file is gone, a stream or vhost-user peer that hung up.
    private func holderHasGone(_ holder: GuestPort) -> String? {
        guard holder.closeReason == nil else { return holder.closeReason }
        switch holder.kind {
        case .datagram(_, let peer):
            do {
                try holder.socket.reconnect(to: peer)
                return nil
            } catch where error.peerIsGone {
                return "its socket \(peer.path) is gone"
            } catch {
                return nil
            }
        case .stream, .vhostUser:
            return holder.socket.peerHasHungUp ? "disconnected" : nil
        default:
            return nil
        }
    }

    func frameEvent(_ event: FramePathEvent) {
        switch event {
        case .natMACTaken(let owner, let mac):
            log.error("a guest (port \(owner.raw)) uses the NAT's own MAC \(mac); frames from the NAT are dropped")
        case .macLearned(let id, let mac):
            guard let port = ports[id] else { return }
            log.info("\(port.label) is using MAC \(mac)")
            uplink?.table.forget(mac)
            takeUpConnections(port, mac: mac)
        case .macReclaimed(let id, let mac):
            guard let port = ports[id] else { return }
            log.info("\(port.label) now owns MAC \(mac): its previous holder is gone")
        case .duplicateMAC(let id, let mac, let owner):
            guard let port = ports[id] else { return }
            refusedDuplicate(port, mac: mac, owner: owner)
        case .securityDrop(let id, let violation, let claim, let owner, let count):
            guard isLoggedOccurrence(count), let port = ports[id] else { return }
            let holder = owner.map { id in id == Network.natPort ? " of the NAT" : " held by \(ports[id]?.label ?? "port \(id.raw)")" } ?? ""
            log.warning("port security: \(port.label) \(violation.explanation) (\(claim)\(holder)); frame dropped (\(count) such from this guest so far)")
        case .fragmentDropped(let id, let reason, let count):
            guard isLoggedOccurrence(count), let port = ports[id] else { return }
            log.warning("dropped \(reason) from \(port.label) (\(count) IPv4 fragments dropped so far)")
        case .natIngressRewritten(let id, let count):
            guard isLoggedOccurrence(count), let port = ports[id] else { return }
            log.info("fixed a frame from \(port.label) before the NAT (urgent pointer cleared or IPv6 trailing bytes cut; \(count) so far)")
        case .natIngressDropped(let id, let reason, let count):
            guard isLoggedOccurrence(count), let port = ports[id] else { return }
            log.warning("dropped \(reason) from \(port.label) (\(count) such frames dropped so far)")
        case .shimDropped(let id, let count):
            guard isLoggedOccurrence(count), let port = ports[id] else { return }
            log.info("dropped a TCP segment from \(port.label) beyond the window offered or already held (\(count) so far)")
        case .earlyACKReset(let id, let count):
            guard isLoggedOccurrence(count), let port = ports[id] else { return }
            log.warning("reset a TCP connection of \(port.label): the guest stopped acknowledging slirpd's retransmissions (\(count) so far)")
        case .flowRefused(let id, let kind, let shortage):
            guard let port = ports[id] else { return }
            flowRefused(port, kind, shortage: shortage)
        }
    }

    /// A guest refused for a duplicate MAC (its frames are dropped by the frame path): a
    /// stream guest is disconnected, any other was muted until the MAC is free. First the
    /// holder is asked at once whether it is still there: a datagram peer that quit sends
    /// no goodbye (housekeeping notices it only within 10 s), and a stream peer's close may
    /// not have been read yet; QEMU 7.2 never reconnects a refused stream guest, so a
    /// guest coming back (an iPXE chainload, a reboot) must not be refused for its own
    /// ghost. A holder that has gone is detached now and the newcomer keeps its connection;
    /// only the frame that met the ghost is lost, and its next frame takes the MAC.
    private func refusedDuplicate(_ port: GuestPort, mac: MACAddress, owner: PortID) {
        if let holder = ports[owner], holder !== port, let gone = holderHasGone(holder) {
            holder.close(gone)
            scheduleClose(holder)
            reapClosed()  // the frame path forgets its MACs now, so the next frame is not refused
            port.state.refusedFor = nil
            log.notice("\(port.label) uses MAC \(mac) of a guest that has gone (\(gone)); it takes the MAC at its next frame")
            return
        }
        let ownerLabel = owner == Network.natPort ? "the NAT itself" : (ports[owner]?.label ?? "port \(owner.raw)")
        let advice = "give each QEMU its own MAC with mac= on its -device (e.g. mac=\(randomGuestMAC()))"
        emit(.duplicateMACRefused, guest: port, mac: mac, detail: "already used by \(ownerLabel)")
        if port.isStream {
            port.close("refused: duplicate MAC \(mac), already used by \(ownerLabel); \(advice)")
            scheduleClose(port)
        } else {
            log.error("refusing \(port.label): duplicate MAC \(mac), already used by \(ownerLabel); its frames are dropped until that MAC is free; \(advice)")
        }
    }
}
