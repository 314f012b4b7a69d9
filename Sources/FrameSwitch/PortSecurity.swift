// PortSecurity: which guest port may use which IP address, and DHCP snooping.
//
// Theory of operation. Every frame a guest sends passes `inspect` after the switch has
// vetted its source MAC. The IPv4 and IPv6 source address (and the sender of an ARP
// packet, the target of a Neighbor Advertisement: what libslirp learns neighbours from)
// must be bound to the ingress port, or free to bind to it:
// - A DHCP lease binds its address to the port that asked for it (`leaseGranted`), and
//   reserves it for the lease's MAC: no other MAC may claim it while the lease runs. A
//   static lease reserves its address for its MAC for good.
// - Any other unicast address (a static IP configured in the guest, a SLAAC or
//   link-local IPv6 address, or one outside the network that guests use among
//   themselves, like Zephyr's 192.0.2.x samples) is bound to the first port that sends
//   from it: first claim.
// - Never bound to a guest: the gateway, DNS and every other NAT address (`reserved`),
//   the network's own network and broadcast addresses, and sources no host may use
//   (multicast, broadcast, loopback, 0.0.0.0/8).
// - Allowed without binding: DHCP's 0.0.0.0 (UDP to port 67 only), an ARP probe's
//   sender 0.0.0.0, and IPv6's unspecified source (DAD, MLD).
// A frame that fails is dropped; the caller counts it and logs it, naming the guest.
// A port may claim `Limits.ipv4PerPort` IPv4 and `ipv6PerPort` IPv6 addresses, and the
// IPv6 table holds `ipv6Total` at most; an IPv6 claim silent for `ipv6Idle` ends (IPv6
// privacy addresses come and go). Every binding of a port ends when it leaves; a lease
// binding ends when the lease does (`leaseEnded`, `expire`).
//
// The NAT's frames to a guest address go to the port that holds it (`holder`), never
// anywhere else: the bindings, not the MAC table, decide who receives a guest's traffic.
//
// DHCP snooping (`inspectDHCP`): a request's chaddr must be the frame's source MAC (the
// server keys leases by chaddr, so one MAC could otherwise take the whole pool), and a
// port may have at most `dhcpClientsPerPort` distinct clients for its whole life.

/// Why port security dropped a frame.
public enum SecurityViolation: String, Sendable, CaseIterable, Comparable {
    case natMAC = "nat_mac"
    case macLimit = "mac_limit"
    case reservedAddress = "reserved_address"
    case takenAddress = "taken_address"
    case invalidSource = "invalid_source"
    case addressLimit = "address_limit"
    case chaddrMismatch = "dhcp_chaddr_mismatch"
    case dhcpClientLimit = "dhcp_client_limit"
    /// Counted by the DHCP server (NetServices), which keeps offers and leases.
    case dhcpPortCap = "dhcp_port_cap"

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// For logs: what the guest tried.
    public var explanation: String {
        switch self {
        case .natMAC: "sends from one of the NAT's MACs"
        case .macLimit: "sends from more MACs than a guest may have"
        case .reservedAddress: "claims the gateway's, DNS's or another NAT address"
        case .takenAddress: "claims an address another guest holds"
        case .invalidSource: "sends from an address no host may use"
        case .addressLimit: "claims more addresses than a guest may hold"
        case .chaddrMismatch: "sends DHCP with a client MAC (chaddr) other than its frame's source"
        case .dhcpClientLimit: "asks DHCP for more clients than a guest may have"
        case .dhcpPortCap: "asks DHCP for more offers and leases at once than a guest may hold (max-macs=)"
        }
    }
}

/// An address a frame claimed, for logs.
public enum ClaimedAddress: Equatable, Sendable, CustomStringConvertible {
    case ipv4(UInt32)
    case ipv6(IPv6Key)
    case mac(MACAddress)

    public var description: String {
        switch self {
        case .ipv4(let a): return "\(a >> 24).\(a >> 16 & 0xFF).\(a >> 8 & 0xFF).\(a & 0xFF)"
        case .ipv6(let k):
            let groups = (0..<8).map { i in String(UInt16(truncatingIfNeeded: (i < 4 ? k.high : k.low) >> (48 - 16 * UInt64(i % 4))), radix: 16) }
            return groups.joined(separator: ":")
        case .mac(let m): return "\(m)"
        }
    }
}

