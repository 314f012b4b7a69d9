// NetOptions: QEMU's `-netdev user` option string, parsed into what libslirp needs.
//
// Theory of operation. The string is QemuOpts syntax (`OptionList`): comma-separated
// `key=value` items, `,,` for a literal comma inside a value, a bare first word as the
// backend type (`user`), later bare words as short-form booleans (`restrict` is
// `restrict=on`, `norestrict` is `restrict=off`). The keys are QEMU 7.2's
// NetdevUserOptions plus `ipv6-net`: net, ip, host, restrict, ipv4, ipv6, ipv6-net,
// ipv6-prefix, ipv6-prefixlen, ipv6-host, ipv6-dns, hostname, dhcpstart, dns,
// dnssearch, domainname, tftp, tftp-server-name, bootfile, hostfwd, guestfwd.
// dnssearch, hostfwd and guestfwd may repeat and keep their order; any other key given
// twice keeps its last value, and only that value is checked. `parse` then works in QEMU's order, so that of several
// mistakes the one reported is the one QEMU would report:
//   1. `ipv6-net` is split into prefix and length (QEMU's net_client_init);
//   2. typed values: restrict, ipv4, ipv6, ipv6-prefixlen (the QAPI visitor);
//   3. unknown keys (and smb/smbserver): the first in the text (QEMU names one in
//      hash-table order, which is no order a user can predict);
//   4. net_slirp_init's checks: addresses, derivations, lengths;
//   5. forwarding rules: guestfwd before hostfwd, each from its last rule to its first,
//      because QEMU prepends every rule to one list before applying them. The parsed
//      rules are still stored in the order written.
// The messages are QEMU 7.2's own words. All of this was checked against the
// qemu-system-x86_64 7.2 binary, including the odd parts kept on purpose: `net=` without
// a mask takes a classful one (10.x is /8, 192.168.x is /16), DNS outside the network is
// an error only with restrict=on, `ipv4=on` alone turns IPv6 off (and `ipv6=on` alone
// IPv4), a prefix length of 0 means 64, and an empty hostfwd host port means port 0.
//
// Where slirpd deliberately differs from QEMU:
//   - IPv4 addresses are strict dotted quads. QEMU uses inet_aton, which reads `127.1`,
//     hex and octal parts and ignores trailing blanks; `010.0.2.15` would be 8.0.2.15.
//     Such text gets QEMU's error for that field ("Failed to parse host", "Bad host
//     address", ...). A dotted netmask must be contiguous and /4 to /32.
//   - smb and smbserver are refused: libslirp has no SMB server and slirpd starts none.
//   - guestfwd devices are `cmd:`, `tcp:HOST:PORT` and `unix:PATH` only (QEMU accepts
//     any chardev), and two rules for the same guest address and port are refused
//     (libslirp 4.7 accepts duplicates through a byte-order bug).
//   - Values libslirp would silently mangle are errors: a hostname over 32 bytes (it
//     truncates), a bootfile of 128 bytes or more (slirp_new fails), a dnssearch name
//     with an empty or over-63-byte label (it drops the name with a warning).
//   - `id=` is ignored, `type=`/the bare first word may only be `user`, and an empty
//     string means all defaults.
//   - Keys of slirpd's own. For the DNS server it runs in place of libslirp's:
//     `dns-upstream=IP[:PORT]` (`[IPv6]:PORT`) names where queries for other names go,
//     and `dns-domain=NAME` the domain whose names it answers itself. For isolation:
//     `host-loopback=off` keeps guests off the host's loopback (libslirp's
//     disable_host_loopback), and `isolate=on` lets guests reach the NAT but not each other.
//     For each guest's share of libslirp (DataPlane's FlowBudget): `max-tcp=N`, `max-udp=N`,
//     `max-icmp=N` cap the NAT TCP connections, UDP flows and ICMP echo requests one guest
//     holds open, and `max-dns-tcp=N` its TCP connections to the DNS service (0 to 65535).
//     Against one guest posing as many: `max-macs=N` caps the source MACs one port may
//     use at once, and so its DHCP offers and leases (1 to 4096, default 4).
//     For hosts joined by a VXLAN uplink: `dhcpend=ADDR` ends the DHCP pool (inclusive,
//     not below dhcpstart), so each host leases from its own range.

