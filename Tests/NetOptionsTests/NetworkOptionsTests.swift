import Testing
import NetOptions

private func v4(_ text: String) -> IPv4Address { IPv4Address(text)! }
private func v6(_ text: String) -> IPv6Address { IPv6Address(text)! }

@Suite struct NetworkOptionsTests {
    @Test func defaultsAreQEMUs() throws {
        for options in [NetworkOptions(), try NetworkOptions.parse(""), try NetworkOptions.parse("user,id=n0")] {
            #expect(options.network.description == "10.0.2.0/24")
            #expect(options.network.mask == 0xFFFF_FF00)
            #expect(options.host == v4("10.0.2.2"))
            #expect(options.dns == v4("10.0.2.3"))
            #expect(options.dhcpStart == v4("10.0.2.15"))
            #expect(options.restricted == false)
            #expect(options.ipv4 && options.ipv6)
            #expect(options.ipv6Prefix.description == "fec0::")
            #expect(options.ipv6PrefixLength == 64)
            #expect(options.ipv6Host.description == "fec0::2")
            #expect(options.ipv6DNS.description == "fec0::3")
            #expect(options.hostname == nil && options.domainName == nil && options.dnsSearch.isEmpty)
            #expect(options.tftpRoot == nil && options.tftpServerName == nil && options.bootfile == nil)
            #expect(options.hostForwards.isEmpty && options.guestForwards.isEmpty)
        }
        #expect(try NetworkOptions.parse("") == NetworkOptions())
    }

    @Test func joinedStringsAddUp() throws {
        // Repeated -o: later keys add (hostfwd) or override (net); a pasted `user,` is dropped.
        let joined = NetworkOptions.join(["user,id=n0,net=10.9.0.0/24,hostfwd=tcp::1-:1", "",
                                          "user,tftp=/srv,hostfwd=tcp::2-:2", "user", "bootfile=a"])
        #expect(joined == "user,id=n0,net=10.9.0.0/24,hostfwd=tcp::1-:1,tftp=/srv,hostfwd=tcp::2-:2,bootfile=a")
        let options = try NetworkOptions.parse(joined)
        #expect(options.network.description == "10.9.0.0/24")
        #expect(options.tftpRoot == "/srv" && options.bootfile == "a")
        #expect(options.hostForwards.count == 2)
        #expect(try NetworkOptions.parse(NetworkOptions.join(["net=10.9.0.0/24", "net=10.8.0.0/24"])).network.description == "10.8.0.0/24")
        // A piece ending in an escaped comma keeps it; one ending in a separator gets no second.
        #expect(NetworkOptions.join(["tftp=/a,,", "bootfile=b"]) == "tftp=/a,,,bootfile=b")
        #expect(try NetworkOptions.parse(NetworkOptions.join(["tftp=/a,,", "bootfile=b"])).tftpRoot == "/a,")
        #expect(NetworkOptions.join(["tftp=/a,", "bootfile=b"]) == "tftp=/a,bootfile=b")
    }

    @Test func derivesFromPrefixLength() throws {
        let options = try NetworkOptions.parse("net=192.168.0.0/24")
        #expect(options.network == IPv4Network(address: v4("192.168.0.0"), prefixLength: 24))
        #expect(options.host == v4("192.168.0.2"))
        #expect(options.dns == v4("192.168.0.3"))
        #expect(options.dhcpStart == v4("192.168.0.15"))
    }

    @Test func derivesFromDottedNetmask() throws {
        let options = try NetworkOptions.parse("net=10.9.0.0/255.255.0.0")
        #expect(options.network.description == "10.9.0.0/16")
        #expect(options.host == v4("10.9.2.2"))
        #expect(options.dns == v4("10.9.2.3"))
        #expect(options.dhcpStart == v4("10.9.2.15"))
    }

    @Test func masksTheNetworkAddress() throws {
        let options = try NetworkOptions.parse("net=10.0.5.77/24")
        #expect(options.network.address == v4("10.0.5.0"))
        #expect(options.host == v4("10.0.5.2"))
        #expect(try NetworkOptions.parse("net=10.0.2.0/ 24").network.prefixLength == 24)  // strtol skips blanks
        #expect(try NetworkOptions.parse("net=10.0.0.0/240.0.0.0").network.prefixLength == 4)
    }

    // Without a mask QEMU guesses one by address class; checked with the 7.2 binary.
    @Test(arguments: [
        ("10.5.5.0", "10.0.0.0/8", "10.0.2.2"),
        ("172.20.5.0", "172.16.0.0/12", "172.16.2.2"),
        ("150.1.5.0", "150.1.0.0/16", "150.1.2.2"),
        ("192.168.5.0", "192.168.0.0/16", "192.168.2.2"),
        ("198.18.5.0", "198.18.0.0/15", "198.18.2.2"),
        ("224.1.2.16", "224.1.2.0/24", "224.1.2.2"),
        ("200.1.2.16", "200.1.2.16/28", "200.1.2.18"),
    ])
    func classfulNetworks(_ net: String, _ network: String, _ host: String) throws {
        let options = try NetworkOptions.parse("net=\(net)")
        #expect(options.network.description == network)
        #expect(options.host == v4(host))
    }