public struct PortSecurity: Sendable {
    public struct Limits: Sendable, Equatable {
        /// IPv4 addresses one port may claim without DHCP. A guest has one; a namespace
        /// with a few interfaces or aliases a few more.
        public var ipv4PerPort: Int
        /// IPv6 addresses one port may hold: link-local, SLAAC, a few privacy addresses,
        /// for each of a few MACs.
        public var ipv6PerPort: Int
        /// IPv6 addresses the whole network holds (libslirp's own NDP table has 16).
        public var ipv6Total: Int
        /// Nanoseconds of silence after which an IPv6 claim ends.
        public var ipv6Idle: Int64
        /// DHCP clients (chaddrs) one port may have over its life. A QEMU guest is one;
        /// a namespace with a bridge a few; four stops one port from draining the pool.
        public var dhcpClientsPerPort: Int

        public init(ipv4PerPort: Int = 8, ipv6PerPort: Int = 16, ipv6Total: Int = 4096,
                    ipv6Idle: Int64 = 600_000_000_000, dhcpClientsPerPort: Int = 4) {
            self.ipv4PerPort = ipv4PerPort
            self.ipv6PerPort = ipv6PerPort
            self.ipv6Total = ipv6Total
            self.ipv6Idle = ipv6Idle
            self.dhcpClientsPerPort = dhcpClientsPerPort
        }
    }

    /// The network's addresses, in host byte order.
    public struct Addresses: Sendable, Equatable {
        public var network: UInt32
        public var mask: UInt32
        /// The gateway, DNS, guest-forward addresses: the NAT's, never a guest's.
        public var reserved: Set<UInt32>
        /// ipv6-host, ipv6-dns, and libslirp's link-local fe80::2.
        public var reserved6: Set<IPv6Key>

        public init(network: UInt32, mask: UInt32, reserved: Set<UInt32>, reserved6: Set<IPv6Key>) {
            self.network = network & mask
            self.mask = mask
            self.reserved = reserved
            self.reserved6 = reserved6
        }
    }

    public enum Verdict: Equatable, Sendable {
        case pass
        /// `owner`: the port that holds the address, when another does.
        case drop(SecurityViolation, ClaimedAddress, owner: PortID?)
    }

    struct Binding: Sendable {
        var port: PortID
        var mac: MACAddress
        /// When a lease binding ends (nanoseconds); .max for a claim.
        var expires: Int64
        var lastSeen: Int64
        var isLease: Bool { expires != .max }
    }

    struct PortState: Sendable {
        var ipv4Claims = 0
        var ipv6 = 0
        var dhcpClients: Set<MACAddress> = []
    }

    public var limits: Limits
    public var addresses: Addresses
    private var ipv4: [UInt32: Binding] = [:]
    private var ipv6: [IPv6Key: Binding] = [:]
    /// Addresses leased (or fixed by a static lease) to a MAC, until the time given.
    private var reservations: [UInt32: (mac: MACAddress, until: Int64)] = [:]
    private var portState: [PortID: PortState] = [:]

    public init(addresses: Addresses, limits: Limits = Limits()) {
        self.addresses = addresses
        self.limits = limits
    }

    // MARK: Frames from guests

    /// Checks the addresses a guest's frame claims, binding free ones to `port`.
    /// Frames that claim nothing (other ethertypes, tagged frames) pass.
    public mutating func inspect<C: RandomAccessCollection<UInt8>>(
        frame: C, from port: PortID, now: Int64
    ) -> Verdict where C.Index == Int {
        guard frame.count >= 14 else { return .pass }
        let s = frame.startIndex
        let mac = MACAddress(frame, at: 6)
        switch read16(frame, 12) {
        case 0x0806:
            guard let arp = ARPPacket.parse(frame: frame) else { return .pass }
            if arp.senderIP == 0 { return .pass }  // a probe (RFC 5227) claims nothing
            return claimIPv4(arp.senderIP, mac: mac, port: port, now: now)
        case 0x0800:
            guard frame.count >= 34, frame[s + 14] >> 4 == 4 else { return .pass }
            let source = read32(frame, 26)
            if source == 0 { return isDHCPRequest(frame) ? .pass : .drop(.invalidSource, .ipv4(0), owner: nil) }
            return claimIPv4(source, mac: mac, port: port, now: now)
        case 0x86DD:
            guard frame.count >= 54, frame[s + 14] >> 4 == 6 else { return .pass }
            let source = IPv6Key(frame, at: 22)
            if !(source.high == 0 && source.low == 0) {
                let verdict = claimIPv6(source, mac: mac, port: port, now: now)
                guard verdict == .pass else { return verdict }
            }
            // A Neighbor Advertisement tells libslirp where its target lives: the target is claimed too.
            if frame[s + 20] == 58, frame.count >= 78, frame[s + 54] == 136 {
                return claimIPv6(IPv6Key(frame, at: 62), mac: mac, port: port, now: now)
            }
            return .pass
        default:
            return .pass
        }
    }

