import FrameSwitch
import FoundationEssentials
import NetOptions
import PosixIO
import SlirpAPI
import SlirpKit

/// Which guest a host forward points at. By MAC or hostname, the forward follows that
/// guest's DHCP lease: it is (re)installed whenever the NAT acknowledges a lease for it.
enum GuestSelector: Equatable {
    case address(IPv4Address)
    case mac(MACAddress)
    case hostname(String)

    var description: String {
        switch self {
        case .address(let a): a == .any ? "" : "\(a)"
        case .mac(let m): "\(m)"
        case .hostname(let h): h
        }
    }
}

/// A host forward as configured, and what is installed in libslirp for it now.
struct ForwardEntry {
    var rule: HostForward
    /// IPv6 host and guest addresses (`tcp:[::1]:8080-[fec0::15]:80`), which replace the rule's.
    var hostAddress6: IPv6Address?
    var guestAddress6: IPv6Address?
    var selector: GuestSelector
    /// The rule libslirp has, with the guest address in force; nil while the guest has no lease.
    var installed: HostForward?

    func matches(_ other: HostSide) -> Bool {
        rule.proto == other.proto && rule.hostPort == other.port && hostAddress6 == other.address6
            && (other.address6 != nil || rule.hostAddress == other.address)
    }
}

/// The host side of a forward, which identifies it: `[tcp|udp]:[HOSTADDR]:HOSTPORT`.
struct HostSide {
    var proto: ForwardProtocol
    var address: IPv4Address
    var address6: IPv6Address?
    var port: UInt16
}

/// QEMU 7.2's hostfwd syntax has no IPv6; slirpd accepts bracketed addresses
/// (`tcp:[::1]:8080-[fec0::15]:80`). Returns the text with them emptied, and the addresses
/// before and after the `-`.
private func splitIPv6(_ text: String) throws(APIError) -> (String, host: IPv6Address?, guest: IPv6Address?) {
    var rest = Substring(text)
    var out = ""
    var host: IPv6Address?, guest: IPv6Address?
    var guestSide = false
    while let c = rest.first {
        rest = rest.dropFirst()
        if c == "-" { guestSide = true }
        guard c == "[" else { out.append(c); continue }
        guard let close = rest.firstIndex(of: "]"), let address = IPv6Address(String(rest[..<close])),
              (guestSide ? guest : host) == nil, out.last == ":" || out.last == "-" else {
            throw .badRequest("Invalid host forwarding rule '\(text)' (Bad \(guestSide ? "guest" : "host") address)")
        }
        if guestSide { guest = address } else { host = address }
        rest = rest[rest.index(after: close)...]
        guard rest.first == ":" else {
            throw .badRequest("Invalid host forwarding rule '\(text)' (Bad \(guestSide ? "guest" : "host") address)")
        }
    }
    return (out, host, guest)
}

struct Lease {
    var ip: IPv4Address
    var hostname: String?
    var granted: String
    /// Orders grants; the wall-clock time above is too coarse to tell two apart.
    var sequence: Int
    var isStatic = false
    /// Wall-clock seconds.
    var expires: Int64 = 0
}

extension Network {
    // MARK: Information

    func info() -> NetworkInfo {
        let o = config.options
        return NetworkInfo(
            name: config.name, options: config.optionText, network: "\(o.network.address)/\(o.network.prefixLength)",
            gateway: "\(o.host)", dns: "\(o.dns)", dhcpStart: "\(o.dhcpStart)", mtu: config.effectiveMTU,
            restricted: o.restricted, endpoints: config.endpoints.map(\.description), guests: ports.count,
            counters: totalCounters, flowLimits: flowLimitsInfo)
    }

    var totalCounters: Counters {
        ports.values.reduce(closedCounters) { $0 + $1.counters }
    }