/// The configuration of one user-mode network, with QEMU's defaults.
public struct NetworkOptions: Hashable, Sendable {
    /// `net=`; default 10.0.2.0/24.
    public var network: IPv4Network
    /// `host=`, the gateway and the host as seen from the guest; default network | .2.
    public var host: IPv4Address
    /// `dns=`; default network | .3.
    public var dns: IPv4Address
    /// `dhcpstart=`, the first of libslirp's 16 leases; default network | .15.
    public var dhcpStart: IPv4Address
    /// `dhcpend=` (slirpd's): the last address of the DHCP pool; nil: the network's last
    /// host address. Hosts joined by a VXLAN uplink each lease from their own range.
    public var dhcpEnd: IPv4Address?
    /// `restrict=`: isolate the guest from the host's networks.
    public var restricted: Bool
    public var ipv4: Bool
    public var ipv6: Bool
    /// `ipv6-net=` (or `ipv6-prefix=`), kept as written: QEMU does not mask it either.
    public var ipv6Prefix: IPv6Address
    public var ipv6PrefixLength: Int
    /// `ipv6-host=`; default the prefix with its last byte ORed with 2.
    public var ipv6Host: IPv6Address
    /// `ipv6-dns=`; default the prefix with its last byte ORed with 3.
    public var ipv6DNS: IPv6Address
    /// Offered to the guest by DHCP.
    public var hostname: String?
    public var domainName: String?
    public var dnsSearch: [String]
    /// `tftp=`: the directory the read-only TFTP server exports.
    public var tftpRoot: String?
    public var tftpServerName: String?
    public var bootfile: String?
    public var hostForwards: [HostForward]
    public var guestForwards: [GuestForward]
    /// `dns-upstream=`: nil means the first nameserver of the host's resolv.conf.
    public var dnsUpstream: DNSUpstream?
    /// `dns-domain=`: the names slirpd's DNS answers itself, in ASCII lower case, without a trailing dot.
    public var dnsDomain: String
    /// `host-loopback=`: whether the gateway address reaches the host's 127.0.0.1 (default on).
    public var hostLoopback: Bool
    /// `isolate=`: guests exchange frames with the NAT only, never with each other (default off).
    public var isolateGuests: Bool
    /// `max-tcp=`: NAT TCP connections one guest may hold open in libslirp.
    public var maxTCP: Int
    /// `max-udp=`: UDP flows (guest source address and port) one guest may hold open.
    public var maxUDP: Int
    /// `max-icmp=`: ICMP echo requests one guest may have outstanding.
    public var maxICMP: Int
    /// `max-dns-tcp=`: TCP connections one guest may hold to the DNS service (of its `max-tcp`).
    public var maxDNSTCP: Int
    /// `max-macs=`: source MACs one port (guest connection, tap) may use at once, and DHCP
    /// offers and leases it may hold.
    public var maxMACs: Int

    /// Defaults of the per-guest caps. A CI guest (parallel downloads, a package manager,
    /// a test suite's servers) holds tens to a few hundred connections; 512 TCP + 256 UDP +
    /// 64 ICMP is 832 descriptors at most, so one guest alone cannot exhaust even a 1,024
    /// limit, and with the units' LimitNOFILE many such guests fit. DNS over TCP: the DNS
    /// service has 64 slots, and 8 per guest keep 8 guests' worth free.
    public static let defaultMaxTCP = 512
    public static let defaultMaxUDP = 256
    public static let defaultMaxICMP = 64
    public static let defaultMaxDNSTCP = 8
    /// A QEMU guest uses one MAC; a namespace behind a tap with a bridge or a container a
    /// few more. Four stop one port from posing as many guests (DHCP starvation, MAC floods).
    public static let defaultMaxMACs = 4
    public static let maximumMaxMACs = 4096
    public static let maximumCap = 65535

