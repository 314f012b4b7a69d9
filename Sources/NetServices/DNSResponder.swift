import NetOptions

// DNSResponder: what the daemon says to a guest's DNS query sent to the virtual DNS
// address, once libslirp's own DNS forwarding is off.
//
// Theory of operation. The network owns one domain (`LocalZone.domain`, by default
// `slirpd.internal`) and is authoritative for it: names of guests (their DHCP host
// names and static leases) and `host.<domain>` for the gateway map to IPv4 addresses,
// and the PTR names of those addresses map back. `answer` classifies one query:
//
// - Not a query at all (shorter than a header, or QR set): `.drop`. Answering a
//   response could start a loop between two responders, and a reply to a header we
//   cannot read could not be matched by the client anyway.
// - A query we cannot serve: opcode other than QUERY gets NOTIMP; a message that does
//   not parse, has other than one question, or misplaces/duplicates OPT gets FORMERR
//   (RFC 6891 6.1.1). These replies carry no question, since we cannot trust it, and
//   no OPT record. Replying rather than dropping spares the client its timeouts.
// - A name at or below the domain, class IN or ANY: answered here with AA set. A known
//   name gives its A records (QTYPE A), AAAA records (AAAA) or both (ANY), or NOERROR
//   with no answers (NODATA) for other types; an unknown name gives NXDOMAIN, except
//   that a name with known names below it exists (an empty non-terminal, RFC 8020) and
//   gets NODATA, as does the domain itself, which also answers SOA. Zone transfers
//   (AXFR/IXFR) are REFUSED. Every negative answer (NXDOMAIN and NODATA) carries the
//   zone's SOA in its authority section (RFC 2308 3), so resolvers may cache it, for
//   `negativeTTL` seconds only (the SOA's TTL and MINIMUM): names come and go with guests.
// - A PTR query, class IN or ANY, for `d.c.b.a.in-addr.arpa` where a.b.c.d is a local
//   name's address: answered here with AA, the name being the smallest of the names
//   with that address so the choice is stable.
// - Any query for a name in the ip6.arpa zone of the network's IPv6 prefix
//   (`reversePrefix6`): answered here, never forwarded (no upstream knows these
//   addresses): PTR for a local name's IPv6 address, else NXDOMAIN or NODATA with that
//   reverse zone's SOA.
// - Anything else, including reverse names of other addresses: `.forward`, and the
//   daemon sends the query bytes unchanged to its upstream resolver. If the upstream
//   does not answer in time or fails, `serverFailure(for:)` makes the guest's answer;
//   `isUpstreamReply(_:to:)` tells a genuine upstream reply from a stray or spoofed one.
//
// Local replies echo the question byte for byte (so the client's 0x20 case
// randomisation still matches) and use the query's name as the owner of the answers.
// EDNS (RFC 6891): a query with OPT version 0 gets an OPT back (our payload size, the
// query's DO bit) and may be answered in up to its payload size over UDP, capped at
// `DNSResponder.ednsPayloadSize`; another version gets BADVERS (for names we answer;
// the rest go upstream as they are). Without EDNS a UDP reply
// over 512 bytes is cut to its question with TC set, and the client retries over TCP.

/// The names the network answers for itself.
public struct LocalZone: Sendable, Equatable {
    /// Lower-cased, no trailing dot, e.g. "slirpd.internal".
    public var domain: String
    /// Full names, lower-cased, without trailing dot → their A records,
    /// e.g. "web1.slirpd.internal", "host.slirpd.internal". Lookups rely on that form;
    /// `set`, `add` and `remove` produce it.
    public var records: [String: [IPv4Address]]
    /// The same names → their AAAA records (the gateway's, guests' SLAAC addresses).
    public var records6: [String: [IPv6Address]]
    public var ttl: UInt32
    /// The network's IPv6 prefix, whose ip6.arpa names are answered here; nil: none.
    public var reversePrefix6: (address: IPv6Address, length: Int)? {
        get { reverse6.map { ($0.address, $0.length) } }
        set { reverse6 = newValue.map { Reverse6(address: $0.address, length: max(0, min(128, $0.length))) } }
    }
    struct Reverse6: Sendable, Equatable {
        var address: IPv6Address
        var length: Int
    }
    var reverse6: Reverse6?
    /// The SOA's serial; the daemon sets it from the clock when the names change.
    public var serial: UInt32 = 1
    /// How long a resolver may cache a negative answer (RFC 2308 5): the SOA's TTL and MINIMUM.
    public var negativeTTL: UInt32 = 10

