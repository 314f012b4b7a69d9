import DaemonConfig
import FrameSwitch
import Logging
import NetOptions
import NetServices
import PosixIO
import SlirpAPI
import SlirpKit

// The services a network answers itself instead of libslirp: DHCP, DNS, TFTP
// (TFTPService.swift), and ARP and ping for the DNS address.
//
// Theory of operation. libslirp runs with its DHCP and DNS off (SlirpStack's
// `ownServices`). Every frame a guest sends passes `serveLocally` after the switch has
// vetted its source MAC; the few it claims never reach libslirp:
// - DHCP requests go to `DHCPServer`; its replies go to the asking guest's port alone
//   (libslirp broadcasts them to every guest), and its events update the lease table
//   that the API, DNS names and lease-following forwards read. The lease table is
//   saved to `<state dir>/<network>.leases` at most once a second and on shutdown, and
//   read back at start, so a guest renewing after a restart keeps its address.
// - UDP to the DNS address, port 53, over IPv4 or IPv6, goes to `DNSService`, IPv4
//   fragments of it too (DNSService reassembles them; answers over the MTU leave as
//   fragments). TCP to
//   DNS:53 goes on to libslirp, which carries it through a guest forward to
//   DNSService's Unix socket; TCP to the IPv6 DNS address reaches DNSService's [::1]
//   listener through libslirp with its port rewritten (DNSOverTCP6.swift). Ping to the DNS address is answered here, ARP for it
//   too. Anything else sent to the DNS address is dropped: with its DNS off, libslirp
//   would send it to that address on the host's own network.
// Frames made here enter a guest's queue like any other and show in captures.

extension Network {
    /// libslirp's MAC for one of its addresses: 52:55 and the address (special_ethaddr).
    static func natMAC(_ address: IPv4Address) -> MACAddress {
        MACAddress(raw: 0x5255_0000_0000 | UInt64(address.value))
    }

    /// Wall-clock seconds: leases outlive the process, so monotonic time will not do.
    static var leaseClock: Int64 { realtimeNanoseconds() / 1_000_000_000 }

    var leaseFilePath: String? { stateDirectory.map { "\($0)/\(config.name).leases" } }

    // MARK: Start and stop

    func startServices() {
        let o = config.options
        if o.ipv4 {
            var saved: [DHCPLease] = []
            if let path = leaseFilePath {
                do {
                    saved = DHCPServer.decodeLeases(String(decoding: try readWholeFile(path, limit: 64 << 20), as: UTF8.self))
                } catch where error.fileIsMissing {
                    // First start: nothing saved yet.
                } catch {
                    log.warning("DHCP: cannot read saved leases: \(error); starting with none")
                }
            }
            let server = DHCPServer(config: dhcpConfig(), serverMAC: Self.natMAC(o.host), leases: saved)
            dhcp = server
            let now = Self.leaseClock
            for lease in server.activeLeases(now: now) {
                leaseSequence += 1
                leases[lease.mac] = Lease(ip: lease.address, hostname: lease.hostname, granted: wallClockTimestamp(),
                                          sequence: leaseSequence, isStatic: lease.isStatic, expires: lease.expires)
                framePath.security.reserve(lease.address.value, mac: lease.mac, until: securityTime(leaseExpires: lease.expires))
            }
            if !saved.isEmpty, let path = leaseFilePath {
                log.info("DHCP: \(leases.count) of \(saved.count) saved leases still valid, from \(path)")
            }
        }
        let upstream = o.dnsUpstream ?? Self.hostResolver(log: log)
        var tcpPath: String?
        if o.ipv4, o.network.contains(o.dns), SlirpStack.parkedDNSAddress(for: o) != o.dns, let dir = stateDirectory {
            tcpPath = "\(dir)/\(config.name).dns.sock"
        }
        // DNS over TCP to the IPv6 DNS address goes through libslirp to the host's [::1],
        // which it refuses with host-loopback=off and drops with restrict=on (DNSOverTCP6.swift).
        let tcp6 = o.ipv6 && o.hostLoopback && !o.restricted ? o.ipv6DNS : nil
        let service = DNSService(zone: LocalZone(domain: o.dnsDomain), upstream: upstream, restricted: o.restricted,
                                 tcpPath: tcpPath, tcp6Address: tcp6, log: log) { [unowned self] query, port, reply, ident in
            guard let guest = ports[port] else { return }
            let source = query.destinationMAC.isGroup ? Self.natMAC(config.options.dns) : query.destinationMAC
            let frame = query.reply(reply, from: source).frame(ipID: ident)
            // An answer from the upstream can exceed the guest's MTU: it gets fragments.
            let mtu = guest.state.mtu
            let pieces = switch query.addresses {
            case .v4: IPv4Fragmentation.fragments(of: frame, mtu: mtu)
            case .v6: IPv6Fragmentation.fragments(of: frame, mtu: mtu, identification: UInt32(ident))
            }
            for piece in pieces { sendToGuest(piece, guest) }
        }
        dns = service
        service.beforeAnswering = { [unowned self] in refreshZoneIfNeighborsChanged() }
        if service.listener != nil, let tcpPath {
            do {
                try stack.addGuestUnix(address: o.dns, port: 53, path: tcpPath, rule: "DNS over TCP")
                dnsOverTCP = true
            } catch {
                log.error("DNS: cannot route DNS over TCP to \(tcpPath): \(error)")
            }
        }
        rebuildZone()
        if o.ipv6, service.tcp6 == nil {
            log.info("DNS: no DNS over TCP on \(o.ipv6DNS)\(o.hostLoopback ? "" : " (host-loopback=off)")\(o.restricted ? " (restrict=on)" : ""); IPv6 guests use UDP")
        }
        startTFTP()
        log.info("DNS: answering \(o.dns)\(o.ipv6 ? " and \(o.ipv6DNS)" : "") for *.\(o.dnsDomain)\(dnsOverTCP ? " over UDP and TCP" : " over UDP"); other names \(o.restricted ? "fail (restrict=on)" : upstream.map { "go to \($0)" } ?? "fail (no upstream)")")
    }

