// fuzz-options: the libFuzzer target for NetworkOptions.parse, which reads the `-o`
// option string, the config file's `options` and keys, and API-added forwards.
//
// Theory of operation. Each input, decoded as UTF-8 (invalid bytes become U+FFFD), is
// one option string. It is parsed twice; an error must come back the same both times,
// with a message. A parsed network must keep the promises NetworkOptions.swift makes,
// checked one by one below: addresses inside their networks and apart from each other,
// lengths libslirp would otherwise mangle, forwards that re-parse from their own text
// and do not collide. Last, the parsed value is written back out as an option string,
// one explicit key per field (`render`), which must parse to an equal value: every
// value the parser accepts can be said in its own syntax, and means the same said again.

import NetOptions

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-options invariant broken: \(what())") }
}

/// QemuOpts escaping: a comma inside a value is doubled, byte by byte as the parser reads
/// (a comma and a combining mark after it are one Character).
func item(_ key: String, _ value: String) -> String {
    "\(key)=" + String(decoding: value.utf8.flatMap { $0 == UInt8(ascii: ",") ? [$0, $0] : [$0] }, as: UTF8.self)
}

/// `options` as an option string with every field explicit.
func render(_ o: NetworkOptions) -> String {
    var items = ["user", item("restrict", o.restricted ? "on" : "off"),
                 item("ipv4", o.ipv4 ? "on" : "off"), item("ipv6", o.ipv6 ? "on" : "off")]
    // With a family off, its addresses may not be given (they stay at their defaults),
    // but dhcpstart= and ipv6-prefixlen= still may.
    if o.ipv4 {
        items += [item("net", "\(o.network)"), item("host", "\(o.host)"), item("dns", "\(o.dns)")]
    }
    items.append(item("dhcpstart", "\(o.dhcpStart)"))
    if let end = o.dhcpEnd { items.append(item("dhcpend", "\(end)")) }
    // slirpd's own keys.
    items += [item("host-loopback", o.hostLoopback ? "on" : "off"), item("isolate", o.isolateGuests ? "on" : "off"),
              item("max-tcp", "\(o.maxTCP)"), item("max-udp", "\(o.maxUDP)"), item("max-icmp", "\(o.maxICMP)"),
              item("max-dns-tcp", "\(o.maxDNSTCP)"), item("max-macs", "\(o.maxMACs)")]
    if o.ipv6 {
        items += [item("ipv6-net", "\(o.ipv6Prefix)/\(o.ipv6PrefixLength)"),
                  item("ipv6-host", "\(o.ipv6Host)"), item("ipv6-dns", "\(o.ipv6DNS)")]
    } else {
        items.append(item("ipv6-prefixlen", "\(o.ipv6PrefixLength)"))
    }
    let strings: [(String, String?)] = [
        ("hostname", o.hostname), ("domainname", o.domainName), ("tftp", o.tftpRoot),
        ("tftp-server-name", o.tftpServerName), ("bootfile", o.bootfile),
        ("dns-upstream", o.dnsUpstream.map { "\($0)" }), ("dns-domain", o.dnsDomain),
    ]
    for case let (key, value?) in strings { items.append(item(key, value)) }
    items += o.dnsSearch.map { item("dnssearch", $0) }
    items += o.hostForwards.map { item("hostfwd", $0.rule) }
    items += o.guestForwards.map { item("guestfwd", $0.rule) }
    return items.joined(separator: ",")
}

/// libslirp's and DNS's rule for a domain: dot-separated labels of 1 to 63 bytes.
func labelsFit(_ name: String) -> Bool {
    name.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false).allSatisfy { (1...63).contains($0.count) }
}

