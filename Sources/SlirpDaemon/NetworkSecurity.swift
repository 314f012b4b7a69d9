import FrameSwitch
import NetOptions
import NetServices
import PosixIO

// Port security's glue to a network: the addresses and leases `PortSecurity` (FrameSwitch,
// held by the FramePath) checks frames against.
//
// Theory of operation. The frame path asks port security about every guest frame the
// switch let through (FramePathGuest.swift); a refused frame is dropped, counted per reason
// for /metrics, and logged the 1st, 2nd, 4th... time per guest and reason
// (NetworkFramePath.swift). DHCP requests are snooped in `serveLocally` (`dhcpRefused`),
// and the DHCP server's events bind and unbind leased addresses. The NAT's unicast frames
// go to the port holding their destination address and are never flooded (FramePathNAT.swift).

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
        framePath.security.addresses = Self.securityAddresses(config.options, guestForwards: guestForwardRules)
        framePath.refreshNATIdentity()
        framePath.security.setStaticLeases(effectiveStaticLeases.map { ($0.address.value, $0.mac) })
    }

    /// DHCP snooping: whether this request is refused (chaddr other than the frame's
    /// source, or one client too many for the port).
    func dhcpRefused(_ port: GuestPort, _ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) -> Bool {
        guard let message = DHCPMessage.parse(frame: frame), message.op == 1 else { return false }
        guard case .drop(let violation, let claim, let owner) = framePath.security.inspectDHCP(chaddr: message.clientMAC, source: header.source, from: port.id) else { return false }
        framePath.refuse(port.state, violation, claim, owner: owner, sink: self)
        return true
    }

    /// A lease's end in the DHCP clock (wall seconds), on the monotonic clock port security keeps.
    func securityTime(leaseExpires: Int64) -> Int64 {
        let left = leaseExpires - Self.leaseClock
        return monotonicNanoseconds() &+ (left > Int64.max / 2_000_000_000 ? Int64.max / 2 : left * 1_000_000_000)
    }
}
