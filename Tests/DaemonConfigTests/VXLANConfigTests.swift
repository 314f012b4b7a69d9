import NetOptions
import Testing

@testable import DaemonConfig

@Suite struct VXLANConfigTests {
    @Test func aNetworkTableTakesVXLANAndDHCPEnd() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            dhcpstart = "10.0.2.100"
            dhcpend = "10.0.2.149"
            vxlan = "vni=42,local=198.51.100.2,remote=198.51.100.1,remote=198.51.100.3:8472"
            """)
        let lab = try #require(config.networks.first)
        #expect(lab.options.dhcpEnd == IPv4Address(10, 0, 2, 149))
        let vxlan = try #require(lab.vxlan)
        #expect(vxlan.vni == 42)
        #expect(vxlan.remotes.map(\.description) == ["198.51.100.1", "198.51.100.3:8472"])
    }

    @Test func noVXLANKeyNoUplink() throws {
        let config = try parse("[[network]]\nname = \"lab\"\n")
        #expect(config.networks.first?.vxlan == nil)
    }

    @Test func aBadValueNamesItsLine() {
        expectError("[[network]]\nname = \"lab\"\nvxlan = \"vni=42,local=198.51.100.2,remote=2001:db8::1\"\n", line: 3,
                    "vxlan: VXLAN remote '2001:db8::1' is not of the local address's family (local=198.51.100.2)")
        expectError("[[network]]\nname = \"lab\"\nvxlan = 42\n", line: 3,
                    "'vxlan' must be a string, not an integer")
    }
}