    func stopServices() {
        saveLeases(force: true)
        dns?.close()
    }

    func dhcpConfig() -> DHCPServerConfig {
        DHCPServerConfig(options: config.options, mtu: config.mtu > 0 ? config.mtu : nil, staticLeases: effectiveStaticLeases)
    }

    /// The first nameserver of /etc/resolv.conf, as libslirp would have used.
    static func hostResolver(log: Logger) -> DNSUpstream? {
        do {
            return DNSUpstream.fromResolvConf(String(decoding: try readWholeFile("/etc/resolv.conf", limit: 1 << 20), as: UTF8.self))
        } catch {
            log.warning("DNS: cannot read /etc/resolv.conf: \(error)")
            return nil
        }
    }

    // MARK: Frames from guests

    /// Answers a guest's frame here if it is for a service the daemon runs; true if so.
    func serveLocally(_ port: GuestPort, _ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) -> Bool {
        let o = config.options
        switch header.etherType {
        case ARPPacket.etherType:
            guard o.ipv4, let arp = ARPPacket.parse(frame: frame), arp.operation == ARPPacket.request,
                  arp.targetIP == o.dns.value else { return false }
            sendToGuest(arp.reply(from: Self.natMAC(o.dns)), port)
            return true
        case 0x0800:
            guard o.ipv4, frame.count >= 34, frame[14] >> 4 == 4 else { return false }
            let destination = read32(frame, 30)
            let proto = frame[23]
            if destination == o.dns.value, let dns {
                if proto == 17, IPv4Reassembly.isFragment(frame) {
                    if let reason = dns.queryFragment(frame, from: port.id, now: monotonicNanoseconds()),
                       isLoggedOccurrence(dns.fragmentsDropped) {
                        log.warning("DNS: dropped \(reason) from \(port.label) (\(dns.fragmentsDropped) fragments to the DNS address dropped so far)")
                    }
                } else if proto == 17, let query = UDPDatagram.parse(frame: frame), query.destinationPort == 53 {
                    dns.query(query, from: port.id, now: monotonicNanoseconds())
                } else if proto == 6, dnsOverTCP, tcpDestinationPort(frame) == 53 {
                    return false  // libslirp's guest forward takes it to DNSService
                } else if proto == 1, let reply = ICMPEcho.reply(to: frame, address: destination, from: header.destination.isGroup ? Self.natMAC(o.dns) : header.destination) {
                    sendToGuest(reply, port)
                }
                return true
            }
            if proto == 17, destination == o.host.value, serveTFTP(port, frame) { return true }
            guard proto == 17, dhcp != nil, UDPDatagram.destinationPort(frame: frame) == 67 else { return false }
            if dhcpRefused(port, frame, header) { return true }
            guard let result = dhcp?.handle(frame: frame, now: Self.leaseClock, port: port.id) else { return false }
            for reply in result.replies { sendToGuest(reply, port) }
            applyDHCP(result.events, port)
            return true
        case 0x86DD:
            if o.ipv6, serveTFTP(port, frame) { return true }
            guard o.ipv6, let dns, UDPDatagram.destinationPort(frame: frame) == 53,
                  let query = UDPDatagram.parse(frame: frame), case .v6(_, let destination) = query.addresses,
                  destination == o.ipv6DNS.bytes else { return false }
            dns.query(query, from: port.id, now: monotonicNanoseconds())
            return true
        default:
            return false
        }
    }