func checkPromises(_ o: NetworkOptions, _ text: String) {
    // IPv4 (net_slirp_init's checks).
    check((4...32).contains(o.network.prefixLength), "net= /\(o.network.prefixLength) for \(text.debugDescription)")
    check(o.network.address.value & ~o.network.mask == 0, "network \(o.network) is not masked")
    check(o.network.contains(o.host), "host \(o.host) outside \(o.network)")
    check(o.network.contains(o.dhcpStart), "dhcpstart \(o.dhcpStart) outside \(o.network)")
    check(o.dns != o.host, "dns and host are both \(o.dns)")
    check(o.dhcpStart != o.host && o.dhcpStart != o.dns, "dhcpstart \(o.dhcpStart) is host or dns")
    check(!o.restricted || o.network.contains(o.dns), "restrict=on with dns \(o.dns) outside \(o.network)")
    check(o.ipv4 || o.ipv6, "both families off")
    // IPv6.
    check((1...126).contains(o.ipv6PrefixLength), "IPv6 prefix length \(o.ipv6PrefixLength)")
    for address in [o.ipv6Prefix, o.ipv6Host, o.ipv6DNS] { check(address.bytes.count == 16, "an IPv6 address of \(address.bytes.count) bytes") }
    check(o.ipv6Host.hasPrefix(o.ipv6Prefix, length: o.ipv6PrefixLength), "ipv6-host \(o.ipv6Host) outside the prefix")
    check(!o.restricted || o.ipv6DNS.hasPrefix(o.ipv6Prefix, length: o.ipv6PrefixLength), "restricted ipv6-dns outside the prefix")
    // Strings libslirp would cut short or refuse.
    check((o.hostname?.utf8.count ?? 0) <= 32, "hostname of \(o.hostname?.utf8.count ?? 0) bytes")
    check((o.bootfile?.utf8.count ?? 0) < 128, "bootfile of \(o.bootfile?.utf8.count ?? 0) bytes")
    check(o.domainName.map { !$0.isEmpty && $0.utf8.count <= 255 } ?? true, "domainname of \(o.domainName?.utf8.count ?? 0) bytes")
    check((o.tftpServerName?.utf8.count ?? 0) <= 255, "tftp-server-name of \(o.tftpServerName?.utf8.count ?? 0) bytes")
    for name in o.dnsSearch {
        check(labelsFit(name.hasSuffix(".") && name.count > 1 ? String(name.dropLast()) : name), "dnssearch '\(name)'")
    }
    // dns-domain: "in ASCII lower case, without a trailing dot", labels a DNS name can carry.
    let domain = o.dnsDomain
    check(!domain.isEmpty && !domain.hasSuffix(".") && domain.utf8.count <= 253 && labelsFit(domain),
          "dns-domain \(domain.debugDescription) from \(text.debugDescription)")
    check(!domain.utf8.contains { (0x41...0x5A).contains($0) }, "dns-domain \(domain.debugDescription) is not lower case")
    // Forwards: each re-parses from its own text, and no two guest forwards collide.
    for rule in o.hostForwards {
        check((try? HostForward.parse(rule.rule)) == rule, "hostfwd '\(rule.rule)' does not re-parse equal")
        check(rule.guestPort >= 1, "hostfwd '\(rule.rule)' to guest port 0")
    }
    for (index, rule) in o.guestForwards.enumerated() {
        check((try? GuestForward.parse(rule.rule)) == rule, "guestfwd '\(rule.rule)' does not re-parse equal")
        var others = o.guestForwards
        others.remove(at: index)
        do {
            try o.checkGuestForward(rule, against: others)
        } catch {
            check(false, "guestfwd '\(rule.rule)' was accepted but conflicts: \(error)")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let first: Result<NetworkOptions, OptionError> = Result { () throws(OptionError) in try NetworkOptions.parse(text) }
    let second: Result<NetworkOptions, OptionError> = Result { () throws(OptionError) in try NetworkOptions.parse(text) }
    check(first == second, "parsing is not deterministic for \(text.debugDescription)")
    switch first {
    case .failure(let error):
        check(!error.message.isEmpty, "an error without a message for \(text.debugDescription)")
    case .success(let options):
        checkPromises(options, text)
        let again = render(options)
        switch Result(catching: { () throws(OptionError) in try NetworkOptions.parse(again) }) {
        case .success(let reparsed):
            check(reparsed == options, "\(text.debugDescription) renders as \(again.debugDescription), which parses differently")
        case .failure(let error):
            check(false, "\(text.debugDescription) renders as \(again.debugDescription), which fails: \(error)")
        }
    }
    return 0
}