    public static let defaultDomain = "slirpd.internal"

    public init(domain: String = LocalZone.defaultDomain, ttl: UInt32 = 60) {
        self.domain = Self.normalize(domain)
        self.records = [:]
        self.records6 = [:]
        self.ttl = ttl
    }

    /// Adds an IPv6 `address` to the name's AAAA records (once); the name is completed as in `set`.
    @discardableResult
    public mutating func add(_ name: String, address6 address: IPv6Address) -> Bool {
        guard let full = fullName(name) else { return false }
        if records6[full]?.contains(address) != true { records6[full, default: []].append(address) }
        return true
    }

    /// Makes `name` resolve to `address` alone. A name not already under the domain is
    /// taken as relative to it (`web1` and `web1.lab` gain `.<domain>`), as names without
    /// a trailing dot are in zone files. Returns false, changing nothing, for a name that
    /// is not a valid DNS name once completed (empty labels, a label over 63 bytes, over
    /// 255 bytes in all).
    @discardableResult
    public mutating func set(_ name: String, to address: IPv4Address) -> Bool {
        guard let full = fullName(name) else { return false }
        records[full] = [address]
        return true
    }

    /// Adds `address` to the name's records (once), for names with several addresses.
    @discardableResult
    public mutating func add(_ name: String, address: IPv4Address) -> Bool {
        guard let full = fullName(name) else { return false }
        if records[full]?.contains(address) != true { records[full, default: []].append(address) }
        return true
    }

    /// Removes the name and all its records; the name is completed as in `set`.
    public mutating func remove(_ name: String) {
        guard let full = fullName(name) else { return }
        records[full] = nil
        records6[full] = nil
    }

    /// `name` completed with the domain and lower-cased, if it is a valid DNS name.
    public func fullName(_ name: String) -> String? {
        let relative = Self.normalize(name)
        guard !relative.isEmpty else { return nil }
        let domain = Self.normalize(self.domain)
        let full: String
        if domain.isEmpty || relative == domain || relative.hasSuffix("." + domain) {
            full = relative
        } else {
            full = relative + "." + domain
        }
        guard DNSName(full) != nil else { return nil }
        return full
    }

