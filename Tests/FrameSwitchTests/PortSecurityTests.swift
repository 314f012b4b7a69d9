import FrameSwitch
import Testing

@Suite("Port security")
struct PortSecurityTests {
    let a = PortID(1), b = PortID(2)
    let macA = MACAddress(raw: 0x5254_0000_000A)
    let macA2 = MACAddress(raw: 0x5254_0000_00A2)
    let macB = MACAddress(raw: 0x5254_0000_000B)
    let gatewayMAC = MACAddress(raw: 0x5255_0A00_0202)
    let second: Int64 = 1_000_000_000

    static func ip(_ d: UInt8) -> UInt32 { 0x0A00_0200 | UInt32(d) }
    static func key(_ bytes: [UInt8]) -> IPv6Key { IPv6Key(bytes, at: 0) }
    static let fec0: [UInt8] = [0xFE, 0xC0, 0, 0, 0, 0, 0, 0]
    static func v6(_ prefix: [UInt8], _ last: UInt8) -> [UInt8] { prefix + [0, 0, 0, 0, 0, 0, 0, last] }

    func security(_ limits: PortSecurity.Limits = PortSecurity.Limits()) -> PortSecurity {
        PortSecurity(addresses: PortSecurity.Addresses(
            network: 0x0A00_0200, mask: 0xFFFF_FF00, reserved: [Self.ip(2), Self.ip(3), Self.ip(4)],
            reserved6: [Self.key(Self.v6(Self.fec0, 2)), Self.key(Self.v6(Self.fec0, 3))]), limits: limits)
    }

    static func be(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

    /// An IPv4 frame carrying UDP to `port` (or TCP with proto 6).
    func ipv4(from mac: MACAddress, source: UInt32, destination: UInt32 = 0x0A00_0202, proto: UInt8 = 17, port: UInt16 = 80) -> [UInt8] {
        gatewayMAC.bytes + mac.bytes + [0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, proto, 0, 0]
            + Self.be(source) + Self.be(destination) + [0, 68, UInt8(port >> 8), UInt8(port & 0xFF), 0, 8, 0, 0]
    }

    func arp(_ operation: UInt8, from mac: MACAddress, sender: UInt32, target: UInt32) -> [UInt8] {
        MACAddress.broadcast.bytes + mac.bytes + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, operation]
            + mac.bytes + Self.be(sender) + MACAddress.zero.bytes + Self.be(target)
    }

    /// An IPv6 frame: ICMPv6 `icmpType` with `target` (NS/NA), or UDP.
    func ipv6(from mac: MACAddress, source: [UInt8], icmpType: UInt8? = nil, target: [UInt8] = []) -> [UInt8] {
        let payload: [UInt8] = icmpType.map { [$0, 0, 0, 0, 0x60, 0, 0, 0] + target } ?? [0, 1, 0, 53, 0, 8, 0, 0]
        return [0x33, 0x33, 0, 0, 0, 1] + mac.bytes + [0x86, 0xDD, 0x60, 0, 0, 0, 0, UInt8(payload.count),
                                                      icmpType == nil ? 17 : 58, 255]
            + source + Self.v6(Self.fec0, 2) + payload
    }

    @Test("the first port to send from a free address holds it; another port's frames from it are dropped")
    func firstClaim() {
        var s = security()
        #expect(s.inspect(frame: ipv4(from: macA, source: Self.ip(50)), from: a, now: 0) == .pass)
        #expect(s.holder(ofIPv4: Self.ip(50)) == a)
        #expect(s.inspect(frame: ipv4(from: macB, source: Self.ip(50)), from: b, now: 1) == .drop(.takenAddress, .ipv4(Self.ip(50)), owner: a))
        // A second MAC on the holder's own port (a namespace's bridge) may use it.
        #expect(s.inspect(frame: ipv4(from: macA2, source: Self.ip(50)), from: a, now: 2) == .pass)
    }