    func guestInfos() -> [GuestInfo] {
        ports.values.sorted { $0.id < $1.id }.map { port in
            let lease = port.mac.flatMap { leases[$0] }
            // The leased address first, then any other the guest was seen using (a static one, say).
            var ips = lease.map { [$0.ip] } ?? []
            if let mac = port.mac {
                ips += framePath.neighbors.filter { $0.value == mac && $0.key != lease?.ip.value }.keys.sorted().map(IPv4Address.init)
            }
            return GuestInfo(
                id: port.id.raw, network: config.name, transport: port.transport.rawValue, endpoint: port.endpointName,
                peer: port.peer, macs: port.mac.map { ["\($0)"] } ?? [], ips: ips.map { "\($0)" },
                hostname: lease?.hostname, counters: port.counters, connectedSince: port.connectedSince,
                flows: port.flows.info)
        }
    }

    func leaseInfos() -> [LeaseInfo] {
        leases.sorted { $0.value.ip < $1.value.ip }.map { mac, lease in
            LeaseInfo(network: config.name, mac: "\(mac)", ip: "\(lease.ip)", hostname: lease.hostname, granted: lease.granted,
                      isStatic: lease.isStatic, expires: lease.expires == 0 ? nil : rfc3339(unixSeconds: lease.expires))
        }
    }

    func connectionInfos() -> [ConnectionInfo] {
        ConnectionTable.parse(stack.connectionInfo())
    }

    // MARK: Host forwards

    func forwardInfos() -> [ForwardInfo] {
        forwards.map(forwardInfo)
    }

    private func forwardInfo(_ entry: ForwardEntry) -> ForwardInfo {
        let r = entry.rule
        let guestAddress = entry.guestAddress6.map { "\($0)" }
            ?? entry.installed.map { "\($0.guestAddress == .any ? config.options.dhcpStart : $0.guestAddress)" }
        let host = entry.hostAddress6.map { "[\($0)]" } ?? (r.hostAddress == .any ? "" : "\(r.hostAddress)")
        return ForwardInfo(
            network: config.name,
            rule: "\(r.proto.rawValue):\(host):\(r.hostPort)-\(entry.guestAddress6.map { "[\($0)]" } ?? guestAddress ?? ""):\(r.guestPort)",
            proto: r.proto.rawValue, hostAddress: entry.hostAddress6.map { "\($0)" } ?? (host.isEmpty ? "0.0.0.0" : host),
            hostPort: Int(r.hostPort),
            guest: entry.guestAddress6.map { "\($0)" }
                ?? (entry.selector.description.isEmpty ? "\(config.options.dhcpStart)" : entry.selector.description),
            guestAddress: guestAddress, guestPort: Int(r.guestPort))
    }

    func addForward(_ request: ForwardRequest) throws(APIError) -> ForwardInfo {
        let (text, address6, guest6) = try splitIPv6(request.rule)
        guard (address6 == nil) == (guest6 == nil) else {
            throw .badRequest("Invalid host forwarding rule '\(request.rule)' (an IPv6 forward needs IPv6 addresses on both sides, e.g. tcp:[::1]:8080-[fec0::15]:80: libslirp does not forward between IPv4 and IPv6)")
        }
        if let guest6 {
            if let g = request.guest, !g.isEmpty {
                throw .badRequest("an IPv6 forward names its guest by address; following a lease works for IPv4 only")
            }
            let o = config.options
            guard o.ipv6, guest6.hasPrefix(o.ipv6Prefix, length: o.ipv6PrefixLength) else {
                throw .badRequest("Invalid host forwarding rule '\(request.rule)' (Bad guest address: \(guest6) is not in this network's IPv6 prefix \(o.ipv6Prefix)/\(o.ipv6PrefixLength))")
            }
        }
        var rule: HostForward
        do {
            rule = try HostForward.parse(text)
        } catch {
            throw .badRequest(error.message.replacing(text, with: request.rule))
        }
        rule.rule = request.rule
        guard rule.hostPort != 0 else {
            throw .badRequest("Invalid host forwarding rule '\(request.rule)' (host port 0 would bind a port slirpd cannot report; name one)")
        }
        let side = HostSide(proto: rule.proto, address: rule.hostAddress, address6: address6, port: rule.hostPort)
        if forwards.contains(where: { $0.matches(side) }) {
            throw .conflict("a \(rule.proto.rawValue) forward from \(address6.map { "[\($0)]" } ?? "\(rule.hostAddress)"):\(rule.hostPort) already exists on network \(config.name)")
        }
        let selector = try Self.selector(request.guest, rule: rule)
        var entry = ForwardEntry(rule: rule, hostAddress6: address6, guestAddress6: guest6, selector: selector, installed: nil)
        if let target = resolve(selector) {
            do {
                entry.installed = try install(entry, guestAddress: target)
            } catch {
                throw .conflict(error.message)
            }
        }
        forwards.append(entry)
        apiForwards.append(request)
        saveRuntimeState()
        log.info("forward added: \(request.rule)\(request.guest.map { " to guest \($0)" } ?? "")\(entry.installed == nil ? " (waiting for that guest's lease)" : "")")
        emit(.forwardAdded, detail: forwardInfo(entry).rule)
        return forwardInfo(entry)
    }

    private static func selector(_ guest: String?, rule: HostForward) throws(APIError) -> GuestSelector {
        guard let guest, !guest.isEmpty else { return .address(rule.guestAddress) }
        if rule.guestAddress != .any {
            throw .badRequest("give the guest either in the rule or as 'guest', not both")
        }
        if let mac = MACAddress(guest) { return .mac(mac) }
        if let ip = IPv4Address(guest) { return .address(ip) }
        guard guest.utf8.count <= 63, guest.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }) else {
            throw .badRequest("'\(guest)' is not an IPv4 address, a MAC address or a DHCP hostname")
        }
        return .hostname(guest)
    }

