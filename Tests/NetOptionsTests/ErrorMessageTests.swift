import Testing
import NetOptions

/// An option string and the exact message `NetworkOptions.parse` must give for it.
struct ErrorCase: Sendable, CustomTestStringConvertible {
    var input: String
    var message: String
    init(_ input: String, _ message: String) {
        self.input = input
        self.message = message
    }
    var testDescription: String { input.count > 70 ? String(input.prefix(70)) + "…" : input }
}

private func long(_ count: Int) -> String { String(repeating: "a", count: count) }

private let ipv6Range = "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)"
private let smbAdvice = "is not supported by slirpd (libslirp has no SMB server; share files with tftp= or a hostfwd instead)"

@Suite struct ErrorMessageTests {
    // Wording and triggers checked against qemu-system-x86_64 7.2, except where marked
    // "slirpd" (a deliberate difference, see the theory of operation).
    static let messageCases: [ErrorCase] = [
        ErrorCase("user,id=n0,foo=bar", "Invalid parameter 'foo'"),
        ErrorCase("=x", "Invalid parameter ''"),
        ErrorCase("user,nosuch", "Invalid parameter 'such'"),
        ErrorCase("smb=/tmp", "Parameter 'smb' \(smbAdvice)"),  // slirpd
        ErrorCase("smbserver=10.0.2.4", "Parameter 'smbserver' \(smbAdvice)"),  // slirpd
        ErrorCase("tap,id=n0", "slirpd implements only -netdev user, not 'tap'"),  // slirpd
        ErrorCase("type=bridge", "slirpd implements only -netdev user, not 'bridge'"),  // slirpd
        ErrorCase("restrict=maybe", "Parameter 'restrict' expects 'on' or 'off'"),
        ErrorCase("restrict=ON", "Parameter 'restrict' expects 'on' or 'off'"),
        ErrorCase("restrict=", "Parameter 'restrict' expects 'on' or 'off'"),
        ErrorCase("ipv4=maybe", "Parameter 'ipv4' expects 'on' or 'off'"),
        ErrorCase("ipv6=1", "Parameter 'ipv6' expects 'on' or 'off'"),
        ErrorCase("ipv4=off,ipv6=off", "IPv4 and IPv6 disabled"),
        ErrorCase("ipv6=on,net=10.0.0.0/8", "IPv4 disabled but netmask/host/dns provided"),
        ErrorCase("ipv4=off,ip=1.2.3.4", "IPv4 disabled but netmask/host/dns provided"),
        ErrorCase("ipv4=off,ipv6=off,net=1.2.3.0/24", "IPv4 disabled but netmask/host/dns provided"),
        ErrorCase("ipv4=on,ipv6-net=fec0::/64", "IPv6 disabled but prefix/host6/dns6 provided"),
        ErrorCase("ipv6=off,ipv6-dns=fec0::3", "IPv6 disabled but prefix/host6/dns6 provided"),
        ErrorCase("net=10.0.0.x", "Failed to parse netmask"),
        ErrorCase("net=", "Failed to parse netmask"),
        ErrorCase("ip=1.2.3.x", "Failed to parse netmask"),
        ErrorCase("net=10.1/16", "Failed to parse netmask"),  // slirpd: QEMU's inet_aton takes 10.1
        ErrorCase("net=10.0.0.0/255.255.0.x", "Failed to parse netmask (trailing chars)"),
        ErrorCase("net=10.0.2.0/24/3", "Failed to parse netmask (trailing chars)"),
        ErrorCase("net=10.0.2.0/24x", "Failed to parse netmask (trailing chars)"),
        ErrorCase("net=10.0.0.0/33", "Invalid netmask provided (must be in range 4-32)"),
        ErrorCase("net=10.0.0.0/3", "Invalid netmask provided (must be in range 4-32)"),
        ErrorCase("net=10.0.0.0/", "Invalid netmask provided (must be in range 4-32)"),
        ErrorCase("net=10.0.2.0/-24", "Invalid netmask provided (must be in range 4-32)"),
        ErrorCase("net=10.0.2.0/99999999999999999999", "Invalid netmask provided (must be in range 4-32)"),
        ErrorCase("net=10.0.2.0/0.0.0.0", "Invalid netmask provided (must be in range 4-32)"),  // slirpd
        ErrorCase("net=10.0.2.0/255.0.255.0", "Invalid netmask provided (255.0.255.0 is not contiguous)"),  // slirpd
        ErrorCase("host=foo", "Failed to parse host"),
        ErrorCase("host=", "Failed to parse host"),
        ErrorCase("host=10.0.2.2,host=foo", "Failed to parse host"),
        ErrorCase("host=10.0.2.2 ", "Failed to parse host"),  // slirpd: inet_aton ignores the blank
        ErrorCase("host=10.0.3.2", "Host doesn't belong to network"),
        ErrorCase("net=192.168.0.0/24,host=10.0.2.2", "Host doesn't belong to network"),
        ErrorCase("net=200.1.2.16,host=200.1.2.2", "Host doesn't belong to network"),
        ErrorCase("dns=foo", "Failed to parse DNS"),
        ErrorCase("dns=10.0.3.3,restrict=on", "DNS doesn't belong to network"),
        ErrorCase("dns=10.0.2.2", "DNS must be different from host"),
        ErrorCase("ip=10.1.2.3,dns=10.1.2.2", "DNS must be different from host"),
        ErrorCase("net=10.0.2.0/32", "DNS must be different from host"),
        ErrorCase("net=192.168.5.0,dns=192.168.2.2", "DNS must be different from host"),
        ErrorCase("dhcpstart=foo", "Failed to parse DHCP start address"),
        ErrorCase("dhcpstart=10.0.3.2", "DHCP doesn't belong to network"),
        ErrorCase("ipv4=off,dhcpstart=1.2.3.4", "DHCP doesn't belong to network"),
        ErrorCase("dhcpstart=10.0.2.3", "DHCP must be different from host and DNS"),
        ErrorCase("dhcpstart=10.0.2.2", "DHCP must be different from host and DNS"),
        ErrorCase("net=10.0.2.0/31", "DHCP must be different from host and DNS"),
        ErrorCase("ipv6-net=", "Parameter 'ipv6-net' expects a valid IPv6 prefix"),
        ErrorCase("ipv6-net=fec0::/x", "Parameter 'ipv6-prefixlen' expects a number"),
        ErrorCase("ipv6-net=fec0::/", "Parameter 'ipv6-prefixlen' expects a number"),
        ErrorCase("ipv6-net=fec0::/64/3", "Parameter 'ipv6-prefixlen' expects a number"),
        ErrorCase("ipv6-prefixlen=x", "Parameter 'ipv6-prefixlen' expects an int64 value"),
        ErrorCase("ipv6-prefixlen=", "Parameter 'ipv6-prefixlen' expects an int64 value"),
        ErrorCase("ipv6-prefixlen=64 ", "Parameter 'ipv6-prefixlen' expects an int64 value"),
        ErrorCase("ipv6-net=foo", "Failed to parse IPv6 prefix"),
        ErrorCase("ipv6-net=/64", "Failed to parse IPv6 prefix"),
        ErrorCase("ipv6-prefix=fe80::1%lo", "Failed to parse IPv6 prefix"),
        ErrorCase("ipv6-net=fec0::/127", ipv6Range),
        ErrorCase("ipv6-net=fec0::/-1", ipv6Range),
        ErrorCase("ipv6-prefix=fec0::,ipv6-prefixlen=127", ipv6Range),
        ErrorCase("ipv6-prefixlen=-64", ipv6Range),
        ErrorCase("ipv6-host=foo", "Failed to parse IPv6 host"),
        ErrorCase("ipv6-host=fec1::2", "IPv6 Host doesn't belong to network"),
        ErrorCase("ipv6-net=fec0::/0,ipv6-host=fec0:0:0:1::2", "IPv6 Host doesn't belong to network"),
        ErrorCase("ipv6-prefix=fec1::,ipv6-net=fec0::/64,ipv6-host=fec1::2", "IPv6 Host doesn't belong to network"),
        ErrorCase("ipv6-dns=foo", "Failed to parse IPv6 DNS"),
        ErrorCase("ipv6-dns=fec1::3,restrict=on", "IPv6 DNS doesn't belong to network"),
        ErrorCase("domainname=", "'domainname' parameter cannot be empty"),
        ErrorCase("domainname=\(long(256))", "'domainname' parameter cannot exceed 255 bytes"),
        ErrorCase("hostname=\(long(33))",
                  "'hostname' parameter cannot exceed 32 bytes (libslirp would cut it short)"),  // slirpd
        ErrorCase("tftp-server-name=\(long(256))", "'tftp-server-name' parameter cannot exceed 255 bytes"),
        ErrorCase("bootfile=\(long(128))",
                  "'bootfile' parameter must be shorter than 128 bytes (the BOOTP file field)"),  // slirpd
        ErrorCase("dnssearch=", "Invalid 'dnssearch' domain name '' (labels must be 1 to 63 bytes; libslirp would drop it)"),
        ErrorCase("dnssearch=ok.org,dnssearch=a..b",
                  "Invalid 'dnssearch' domain name 'a..b' (labels must be 1 to 63 bytes; libslirp would drop it)"),
        ErrorCase("dnssearch=.", "Invalid 'dnssearch' domain name '.' (labels must be 1 to 63 bytes; libslirp would drop it)"),
        ErrorCase("dnssearch=\(long(64)).com",
                  "Invalid 'dnssearch' domain name '\(long(64)).com' (labels must be 1 to 63 bytes; libslirp would drop it)"),
        // slirpd's own key. `lab..` once parsed as the domain `lab.` (fuzz-options).
        ErrorCase("dns-domain=lab..", "Parameter 'dns-domain' expects a domain name (labels of 1 to 63 bytes), not 'lab..'"),
        ErrorCase("dns-domain=.", "Parameter 'dns-domain' expects a domain name (labels of 1 to 63 bytes), not '.'"),
        // Per-guest flow caps (slirpd's own keys).
        ErrorCase("max-tcp=", "Parameter 'max-tcp' expects a number"),
        ErrorCase("max-udp=-1", "Parameter 'max-udp' expects a number"),
        ErrorCase("max-icmp=0x10", "Parameter 'max-icmp' expects a number"),
        ErrorCase("max-dns-tcp=65536", "Parameter 'max-dns-tcp' expects a number from 0 to 65535"),
        ErrorCase("max-tcp=99999999999999999999", "Parameter 'max-tcp' expects a number from 0 to 65535"),
        ErrorCase("hostfwd=tcp", "Invalid host forwarding rule 'tcp' (No : separators)"),
        ErrorCase("hostfwd=foo:", "Invalid host forwarding rule 'foo:' (Bad protocol name)"),
        ErrorCase("hostfwd=udp:", "Invalid host forwarding rule 'udp:' (Missing : separator)"),
        ErrorCase("hostfwd=tcp:1.2.3.x:1-:2", "Invalid host forwarding rule 'tcp:1.2.3.x:1-:2' (Bad host address)"),
        ErrorCase("hostfwd=tcp::1", "Invalid host forwarding rule 'tcp::1' (Bad host port separator)"),
        ErrorCase("hostfwd=tcp::x-:2", "Invalid host forwarding rule 'tcp::x-:2' (Bad host port)"),
        ErrorCase("hostfwd=tcp::1-", "Invalid host forwarding rule 'tcp::1-' (Missing guest address)"),
        ErrorCase("hostfwd=tcp::1-x:2", "Invalid host forwarding rule 'tcp::1-x:2' (Bad guest address)"),
        ErrorCase("hostfwd=tcp::1-:0", "Invalid host forwarding rule 'tcp::1-:0' (Bad guest port)"),
        ErrorCase("user,hostfwd", "Invalid host forwarding rule 'on' (No : separators)"),
        ErrorCase("guestfwd=tcp:10.0.2.100:80", "Invalid guest forwarding rule 'tcp:10.0.2.100:80'"),
        ErrorCase("guestfwd=tcp:10.0.2.100:80-chardev0", "Invalid guest forwarding rule 'tcp:10.0.2.100:80-chardev0'"),
        ErrorCase("guestfwd=tcp:10.9.2.100:80-cmd:true",
                  "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.9.2.100:80-cmd:true'"),
        ErrorCase("guestfwd=tcp:10.0.2.2:80-cmd:true",
                  "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.2:80-cmd:true'"),
        ErrorCase("guestfwd=tcp:10.0.2.3:80-cmd:true",
                  "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.3:80-cmd:true'"),
        ErrorCase("net=192.168.1.0/24,guestfwd=tcp::80-cmd:true,dns=192.168.1.4",
                  "Conflicting/invalid host:port in guest forwarding rule 'tcp::80-cmd:true'"),
        // slirpd: libslirp 4.7 would accept these duplicates.
        ErrorCase("guestfwd=tcp:10.0.2.100:80-cmd:a,guestfwd=tcp:10.0.2.100:80-cmd:b",
                  "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.100:80-cmd:a'"),
        ErrorCase("guestfwd=tcp::80-cmd:a,guestfwd=tcp:10.0.2.4:80-unix:/b",
                  "Conflicting/invalid host:port in guest forwarding rule 'tcp::80-cmd:a'"),
    ]