    @Test("ARP spoofing: a gratuitous ARP or an ARP reply claiming another guest's address is dropped")
    func arpSpoofing() {
        var s = security()
        s.leaseGranted(Self.ip(15), mac: macA, port: a, expires: 1000 * second, now: 0)
        #expect(s.inspect(frame: arp(1, from: macB, sender: Self.ip(15), target: Self.ip(15)), from: b, now: 1)
                == .drop(.takenAddress, .ipv4(Self.ip(15)), owner: a))
        #expect(s.inspect(frame: arp(2, from: macB, sender: Self.ip(15), target: Self.ip(2)), from: b, now: 1)
                == .drop(.takenAddress, .ipv4(Self.ip(15)), owner: a))
        #expect(s.inspect(frame: arp(2, from: macA, sender: Self.ip(15), target: Self.ip(2)), from: a, now: 1) == .pass)
        // An ARP probe (sender 0.0.0.0) claims nothing.
        #expect(s.inspect(frame: arp(1, from: macB, sender: 0, target: Self.ip(15)), from: b, now: 1) == .pass)
    }

    @Test("gateway spoofing: the gateway's, DNS's and guest-forward addresses are never a guest's")
    func gatewaySpoofing() {
        var s = security()
        for reserved in [Self.ip(2), Self.ip(3), Self.ip(4)] {
            #expect(s.inspect(frame: ipv4(from: macB, source: reserved), from: b, now: 0) == .drop(.reservedAddress, .ipv4(reserved), owner: nil))
            #expect(s.inspect(frame: arp(2, from: macB, sender: reserved, target: Self.ip(2)), from: b, now: 0)
                    == .drop(.reservedAddress, .ipv4(reserved), owner: nil))
            #expect(s.holder(ofIPv4: reserved) == nil)
        }
        #expect(s.inspect(frame: ipv6(from: macB, source: Self.v6(Self.fec0, 2)), from: b, now: 0)
                == .drop(.reservedAddress, .ipv6(Self.key(Self.v6(Self.fec0, 2))), owner: nil))
    }

    @Test("only DHCP may come from 0.0.0.0; the network and broadcast addresses, multicast and loopback are refused")
    func unboundSources() {
        var s = security()
        #expect(s.inspect(frame: ipv4(from: macA, source: 0, destination: 0xFFFF_FFFF, port: 67), from: a, now: 0) == .pass)
        #expect(s.inspect(frame: ipv4(from: macA, source: 0, port: 53), from: a, now: 0) == .drop(.invalidSource, .ipv4(0), owner: nil))
        for address in [0x0A00_0200, 0x0A00_02FF, 0x7F00_0001, 0xE000_0001, 0xFFFF_FFFF] as [UInt32] {
            #expect(s.inspect(frame: ipv4(from: macA, source: address), from: a, now: 0) == .drop(.invalidSource, .ipv4(address), owner: nil))
        }
        #expect(s.ipv4Count == 0)
        // Guests may talk among themselves on addresses of their own (Zephyr's 192.0.2.x): first claim.
        #expect(s.inspect(frame: ipv4(from: macA, source: 0xC000_0201), from: a, now: 0) == .pass)
        #expect(s.inspect(frame: ipv4(from: macB, source: 0xC000_0201), from: b, now: 0) == .drop(.takenAddress, .ipv4(0xC000_0201), owner: a))
    }

    @Test("a port claims at most ipv4PerPort addresses; a lease does not count, and the cap is the port's alone")
    func ipv4Cap() {
        var s = security(PortSecurity.Limits(ipv4PerPort: 2))
        #expect(s.inspect(frame: ipv4(from: macA, source: Self.ip(50)), from: a, now: 0) == .pass)
        #expect(s.inspect(frame: ipv4(from: macA, source: Self.ip(51)), from: a, now: 0) == .pass)
        #expect(s.inspect(frame: ipv4(from: macA, source: Self.ip(52)), from: a, now: 0) == .drop(.addressLimit, .ipv4(Self.ip(52)), owner: nil))
        s.leaseGranted(Self.ip(15), mac: macA, port: a, expires: 100 * second, now: 0)
        #expect(s.inspect(frame: ipv4(from: macA, source: Self.ip(15)), from: a, now: 0) == .pass)
        #expect(s.inspect(frame: ipv4(from: macB, source: Self.ip(52)), from: b, now: 0) == .pass)
    }

    @Test("a lease takes its address from a claimer, reserves it for its MAC, and ends with the lease")
    func leases() {
        var s = security()
        #expect(s.inspect(frame: ipv4(from: macB, source: Self.ip(15)), from: b, now: 0) == .pass)
        s.leaseGranted(Self.ip(15), mac: macA, port: a, expires: 100 * second, now: 1)
        #expect(s.holder(ofIPv4: Self.ip(15)) == a)
        #expect(s.inspect(frame: ipv4(from: macB, source: Self.ip(15)), from: b, now: 2) == .drop(.takenAddress, .ipv4(Self.ip(15)), owner: a))
        // The port leaves: the binding ends, the reservation stays for the lease's MAC.
        s.removePort(a)
        #expect(s.holder(ofIPv4: Self.ip(15)) == nil)
        #expect(s.inspect(frame: ipv4(from: macB, source: Self.ip(15)), from: b, now: 3) == .drop(.takenAddress, .ipv4(Self.ip(15)), owner: nil))
        let c = PortID(3)
        #expect(s.inspect(frame: ipv4(from: macA, source: Self.ip(15)), from: c, now: 4) == .pass)
        #expect(s.holder(ofIPv4: Self.ip(15)) == c)
        // The lease runs out: so does the binding, and the address is free again.
        s.expire(now: 100 * second)
        #expect(s.holder(ofIPv4: Self.ip(15)) == nil)
        #expect(s.inspect(frame: ipv4(from: macB, source: Self.ip(15)), from: b, now: 101 * second) == .pass)
        // Released: free at once.
        s.leaseGranted(Self.ip(16), mac: macA, port: c, expires: 1000 * second, now: 102 * second)
        s.leaseEnded(Self.ip(16), mac: macA)
        #expect(s.holder(ofIPv4: Self.ip(16)) == nil)
    }

    @Test("a static lease's address is its MAC's alone")
    func staticLeases() {
        var s = security()
        s.setStaticLeases([(Self.ip(40), macA)])
        #expect(s.inspect(frame: ipv4(from: macB, source: Self.ip(40)), from: b, now: 0) == .drop(.takenAddress, .ipv4(Self.ip(40)), owner: nil))
        #expect(s.inspect(frame: ipv4(from: macA, source: Self.ip(40)), from: a, now: 0) == .pass)
        s.expire(now: 1_000_000 * second)
        #expect(s.holder(ofIPv4: Self.ip(40)) == a)
    }

    @Test("IPv6: unicast addresses are claimed; the unspecified source passes; multicast and loopback are refused")
    func ipv6Sources() {
        var s = security()
        let linkLocal = [0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0, 0xFF, 0xFE, 0, 0, 0x0A] as [UInt8]
        #expect(s.inspect(frame: ipv6(from: macA, source: linkLocal), from: a, now: 0) == .pass)
        #expect(s.inspect(frame: ipv6(from: macA, source: Self.v6(Self.fec0, 0x10)), from: a, now: 0) == .pass)
        #expect(s.inspect(frame: ipv6(from: macB, source: [UInt8](repeating: 0, count: 16), icmpType: 135,
                                      target: Self.v6(Self.fec0, 0x10)), from: b, now: 0) == .pass)
        let documentation = [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] as [UInt8]
        #expect(s.inspect(frame: ipv6(from: macB, source: documentation), from: b, now: 0) == .pass)
        let multicast = [0xFF, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] as [UInt8]
        #expect(s.inspect(frame: ipv6(from: macB, source: multicast), from: b, now: 0) == .drop(.invalidSource, .ipv6(Self.key(multicast)), owner: nil))
        let loopback = [UInt8](repeating: 0, count: 15) + [1]
        #expect(s.inspect(frame: ipv6(from: macB, source: loopback), from: b, now: 0) == .drop(.invalidSource, .ipv6(Self.key(loopback)), owner: nil))
        #expect(s.inspect(frame: ipv6(from: macB, source: linkLocal), from: b, now: 0) == .drop(.takenAddress, .ipv6(Self.key(linkLocal)), owner: a))
        #expect(s.holder(ofIPv6: Self.key(linkLocal)) == a)
    }

    @Test("a Neighbor Advertisement claiming another port's address, or the gateway's, is dropped")
    func ndpSpoofing() {
        var s = security()
        let bLinkLocal = [0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0B] as [UInt8]
        #expect(s.inspect(frame: ipv6(from: macA, source: Self.v6(Self.fec0, 0x10)), from: a, now: 0) == .pass)
        #expect(s.inspect(frame: ipv6(from: macB, source: bLinkLocal, icmpType: 136, target: Self.v6(Self.fec0, 0x10)), from: b, now: 1)
                == .drop(.takenAddress, .ipv6(Self.key(Self.v6(Self.fec0, 0x10))), owner: a))
        #expect(s.inspect(frame: ipv6(from: macB, source: bLinkLocal, icmpType: 136, target: Self.v6(Self.fec0, 2)), from: b, now: 1)
                == .drop(.reservedAddress, .ipv6(Self.key(Self.v6(Self.fec0, 2))), owner: nil))
        #expect(s.inspect(frame: ipv6(from: macB, source: bLinkLocal, icmpType: 136, target: bLinkLocal), from: b, now: 1) == .pass)
    }

    @Test("the IPv6 table is capped per port and overall, and idle claims expire")
    func ipv6Caps() {
        var s = security(PortSecurity.Limits(ipv6PerPort: 4, ipv6Total: 6, ipv6Idle: 60 * second))
        var dropped = 0
        for i in 0..<100_000 {
            let source = Self.fec0 + [0, 0, 0, 0, UInt8(i >> 16 & 0xFF), UInt8(i >> 8 & 0xFF), UInt8(i & 0xFF), 1]
            if s.inspect(frame: ipv6(from: macA, source: source), from: a, now: 0) != .pass { dropped += 1 }
        }
        #expect(dropped == 100_000 - 4)
        #expect(s.ipv6Count == 4)
        #expect(s.inspect(frame: ipv6(from: macB, source: Self.v6(Self.fec0, 0x20)), from: b, now: 0) == .pass)
        #expect(s.inspect(frame: ipv6(from: macB, source: Self.v6(Self.fec0, 0x21)), from: b, now: 0) == .pass)
        #expect(s.inspect(frame: ipv6(from: macB, source: Self.v6(Self.fec0, 0x22)), from: b, now: 0)
                == .drop(.addressLimit, .ipv6(Self.key(Self.v6(Self.fec0, 0x22))), owner: nil))
        // b keeps one of its addresses alive; the rest go silent and expire.
        #expect(s.inspect(frame: ipv6(from: macB, source: Self.v6(Self.fec0, 0x20)), from: b, now: 30 * second) == .pass)
        let expired = s.expire(now: 61 * second)
        #expect(expired.count == 5)
        #expect(s.holder(ofIPv6: Self.key(Self.v6(Self.fec0, 0x20))) == b)
        #expect(s.inspect(frame: ipv6(from: macA, source: Self.v6(Self.fec0, 0x30)), from: a, now: 62 * second) == .pass)
        #expect(s.removePort(b).count == 1)
    }

    @Test("DHCP snooping: chaddr must be the frame's source, and a port has at most dhcpClientsPerPort clients")
    func dhcpSnooping() {
        var s = security(PortSecurity.Limits(dhcpClientsPerPort: 2))
        #expect(s.inspectDHCP(chaddr: macB, source: macA, from: a) == .drop(.chaddrMismatch, .mac(macB), owner: nil))
        #expect(s.inspectDHCP(chaddr: macA, source: macA, from: a) == .pass)
        #expect(s.inspectDHCP(chaddr: macA, source: macA, from: a) == .pass)
        #expect(s.inspectDHCP(chaddr: macA2, source: macA2, from: a) == .pass)
        let third = MACAddress(raw: 0x5254_0000_00A3)
        #expect(s.inspectDHCP(chaddr: third, source: third, from: a) == .drop(.dhcpClientLimit, .mac(third), owner: nil))
        #expect(s.inspectDHCP(chaddr: macB, source: macB, from: b) == .pass)
        // The cap is for the port's life, not undone by its clients' leases ending.
        s.removePort(a)
        #expect(s.inspectDHCP(chaddr: third, source: third, from: PortID(9)) == .pass)
    }

    @Test("frames that claim nothing pass untouched")
    func others() {
        var s = security()
        let experimental = MACAddress.broadcast.bytes + macA.bytes + [0x88, 0xB5] + [UInt8](repeating: 0, count: 46)
        #expect(s.inspect(frame: experimental, from: a, now: 0) == .pass)
        #expect(s.inspect(frame: Array(experimental.prefix(10)), from: a, now: 0) == .pass)
        #expect(s.ipv4Count == 0 && s.ipv6Count == 0)
    }

    @Test("claimed addresses print as a person reads them")
    func descriptions() {
        #expect(ClaimedAddress.ipv4(Self.ip(15)).description == "10.0.2.15")
        #expect(ClaimedAddress.ipv6(Self.key(Self.v6(Self.fec0, 0x10))).description == "fec0:0:0:0:0:0:0:10")
        #expect(ClaimedAddress.mac(macA).description == "52:54:00:00:00:0a")
    }
}