    /// The address a selector points at now, or nil when the guest has no lease.
    private func resolve(_ selector: GuestSelector) -> IPv4Address? {
        switch selector {
        case .address(let a): return a
        case .mac(let m): return leases[m]?.ip
        case .hostname(let h):
            // libslirp keeps a departed guest's lease, so a name can have several: prefer an
            // attached guest's, then the newest.
            let attached = Set(ports.values.compactMap(\.mac))
            return leases.filter { $0.value.hostname == h }
                .max { (attached.contains($0.key) ? 1 : 0, $0.value.sequence) < (attached.contains($1.key) ? 1 : 0, $1.value.sequence) }
                .map(\.value.ip)
        }
    }

    /// Hands an entry to libslirp aimed at `guestAddress`; returns the rule installed.
    private func install(_ entry: ForwardEntry, guestAddress: IPv4Address) throws(SlirpError) -> HostForward {
        var concrete = entry.rule
        concrete.guestAddress = guestAddress
        if let address6 = entry.hostAddress6, let guest6 = entry.guestAddress6 {
            try stack.addHostForward(concrete, ipv6Host: address6, ipv6Guest: guest6)
        } else {
            try stack.addHostForward(concrete)
        }
        return concrete
    }

    private func uninstall(_ entry: ForwardEntry) {
        guard let installed = entry.installed else { return }
        if let address6 = entry.hostAddress6 {
            try? stack.removeHostForward(installed, ipv6Host: address6)
        } else {
            try? stack.removeHostForward(installed)
        }
    }

    func removeForward(hostPart original: String) throws(APIError) -> ForwardInfo {
        let (hostPart, address6, _) = try splitIPv6(original)
        // The host side is parsed as a whole rule would be, so ports read the same both ways.
        guard let parsed = try? HostForward.parse(hostPart + "-:1"), !hostPart.contains("-") else {
            throw .badRequest("Invalid host forwarding rule '\(original)' (expected [tcp|udp]:[HOSTADDR]:HOSTPORT)")
        }
        let (proto, address, port) = (parsed.proto, parsed.hostAddress, parsed.hostPort)
        let side = HostSide(proto: proto, address: address, address6: address6, port: port)
        guard let index = forwards.firstIndex(where: { $0.matches(side) }) else {
            throw .notFound("no \(proto.rawValue) forward from \(address6.map { "[\($0)]" } ?? "\(address)"):\(port) on network \(config.name)")
        }
        let entry = forwards.remove(at: index)
        uninstall(entry)
        apiForwards.removeAll { $0.rule == entry.rule.rule }
        saveRuntimeState()
        log.info("forward removed: \(original)")
        emit(.forwardRemoved, detail: forwardInfo(entry).rule)
        return forwardInfo(entry)
    }

