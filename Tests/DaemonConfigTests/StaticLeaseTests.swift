import NetOptions
import Testing

@testable import DaemonConfig

/// A network's leases as `MAC IP HOSTNAME` lines; StaticLease's own module is not
/// imported here, so the leases are compared through their descriptions.
private func leases(_ network: NetworkConfig) -> [String] {
    network.staticLeases.map { "\($0.mac) \($0.address) \($0.hostname ?? "-")" }
}

/// A network on QEMU's default 10.0.2.0/24 with these lines after its name.
private func network(_ lines: String) -> String {
    "[[network]]\nname = \"lab\"\n" + lines
}

@Suite struct StaticLeaseTests {
    @Test func arrayOfTables() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            net = "192.168.0.0/24"

            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "192.168.0.50"
            hostname = "web1"

            [[network.static-lease]]
            ip = "192.168.0.9"
            mac = "52-54-00-AB-CD-EF"

            [[network]]
            name = "plain"

            [[network]]
            name = "other"
            [[network.static-lease]]
            mac = "52:54:00:00:00:01"
            ip = "10.0.2.200"
            """)
        #expect(config.networks.map(leases) == [
            ["52:54:00:12:34:56 192.168.0.50 web1", "52:54:00:ab:cd:ef 192.168.0.9 -"],
            [],
            ["52:54:00:00:00:01 10.0.2.200 -"],
        ])
    }

    @Test func inlineTables() throws {
        let config = try parse("""
            [[network]]
            static-lease = [
                { mac = "52:54:00:12:34:56", ip = "10.0.2.50", hostname = "web1" },
                { mac = "52:54:00:12:34:57", ip = "10.0.2.16" },
            ]
            name = "lab"
            mtu = 1500
            """)
        #expect(config.networks.map(leases) == [["52:54:00:12:34:56 10.0.2.50 web1", "52:54:00:12:34:57 10.0.2.16 -"]])
        #expect(config.networks.first?.mtu == 1500)
        let empty = try parse(network("static-lease = []\n"))
        #expect(empty.networks.map(leases) == [[]])
    }

    @Test func hostnamesThatAreOneLabel() throws {
        let long = String(repeating: "a", count: 63)
        let config = try parse(network("""
            static-lease = [
                { mac = "52:54:00:00:00:01", ip = "10.0.2.50", hostname = "\(long)" },
                { mac = "52:54:00:00:00:02", ip = "10.0.2.51", hostname = "Web-01" },
            ]
            """))
        #expect(config.networks.first?.staticLeases.map(\.hostname) == [long, "Web-01"])
    }

    @Test func theFormsCannotBeMixed() throws {
        // TOML's rule: an array written inline cannot be extended by [[...]] headers.
        let error = try #require(throws: ConfigError.self) {
            try parse(network("""
                static-lease = [{ mac = "52:54:00:00:00:01", ip = "10.0.2.50" }]
                [[network.static-lease]]
                mac = "52:54:00:00:00:02"
                ip = "10.0.2.51"
                """))
        }
        #expect(error.line == 4)
    }
}

@Suite struct StaticLeaseErrorTests {
    @Test func wrongShapes() {
        expectError(network("static-lease = \"52:54:00:12:34:56\"\n"), line: 3,
                    "'static-lease' must be an array of tables ([[network.static-lease]]), not a string")
        expectError(network("static-lease = [{ mac = \"52:54:00:12:34:56\", ip = \"10.0.2.50\" }, \"x\"]\n"), line: 3,
                    "'static-lease' must be an array of tables ([[network.static-lease]]), but element 2 is a string")
        expectError(network("""

            [network.static-lease]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.50"
            """), line: 4, "'static-lease' must be an array of tables ([[network.static-lease]]), not a table")
        expectError(network("""
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = 50
            """), line: 5, "'ip' must be a string, not an integer")
        expectError(network("""
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.50"
            hostname = true
            """), line: 6, "'hostname' must be a string, not a boolean")
    }

    @Test func unknownKeys() {
        expectError(network("""
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.50"
            [[network.static-lease]]
            mac = "52:54:00:12:34:57"
            ip = "10.0.2.51"
            hostnmae = "web2"
            """), line: 9, "unknown key 'hostnmae' in static lease 2 (did you mean 'hostname'?)")
        expectError(network("""
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            address = "10.0.2.50"
            """), line: 5, "unknown key 'address' in static lease 1")
        // Inline keys have no line of their own; the inline table's line stands in.
        expectError(network("""
            static-lease = [
                { mac = "52:54:00:12:34:56", ip = "10.0.2.50" },

                { mac = "52:54:00:12:34:57", ipp = "10.0.2.51" },
            ]
            """), line: 6, "unknown key 'ipp' in static lease 2 (did you mean 'ip'?)")
    }

    @Test func missingKeys() {
        expectError(network("""
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.50"