    /// ASCII lower case (DNS ignores ASCII case only) without a trailing dot.
    static func normalize(_ name: String) -> String {
        var bytes = Array(name.utf8).map(dnsLowercase)
        if bytes.last == UInt8(ascii: ".") { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// What to do with a guest's DNS message.
public enum DNSAnswer: Sendable, Equatable {
    /// Answer locally with these bytes.
    case reply([UInt8])
    /// Not ours: send the query as it is to the upstream.
    case forward
    /// Not a query we answer at all (a response, garbage shorter than a header).
    case drop
}

/// How the reply travels, which decides whether it must fit in a datagram.
public enum DNSTransport: Sendable, Equatable {
    case udp
    /// Unlimited up to 65535 bytes; the caller adds the length prefix (`tcpFrame`).
    case tcp
}

public enum DNSResponder {
    /// The UDP payload size advertised in our OPT records and the cap on what we send
    /// over UDP: 1232 avoids IP fragmentation on common paths (DNS flag day 2020).
    public static let ednsPayloadSize: UInt16 = 1232

    /// See the theory of operation at the top of this file.
    @inlinable
    public static func answer<C: RandomAccessCollection<UInt8>>(
        query: C, zone: LocalZone, transport: DNSTransport = .udp
    ) -> DNSAnswer where C.Index == Int {
        guard query.count <= DNSMessage.maximumLength else { return .drop }
        return answer(wire: Array(query), zone: zone, transport: transport)
    }

    /// The answer for the guest when the upstream did not answer in time or refused:
    /// SERVFAIL with the query's id and question, or nil if `query` is not a query we
    /// would forward (it does not parse, is a response, or has other than one question).
    @inlinable
    public static func serverFailure<C: RandomAccessCollection<UInt8>>(for query: C) -> [UInt8]? where C.Index == Int {
        guard let message = DNSMessage.parse(query) else { return nil }
        return serverFailure(message: message)
    }

    /// True when `reply`, received from the upstream, is a well-formed response to `query`:
    /// QR set, the same id and opcode, and the same question ignoring ASCII case (RFC 5452
    /// 9.1: a forwarder must not pass on a reply that does not match what it asked). The
    /// daemon should otherwise keep waiting, and in the end answer `serverFailure(for:)`.
    @inlinable
    public static func isUpstreamReply<R: RandomAccessCollection<UInt8>, Q: RandomAccessCollection<UInt8>>(
        _ reply: R, to query: Q
    ) -> Bool where R.Index == Int, Q.Index == Int {
        guard let r = DNSMessage.parse(reply), let q = DNSMessage.parse(query) else { return false }
        return matches(reply: r, query: q)
    }

    @usableFromInline
    static func matches(reply r: DNSMessage, query q: DNSMessage) -> Bool {
        guard r.header.isResponse, !q.header.isResponse, r.header.id == q.header.id, r.header.opcode == q.header.opcode,
              r.questions.count == q.questions.count else { return false }
        return zip(r.questions, q.questions).allSatisfy { a, b in
            a.type == b.type && a.class == b.class && a.name.equalsIgnoringCase(b.name)
        }
    }

    /// For TCP: the message behind its 2-byte big-endian length (RFC 1035 4.2.2).
    /// Messages over 65535 bytes cannot be framed and are cut (none of ours are).
    public static func tcpFrame(_ message: [UInt8]) -> [UInt8] {
        let body = message.prefix(DNSMessage.maximumLength)
        return [UInt8(body.count >> 8), UInt8(truncatingIfNeeded: body.count)] + body
    }

    public enum TCPScan: Sendable, Equatable {
        /// Not enough bytes yet for a whole message.
        case needMore
        /// A whole message: it starts 2 bytes into the input; consume `2 + length`.
        case message(length: Int)
        /// A length shorter than a DNS header: the connection is garbage from here on.
        case badLength(Int)
    }

    /// Looks for one length-prefixed message at the start of the bytes received so far
    /// on a DNS TCP connection.
    @inlinable
    public static func tcpScan<C: RandomAccessCollection<UInt8>>(_ bytes: C) -> TCPScan where C.Index == Int {
        guard bytes.count >= 2 else { return .needMore }
        let s = bytes.startIndex
        let length = Int(bytes[s]) << 8 | Int(bytes[s + 1])
        guard length >= DNSHeader.length else { return .badLength(length) }
        guard bytes.count >= 2 + length else { return .needMore }
        return .message(length: length)
    }

    // MARK: - Implementation

    @usableFromInline
    static func answer(wire: [UInt8], zone: LocalZone, transport: DNSTransport) -> DNSAnswer {
        guard let header = DNSHeader(peeking: wire), !header.isResponse else { return .drop }
        guard header.opcode == 0 else { return .reply(bareReply(to: header, rcode: .notImplemented)) }
        guard let query = DNSMessage.parse(wire: wire), query.questions.count == 1, let question = query.questions.first
        else { return .reply(bareReply(to: header, rcode: .formatError)) }
        // OPT belongs once, in the additional section, owned by the root (RFC 6891 6.1.1).
        let opts = query.optRecords
        guard opts.count <= 1, opts.allSatisfy({ $0.name == .root }),
              !(query.answers + query.authorities).contains(where: { $0.type == .opt })
        else { return .reply(bareReply(to: header, rcode: .formatError)) }

        guard let local = localResponse(to: query, question: question, zone: zone) else { return .forward }
        var response = local
        var limit = DNSMessage.classicUDPLimit
        if let edns = query.edns {
            var ours = DNSEDNS(udpPayloadSize: ednsPayloadSize, dnssecOK: edns.dnssecOK)
            if edns.version != 0 {
                // BADVERS is 16: nothing in the header's 4 bits, 1 in the OPT's 8.
                response = query.response(rcode: .noError, authoritative: false)
                ours.extendedRCode = UInt8(DNSResponseCode.badVersion.rawValue >> 4)
            }
            response.additionals.append(ours.record)
            limit = max(DNSMessage.classicUDPLimit, Int(min(edns.udpPayloadSize, ednsPayloadSize)))
        }
        switch transport {
        case .udp: return .reply(response.encode(limit: limit))
        case .tcp: return .reply(response.encode())
        }
    }

    /// The reply for a query this zone owns, or nil to forward it.
    static func localResponse(to query: DNSMessage, question: DNSQuestion, zone: LocalZone) -> DNSMessage? {
        guard question.class == .internet || question.class == .any else { return nil }
        let name = question.name.lowercased
        let labels = name.labels
        let domainText = LocalZone.normalize(zone.domain)
        let type = question.type
        // An empty domain would claim the whole name space; then only PTR is local.
        if !domainText.isEmpty, let domain = DNSName(domainText), name.isSubdomain(of: domain) {
            if type == .axfr || type == .ixfr {
                return query.response(rcode: .refused, authoritative: true)
            }
            let soa = soaRecord(owner: domain, zone: zone)
            let key = recordKey(labels)
            let addresses = key.flatMap { zone.records[$0] } ?? []
            let addresses6 = key.flatMap { zone.records6[$0] } ?? []
            var response = query.response(rcode: .noError, authoritative: true)
            if !addresses.isEmpty || !addresses6.isEmpty || key == domainText {
                if type == .a || type == .any {
                    response.answers += addresses.map { .a(question.name, $0, ttl: zone.ttl) }
                }
                if type == .aaaa || type == .any {
                    response.answers += addresses6.map { .aaaa(question.name, $0, ttl: zone.ttl) }
                }
                if key == domainText, type == .soa || type == .any {
                    var own = soa
                    own.name = question.name
                    response.answers.append(own)
                }
                if response.answers.isEmpty { response.authorities = [soa] }
                return response
            }
            let below = key.map { key in
                zone.records.contains { !$0.value.isEmpty && $0.key.hasSuffix("." + key) }
                    || zone.records6.contains { !$0.value.isEmpty && $0.key.hasSuffix("." + key) }
            } ?? false
            if !below { response.header.rcode = UInt8(DNSResponseCode.nameError.rawValue) }
            response.authorities = [soa]
            return response
        }
        if let reverse = zone.reverse6, let nibbles = reverseNibbles6(name) {
            return reverse6Response(to: query, question: question, nibbles: nibbles, reverse: reverse, zone: zone)
        }
        if type == .ptr, let address = reverseAddress(name), let target = ptrTarget(for: address, in: zone) {
            var response = query.response(rcode: .noError, authoritative: true)
            response.answers = [.ptr(question.name, target, ttl: zone.ttl)]
            return response
        }
        return nil
    }

    /// The answer for a name under ip6.arpa, or nil when it is outside the network's
    /// prefix (then it goes upstream like any other name).
    static func reverse6Response(to query: DNSMessage, question: DNSQuestion, nibbles: [UInt8],
                                 reverse: LocalZone.Reverse6, zone: LocalZone) -> DNSMessage? {
        // The zone's apex: the prefix's nibbles, rounded up to a whole nibble.
        let apexCount = (reverse.length + 3) / 4
        let prefixNibbles = nibbles6(reverse.address)
        guard nibbles.count >= apexCount else { return nil }
        for bit in 0..<reverse.length {
            let shift = UInt8(3 - bit % 4)
            if (nibbles[bit / 4] >> shift) & 1 != (prefixNibbles[bit / 4] >> shift) & 1 { return nil }
        }
        let type = question.type
        var apexLabels = prefixNibbles.prefix(apexCount).reversed().map { [hexDigit($0)] }
        apexLabels += [Array("ip6".utf8), Array("arpa".utf8)]
        guard let apex = DNSName(labels: apexLabels) else { return nil }
        let soa = soaRecord(owner: apex, zone: zone)
        var response = query.response(rcode: .noError, authoritative: true)
        if type == .axfr || type == .ixfr { return query.response(rcode: .refused, authoritative: true) }
        let known = zone.records6.values.joined().map(nibbles6)
        if nibbles.count == 32 {
            if let address = IPv6Address(bytes: (0..<16).map { nibbles[2 * $0] << 4 | nibbles[2 * $0 + 1] }),
               let target = ptrTarget(for: address, in: zone) {
                if type == .ptr || type == .any { response.answers = [.ptr(question.name, target, ttl: zone.ttl)] }
            } else {
                response.header.rcode = UInt8(DNSResponseCode.nameError.rawValue)
            }
        } else if nibbles.count == apexCount {
            if type == .soa || type == .any {
                var own = soa
                own.name = question.name
                response.answers = [own]
            }
        } else if !known.contains(where: { $0.starts(with: nibbles) }) {
            response.header.rcode = UInt8(DNSResponseCode.nameError.rawValue)
        }
        if response.answers.isEmpty { response.authorities = [soa] }
        return response
    }

    /// The 4-bit nibbles, most significant first, of `n.n.n...ip6.arpa` (1 to 32 of them), else nil.
    static func reverseNibbles6(_ lowercasedName: DNSName) -> [UInt8]? {
        let labels = lowercasedName.labels
        guard labels.count >= 3, labels.count <= 34, labels[labels.count - 2] == Array("ip6".utf8),
              labels[labels.count - 1] == Array("arpa".utf8) else { return nil }
        var nibbles: [UInt8] = []
        for label in labels.dropLast(2).reversed() {
            guard label.count == 1 else { return nil }
            switch label[0] {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibbles.append(label[0] - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibbles.append(label[0] - UInt8(ascii: "a") + 10)
            default: return nil
            }
        }
        return nibbles
    }

    static func nibbles6(_ address: IPv6Address) -> [UInt8] {
        address.bytes.flatMap { [$0 >> 4, $0 & 0x0F] }
    }

    static func hexDigit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
    }

    /// The zone's SOA at `owner` (RFC 1035 3.3.13): the gateway's name as primary, a
    /// hostmaster mailbox, and `negativeTTL` as both its TTL and MINIMUM (RFC 2308 4).
    static func soaRecord(owner: DNSName, zone: LocalZone) -> DNSRecord {
        let domain = LocalZone.normalize(zone.domain)
        let primary = DNSName(domain.isEmpty ? "localhost" : "host." + domain) ?? .root
        let mailbox = DNSName(domain.isEmpty ? "hostmaster.localhost" : "hostmaster." + domain) ?? .root
        var data: [UInt8] = []
        for name in [primary, mailbox] {
            for label in name.labels { data += [UInt8(label.count)] + label }
            data.append(0)
        }
        // Serial, refresh, retry, expire, minimum.
        for value in [zone.serial, 3600, 600, 86400, zone.negativeTTL] {
            data += [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8),
                     UInt8(truncatingIfNeeded: value)]
        }
        return DNSRecord(name: owner, type: .soa, ttl: zone.negativeTTL, data: .opaque(data))
    }

    /// The `records` key a lower-cased name would have, or nil if no key can spell it:
    /// a label holding a dot byte, or bytes that are not UTF-8 (a String would alter them).
    static func recordKey(_ labels: [[UInt8]]) -> String? {
        guard !labels.contains(where: { $0.contains(UInt8(ascii: ".")) }) else { return nil }
        let bytes = Array(labels.joined(separator: [UInt8(ascii: ".")]))
        let key = String(decoding: bytes, as: UTF8.self)
        return Array(key.utf8) == bytes ? key : nil
    }

    /// a.b.c.d for `d.c.b.a.in-addr.arpa` in canonical decimal, else nil.
    static func reverseAddress(_ lowercasedName: DNSName) -> IPv4Address? {
        let labels = lowercasedName.labels
        guard labels.count == 6, labels[4] == Array("in-addr".utf8), labels[5] == Array("arpa".utf8) else { return nil }
        let text = labels[0..<4].reversed().map { String(decoding: $0, as: UTF8.self) }.joined(separator: ".")
        return IPv4Address(text)
    }

    /// The smallest valid name with `address`, so the same query always gets the same name.
    static func ptrTarget(for address: IPv4Address, in zone: LocalZone) -> DNSName? {
        zone.records.filter { $0.value.contains(address) }.keys.sorted()
            .lazy.compactMap { DNSName($0) }.first
    }

    static func ptrTarget(for address: IPv6Address, in zone: LocalZone) -> DNSName? {
        zone.records6.filter { $0.value.contains(address) }.keys.sorted()
            .lazy.compactMap { DNSName($0) }.first
    }

    /// A reply with no sections, for queries whose question cannot be trusted.
    static func bareReply(to header: DNSHeader, rcode: DNSResponseCode) -> [UInt8] {
        let h = DNSHeader(id: header.id, isResponse: true, opcode: header.opcode,
                          recursionDesired: header.recursionDesired, recursionAvailable: true,
                          checkingDisabled: header.checkingDisabled, rcode: UInt8(rcode.rawValue & 0x0F))
        return DNSMessage(header: h).encode()
    }

    @usableFromInline
    static func serverFailure(message query: DNSMessage) -> [UInt8]? {
        guard !query.header.isResponse, query.questions.count == 1 else { return nil }
        var response = query.response(rcode: .serverFailure)
        var limit = DNSMessage.classicUDPLimit
        if let edns = query.edns, edns.version == 0 {
            response.additionals.append(DNSEDNS(udpPayloadSize: ednsPayloadSize, dnssecOK: edns.dnssecOK).record)
            limit = Int(ednsPayloadSize)
        }
        return response.encode(limit: limit)
    }
}