    public static let defaultDNSDomain = "slirpd.internal"

    /// QEMU's defaults: 10.0.2.0/24 with host .2, DNS .3, DHCP from .15; fec0::/64 with
    /// ::2 and ::3; both families on, not restricted, no forwards.
    public init() {
        network = IPv4Network(address: IPv4Address(10, 0, 2, 0), prefixLength: 24)
        host = IPv4Address(10, 0, 2, 2)
        dns = IPv4Address(10, 0, 2, 3)
        dhcpStart = IPv4Address(10, 0, 2, 15)
        dhcpEnd = nil
        restricted = false
        ipv4 = true
        ipv6 = true
        let prefix = IPv6Address(uncheckedBytes: [0xFE, 0xC0] + [UInt8](repeating: 0, count: 14))
        ipv6Prefix = prefix
        ipv6PrefixLength = 64
        ipv6Host = prefix.orLastByte(2)
        ipv6DNS = prefix.orLastByte(3)
        hostname = nil
        domainName = nil
        dnsSearch = []
        tftpRoot = nil
        tftpServerName = nil
        bootfile = nil
        hostForwards = []
        guestForwards = []
        dnsUpstream = nil
        dnsDomain = Self.defaultDNSDomain
        hostLoopback = true
        isolateGuests = false
        maxTCP = Self.defaultMaxTCP
        maxUDP = Self.defaultMaxUDP
        maxICMP = Self.defaultMaxICMP
        maxDNSTCP = Self.defaultMaxDNSTCP
        maxMACs = Self.defaultMaxMACs
    }

    /// Parses a `-netdev user` option string such as
    /// `user,id=n0,net=192.168.76.0/24,hostfwd=tcp::2222-:22`.
    /// Whether a guest forward may be added next to `existing` ones: libslirp's
    /// check_guestfwd (inside the network, not the gateway or DNS address), plus the
    /// duplicate check that libslirp 4.7 gets wrong.
    public func checkGuestForward(_ forward: GuestForward, against existing: [GuestForward]) throws(OptionError) {
        let address = forward.resolvedAddress(in: self)
        guard network.contains(address), address != host, address != dns,
              !existing.contains(where: { $0.port == forward.port && $0.resolvedAddress(in: self) == address }) else {
            throw .guestForwardConflict(forward.rule)
        }
    }

    public static func parse(_ text: String) throws(OptionError) -> NetworkOptions {
        let raw = try RawOptions(OptionList(parsing: text))
        return try raw.resolve()
    }

    /// Several option strings as one (repeated `-o`; a config file's `options` and keys),
    /// so later keys add to or override earlier ones as within one string. Each is joined
    /// with one separating comma, except after a piece already ending in an odd run of
    /// commas, which ends in a separator (`,,` is an escaped comma, a lone trailing comma
    /// ends the list): another would glue the next item to its value. Commas are counted
    /// in UTF-8, as OptionList reads them. A later piece's leading `user` (QEMU's type
    /// word, as in a pasted `-netdev user,...` string) is dropped: in the middle it would
    /// read as a boolean key.
    public static func join(_ pieces: [String]) -> String {
        var result = ""
        for piece in pieces where !piece.isEmpty {
            var piece = Substring(piece)
            if !result.isEmpty, piece == "user" || piece.hasPrefix("user,") && !piece.hasPrefix("user,,") {
                piece = piece.dropFirst(5)
                if piece.isEmpty { continue }
            }
            if !result.isEmpty && result.utf8.reversed().prefix(while: { $0 == UInt8(ascii: ",") }).count % 2 == 0 {
                result += ","
            }
            result += piece
        }
        return result
    }
}

extension IPv6Address {
    func orLastByte(_ bits: UInt8) -> IPv6Address {
        var copy = bytes
        copy[15] |= bits
        return IPv6Address(uncheckedBytes: copy)
    }
}

