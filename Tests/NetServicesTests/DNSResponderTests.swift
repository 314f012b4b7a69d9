import NetOptions
import NetServices
import Testing

private func dnsName(_ text: String) -> DNSName {
    DNSName(text) ?? .root
}

/// A guest's query, as a resolver would send it.
private func query(_ text: String, _ type: DNSType = .a, class cls: DNSClass = .internet, id: UInt16 = 0x4242,
                   rd: Bool = true, edns: DNSEDNS? = nil) -> [UInt8] {
    var message = DNSMessage(header: DNSHeader(id: id, recursionDesired: rd),
                             questions: [DNSQuestion(name: dnsName(text), type: type, class: cls)])
    if let edns { message.additionals = [edns.record] }
    return message.encode()
}

/// The zone most tests use.
private func labZone() -> LocalZone {
    var zone = LocalZone(domain: "slirpd.internal")
    zone.set("web1", to: IPv4Address(10, 0, 2, 15))
    zone.set("host", to: IPv4Address(10, 0, 2, 2))
    zone.set("db.slirpd.internal", to: IPv4Address(10, 0, 2, 16))
    zone.add("multi", address: IPv4Address(10, 0, 2, 20))
    zone.add("multi", address: IPv4Address(10, 0, 2, 21))
    zone.set("a.lab", to: IPv4Address(10, 0, 2, 30))
    return zone
}

/// The reply's bytes and their parse, or nil when the responder did not reply.
private func reply(_ bytes: [UInt8], zone: LocalZone = labZone(), transport: DNSTransport = .udp)
    -> (bytes: [UInt8], message: DNSMessage)? {
    guard case .reply(let out) = DNSResponder.answer(query: bytes, zone: zone, transport: transport),
          let message = DNSMessage.parse(out) else { return nil }
    return (out, message)
}

/// The zone's SOA, alone, in an authority section (RFC 2308 3).
private func expectZoneSOA(_ authorities: [DNSRecord], owner: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(authorities.count == 1, sourceLocation: sourceLocation)
    #expect(authorities.first?.type == .soa && authorities.first?.name == dnsName(owner), sourceLocation: sourceLocation)
}