    @Test func legacyIPKeyMeansSlash24() throws {
        let options = try NetworkOptions.parse("ip=10.1.2.3")
        #expect(options.network.description == "10.1.2.0/24")
        #expect(options.host == v4("10.1.2.2"))
        // net= wins over ip=.
        #expect(try NetworkOptions.parse("ip=10.1.2.3,net=10.5.0.0/16").network.description == "10.5.0.0/16")
    }

    @Test func explicitAddresses() throws {
        let options = try NetworkOptions.parse(
            "net=172.30.0.0/16,host=172.30.0.1,dns=172.30.0.53,dhcpstart=172.30.1.100")
        #expect(options.network.description == "172.30.0.0/16")
        #expect(options.host == v4("172.30.0.1"))
        #expect(options.dns == v4("172.30.0.53"))
        #expect(options.dhcpStart == v4("172.30.1.100"))
    }

    @Test func dnsOutsideTheNetworkNeedsNoRestrict() throws {
        #expect(try NetworkOptions.parse("dns=10.0.3.3").dns == v4("10.0.3.3"))
    }

    @Test func booleans() throws {
        for word in ["on", "yes", "true", "y"] {
            #expect(try NetworkOptions.parse("restrict=\(word)").restricted)
        }
        for word in ["off", "no", "false", "n"] {
            #expect(try NetworkOptions.parse("restrict=on,restrict=\(word)").restricted == false)
        }
        #expect(try NetworkOptions.parse("user,restrict").restricted)
        #expect(try NetworkOptions.parse("user,restrict=on,norestrict").restricted == false)
    }

    // net_init_slirp: naming one family "on" without the other turns the other off.
    @Test func addressFamilies() throws {
        let v4only = try NetworkOptions.parse("ipv4=on")
        #expect(v4only.ipv4 && !v4only.ipv6)
        let v6only = try NetworkOptions.parse("ipv6=on")
        #expect(!v6only.ipv4 && v6only.ipv6)
        let both = try NetworkOptions.parse("ipv4=on,ipv6=on,net=10.1.0.0/16")
        #expect(both.ipv4 && both.ipv6)
        let noV6 = try NetworkOptions.parse("ipv6=off")
        #expect(noV6.ipv4 && !noV6.ipv6)
        let noV4 = try NetworkOptions.parse("ipv4=off")
        #expect(!noV4.ipv4 && noV4.ipv6)
    }

    @Test func ipv6Settings() throws {
        let options = try NetworkOptions.parse("ipv6-net=fd00:1:2:3::/64")
        #expect(options.ipv6Prefix == v6("fd00:1:2:3::"))
        #expect(options.ipv6PrefixLength == 64)
        #expect(options.ipv6Host == v6("fd00:1:2:3::2"))
        #expect(options.ipv6DNS == v6("fd00:1:2:3::3"))

        let explicit = try NetworkOptions.parse("ipv6-net=fd00::/48,ipv6-host=fd00:0:0:9::1,ipv6-dns=fd00::53")
        #expect(explicit.ipv6PrefixLength == 48)
        #expect(explicit.ipv6Host == v6("fd00:0:0:9::1"))
        #expect(explicit.ipv6DNS == v6("fd00::53"))

        #expect(try NetworkOptions.parse("ipv6-net=fd00::").ipv6PrefixLength == 64)
        #expect(try NetworkOptions.parse("ipv6-net=fd00::/0").ipv6PrefixLength == 64)  // QEMU: 0 means 64
        #expect(try NetworkOptions.parse("ipv6-net=fd00::/+56").ipv6PrefixLength == 56)
        #expect(try NetworkOptions.parse("ipv6-prefix=fd00::,ipv6-prefixlen=0x30").ipv6PrefixLength == 48)
        // The prefix is not masked and the defaults OR into its last byte, as in QEMU.
        #expect(try NetworkOptions.parse("ipv6-net=fd00::1/64").ipv6Host == v6("fd00::3"))
        // ipv6-net replaces ipv6-prefix wherever it stands.
        #expect(try NetworkOptions.parse("ipv6-net=fd00::/64,ipv6-prefix=fd01::").ipv6Prefix == v6("fd00::"))
        #expect(try NetworkOptions.parse("ipv6-dns=fec1::3").ipv6DNS == v6("fec1::3"))  // unrestricted
    }

    @Test func commaEscaping() throws {
        let options = try NetworkOptions.parse(
            "hostname=a,,b,tftp=/srv/t,,ftp,guestfwd=tcp:10.0.2.100:80-cmd:printf a,,b,dnssearch=x.org")
        #expect(options.hostname == "a,b")
        #expect(options.tftpRoot == "/srv/t,ftp")
        #expect(options.guestForwards.map(\.target) == [.command("printf a,b")])
        #expect(options.guestForwards.first?.rule == "tcp:10.0.2.100:80-cmd:printf a,b")
        #expect(options.dnsSearch == ["x.org"])
    }