    /// UDP to port 67: the one thing a host without an address may send.
    private func isDHCPRequest<C: RandomAccessCollection<UInt8>>(_ frame: C) -> Bool where C.Index == Int {
        let s = frame.startIndex
        let udp = 14 + Int(frame[s + 14] & 0x0F) * 4
        guard frame[s + 23] == 17, frame.count >= udp + 4 else { return false }
        return read16(frame, udp + 2) == 67
    }

    /// A source a host may use: not 0/8, loopback, multicast or broadcast, nor the
    /// network's own network or broadcast address.
    private func isUnicastSource(_ address: UInt32) -> Bool {
        let first = address >> 24
        guard first != 0, first != 127, first < 224 else { return false }
        // /31 and /32 have no network or broadcast address (RFC 3021).
        guard address & addresses.mask == addresses.network, addresses.mask & 0b10 == 0 else { return true }
        let host = address & ~addresses.mask
        return host != 0 && host != ~addresses.mask
    }

    mutating func claimIPv4(_ address: UInt32, mac: MACAddress, port: PortID, now: Int64) -> Verdict {
        if addresses.reserved.contains(address) { return .drop(.reservedAddress, .ipv4(address), owner: nil) }
        guard isUnicastSource(address) else { return .drop(.invalidSource, .ipv4(address), owner: nil) }
        if let binding = ipv4[address] {
            if binding.port == port { return .pass }
            return .drop(.takenAddress, .ipv4(address), owner: binding.port)
        }
        if let reservation = reservations[address], reservation.until > now {
            // Leased to this MAC: it comes back (a new connection, a restart) to its own address.
            guard reservation.mac == mac else { return .drop(.takenAddress, .ipv4(address), owner: nil) }
            // A lease binding, not a claim (.max means a claim): it does not count against the cap.
            ipv4[address] = Binding(port: port, mac: mac, expires: min(reservation.until, .max - 1), lastSeen: now)
            return .pass
        }
        guard portState[port, default: PortState()].ipv4Claims < limits.ipv4PerPort else {
            return .drop(.addressLimit, .ipv4(address), owner: nil)
        }
        ipv4[address] = Binding(port: port, mac: mac, expires: .max, lastSeen: now)
        portState[port, default: PortState()].ipv4Claims += 1
        return .pass
    }

    /// Not multicast (ff00::/8) nor loopback (::1); the unspecified address is handled apart.
    private func isIPv6UnicastSource(_ key: IPv6Key) -> Bool {
        key.high >> 56 != 0xFF && !(key.high == 0 && key.low == 1)
    }

    mutating func claimIPv6(_ address: IPv6Key, mac: MACAddress, port: PortID, now: Int64) -> Verdict {
        if addresses.reserved6.contains(address) { return .drop(.reservedAddress, .ipv6(address), owner: nil) }
        guard isIPv6UnicastSource(address) else { return .drop(.invalidSource, .ipv6(address), owner: nil) }
        if let binding = ipv6[address] {
            guard binding.port == port else { return .drop(.takenAddress, .ipv6(address), owner: binding.port) }
            // Refreshed at most once a second: no table write per frame.
            if now - binding.lastSeen > 1_000_000_000 { ipv6[address]?.lastSeen = now }
            return .pass
        }
        guard portState[port, default: PortState()].ipv6 < limits.ipv6PerPort, ipv6.count < limits.ipv6Total else {
            return .drop(.addressLimit, .ipv6(address), owner: nil)
        }
        ipv6[address] = Binding(port: port, mac: mac, expires: .max, lastSeen: now)
        portState[port, default: PortState()].ipv6 += 1
        return .pass
    }