/// The option values as text, before any meaning is given to them.
private struct RawOptions {
    static let scalarKeys: Set<String> = [
        "net", "ip", "host", "restrict", "ipv4", "ipv6", "ipv6-net", "ipv6-prefix", "ipv6-prefixlen",
        "ipv6-host", "ipv6-dns", "hostname", "dhcpstart", "dhcpend", "dns", "domainname", "tftp",
        "tftp-server-name", "bootfile", "dns-upstream", "dns-domain", "host-loopback", "isolate",
        "max-tcp", "max-udp", "max-icmp", "max-dns-tcp", "max-macs",
    ]

    var scalars: [String: String] = [:]
    var hostForwards: [String] = []
    var guestForwards: [String] = []
    var dnsSearch: [String] = []
    /// The first unknown or refused key, reported after the typed values as QEMU does.
    var rejected: OptionError?

    init(_ list: OptionList) throws(OptionError) {
        // An empty type word comes from a leading comma; treat it as absent.
        if let type = list.type, !type.isEmpty, type != "user" { throw Self.wrongType(type) }
        for item in list.items {
            switch item.key {
            case "id":
                break  // QEMU needs it to name the netdev; slirpd names networks itself.
            case "type":
                if item.value != "user" { throw Self.wrongType(item.value) }
            case "hostfwd": hostForwards.append(item.value)
            case "guestfwd": guestForwards.append(item.value)
            case "dnssearch": dnsSearch.append(item.value)
            case "smb", "smbserver":
                if rejected == nil {
                    rejected = OptionError(
                        "Parameter '\(item.key)' is not supported by slirpd (libslirp has no SMB server; "
                            + "share files with tftp= or a hostfwd instead)")
                }
            case let key where Self.scalarKeys.contains(key):
                scalars[key] = item.value
            default:
                if rejected == nil { rejected = .invalidParameter(item.key) }
            }
        }
    }

    static func wrongType(_ type: String) -> OptionError {
        OptionError("slirpd implements only -netdev user, not '\(type)'")
    }

    /// QAPI's boolean words (qapi_bool_parse); nil when the key is absent.
    func boolean(_ key: String) throws(OptionError) -> Bool? {
        guard let text = scalars[key] else { return nil }
        switch text {
        case "on", "yes", "true", "y": return true
        case "off", "no", "false", "n": return false
        default: throw .expectsOnOff(key)
        }
    }