    private func tcpDestinationPort(_ frame: UnsafeRawBufferPointer) -> UInt16? {
        let tcp = 14 + Int(frame[14] & 0x0F) * 4
        guard frame.count >= tcp + 4 else { return nil }
        return UInt16(frame[tcp + 2]) << 8 | UInt16(frame[tcp + 3])
    }

    /// Queues a frame the daemon made for one guest, showing it to captures.
    func sendToGuest(_ frame: [UInt8], _ port: GuestPort) {
        frame.withUnsafeBytes { raw in
            if !captures.isEmpty, let header = EthernetHeader(raw) { capture(raw, header) }
            deliver(raw, to: port)
        }
    }

    // MARK: DHCP

    private func applyDHCP(_ events: [DHCPEvent], _ port: GuestPort) {
        for event in events {
            switch event {
            case .granted(let granted):
                let mac = granted.mac
                leaseSequence += 1
                let lease = Lease(ip: granted.address, hostname: granted.hostname, granted: wallClockTimestamp(),
                                  sequence: leaseSequence, isStatic: granted.isStatic, expires: granted.expires)
                let changed = leases[mac].map { $0.ip != lease.ip || $0.hostname != lease.hostname } ?? true
                if let old = leases[mac], old.ip != lease.ip { framePath.security.leaseEnded(old.ip.value, mac: mac) }
                leases[mac] = lease
                framePath.security.leaseGranted(granted.address.value, mac: mac, port: port.id,
                                      expires: securityTime(leaseExpires: granted.expires), now: monotonicNanoseconds())
                // libslirp learns guests' MACs only from its own DHCP: tell the ARP proxy.
                framePath.learnNeighbor(granted.address.value, mac)
                if changed {
                    log.info("lease: \(mac) has \(lease.ip)\(lease.hostname.map { " (\($0))" } ?? "")\(lease.isStatic ? " (static)" : "")")
                    rebuildZone()
                }
                emit(.leaseGranted, guest: port, mac: mac, ip: lease.ip, hostname: lease.hostname)
                followLease(mac: mac, lease: lease)
                leasesDirty = true
            case .released(let mac, let address):
                leases[mac] = nil
                framePath.security.leaseEnded(address.value, mac: mac)
                rebuildZone()
                log.info("lease: \(mac) released \(address)")
                leasesDirty = true
            case .poolFull(let mac):
                poolFullCount += 1
                // 1st, 2nd, 4th, 8th...: a client retrying every few seconds cannot flood the log.
                if isLoggedOccurrence(poolFullCount) {
                    let c = dhcp?.config
                    log.error("DHCP pool full: no free address for \(mac) in \(c.map { "\($0.poolStart)-\($0.poolEnd)" } ?? "the pool") (\(leases.count) leases held; \(poolFullCount) refusals so far); widen net= or lower dhcpstart=")
                }
            case .portCap(let mac, _):
                // Counted and logged (paced, naming the guest) with port security's refusals.
                framePath.refuse(port.state, .dhcpPortCap, .mac(mac), owner: nil, sink: self)
            case .declined(let mac, let address):
                framePath.security.leaseEnded(address.value, mac: mac)
                log.warning("DHCP: \(mac) declined \(address) (another host uses it); it stays out of the pool for \(DHCPServer.declineHoldSeconds) s")
                leasesDirty = true
            }
        }
    }

    /// Writes the lease file if leases changed, at most once a second unless `force`.
    func saveLeases(force: Bool = false) {
        guard leasesDirty, let dhcp, let path = leaseFilePath else { return }
        let now = monotonicNanoseconds()
        guard force || now - leasesSavedAt >= 1_000_000_000 else { return }
        leasesDirty = false
        leasesSavedAt = now
        do {
            try writeFileAtomically(path, dhcp.encodeLeases())
        } catch {
            log.error("DHCP: cannot save leases to \(path): \(error)")
        }
    }

    // MARK: Static leases

    /// The configured static leases, with those added through the API in place of any
    /// for the same MAC.
    var effectiveStaticLeases: [StaticLease] {
        let added = Set(apiStaticLeases.map(\.mac))
        return config.staticLeases.filter { !added.contains($0.mac) } + apiStaticLeases
    }

