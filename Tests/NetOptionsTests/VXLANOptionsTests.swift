import NetOptions
import Testing

@Suite("VXLAN options")
struct VXLANOptionsTests {
    @Test func parsesIPv4WithDefaultAndExplicitPorts() throws {
        let o = try VXLANOptions.parse("vni=42,local=198.51.100.1,remote=198.51.100.2,remote=198.51.100.3:8472")
        #expect(o.vni == 42)
        #expect(o.local == VXLANEndpoint(.v4(IPv4Address(198, 51, 100, 1)), port: 4789))
        #expect(o.remotes == [VXLANEndpoint(.v4(IPv4Address(198, 51, 100, 2))), VXLANEndpoint(.v4(IPv4Address(198, 51, 100, 3)), port: 8472)])
        #expect(o.remotes[0].addressBytes == [198, 51, 100, 2])
        #expect(o.description == "vni=42,local=198.51.100.1,remote=198.51.100.2,remote=198.51.100.3:8472")
        // The canonical text parses back to the same value.
        #expect(try VXLANOptions.parse(o.description) == o)
    }

    @Test func parsesIPv6Underlays() throws {
        let o = try VXLANOptions.parse("vni=16777215,local=[2001:db8::1]:4790,remote=2001:db8::2,remote=[2001:db8::3]:5000")
        #expect(o.vni == 0xFF_FFFF)
        #expect(o.local.isIPv6 && o.local.port == 4790)
        #expect(o.remotes.map(\.port) == [4789, 5000])
        #expect(o.remotes[0].addressBytes.count == 16)
        #expect(o.remotes[0].addressBytes.last == 2)
    }

    @Test(arguments: [
        ("", "Parameter 'vni' is missing"),
        ("local=198.51.100.1,remote=198.51.100.2", "Parameter 'vni' is missing"),
        ("vni=16777216,local=198.51.100.1,remote=198.51.100.2",
         "Parameter 'vni' expects a number from 0 to 16777215 (RFC 7348's 24 bits), not '16777216'"),
        ("vni=x,local=198.51.100.1,remote=198.51.100.2", "Parameter 'vni' expects a number from 0 to 16777215 (RFC 7348's 24 bits), not 'x'"),
        ("vni=1,remote=198.51.100.2", "Parameter 'local' is missing"),
        ("vni=1,local=198.51.100.1", "Parameter 'remote' is missing (give at least one remote=ADDR[:PORT], or group=MCAST,dev=IF)"),
        ("vni=1,local=198.51.100.1,remote=198.51.100.2,group=239.1.1.1", "Parameter 'dev' is missing (group= needs the interface to join it on)"),
        ("vni=1,local=198.51.100.1,dev=eth0", "Parameter 'dev' needs 'group' (dev= names the interface to join the multicast group on)"),
        ("vni=1,local=198.51.100.1,group=198.51.100.7,dev=eth0", "VXLAN group '198.51.100.7' must be an IPv4 multicast address (224.0.0.0/4)"),
        ("vni=1,local=198.51.100.1,group=239.1.1,dev=eth0", "Invalid VXLAN group address '239.1.1' (expected an IPv4 multicast address[:PORT])"),
        ("vni=1,local=[2001:db8::1],group=ff05::42,dev=eth0", "VXLAN group 'ff05::42' must be an IPv4 multicast address (224.0.0.0/4)"),
        ("vni=1,local=[2001:db8::1],group=239.1.1.1,dev=eth0", "VXLAN group '239.1.1.1' is not of the local address's family (local=2001:db8::1)"),
        ("vni=1,local=198.51.100.1,group=239.1.1.1,dev=", "Parameter 'dev' expects an interface name (1 to 15 characters, no '/', ':' or spaces), not ''"),
        ("vni=1,local=198.51.100.1,group=239.1.1.1,dev=a-very-long-name0", "Parameter 'dev' expects an interface name (1 to 15 characters, no '/', ':' or spaces), not 'a-very-long-name0'"),
        ("vni=1,local=198.51.100.1,group=239.1.1.1,dev=../x", "Parameter 'dev' expects an interface name (1 to 15 characters, no '/', ':' or spaces), not '../x'"),
        ("vni=1,local=198.51.1,remote=198.51.100.2", "Invalid VXLAN local address '198.51.1' (expected IPv4[:PORT], IPv6 or [IPv6]:PORT)"),
        ("vni=1,local=198.51.100.1,remote=198.51.100.2:0", "Invalid VXLAN remote address '198.51.100.2:0' (expected IPv4[:PORT], IPv6 or [IPv6]:PORT)"),
        ("vni=1,local=198.51.100.1,remote=[2001:db8::2", "Invalid VXLAN remote address '[2001:db8::2' (expected IPv4[:PORT], IPv6 or [IPv6]:PORT)"),
        ("vni=1,local=198.51.100.1,remote=2001:db8::2", "VXLAN remote '2001:db8::2' is not of the local address's family (local=198.51.100.1)"),
        ("vni=1,local=198.51.100.1,remote=198.51.100.1", "VXLAN remote '198.51.100.1' is the local address itself"),
        ("vni=1,local=198.51.100.1,remote=198.51.100.2,remote=198.51.100.2:4789", "Duplicate VXLAN remote '198.51.100.2:4789'"),
        ("vni=1,local=198.51.100.1,remote=239.1.1.1", "VXLAN remote '239.1.1.1' must be a unicast address"),
        ("vni=1,local=0.0.0.0,remote=198.51.100.2", "Parameter 'local' must be a unicast address of this machine, not '0.0.0.0'"),
    ])
    func refusesWithAClearMessage(_ text: String, _ message: String) {
        #expect(throws: OptionError(message)) { try VXLANOptions.parse(text) }
    }

    @Test func parsesAMulticastUnderlay() throws {
        let o = try VXLANOptions.parse("vni=42,local=198.51.100.1,group=239.1.1.1,dev=eth0")
        #expect(o.group == VXLANEndpoint(.v4(IPv4Address(239, 1, 1, 1)), port: 4789))
        #expect(o.device == "eth0")
        #expect(o.remotes.isEmpty)
        #expect(o.description == "vni=42,local=198.51.100.1,group=239.1.1.1,dev=eth0")
        #expect(try VXLANOptions.parse(o.description) == o)
        // A group with unicast remotes beside it, and the group on another port.
        let both = try VXLANOptions.parse("vni=7,local=198.51.100.1,remote=198.51.100.2,group=239.1.1.2:8472,dev=br-ul0")
        #expect(both.group?.port == 8472 && both.remotes.count == 1 && both.device == "br-ul0")
        #expect(try VXLANOptions.parse(both.description) == both)
        // Without a group there is no device.
        #expect(try VXLANOptions.parse("vni=1,local=198.51.100.1,remote=198.51.100.2").device == nil)
    }

    @Test func dhcpEndBoundsThePool() throws {
        let o = try NetworkOptions.parse("dhcpstart=10.0.2.100,dhcpend=10.0.2.149")
        #expect(o.dhcpEnd == IPv4Address(10, 0, 2, 149))
        #expect(try NetworkOptions.parse("").dhcpEnd == nil)
        #expect(throws: OptionError("DHCP end doesn't belong to network")) { try NetworkOptions.parse("dhcpend=10.0.3.5") }
        #expect(throws: OptionError("DHCP end 10.0.2.20 is below the DHCP start 10.0.2.100")) {
            try NetworkOptions.parse("dhcpstart=10.0.2.100,dhcpend=10.0.2.20")
        }
        #expect(throws: OptionError("Failed to parse DHCP end address")) { try NetworkOptions.parse("dhcpend=x") }
    }
}
