import FrameSwitch
import NetOptions
import NetServices
import PosixIO

// Port security's glue to a network: what `PortSecurity` (FrameSwitch) and the switch's
// MAC caps decide, applied to guests and to the NAT's frames.
//
// Theory of operation. `fromGuest` asks `securityRefuses` about every guest frame the
// switch let through; a refused frame is dropped, counted per reason for /metrics, and
// logged the 1st, 2nd, 4th... time per guest and reason. DHCP requests are snooped in
// `serveLocally` (`dhcpRefused`), and the DHCP server's events bind and unbind leased
// addresses. `fromNAT` sends a unicast frame to the port holding its destination
// address (`natDestinationPort`) and drops one whose destination nobody holds and whose
// MAC the switch does not know: the NAT's frames are never flooded as unknown unicast.

extension Network {
    /// The NAT's addresses: a guest never sends from, or claims, any of them.
    static func securityAddresses(_ o: NetworkOptions, guestForwards: [GuestForward]) -> PortSecurity.Addresses {
        var reserved: Set<UInt32> = [o.host.value, o.dns.value]
        for rule in guestForwards { reserved.insert(rule.resolvedAddress(in: o).value) }
        let linkLocal2 = IPv6Key([0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], at: 0)
        return PortSecurity.Addresses(
            network: o.network.address.value, mask: o.network.mask, reserved: reserved,
            reserved6: [IPv6Key(o.ipv6Host.bytes, at: 0), IPv6Key(o.ipv6DNS.bytes, at: 0), linkLocal2])
    }

    /// Tells port security the NAT's addresses and the static leases again, after a
    /// change to guest forwards or static leases.
    func refreshSecurityAddresses() {
        security.addresses = Self.securityAddresses(config.options, guestForwards: guestForwardRules)
        security.setStaticLeases(effectiveStaticLeases.map { ($0.address.value, $0.mac) })
    }

    /// Counts and logs (paced, per guest) a frame port security dropped.
    func refuse(_ port: GuestPort, _ violation: SecurityViolation, _ claim: ClaimedAddress, owner: PortID?) {
        port.drops += 1
        port.securityDrops[violation, default: 0] += 1
        securityDrops[violation, default: 0] += 1
        let count = port.securityDrops[violation, default: 0]
        guard isLoggedOccurrence(count) else { return }
        let holder = owner.map { id in id == Network.natPort ? " of the NAT" : " held by \(ports[id]?.label ?? "port \(id.raw)")" } ?? ""
        log.warning("port security: \(port.label) \(violation.explanation) (\(claim)\(holder)); frame dropped (\(count) such from this guest so far)")
    }

    /// Whether the switch dropped a guest's frame for port security (counted and logged here).
    func switchRefused(_ port: GuestPort, _ header: EthernetHeader, _ reason: EthernetSwitch.DropReason) -> Bool {
        switch reason {
        case .natMAC: refuse(port, .natMAC, .mac(header.source), owner: Network.natPort)
        case .portMACLimit, .tableFull: refuse(port, .macLimit, .mac(header.source), owner: nil)
        case .invalidSource, .sameSegment: return false
        }
        return true
    }

    /// Whether port security drops this guest frame for the addresses it claims (counted and logged here).
    func securityRefuses(_ port: GuestPort, _ frame: UnsafeRawBufferPointer, now: Int64) -> Bool {
        guard case .drop(let violation, let claim, let owner) = security.inspect(frame: frame, from: port.id, now: now) else { return false }
        refuse(port, violation, claim, owner: owner)
        return true
    }

    /// DHCP snooping: whether this request is refused (chaddr other than the frame's
    /// source, or one client too many for the port).
    func dhcpRefused(_ port: GuestPort, _ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) -> Bool {
        guard let message = DHCPMessage.parse(frame: frame), message.op == 1 else { return false }
        guard case .drop(let violation, let claim, let owner) = security.inspectDHCP(chaddr: message.clientMAC, source: header.source, from: port.id) else { return false }
        refuse(port, violation, claim, owner: owner)
        return true
    }

    /// A lease's end in the DHCP clock (wall seconds), on the monotonic clock port security keeps.
    func securityTime(leaseExpires: Int64) -> Int64 {
        let left = leaseExpires - Self.leaseClock
        return monotonicNanoseconds() &+ (left > Int64.max / 2_000_000_000 ? Int64.max / 2 : left * 1_000_000_000)
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
        guard config.options.isolateGuests else { return nil }
        if header.etherType == ARPPacket.etherType, let arp = ARPPacket.parse(frame: frame), arp.operation == ARPPacket.request {
            return security.holder(ofIPv4: arp.targetIP)
        }
        if header.etherType == 0x86DD, let solicitation = NeighborSolicitation.parse(frame: frame) {
            return security.holder(ofIPv6: solicitation.targetKey)
        }
        return nil
    }
}