    /// A per-guest cap: a decimal number from 0 to 65535; nil when the key is absent.
    func cap(_ key: String) throws(OptionError) -> Int? {
        guard let text = scalars[key] else { return nil }
        guard !text.isEmpty, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }) else {
            throw OptionError("Parameter '\(key)' expects a number")
        }
        guard text.utf8.count <= 5, let value = Int(text), value <= NetworkOptions.maximumCap else {
            throw OptionError("Parameter '\(key)' expects a number from 0 to \(NetworkOptions.maximumCap)")
        }
        return value
    }

    func resolve() throws(OptionError) -> NetworkOptions {
        var options = NetworkOptions()

        // 1. ipv6-net=PREFIX[/LEN] replaces ipv6-prefix and ipv6-prefixlen (net.c).
        var prefixText = scalars["ipv6-prefix"]
        var prefixLength: Int64?
        if let net6 = scalars["ipv6-net"] {
            guard !net6.isEmpty else { throw OptionError("Parameter 'ipv6-net' expects a valid IPv6 prefix") }
            let parts = net6.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            prefixText = String(parts[0])
            prefixLength = 64
            if parts.count == 2 {
                // qemu_strtoul: a leading '-' negates, so any negative but -0 ends up out of range.
                let number = CNumber(parts[1], base: 10)
                guard number.sawDigits, number.consumedAll, !number.overflowed else {
                    throw OptionError("Parameter 'ipv6-prefixlen' expects a number")
                }
                prefixLength = number.negative ? (number.magnitude == 0 ? 0 : -1) : Int64(clamping: number.magnitude)
            }
        }

        // 2. Typed values, in the order QAPI visits them.
        let restrictValue = try boolean("restrict")
        let ipv4Value = try boolean("ipv4")
        let ipv6Value = try boolean("ipv6")
        if scalars["ipv6-net"] == nil, let text = scalars["ipv6-prefixlen"] {
            guard let value = CNumber(Substring(text), base: 0).wholeInt64 else {
                throw OptionError("Parameter 'ipv6-prefixlen' expects an int64 value")
            }
            prefixLength = value
        }

        // 3. Keys QEMU does not know, or slirpd does not support.
        if let rejected { throw rejected }
        // slirpd's own booleans, after QEMU's checks so QEMU's errors come first.
        options.hostLoopback = try boolean("host-loopback") ?? true
        options.isolateGuests = try boolean("isolate") ?? false
        options.maxTCP = try cap("max-tcp") ?? NetworkOptions.defaultMaxTCP
        options.maxUDP = try cap("max-udp") ?? NetworkOptions.defaultMaxUDP
        options.maxICMP = try cap("max-icmp") ?? NetworkOptions.defaultMaxICMP
        options.maxDNSTCP = try cap("max-dns-tcp") ?? NetworkOptions.defaultMaxDNSTCP
        if let text = scalars["max-macs"] {
            guard text.utf8.count <= 5, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let macs = Int(text),
                  (1...NetworkOptions.maximumMaxMACs).contains(macs) else {
                throw OptionError("Parameter 'max-macs' expects a number from 1 to \(NetworkOptions.maximumMaxMACs)")
            }
            options.maxMACs = macs
        }

        // 4. net_slirp_init. Naming one family "on" alone turns the other off.
        options.restricted = restrictValue ?? false
        if (ipv6Value == true && ipv4Value == nil) || ipv4Value == false { options.ipv4 = false }
        if (ipv4Value == true && ipv6Value == nil) || ipv6Value == false { options.ipv6 = false }
        let vnet = scalars["net"] ?? scalars["ip"].map { "\($0)/24" }
        if !options.ipv4 && (vnet != nil || scalars["host"] != nil || scalars["dns"] != nil) {
            throw OptionError("IPv4 disabled but netmask/host/dns provided")
        }
        if !options.ipv6 && (prefixText != nil || scalars["ipv6-host"] != nil || scalars["ipv6-dns"] != nil) {
            throw OptionError("IPv6 disabled but prefix/host6/dns6 provided")
        }
        if !options.ipv4 && !options.ipv6 { throw OptionError("IPv4 and IPv6 disabled") }

        try resolveIPv4(vnet, into: &options)
        try resolveIPv6(prefixText, prefixLength, into: &options)
        try resolveStrings(into: &options)

        // 5. Forwarding rules, in the order QEMU applies them.
        var guestForwards: [GuestForward] = []
        for rule in self.guestForwards.reversed() {
            let forward = try GuestForward.parse(rule)
            try options.checkGuestForward(forward, against: guestForwards)
            guestForwards.append(forward)
        }
        var hostForwards: [HostForward] = []
        for rule in self.hostForwards.reversed() {
            hostForwards.append(try HostForward.parse(rule))
        }
        options.guestForwards = guestForwards.reversed()
        options.hostForwards = hostForwards.reversed()
        return options
    }

    private func resolveIPv4(_ vnet: String?, into options: inout NetworkOptions) throws(OptionError) {
        if let vnet {
            let network = try Self.parseNetwork(vnet)
            options.network = network
            // The defaults keep their host parts (.2, .3, .15) inside the new network.
            options.host = network.host(0x0202)
            options.dhcpStart = network.host(0x020F)
            options.dns = network.host(0x0203)
        }
        let network = options.network

        if let text = scalars["host"] {
            guard let address = IPv4Address(text) else { throw OptionError("Failed to parse host") }
            options.host = address
        }
        guard network.contains(options.host) else { throw OptionError("Host doesn't belong to network") }

        if let text = scalars["dns"] {
            guard let address = IPv4Address(text) else { throw OptionError("Failed to parse DNS") }
            options.dns = address
        }
        if options.restricted && !network.contains(options.dns) {
            throw OptionError("DNS doesn't belong to network")
        }
        guard options.dns != options.host else { throw OptionError("DNS must be different from host") }

        if let text = scalars["dhcpstart"] {
            guard let address = IPv4Address(text) else { throw OptionError("Failed to parse DHCP start address") }
            options.dhcpStart = address
        }
        guard network.contains(options.dhcpStart) else { throw OptionError("DHCP doesn't belong to network") }
        guard options.dhcpStart != options.host && options.dhcpStart != options.dns else {
            throw OptionError("DHCP must be different from host and DNS")
        }
        if let text = scalars["dhcpend"] {
            guard let address = IPv4Address(text) else { throw OptionError("Failed to parse DHCP end address") }
            guard network.contains(address) else { throw OptionError("DHCP end doesn't belong to network") }
            guard address >= options.dhcpStart else {
                throw OptionError("DHCP end \(address) is below the DHCP start \(options.dhcpStart)")
            }
            options.dhcpEnd = address
        }
    }

    /// `ADDR/LEN`, `ADDR/NETMASK` or `ADDR` (classful mask, as QEMU guesses it).
    static func parseNetwork(_ text: String) throws(OptionError) -> IPv4Network {
        let badAddress = OptionError("Failed to parse netmask")  // sic: QEMU's word for it
        let badRange = OptionError("Invalid netmask provided (must be in range 4-32)")
        guard let slash = text.firstIndex(of: "/") else {
            guard let address = IPv4Address(text) else { throw badAddress }
            return IPv4Network(address: address, prefixLength: classfulPrefixLength(address.value))
        }
        guard let address = IPv4Address(String(text[..<slash])) else { throw badAddress }
        let maskText = text[text.index(after: slash)...]
        // Like QEMU: a number (strtol base 10, so "" is 0) unless something follows it.
        let number = CNumber(maskText, base: 10)
        if number.consumedAll {
            guard (4...32).contains(number.clamped) else { throw badRange }
            return IPv4Network(address: address, prefixLength: Int(number.clamped))
        }
        guard let mask = IPv4Address(String(maskText)) else {
            throw OptionError("Failed to parse netmask (trailing chars)")
        }
        guard let length = IPv4Network.prefixLength(ofMask: mask.value) else {
            throw OptionError("Invalid netmask provided (\(mask) is not contiguous)")
        }
        guard (4...32).contains(length) else { throw badRange }
        return IPv4Network(address: address, prefixLength: length)
    }

    /// QEMU's guess for `net=` without a mask, quirks included (224/3 gets /24, and
    /// 192/3 outside 192.168/16 gets /28).
    static func classfulPrefixLength(_ address: UInt32) -> Int {
        if address & 0x8000_0000 == 0 { return 8 }
        if address & 0xFFF0_0000 == 0xAC10_0000 { return 12 }  // 172.16/12
        if address & 0xC000_0000 == 0x8000_0000 { return 16 }
        if address & 0xFFFF_0000 == 0xC0A8_0000 { return 16 }  // 192.168/16
        if address & 0xFFFF_0000 == 0xC612_0000 { return 15 }  // 198.18/15
        if address & 0xE000_0000 == 0xE000_0000 { return 24 }
        return 28
    }

    private func resolveIPv6(_ prefixText: String?, _ prefixLength: Int64?,
                             into options: inout NetworkOptions) throws(OptionError) {
        guard let prefix = IPv6Address(prefixText ?? "fec0::") else {
            throw OptionError("Failed to parse IPv6 prefix")
        }
        var length = prefixLength ?? 0
        if length == 0 { length = 64 }  // QEMU cannot tell 0 from "not given"
        guard (0...126).contains(length) else {
            throw OptionError("Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)")
        }
        options.ipv6Prefix = prefix
        options.ipv6PrefixLength = Int(length)

        if let text = scalars["ipv6-host"] {
            guard let address = IPv6Address(text) else { throw OptionError("Failed to parse IPv6 host") }
            guard address.hasPrefix(prefix, length: Int(length)) else {
                throw OptionError("IPv6 Host doesn't belong to network")
            }
            options.ipv6Host = address
        } else {
            options.ipv6Host = prefix.orLastByte(2)
        }

        if let text = scalars["ipv6-dns"] {
            guard let address = IPv6Address(text) else { throw OptionError("Failed to parse IPv6 DNS") }
            if options.restricted && !address.hasPrefix(prefix, length: Int(length)) {
                throw OptionError("IPv6 DNS doesn't belong to network")
            }
            options.ipv6DNS = address
        } else {
            options.ipv6DNS = prefix.orLastByte(3)
        }
    }

    private func resolveStrings(into options: inout NetworkOptions) throws(OptionError) {
        if let domain = scalars["domainname"] {
            guard !domain.isEmpty else { throw OptionError("'domainname' parameter cannot be empty") }
            guard domain.utf8.count <= 255 else {
                throw OptionError("'domainname' parameter cannot exceed 255 bytes")
            }
            options.domainName = domain
        }
        if let hostname = scalars["hostname"] {
            // QEMU allows 255 bytes, but libslirp keeps only 32 and says nothing.
            guard hostname.utf8.count <= 32 else {
                throw OptionError("'hostname' parameter cannot exceed 32 bytes (libslirp would cut it short)")
            }
            options.hostname = hostname
        }
        if let name = scalars["tftp-server-name"] {
            guard name.utf8.count <= 255 else {
                throw OptionError("'tftp-server-name' parameter cannot exceed 255 bytes")
            }
            options.tftpServerName = name
        }
        if let bootfile = scalars["bootfile"] {
            // It must fit BOOTP's 128-byte file field with its NUL, or slirp_new fails.
            guard bootfile.utf8.count < 128 else {
                throw OptionError("'bootfile' parameter must be shorter than 128 bytes (the BOOTP file field)")
            }
            options.bootfile = bootfile
        }
        options.tftpRoot = scalars["tftp"]
        for name in dnsSearch where !Self.isSearchDomain(name) {
            throw OptionError(
                "Invalid 'dnssearch' domain name '\(name)' (labels must be 1 to 63 bytes; libslirp would drop it)")
        }
        options.dnsSearch = dnsSearch
        if let text = scalars["dns-upstream"] {
            guard let upstream = DNSUpstream(text) else {
                throw OptionError("Parameter 'dns-upstream' expects IP[:PORT] or [IPv6]:PORT, not '\(text)'")
            }
            options.dnsUpstream = upstream
        }
        if let text = scalars["dns-domain"] {
            // One trailing dot (the root) is dropped; a second one would be an empty label.
            let domain = text.hasSuffix(".") ? String(text.dropLast()) : text
            guard !domain.isEmpty, !domain.hasSuffix("."), domain.utf8.count <= 253, Self.isSearchDomain(domain) else {
                throw OptionError("Parameter 'dns-domain' expects a domain name (labels of 1 to 63 bytes), not '\(text)'")
            }
            // ASCII lower case only, as DNS compares names (RFC 4343): Unicode lower-casing
            // could also lengthen a label past the 63 bytes just checked (İ becomes i̇).
            options.dnsDomain = String(decoding: domain.utf8.map { (0x41...0x5A).contains($0) ? $0 | 0x20 : $0 }, as: UTF8.self)
        }
    }

    /// libslirp's rule (domain_mklabels): dot-separated labels of 1-63 bytes; one
    /// trailing dot is allowed.
    static func isSearchDomain(_ name: String) -> Bool {
        var labels = name.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        if labels.count > 1 && labels.last?.isEmpty == true { labels.removeLast() }
        return labels.allSatisfy { (1...63).contains($0.count) }
    }
}