    // MARK: DHCP snooping

    /// Checks a DHCP request from `port` whose Ethernet source is `source`.
    public mutating func inspectDHCP(chaddr: MACAddress, source: MACAddress, from port: PortID) -> Verdict {
        guard chaddr == source else { return .drop(.chaddrMismatch, .mac(chaddr), owner: nil) }
        var state = portState[port, default: PortState()]
        if state.dhcpClients.contains(chaddr) { return .pass }
        guard state.dhcpClients.count < limits.dhcpClientsPerPort else {
            return .drop(.dhcpClientLimit, .mac(chaddr), owner: nil)
        }
        state.dhcpClients.insert(chaddr)
        portState[port] = state
        return .pass
    }

    /// A lease for `address` went to `mac` on `port` until `expires` (nanoseconds on the
    /// caller's clock): the address is bound to `port` from now on, whoever claimed it before.
    public mutating func leaseGranted(_ address: UInt32, mac: MACAddress, port: PortID, expires: Int64, now: Int64) {
        unbindIPv4(address)
        reservations[address] = (mac, expires)
        ipv4[address] = Binding(port: port, mac: mac, expires: min(expires, .max - 1), lastSeen: now)
    }

    /// Reserves `address` for `mac` until `until` without binding it to a port: a lease
    /// read back at start, whose guest has not come back yet.
    public mutating func reserve(_ address: UInt32, mac: MACAddress, until: Int64) {
        reservations[address] = (mac, until)
    }

    /// The lease of `address` by `mac` ended (released or replaced).
    public mutating func leaseEnded(_ address: UInt32, mac: MACAddress) {
        guard let reservation = reservations[address], reservation.mac == mac else { return }
        reservations[address] = nil
        if let binding = ipv4[address], binding.mac == mac, binding.isLease { ipv4[address] = nil }
    }

    /// Addresses fixed for a MAC by static leases, for good; replaces the previous set.
    public mutating func setStaticLeases(_ fixed: [(address: UInt32, mac: MACAddress)]) {
        reservations = reservations.filter { $0.value.until != .max }
        for (address, mac) in fixed { reservations[address] = (mac, .max) }
    }

    private mutating func unbindIPv4(_ address: UInt32) {
        guard let old = ipv4.removeValue(forKey: address), !old.isLease else { return }
        portState[old.port]?.ipv4Claims -= 1
    }

    // MARK: Lookups and housekeeping

    /// The port that holds an IPv4 address.
    public func holder(ofIPv4 address: UInt32) -> PortID? { ipv4[address]?.port }

    /// The port that holds an IPv6 address.
    public func holder(ofIPv6 address: IPv6Key) -> PortID? { ipv6[address]?.port }

    public func ipv4Addresses(on port: PortID) -> [UInt32] { ipv4.filter { $0.value.port == port }.map(\.key).sorted() }

    public var ipv4Count: Int { ipv4.count }
    public var ipv6Count: Int { ipv6.count }

    /// Ends every binding of a port that left; returns its IPv6 addresses.
    @discardableResult
    public mutating func removePort(_ port: PortID) -> [IPv6Key] {
        ipv4 = ipv4.filter { $0.value.port != port }
        let gone = ipv6.filter { $0.value.port == port }.map(\.key)
        for key in gone { ipv6[key] = nil }
        portState[port] = nil
        return gone
    }

    /// Ends lease bindings past their lease and IPv6 claims silent for `ipv6Idle`;
    /// returns the IPv6 addresses that ended.
    @discardableResult
    public mutating func expire(now: Int64) -> [IPv6Key] {
        for (address, binding) in ipv4 where binding.expires <= now { ipv4[address] = nil }
        reservations = reservations.filter { $0.value.until > now }
        let idle = ipv6.filter { now - $0.value.lastSeen >= limits.ipv6Idle }
        for (key, binding) in idle {
            ipv6[key] = nil
            portState[binding.port]?.ipv6 -= 1
        }
        return idle.map(\.key)
    }
}