    /// Points forwards that follow `mac` or `hostname` at the guest's new address.
    func followLease(mac: MACAddress, lease: Lease) {
        for i in forwards.indices {
            let follows: Bool
            switch forwards[i].selector {
            case .mac(let m): follows = m == mac
            case .hostname(let h): follows = h == lease.hostname
            case .address: follows = false
            }
            guard follows, forwards[i].installed?.guestAddress != lease.ip else { continue }
            uninstall(forwards[i])
            do {
                forwards[i].installed = try install(forwards[i], guestAddress: lease.ip)
                log.info("forward \(forwards[i].rule.rule) now points at \(lease.ip) (\(forwards[i].selector.description))")
            } catch {
                forwards[i].installed = nil
                log.error("cannot re-point forward \(forwards[i].rule.rule) at \(lease.ip): \(error)")
            }
        }
    }

    // MARK: Guest forwards

    func guestForwardInfos() -> [GuestForwardInfo] {
        guestForwardRules.map(guestForwardInfo)
    }

    private func guestForwardInfo(_ rule: GuestForward) -> GuestForwardInfo {
        let target: String
        switch rule.target {
        case .command(let c): target = "cmd:\(c)"
        case .tcp(let h, let p): target = "tcp:\(h):\(p)"
        case .unix(let path): target = "unix:\(path)"
        }
        return GuestForwardInfo(network: config.name, rule: rule.rule, address: "\(rule.resolvedAddress(in: config.options))",
                                port: Int(rule.port), target: target)
    }

    func addGuestForward(_ text: String) throws(APIError) -> GuestForwardInfo {
        // A NUL would cut the command short on its way to libslirp; no control character belongs here.
        guard !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw .badRequest("Invalid guest forwarding rule '\(text.debugDescription)' (control characters)")
        }
        let rule: GuestForward
        do {
            rule = try GuestForward.parse(text)
            try config.options.checkGuestForward(rule, against: guestForwardRules)
        } catch {
            throw .badRequest(error.message)
        }
        do {
            try installGuestForward(rule)
        } catch {
            throw .conflict(error.message)
        }
        guestForwardRules.append(rule)
        refreshSecurityAddresses()
        apiGuestForwards.append(text)
        saveRuntimeState()
        log.info("guest forward added: \(text)")
        return guestForwardInfo(rule)
    }

    func removeGuestForward(_ text: String) throws(APIError) -> GuestForwardInfo {
        // Parsed as a whole rule would be, so the address and port read the same both ways.
        guard !text.contains("-"), let parsed = try? GuestForward.parse(text + "-cmd:x") else {
            throw .badRequest("Invalid guest forwarding rule '\(text)' (expected [tcp]:[ADDR]:PORT)")
        }
        let (address, port) = (parsed.address, parsed.port)
        let probe = GuestForward(address: address, port: port, target: .command(""), rule: text)
        let wanted = probe.resolvedAddress(in: config.options)
        guard let index = guestForwardRules.firstIndex(where: { $0.resolvedAddress(in: config.options) == wanted && $0.port == port }) else {
            throw .notFound("no guest forward for \(wanted):\(port) on network \(config.name)")
        }
        let rule = guestForwardRules.remove(at: index)
        refreshSecurityAddresses()
        stack.removeGuestForward(address: wanted, port: port)
        apiGuestForwards.removeAll { $0 == rule.rule }
        saveRuntimeState()
        log.info("guest forward removed: \(rule.rule)")
        return guestForwardInfo(rule)
    }

    // MARK: Events

    func emit(_ kind: Event.Kind, guest: GuestPort? = nil, mac: MACAddress? = nil, ip: IPv4Address? = nil,
              hostname: String? = nil, detail: String? = nil) {
        onEvent?(Event(time: wallClockTimestamp(), type: kind, network: config.name, guest: guest?.id.raw,
                       mac: (mac ?? guest?.mac).map { "\($0)" }, ip: ip.map { "\($0)" }, hostname: hostname, detail: detail))
    }
}

extension GuestPort {
    var counters: Counters {
        Counters(rxFrames: rxFrames, rxBytes: rxBytes, txFrames: txFrames, txBytes: txBytes, drops: drops)
    }
}