            [[network.static-lease]]
            ip = "10.0.2.51"
            """), line: 7, "static lease 2 without a MAC (add mac = \"...\")")
        expectError(network("""
            [[network.static-lease]]
            hostname = "web1"
            mac = "52:54:00:12:34:56"
            """), line: 3, "static lease 1 without an IP (add ip = \"...\")")
        expectError(network("""
            static-lease = [
                {},
            ]
            """), line: 4, "static lease 1 without a MAC (add mac = \"...\")")
    }

    @Test(arguments: ["52:54:00:12:34", "52:54:00:12:34:56:78", "52:54:00:12:34:5g", "525400123456", "5:54:00:12:34:56", ""])
    func badMAC(mac: String) {
        expectError(network("""
            [[network.static-lease]]
            ip = "10.0.2.50"
            mac = "\(mac)"
            """), line: 5, "static lease 1: invalid MAC '\(mac)' (expected six hex pairs such as 52:54:00:12:34:56)")
    }

    @Test(arguments: [("01:00:5E:00:00:01", "01:00:5e:00:00:01"), ("ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff"),
                      ("33:33:00:00:00:01", "33:33:00:00:00:01")])
    func groupMAC(mac: String, shown: String) {
        expectError(network("""
            [[network.static-lease]]
            mac = "\(mac)"
            ip = "10.0.2.50"
            """), line: 4, "static lease 1: MAC \(shown) is a group (multicast) address, not a guest's")
    }

    @Test(arguments: ["10.0.2", "10.0.2.256", "010.0.2.50", "10.0.2.50 ", "fec0::50", ""])
    func badIP(ip: String) {
        expectError(network("""
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "\(ip)"
            """), line: 5, "static lease 1: invalid IP '\(ip)' (expected an IPv4 address such as 10.0.2.50)")
    }

    @Test func ipOutsideTheNetwork() {
        expectError(network("""
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.50"
            [[network.static-lease]]
            mac = "52:54:00:12:34:57"
            ip = "10.0.3.5"
            """), line: 8, "static lease 2: IP 10.0.3.5 is outside the network 10.0.2.0/24")
        // The network is the parsed one, whether from a key or from `options`.
        expectError("""
            [[network]]
            name = "lab"
            options = "net=192.168.0.0/16"
            static-lease = [{ mac = "52:54:00:12:34:56", ip = "10.0.2.50" }]
            """, line: 4, "static lease 1: IP 10.0.2.50 is outside the network 192.168.0.0/16")
    }

    @Test(arguments: [
        ("10.0.2.2", "the gateway's address (host)"),
        ("10.0.2.3", "the DNS address (dns)"),
        ("10.0.2.0", "the network address"),
        ("10.0.2.255", "the broadcast address"),
        ("10.0.2.4", "a guest forward's address (guestfwd)"),
        ("10.0.2.100", "a guest forward's address (guestfwd)"),
    ])
    func reservedIP(ip: String, what: String) {
        expectError(network("""
            guestfwd = ["tcp:10.0.2.100:80-tcp:127.0.0.1:8000", "tcp::81-tcp:127.0.0.1:8001"]
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "\(ip)"
            """), line: 6, "static lease 1: IP \(ip) is \(what)")
    }

    @Test func reservedIPFollowsTheOptions() throws {
        expectError("""
            [[network]]
            name = "lab"
            net = "192.168.7.0/24"
            host = "192.168.7.1"
            dns = "192.168.7.53"
            static-lease = [
                { mac = "52:54:00:00:00:01", ip = "192.168.7.2" },
                { mac = "52:54:00:00:00:02", ip = "192.168.7.53" },
            ]
            """, line: 8, "static lease 2: IP 192.168.7.53 is the DNS address (dns)")
        // A /30's first and last addresses are the network and broadcast addresses.
        let slash30 = """
            [[network]]
            name = "lab"
            net = "10.9.0.0/30"
            host = "10.9.0.1"
            dns = "10.9.0.2"
            """
        expectError(slash30 + "\nstatic-lease = [{ mac = \"52:54:00:00:00:01\", ip = \"10.9.0.3\" }]", line: 6,
                    "static lease 1: IP 10.9.0.3 is the broadcast address")
        expectError(slash30 + "\nstatic-lease = [{ mac = \"52:54:00:00:00:01\", ip = \"10.9.0.0\" }]", line: 6,
                    "static lease 1: IP 10.9.0.0 is the network address")
    }

    @Test func duplicates() {
        expectError(network("""
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.50"
            [[network.static-lease]]
            mac = "52:54:00:12:34:57"
            ip = "10.0.2.51"
            [[network.static-lease]]
            mac = "52-54-00-12-34-56"
            ip = "10.0.2.52"
            """), line: 10, "static lease 3: MAC 52:54:00:12:34:56 is already in static lease 1")
        expectError(network("""
            static-lease = [
                { mac = "52:54:00:12:34:56", ip = "10.0.2.50" },
                { mac = "52:54:00:12:34:57", ip = "10.0.2.50" },
            ]
            """), line: 5, "static lease 2: IP 10.0.2.50 is already in static lease 1")
        // Leases belong to their network: the same MAC and IP may recur in another.
        #expect(throws: Never.self) {
            try parse("""
                [[network]]
                name = "a"
                static-lease = [{ mac = "52:54:00:12:34:56", ip = "10.0.2.50" }]
                [[network]]
                name = "b"
                static-lease = [{ mac = "52:54:00:12:34:56", ip = "10.0.2.50" }]
                """)
        }
    }

    @Test(arguments: ["", String(repeating: "a", count: 64), "web_1", "web1.lab", "web 1", "wéb"])
    func badHostname(hostname: String) {
        expectError(network("""
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.50"
            hostname = "\(hostname)"
            """), line: 6,
            "static lease 1: invalid hostname '\(hostname)' (a single DNS label: 1 to 63 letters, digits and '-')")
    }

    @Test func linesInALaterNetwork() {
        // Lease numbering, and the lines, start again in each network.
        expectError("""
            [[network]]
            name = "a"
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.50"

            [[network]]
            name = "b"
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.50"
            [[network.static-lease]]
            mac = "52:54:00:12:34:57"
            ip = "10.0.2.2"
            """, line: 14, "static lease 2: IP 10.0.2.2 is the gateway's address (host)")
    }

    @Test func optionErrorsComeBeforePlacement() {
        // Where a lease's IP may go is known only once the options are parsed.
        expectError(network("""
            net = "10.0.0.0/40"
            [[network.static-lease]]
            mac = "52:54:00:12:34:56"
            ip = "10.0.2.3"
            """), line: 3, "Invalid netmask provided (must be in range 4-32)")
    }
}