    /// Adds (or replaces, for the same MAC) a static lease at run time. It applies from
    /// the guest's next DHCP exchange; a guest holding another address gets a NAK when it
    /// renews and then asks afresh.
    func addStaticLease(_ lease: StaticLease) throws(APIError) -> StaticLease {
        guard dhcp != nil else { throw .conflict("network \(config.name) has no IPv4, so no DHCP") }
        if let problem = lease.problem(in: config.options) { throw .badRequest("static lease: \(problem)") }
        if let other = effectiveStaticLeases.first(where: { $0.address == lease.address && $0.mac != lease.mac }) {
            throw .conflict("static lease: IP \(lease.address) is already fixed for \(other.mac)")
        }
        apiStaticLeases.removeAll { $0.mac == lease.mac }
        apiStaticLeases.append(lease)
        applyStaticLeases()
        saveRuntimeState()
        log.notice("static lease added: \(lease.mac) -> \(lease.address)\(lease.hostname.map { " (\($0))" } ?? "")")
        return lease
    }

    /// Removes a static lease added through the API. Configured ones belong to the
    /// config file and change with it.
    func removeStaticLease(mac: MACAddress) throws(APIError) -> StaticLease {
        guard let index = apiStaticLeases.firstIndex(where: { $0.mac == mac }) else {
            if config.staticLeases.contains(where: { $0.mac == mac }) {
                throw .conflict("the static lease for \(mac) comes from the config file; remove it there and reload")
            }
            throw .notFound("no static lease for \(mac) on network \(config.name)")
        }
        let lease = apiStaticLeases.remove(at: index)
        applyStaticLeases()
        saveRuntimeState()
        log.notice("static lease removed: \(mac) (\(lease.address))")
        return lease
    }

    /// Gives the DHCP server a new set of static leases, keeping every lease it holds
    /// that still fits.
    func applyStaticLeases() {
        guard let old = dhcp else { return }
        dhcp = DHCPServer(config: dhcpConfig(), serverMAC: old.serverMAC, leases: old.leases)
        refreshSecurityAddresses()
        leasesDirty = true
        rebuildZone()
    }

    // MARK: DNS

    /// The local zone from scratch: the gateway as `host`, then every name a lease has,
    /// with the IPv6 addresses (in the network's prefix) its MAC was seen using (NDP,
    /// SLAAC: the frame path's `neighbors6`); the reverse zone of the IPv6 prefix.
    func rebuildZone() {
        guard let dns else { return }
        let o = config.options
        var zone = LocalZone(domain: o.dnsDomain)
        zone.serial = UInt32(truncatingIfNeeded: Self.leaseClock)
        zone.set("host", to: o.host)
        var addresses6: [MACAddress: [IPv6Address]] = [:]
        if o.ipv6 {
            zone.add("host", address6: o.ipv6Host)
            zone.reversePrefix6 = (o.ipv6Prefix, o.ipv6PrefixLength)
            dns.zoneNeighbors6 = framePath.neighbors6
            for (key, mac) in framePath.neighbors6 {
                guard let address = IPv6Address(bytes: bigEndianBytes(key.high) + bigEndianBytes(key.low)),
                      address.hasPrefix(o.ipv6Prefix, length: o.ipv6PrefixLength) else { continue }
                addresses6[mac, default: []].append(address)
            }
        }
        func add(_ name: String, _ address: IPv4Address, _ mac: MACAddress) {
            zone.add(name, address: address)
            for address6 in (addresses6[mac] ?? []).sorted(by: { $0.bytes.lexicographicallyPrecedes($1.bytes) }) {
                zone.add(name, address6: address6)
            }
        }
        for lease in effectiveStaticLeases {
            if let name = lease.hostname { add(name, lease.address, lease.mac) }
        }
        for (mac, lease) in leases.sorted(by: { $0.value.sequence < $1.value.sequence }) {
            if let name = lease.hostname { add(name, lease.ip, mac) }
        }
        dns.zone = zone
    }

    /// Rebuilds the zone before a query if guests' IPv6 addresses changed since the last
    /// build: the frame path learns them from traffic, not from events the zone hears of.
    func refreshZoneIfNeighborsChanged() {
        guard config.options.ipv6, let dns, dns.zoneNeighbors6 != framePath.neighbors6 else { return }
        rebuildZone()
    }
}

private func bigEndianBytes(_ value: UInt64) -> [UInt8] {
    (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) }
}