    @Test func repeatableKeysKeepOrder() throws {
        let options = try NetworkOptions.parse(
            "hostfwd=tcp::2222-:22,dnssearch=a.example,hostfwd=udp::5353-:53,dnssearch=b.example,"
                + "guestfwd=tcp:10.0.2.100:1-cmd:one,guestfwd=tcp:10.0.2.101:2-unix:/two")
        #expect(options.hostForwards.map(\.rule) == ["tcp::2222-:22", "udp::5353-:53"])
        #expect(options.hostForwards.map(\.proto) == [.tcp, .udp])
        #expect(options.dnsSearch == ["a.example", "b.example"])
        #expect(options.guestForwards.map(\.port) == [1, 2])
        #expect(options.guestForwards.map(\.target) == [.command("one"), .unix(path: "/two")])
    }

    @Test func lastValueWins() throws {
        #expect(try NetworkOptions.parse("host=10.0.2.9,host=10.0.2.2").host == v4("10.0.2.2"))
        // Only the surviving value is checked, as in QEMU.
        #expect(try NetworkOptions.parse("host=foo,host=10.0.2.4").host == v4("10.0.2.4"))
        #expect(try NetworkOptions.parse("restrict=maybe,restrict=on").restricted)
        #expect(try NetworkOptions.parse("hostname=a,hostname=b").hostname == "b")
    }

    @Test func pastedQEMUOptions() throws {
        let options = try NetworkOptions.parse("user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22,restrict=on")
        #expect(options.restricted)
        #expect(options.hostForwards.count == 1)
        let rule = try #require(options.hostForwards.first)
        #expect(rule.hostAddress == v4("127.0.0.1") && rule.hostPort == 2222 && rule.guestPort == 22)
        #expect(try NetworkOptions.parse("type=user,id=n1,net=10.7.0.0/24").network.description == "10.7.0.0/24")
        #expect(try NetworkOptions.parse(",net=10.7.0.0/24").network.description == "10.7.0.0/24")
    }

    @Test func stringSettings() throws {
        let options = try NetworkOptions.parse(
            "hostname=guest-one,domainname=lab.example,tftp=/srv/tftp,tftp-server-name=boot.lab,"
                + "bootfile=pxelinux.0,dnssearch=lab.example.")
        #expect(options.hostname == "guest-one")
        #expect(options.domainName == "lab.example")
        #expect(options.tftpRoot == "/srv/tftp")
        #expect(options.tftpServerName == "boot.lab")
        #expect(options.bootfile == "pxelinux.0")
        #expect(options.dnsSearch == ["lab.example."])
        // Limits are inclusive where libslirp's are.
        #expect(try NetworkOptions.parse("hostname=\(String(repeating: "h", count: 32))").hostname?.count == 32)
        #expect(try NetworkOptions.parse("bootfile=\(String(repeating: "b", count: 127))").bootfile?.count == 127)
        #expect(try NetworkOptions.parse("dnssearch=\(String(repeating: "l", count: 63)).org").dnsSearch.count == 1)
        #expect(try NetworkOptions.parse("hostname=").hostname == "")  // QEMU accepts it too
        #expect(try NetworkOptions.parse("tftp=").tftpRoot == "")
    }

    @Test func guestForwardPlacement() throws {
        // QEMU accepts any address inside the network but the host's and DNS's.
        let options = try NetworkOptions.parse(
            "guestfwd=tcp:10.0.2.15:80-cmd:a,guestfwd=tcp::80-cmd:b,guestfwd=tcp:10.0.2.4:81-cmd:c")
        #expect(options.guestForwards.count == 3)
        let moved = try NetworkOptions.parse("net=192.168.9.0/24,guestfwd=tcp:192.168.9.100:80-cmd:a")
        #expect(moved.guestForwards.first?.address == v4("192.168.9.100"))
    }

    @Test func dnsDomainIsASCIILowerCased() throws {
        #expect(try NetworkOptions.parse("dns-domain=Lab.Internal.").dnsDomain == "lab.internal")
        // Only ASCII letters change, as DNS compares names: a label of 31 İ (62 bytes)
        // once grew to 93 bytes under Unicode lower-casing (fuzz-options).
        let dotted = String(repeating: "İ", count: 31)
        #expect(try NetworkOptions.parse("dns-domain=\(dotted).LAB").dnsDomain == "\(dotted).lab")
    }

    @Test("per-guest flow caps: defaults, values, and the last one given wins")
    func flowCaps() throws {
        let defaults = try NetworkOptions.parse("")
        #expect(defaults.maxTCP == 512 && defaults.maxUDP == 256 && defaults.maxICMP == 64 && defaults.maxDNSTCP == 8)
        let set = try NetworkOptions.parse("max-tcp=100,max-udp=0,max-icmp=65535,max-dns-tcp=2,max-tcp=7")
        #expect(set.maxTCP == 7 && set.maxUDP == 0 && set.maxICMP == 65535 && set.maxDNSTCP == 2)
    }
}