@Suite struct DNSResponderTests {
    @Test func answersAKnownName() throws {
        let q = query("web1.slirpd.internal")
        let (_, r) = try #require(reply(q))
        #expect(r.header == DNSHeader(id: 0x4242, isResponse: true, isAuthoritative: true, recursionDesired: true,
                                      recursionAvailable: true, rcode: 0))
        #expect(r.questions == [DNSQuestion(name: dnsName("web1.slirpd.internal"), type: .a)])
        #expect(r.answers == [.a(dnsName("web1.slirpd.internal"), IPv4Address(10, 0, 2, 15), ttl: 60)])
        #expect(r.authorities.isEmpty && r.additionals.isEmpty)
    }

    @Test func answersTheGatewayAndFullNamesAndCopiesRD() throws {
        let (_, r) = try #require(reply(query("host.slirpd.internal", rd: false)))
        #expect(r.answers.map(\.data) == [.a(IPv4Address(10, 0, 2, 2))])
        #expect(!r.header.recursionDesired && r.header.recursionAvailable && r.header.isAuthoritative)
        let (_, db) = try #require(reply(query("db.slirpd.internal.")))
        #expect(db.answers.map(\.data) == [.a(IPv4Address(10, 0, 2, 16))])
    }

    @Test func matchesIgnoringCaseAndEchoesTheQueryCase() throws {
        let q = query("WeB1.SLIRPD.Internal")
        let (bytes, r) = try #require(reply(q))
        // The question section is the query's, byte for byte (0x20 randomisation survives).
        #expect(Array(bytes[12..<q.count]) == Array(q[12...]))
        #expect(r.answers.first?.name.description == "WeB1.SLIRPD.Internal")
        #expect(r.answers.first?.data == .a(IPv4Address(10, 0, 2, 15)))
        // And the answer's owner is a pointer to the question's name.
        #expect(Array(bytes[q.count..<(q.count + 2)]) == [0xC0, 0x0C])
    }

    @Test func returnsEveryAddressOfAName() throws {
        let (_, r) = try #require(reply(query("multi.slirpd.internal")))
        #expect(r.answers.map(\.data) == [.a(IPv4Address(10, 0, 2, 20)), .a(IPv4Address(10, 0, 2, 21))])
        let (_, any) = try #require(reply(query("multi.slirpd.internal", .any)))
        #expect(any.answers.count == 2 && any.header.rcode == 0)
        let (_, anyClass) = try #require(reply(query("web1.slirpd.internal", class: .any)))
        #expect(anyClass.answers.count == 1)
    }

    @Test func otherTypesOfKnownNamesAreNoData() throws {
        for type: DNSType in [.aaaa, .mx, .txt, .ptr, .cname, .soa, .ns, DNSType(65)] {
            let (_, r) = try #require(reply(query("web1.slirpd.internal", type)))
            #expect(r.header.rcode == 0 && r.header.isAuthoritative && r.header.isResponse, "\(type)")
            #expect(r.answers.isEmpty, "\(type)")
            expectZoneSOA(r.authorities, owner: "slirpd.internal")
            #expect(r.questions.first?.type == type)
        }
    }

    @Test func unknownNamesUnderTheDomainAreNXDomain() throws {
        for text in ["nope.slirpd.internal", "x.web1.slirpd.internal", "NOPE.Slirpd.Internal"] {
            for type: DNSType in [.a, .aaaa, .ptr] {
                let (_, r) = try #require(reply(query(text, type)))
                #expect(r.header.rcode == 3 && r.header.isAuthoritative && r.header.recursionAvailable, "\(text)")
                #expect(r.answers.isEmpty && r.questions.count == 1, "\(text)")
                expectZoneSOA(r.authorities, owner: "slirpd.internal")
            }
        }
    }

    @Test func negativeAnswersCarryTheZonesSOA() throws {
        var zone = labZone()
        zone.serial = 1_765_000_000
        let (bytes, r) = try #require(reply(query("nope.slirpd.internal", .a), zone: zone))
        #expect(r.header.rcode == 3)
        let soa = try #require(r.authorities.first)
        #expect(soa.type == .soa && soa.ttl == 10 && soa.name == dnsName("slirpd.internal"))
        // RDATA by hand (RFC 1035 3.3.13): MNAME, RNAME, SERIAL, REFRESH, RETRY, EXPIRE, MINIMUM.
        func wire(_ text: String) -> [UInt8] { text.split(separator: ".").flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0] }
        func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
        let expected = wire("host.slirpd.internal") + wire("hostmaster.slirpd.internal") + be32(1_765_000_000)
            + be32(3600) + be32(600) + be32(86400) + be32(10)
        #expect(soa.data == .opaque(expected))
        #expect(bytes.count > 12 && bytes[9] == 1)  // NSCOUNT 1 on the wire
        // The domain itself answers SOA, owned by the question's name.
        let (_, apex) = try #require(reply(query("Slirpd.Internal", .soa), zone: zone))
        #expect(apex.header.rcode == 0 && apex.answers.map(\.type) == [.soa] && apex.authorities.isEmpty)
        #expect(apex.answers.first?.name.description == "Slirpd.Internal")
        // A positive answer has no authority section.
        let (_, a) = try #require(reply(query("web1.slirpd.internal"), zone: zone))
        #expect(a.authorities.isEmpty)
    }

    @Test func answersAAAAAndANYWithBothFamilies() throws {
        var zone = labZone()
        let g6 = try #require(IPv6Address("fec0::5054:ff:fe12:3456"))
        let host6 = try #require(IPv6Address("fec0::2"))
        zone.add("web1", address6: g6)
        zone.add("host", address6: host6)
        zone.add("v6only", address6: g6)
        let (_, r) = try #require(reply(query("web1.slirpd.internal", .aaaa), zone: zone))
        #expect(r.header.rcode == 0 && r.answers == [.aaaa(dnsName("web1.slirpd.internal"), g6, ttl: 60)])
        #expect(r.authorities.isEmpty)
        let (_, any) = try #require(reply(query("web1.slirpd.internal", .any), zone: zone))
        #expect(any.answers.map(\.data) == [.a(IPv4Address(10, 0, 2, 15)), .aaaa(g6)])
        let (_, host) = try #require(reply(query("host.slirpd.internal", .aaaa), zone: zone))
        #expect(host.answers.map(\.data) == [.aaaa(host6)])
        // A name with only AAAA exists: A is NODATA, not NXDOMAIN.
        let (_, onlyV6) = try #require(reply(query("v6only.slirpd.internal", .a), zone: zone))
        #expect(onlyV6.header.rcode == 0 && onlyV6.answers.isEmpty && onlyV6.authorities.map(\.type) == [.soa])
    }

    static func reverse6(_ address: IPv6Address) -> String {
        address.bytes.flatMap { [$0 >> 4, $0 & 0x0F] }.reversed().map { String($0, radix: 16) }.joined(separator: ".") + ".ip6.arpa"
    }

    @Test func answersTheIPv6PrefixsReverseZoneLocally() throws {
        var zone = labZone()
        let prefix = try #require(IPv6Address("fec0::"))
        zone.reversePrefix6 = (prefix, 64)
        let g6 = try #require(IPv6Address("fec0::5054:ff:fe12:3456"))
        zone.add("web1", address6: g6)
        let (_, ptr) = try #require(reply(query(Self.reverse6(g6), .ptr), zone: zone))
        #expect(ptr.header.rcode == 0 && ptr.header.isAuthoritative)
        #expect(ptr.answers.map(\.data) == [.ptr(dnsName("web1.slirpd.internal"))])
        // An unknown address in the prefix: NXDOMAIN from here, with the reverse zone's SOA.
        let unknown = try #require(IPv6Address("fec0::1234"))
        let (_, nx) = try #require(reply(query(Self.reverse6(unknown), .ptr), zone: zone))
        #expect(nx.header.rcode == 3 && nx.answers.isEmpty)
        let apex = "0.0.0.0.0.0.0.0.0.0.0.0.0.c.e.f.ip6.arpa"
        #expect(nx.authorities.map(\.type) == [.soa] && nx.authorities.first?.name == dnsName(apex))
        // The apex answers SOA; a name above a known address is NODATA; others NXDOMAIN.
        let (_, soa) = try #require(reply(query(apex, .soa), zone: zone))
        #expect(soa.header.rcode == 0 && soa.answers.map(\.type) == [.soa])
        let above = Self.reverse6(g6).split(separator: ".").dropFirst(8).joined(separator: ".")
        let (_, ent) = try #require(reply(query(above, .ptr), zone: zone))
        #expect(ent.header.rcode == 0 && ent.answers.isEmpty && ent.authorities.map(\.type) == [.soa])
        let (_, other) = try #require(reply(query("1." + apex, .ptr), zone: zone))
        #expect(other.header.rcode == 3)
        // Outside the prefix, and malformed nibble names, still go upstream.
        let outside = try #require(IPv6Address("2001:db8::1"))
        #expect(DNSResponder.answer(query: query(Self.reverse6(outside), .ptr), zone: zone) == .forward)
        #expect(DNSResponder.answer(query: query("0.0.0.0.0.0.0.0.0.0.0.0.c.e.f.ip6.arpa", .ptr), zone: zone) == .forward)
        #expect(DNSResponder.answer(query: query("00." + apex, .ptr), zone: zone) == .forward)
        // Without a prefix, nothing under ip6.arpa is local.
        #expect(DNSResponder.answer(query: query(Self.reverse6(g6), .ptr), zone: labZone()) == .forward)
    }

    @Test func theDomainAndEmptyNonTerminalsExist() throws {
        for text in ["slirpd.internal", "lab.slirpd.internal", "LAB.slirpd.internal"] {
            let (_, r) = try #require(reply(query(text)))
            #expect(r.header.rcode == 0 && r.header.isAuthoritative && r.answers.isEmpty, "\(text)")
        }
        let (_, a) = try #require(reply(query("a.lab.slirpd.internal")))
        #expect(a.answers.map(\.data) == [.a(IPv4Address(10, 0, 2, 30))])
    }

    @Test func refusesZoneTransfers() throws {
        let (_, r) = try #require(reply(query("slirpd.internal", .axfr), transport: .tcp))
        #expect(r.header.rcode == 5 && r.answers.isEmpty)
    }

    @Test func answersPTRForLocalAddresses() throws {
        let (_, r) = try #require(reply(query("15.2.0.10.in-addr.arpa", .ptr)))
        #expect(r.header.rcode == 0 && r.header.isAuthoritative)
        #expect(r.answers == [.ptr(dnsName("15.2.0.10.in-addr.arpa"), dnsName("web1.slirpd.internal"), ttl: 60)])
        let (_, upper) = try #require(reply(query("2.2.0.10.IN-ADDR.Arpa", .ptr)))
        #expect(upper.answers.first?.name.description == "2.2.0.10.IN-ADDR.Arpa")
        #expect(upper.answers.first?.data == .ptr(dnsName("host.slirpd.internal")))
        let (_, multi) = try #require(reply(query("21.2.0.10.in-addr.arpa", .ptr)))
        #expect(multi.answers.first?.data == .ptr(dnsName("multi.slirpd.internal")))
    }

    @Test func ptrPicksTheSmallestNameForASharedAddress() throws {
        var zone = labZone()
        zone.set("zeta", to: IPv4Address(10, 0, 2, 40))
        zone.set("alpha", to: IPv4Address(10, 0, 2, 40))
        zone.set("mid", to: IPv4Address(10, 0, 2, 40))
        for _ in 0..<5 {
            let (_, r) = try #require(reply(query("40.2.0.10.in-addr.arpa", .ptr), zone: zone))
            #expect(r.answers.map(\.data) == [.ptr(dnsName("alpha.slirpd.internal"))])
        }
    }

    @Test func forwardsEverythingElse() {
        let zone = labZone()
        let forwarded = [
            query("example.com"),
            query("www.example.com", .aaaa),
            query("slirpd.internal.example.com"),
            query("internal"),
            query("xslirpd.internal"),
            query("99.2.0.10.in-addr.arpa", .ptr),  // not a local address
            query("015.2.0.10.in-addr.arpa", .ptr),  // not canonical
            query("2.0.10.in-addr.arpa", .ptr),  // not a whole address
            query("15.2.0.10.in-addr.arpa", .a),  // reverse name, not PTR
            query("web1.slirpd.internal", class: .chaos),  // not class IN
            query("version.bind", .txt, class: .chaos),
            query(".", .ns),
        ]
        for q in forwarded {
            #expect(DNSResponder.answer(query: q, zone: zone) == .forward, "\(DNSMessage.parse(q)?.questions ?? [])")
        }
    }

    @Test func dropsResponsesAndRunts() {
        let zone = labZone()
        var response = query("web1.slirpd.internal")
        response[2] |= 0x80
        #expect(DNSResponder.answer(query: response, zone: zone) == .drop)
        #expect(DNSResponder.answer(query: [UInt8](), zone: zone) == .drop)
        #expect(DNSResponder.answer(query: Array(response.prefix(11)), zone: zone) == .drop)
        #expect(DNSResponder.answer(query: [UInt8](repeating: 0, count: 70000), zone: zone) == .drop)
    }

    @Test func otherOpcodesGetNotImplemented() throws {
        for opcode: UInt8 in [1, 2, 4, 5, 15] {
            var q = query("web1.slirpd.internal")
            q[2] = q[2] & 0x87 | opcode << 3
            let (bytes, r) = try #require(reply(q))
            #expect(r.header == DNSHeader(id: 0x4242, isResponse: true, opcode: opcode, recursionDesired: true,
                                          recursionAvailable: true, rcode: 4))
            #expect(bytes.count == 12, "no sections")
        }
    }

    @Test func badQuestionCountsAndGarbageGetFormErr() throws {
        let zone = labZone()
        let none = DNSMessage(header: DNSHeader(id: 9, recursionDesired: true)).encode()
        var two = DNSMessage(header: DNSHeader(id: 9, recursionDesired: true),
                             questions: [DNSQuestion(name: dnsName("web1.slirpd.internal"), type: .a)])
        two.questions.append(DNSQuestion(name: dnsName("example.com"), type: .a))
        let truncated = Array(query("web1.slirpd.internal", id: 9).dropLast(2))
        let loop: [UInt8] = [0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1]
        for q in [none, two.encode(), truncated, loop] {
            let (bytes, r) = try #require(reply(q, zone: zone))
            #expect(r.header == DNSHeader(id: 9, isResponse: true, recursionDesired: true, recursionAvailable: true,
                                          rcode: 1))
            #expect(bytes.count == 12)
        }
    }

    @Test func misplacedOrRepeatedOPTGetsFormErr() throws {
        let opt = DNSEDNS(udpPayloadSize: 1232).record
        var twice = DNSMessage(header: DNSHeader(id: 1), questions: [DNSQuestion(name: dnsName("example.com"), type: .a)])
        twice.additionals = [opt, opt]
        var inAnswers = twice
        inAnswers.additionals = []
        inAnswers.answers = [opt]
        var notRoot = twice
        notRoot.additionals = [DNSRecord(name: dnsName("x"), type: .opt, class: DNSClass(1232), ttl: 0, data: .opaque([]))]
        for message in [twice, inAnswers, notRoot] {
            let (_, r) = try #require(reply(message.encode()))
            #expect(r.header.rcode == 1 && r.additionals.isEmpty)
        }
    }

    @Test func ednsQueriesGetOPTBack() throws {
        let (_, r) = try #require(reply(query("web1.slirpd.internal", edns: DNSEDNS(udpPayloadSize: 4096, dnssecOK: true))))
        #expect(r.answers.count == 1)
        #expect(r.edns == DNSEDNS(udpPayloadSize: DNSResponder.ednsPayloadSize, dnssecOK: true))
        let (_, plain) = try #require(reply(query("nope.slirpd.internal", edns: DNSEDNS(udpPayloadSize: 512))))
        #expect(plain.header.rcode == 3 && plain.edns == DNSEDNS(udpPayloadSize: 1232))
        let (_, none) = try #require(reply(query("web1.slirpd.internal")))
        #expect(none.additionals.isEmpty, "no OPT to a client without EDNS (RFC 6891 7)")
    }

    @Test func unknownEDNSVersionsGetBadVers() throws {
        let (_, r) = try #require(reply(query("web1.slirpd.internal", edns: DNSEDNS(udpPayloadSize: 4096, version: 1))))
        #expect(r.header.rcode == 0 && r.answers.isEmpty)
        #expect(r.edns?.extendedRCode == 1 && r.edns?.version == 0)
        #expect(r.extendedResponseCode == .badVersion)
        // Not ours: the upstream deals with it.
        let q = query("example.com", edns: DNSEDNS(udpPayloadSize: 4096, version: 1))
        #expect(DNSResponder.answer(query: q, zone: labZone()) == .forward)
    }

    @Test func largeUDPRepliesAreTruncatedWithoutEDNS() throws {
        var zone = labZone()
        for i in 0..<40 { zone.add("big", address: IPv4Address(10, 0, 3, UInt8(i))) }
        let (bytes, r) = try #require(reply(query("big.slirpd.internal"), zone: zone))
        #expect(bytes.count <= 512)
        #expect(r.header.isTruncated && r.header.isAuthoritative && r.answers.isEmpty && r.questions.count == 1)
        // Over TCP it all fits.
        let (_, tcp) = try #require(reply(query("big.slirpd.internal"), zone: zone, transport: .tcp))
        #expect(!tcp.header.isTruncated && tcp.answers.count == 40)
        // With EDNS the client's larger buffer is used, capped at our 1232.
        let (big, edns) = try #require(reply(query("big.slirpd.internal", edns: DNSEDNS(udpPayloadSize: 4096)), zone: zone))
        #expect(big.count > 512 && big.count <= 1232)
        #expect(!edns.header.isTruncated && edns.answers.count == 40 && edns.edns != nil)
        // A small EDNS buffer is still at least 512, and truncation keeps the OPT.
        for i in 40..<80 { zone.add("big", address: IPv4Address(10, 0, 3, UInt8(i))) }
        let (cut, small) = try #require(reply(query("big.slirpd.internal", edns: DNSEDNS(udpPayloadSize: 4096)), zone: zone))
        #expect(cut.count <= 1232 && small.header.isTruncated && small.answers.isEmpty && small.edns != nil)
    }

    @Test func serverFailureCarriesIdAndQuestion() throws {
        let q = query("Www.Example.com", .aaaa, id: 0x7777)
        let bytes = try #require(DNSResponder.serverFailure(for: q))
        let r = try #require(DNSMessage.parse(bytes))
        #expect(r.header == DNSHeader(id: 0x7777, isResponse: true, recursionDesired: true, recursionAvailable: true,
                                      rcode: 2))
        #expect(Array(bytes[12...]) == Array(q[12...]), "the question, byte for byte")
        let withEDNS = try #require(DNSResponder.serverFailure(for: query("example.com", edns: DNSEDNS(udpPayloadSize: 4096))))
        #expect(DNSMessage.parse(withEDNS)?.edns == DNSEDNS(udpPayloadSize: 1232))
        var response = q
        response[2] |= 0x80
        #expect(DNSResponder.serverFailure(for: response) == nil)
        #expect(DNSResponder.serverFailure(for: [UInt8](repeating: 0xFF, count: 40)) == nil)
        #expect(DNSResponder.serverFailure(for: DNSMessage(header: DNSHeader(id: 1)).encode()) == nil)
    }

    @Test func recognisesMatchingUpstreamReplies() throws {
        let q = query("Www.Example.COM", .aaaa, id: 0x1357)
        var reply = try #require(DNSMessage.parse(q)).response(rcode: .noError)
        reply.questions = [DNSQuestion(name: dnsName("www.example.com"), type: .aaaa)]
        #expect(DNSResponder.isUpstreamReply(reply.encode(), to: q), "case may differ")
        var otherID = reply
        otherID.header.id = 0x1358
        var otherType = reply
        otherType.questions[0].type = .a
        var otherName = reply
        otherName.questions[0].name = dnsName("www.example.net")
        var notAResponse = reply
        notAResponse.header.isResponse = false
        var noQuestion = reply
        noQuestion.questions = []
        for bad in [otherID, otherType, otherName, notAResponse, noQuestion] {
            #expect(!DNSResponder.isUpstreamReply(bad.encode(), to: q))
        }
        #expect(!DNSResponder.isUpstreamReply([UInt8](repeating: 0x80, count: 20), to: q))
        #expect(!DNSResponder.isUpstreamReply(reply.encode(), to: [UInt8]()))
    }

    @Test func tcpFramingRoundTrips() {
        let message = query("web1.slirpd.internal")
        let framed = DNSResponder.tcpFrame(message)
        #expect(Array(framed.prefix(2)) == [0, UInt8(message.count)])
        #expect(Array(framed.dropFirst(2)) == message)
        #expect(DNSResponder.tcpFrame([UInt8](repeating: 1, count: 300)).prefix(2) == [1, 44])
        #expect(DNSResponder.tcpScan([UInt8]()) == .needMore)
        #expect(DNSResponder.tcpScan([0]) == .needMore)
        #expect(DNSResponder.tcpScan(Array(framed.dropLast())) == .needMore)
        #expect(DNSResponder.tcpScan(framed) == .message(length: message.count))
        #expect(DNSResponder.tcpScan([0, 11] + [UInt8](repeating: 0, count: 11)) == .badLength(11))
        #expect(DNSResponder.tcpScan([0, 0]) == .badLength(0))
        // Two messages arriving in small pieces come out whole and in order.
        let second = query("example.com", id: 2)
        let stream = framed + DNSResponder.tcpFrame(second)
        for chunk in [1, 2, 3, 7, stream.count] {
            var buffer: [UInt8] = []
            var messages: [[UInt8]] = []
            var offset = 0
            while offset < stream.count {
                buffer += stream[offset..<min(offset + chunk, stream.count)]
                offset += chunk
                while case .message(let length) = DNSResponder.tcpScan(buffer) {
                    messages.append(Array(buffer[2..<(2 + length)]))
                    buffer.removeFirst(2 + length)
                }
            }
            #expect(messages == [message, second], "chunk \(chunk)")
            #expect(buffer.isEmpty)
        }
    }

    @Test func zoneNamesAreCompletedAndNormalised() {
        var zone = LocalZone(domain: "Lab.Example.")
        #expect(zone.domain == "lab.example" && zone.ttl == 60)
        let accepted = [
            zone.set("Web1", to: IPv4Address(10, 0, 0, 1)),
            zone.set("db.lab.example.", to: IPv4Address(10, 0, 0, 2)),
            zone.set("a.rack", to: IPv4Address(10, 0, 0, 3)),
            zone.set("LAB.EXAMPLE", to: IPv4Address(10, 0, 0, 4)),
        ]
        #expect(accepted == [true, true, true, true])
        #expect(zone.records == [
            "web1.lab.example": [IPv4Address(10, 0, 0, 1)],
            "db.lab.example": [IPv4Address(10, 0, 0, 2)],
            "a.rack.lab.example": [IPv4Address(10, 0, 0, 3)],
            "lab.example": [IPv4Address(10, 0, 0, 4)],
        ])
        // set replaces, add appends once.
        zone.set("web1", to: IPv4Address(10, 0, 0, 9))
        zone.add("web1", address: IPv4Address(10, 0, 0, 10))
        zone.add("web1", address: IPv4Address(10, 0, 0, 10))
        #expect(zone.records["web1.lab.example"] == [IPv4Address(10, 0, 0, 9), IPv4Address(10, 0, 0, 10)])
        zone.remove("WEB1")
        zone.remove("db.lab.example")
        #expect(zone.records["web1.lab.example"] == nil && zone.records["db.lab.example"] == nil)
        // Invalid names change nothing.
        let before = zone
        let rejected = [
            zone.set("", to: IPv4Address(1, 1, 1, 1)),
            zone.set("a..b", to: IPv4Address(1, 1, 1, 1)),
            zone.set(String(repeating: "x", count: 64), to: IPv4Address(1, 1, 1, 1)),
            zone.add(String(repeating: "x.", count: 130), address: IPv4Address(1, 1, 1, 1)),
        ]
        #expect(rejected == [false, false, false, false])
        #expect(zone == before)
        #expect(LocalZone(ttl: 5).domain == "slirpd.internal")
    }

    @Test func zoneChangesShowUpInAnswers() throws {
        var zone = labZone()
        zone.remove("web1")
        let (_, gone) = try #require(reply(query("web1.slirpd.internal"), zone: zone))
        #expect(gone.header.rcode == 3)
        #expect(DNSResponder.answer(query: query("15.2.0.10.in-addr.arpa", .ptr), zone: zone) == .forward)
        zone.ttl = 5
        zone.set("web1", to: IPv4Address(10, 0, 2, 99))
        let (_, back) = try #require(reply(query("web1.slirpd.internal"), zone: zone))
        #expect(back.answers == [.a(dnsName("web1.slirpd.internal"), IPv4Address(10, 0, 2, 99), ttl: 5)])
    }

    @Test func anEmptyDomainClaimsNoNames() throws {
        var zone = LocalZone(domain: "")
        zone.set("web1.lab", to: IPv4Address(10, 0, 2, 15))
        #expect(DNSResponder.answer(query: query("web1.lab"), zone: zone) == .forward)
        #expect(DNSResponder.answer(query: query("nope"), zone: zone) == .forward)
        let (_, r) = try #require(reply(query("15.2.0.10.in-addr.arpa", .ptr), zone: zone))
        #expect(r.answers.map(\.data) == [.ptr(dnsName("web1.lab"))])
    }
}