    @Test(arguments: messageCases)
    func message(_ c: ErrorCase) {
        #expect(throws: OptionError(c.message)) {
            try NetworkOptions.parse(c.input)
        }
    }

    // Of several mistakes, the one QEMU 7.2 reports is reported.
    static let precedenceCases: [ErrorCase] = [
        // The QAPI visitor checks typed values before it complains about unknown keys...
        ErrorCase("foo=bar,restrict=maybe", "Parameter 'restrict' expects 'on' or 'off'"),
        ErrorCase("smb=/x,ipv6=maybe", "Parameter 'ipv6' expects 'on' or 'off'"),
        // ...in its own field order...
        ErrorCase("ipv6=maybe,restrict=maybe", "Parameter 'restrict' expects 'on' or 'off'"),
        ErrorCase("ipv6-prefixlen=x,restrict=maybe", "Parameter 'restrict' expects 'on' or 'off'"),
        // ...after ipv6-net has been split...
        ErrorCase("ipv6-net=,foo=bar", "Parameter 'ipv6-net' expects a valid IPv6 prefix"),
        ErrorCase("ipv6-net=,restrict=maybe", "Parameter 'ipv6-net' expects a valid IPv6 prefix"),
        // ...and the first unknown key in the text wins (slirpd: QEMU names one in hash-table order).
        ErrorCase("foo=1,smb=/x,bar=2", "Invalid parameter 'foo'"),
        // Addresses are checked before forwarding rules.
        ErrorCase("hostfwd=bad2,dns=foo", "Failed to parse DNS"),
        // Rules: guestfwd before hostfwd, and the last rule of each kind first.
        ErrorCase("hostfwd=bad,hostfwd=tcp:1.2.3.x:5-:80",
                  "Invalid host forwarding rule 'tcp:1.2.3.x:5-:80' (Bad host address)"),
        ErrorCase("guestfwd=bad,guestfwd=bad2", "Invalid guest forwarding rule 'bad2'"),
        ErrorCase("hostfwd=bad2,guestfwd=bad", "Invalid guest forwarding rule 'bad'"),
    ]

    @Test(arguments: precedenceCases)
    func precedence(_ c: ErrorCase) {
        #expect(throws: OptionError(c.message)) {
            try NetworkOptions.parse(c.input)
        }
    }

    @Test func errorDescribesItself() {
        let error = OptionError("Invalid parameter 'x'")
        #expect(error.description == "Invalid parameter 'x'")
        #expect("\(error)" == "Invalid parameter 'x'")
    }
}
