import NetOptions
import NetServices
import Testing

/// `www.example.com` as wire labels.
private let wwwExample: [UInt8] = [3] + Array("www".utf8) + [7] + Array("example".utf8) + [3] + Array("com".utf8) + [0]

/// The standard query for www.example.com A, id 0xABCD, RD, written out by hand.
private let handQuery: [UInt8] = [0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0] + wwwExample + [0, 1, 0, 1]

private func name(_ text: String) -> DNSName {
    DNSName(text) ?? .root
}

/// A header with the given counts and flags, for hand-made messages.
private func header(id: UInt16 = 0x0102, flags: UInt16 = 0x0100, qd: UInt16 = 0, an: UInt16 = 0, ns: UInt16 = 0,
                    ar: UInt16 = 0) -> [UInt8] {
    [id, flags, qd, an, ns, ar].flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
}

@Suite struct DNSMessageTests {
    @Test func encodesAQueryExactly() {
        let query = DNSMessage(header: DNSHeader(id: 0xABCD, recursionDesired: true),
                               questions: [DNSQuestion(name: name("www.example.com"), type: .a)])
        #expect(query.encode() == handQuery)
    }

    @Test func parsesAHandWrittenQuery() throws {
        let message = try #require(DNSMessage.parse(handQuery))
        #expect(message.header == DNSHeader(id: 0xABCD, recursionDesired: true))
        #expect(message.questions == [DNSQuestion(name: name("www.example.com"), type: .a, class: .internet)])
        #expect(message.answers.isEmpty && message.authorities.isEmpty && message.additionals.isEmpty)
        #expect(message.questions.first?.name.description == "www.example.com")
    }

    @Test func parsesFromASliceWithNonZeroStart() throws {
        let padded = [0xEE, 0xEE] + handQuery
        let message = try #require(DNSMessage.parse(padded[2...]))
        #expect(message.header.id == 0xABCD)
    }

    @Test func headerBitsRoundTrip() throws {
        for flags: UInt16 in [0x0000, 0xFFFF, 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0040, 0x0020,
                              0x0010, 0x000F, 0x8583] {
            let bytes = header(id: 0xBEEF, flags: flags)
            let message = try #require(DNSMessage.parse(bytes))
            #expect(message.encode() == bytes, "flags \(flags)")
        }
        let all = try #require(DNSMessage.parse(header(flags: 0xFFFF))).header
        #expect(all.isResponse && all.opcode == 15 && all.isAuthoritative && all.isTruncated)
        #expect(all.recursionDesired && all.recursionAvailable && all.z && all.authenticData)
        #expect(all.checkingDisabled && all.rcode == 15)
        let some = try #require(DNSMessage.parse(header(flags: 0x8583))).header
        #expect(some == DNSHeader(id: 0x0102, isResponse: true, isAuthoritative: true, recursionDesired: true,
                                  recursionAvailable: true, rcode: 3))
    }

    @Test func everySectionAndRecordKindRoundTrips() throws {
        let v6 = try #require(IPv6Address("2001:db8::1"))
        let message = DNSMessage(
            header: DNSHeader(id: 7, isResponse: true, isAuthoritative: true, recursionDesired: true,
                              recursionAvailable: true),
            questions: [DNSQuestion(name: name("Mixed.Example.org"), type: .any, class: .any)],
            answers: [
                .a(name("Mixed.Example.org"), IPv4Address(192, 0, 2, 1), ttl: 300),
                DNSRecord(name: name("mixed.example.org"), type: .aaaa, ttl: 1,
                          data: .aaaa(v6)),
                DNSRecord(name: name("alias.example.org"), type: .cname, ttl: 2, data: .cname(name("Mixed.Example.org"))),
                .ptr(name("1.2.0.192.in-addr.arpa"), name("mixed.example.org"), ttl: 3),
                DNSRecord(name: name("example.org"), type: .txt, ttl: 4, data: .opaque([5] + Array("hello".utf8))),
                DNSRecord(name: name("example.org"), type: .a, class: .chaos, ttl: 5, data: .opaque([1, 2, 3])),
            ],
            authorities: [DNSRecord(name: name("example.org"), type: .ns, ttl: 6, data: .ns(name("ns1.example.org")))],
            additionals: [DNSEDNS(udpPayloadSize: 4096, dnssecOK: true, options: [0, 10, 0, 2, 0xAA, 0xBB]).record])
        let bytes = message.encode()
        let parsed = try #require(DNSMessage.parse(bytes))
        #expect(parsed == message)
        #expect(parsed.encode() == bytes)
        #expect(parsed.edns == DNSEDNS(udpPayloadSize: 4096, dnssecOK: true, options: [0, 10, 0, 2, 0xAA, 0xBB]))
    }

    @Test func compressesRepeatedSuffixes() throws {
        let www = name("www.example.com")
        var message = DNSMessage(header: DNSHeader(id: 1), questions: [DNSQuestion(name: www, type: .a)]).response()
        message.answers = [
            DNSRecord(name: www, type: .cname, ttl: 60, data: .cname(name("web.example.com"))),
            .a(name("web.example.com"), IPv4Address(192, 0, 2, 9), ttl: 60),
        ]
        let bytes = message.encode()
        // Question name at 12 (17 bytes) + type/class: the first answer starts at 33.
        #expect(Array(bytes[33..<35]) == [0xC0, 0x0C], "owner points at the question's name")
        // CNAME RDATA (after owner 2 + type/class/ttl 8 + length 2) is `web` then a pointer to `example.com` at 16.
        #expect(Array(bytes[45..<51]) == [3] + Array("web".utf8) + [0xC0, 0x10])
        #expect(Array(bytes[43..<45]) == [0, 6], "RDLENGTH counts the compressed form")
        // The A record's owner points at the `web` label inside the CNAME RDATA.
        #expect(Array(bytes[51..<53]) == [0xC0, 45])
        #expect(bytes.count == 33 + 18 + 16)
        // The whole message; tshark's DNS dissector decodes these bytes to the same records.
        var expected: [UInt8] = [0, 1, 0x80, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]
        expected += wwwExample
        expected += [0, 1, 0, 1, 0xC0, 0x0C, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6, 3, 0x77, 0x65, 0x62, 0xC0, 0x10]
        expected += [0xC0, 45, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 9]
        #expect(bytes == expected)
        #expect(DNSMessage.parse(bytes) == message)
    }

    @Test func compressionKeepsEachNamesCase() throws {
        var message = DNSMessage(header: DNSHeader(id: 1), questions: [DNSQuestion(name: name("WWW.Example.COM"), type: .a)])
        message.answers = [.a(name("www.example.com"), IPv4Address(1, 2, 3, 4), ttl: 1)]
        let parsed = try #require(DNSMessage.parse(message.encode()))
        #expect(parsed.answers.first?.name.description == "www.example.com")
        #expect(parsed.questions.first?.name.description == "WWW.Example.COM")
        #expect(parsed.answers.first?.name.equalsIgnoringCase(name("WWW.EXAMPLE.com")) == true)
    }

    @Test func followsABackwardPointer() throws {
        // Question 1 at 12: www.example.com; question 2: `mail` + pointer to `example.com` at 16.
        let bytes = header(qd: 2) + wwwExample + [0, 1, 0, 1] + [4] + Array("mail".utf8) + [0xC0, 0x10, 0, 1, 0, 1]
        let message = try #require(DNSMessage.parse(bytes))
        #expect(message.questions.map(\.name.description) == ["www.example.com", "mail.example.com"])
    }

    @Test func rejectsAPointerToItself() {
        // The question name at 12 is a pointer to 12.
        #expect(DNSMessage.parse(header(qd: 1) + [0xC0, 0x0C, 0, 1, 0, 1]) == nil)
        // A label, then a pointer back to the start of the same name: a loop through a label.
        #expect(DNSMessage.parse(header(qd: 1) + [1, 0x61, 0xC0, 0x0C, 0, 1, 0, 1]) == nil)
    }

    @Test func rejectsAPointerLoopBetweenTwoNames() {
        // Name 1 at 12 points to 18, name 2 at 18 points to 12: each is a loop of two.
        let bytes = header(qd: 2) + [0xC0, 18, 0, 1, 0, 1] + [0xC0, 12, 0, 1, 0, 1]
        #expect(DNSMessage.parse(bytes) == nil)
    }

    @Test func rejectsAForwardPointerEvenToAValidName() {
        // Name 1 at 12 points forward to name 2 at 18, which is a fine name.
        let bytes = header(qd: 2) + [0xC0, 18, 0, 1, 0, 1] + [1, 0x61, 0, 0, 1, 0, 1]
        #expect(DNSMessage.parse(bytes) == nil)
        // The control: the same names the other way round parse.
        let backward = header(qd: 2) + [1, 0x61, 0, 0, 1, 0, 1] + [0xC0, 12, 0, 1, 0, 1]
        #expect(DNSMessage.parse(backward)?.questions.map(\.name.description) == ["a", "a"])
    }

    @Test func rejectsAPointerOutsideTheMessage() {
        #expect(DNSMessage.parse(header(qd: 1) + [0xFF, 0xFF, 0, 1, 0, 1]) == nil)
        #expect(DNSMessage.parse(header(qd: 1) + [0xC0]) == nil, "half a pointer at the end")
    }

    @Test func limitsPointerChains() {
        // A TXT record's RDATA holds a chain of `hops` pointers, each to the one before,
        // the first to the question's name; a second record's owner enters at the top.
        func message(hops: Int) -> [UInt8] {
            var bytes = header(qd: 1, an: 2) + [1, 0x61, 0, 0, 1, 0, 1]  // question `a` at 12, ends at 19
            bytes += [0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 0, UInt8((2 * hops) >> 8), UInt8((2 * hops) & 0xFF)]
            let rdata = bytes.count  // 31
            for k in 0..<hops {
                let target = k == 0 ? 12 : rdata + 2 * (k - 1)
                bytes += [0xC0 | UInt8(target >> 8), UInt8(target & 0xFF)]
            }
            let top = rdata + 2 * (hops - 1)
            bytes += [0xC0 | UInt8(top >> 8), UInt8(top & 0xFF), 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 2, 3]
            return bytes
        }
        #expect(DNSMessage.parse(message(hops: 20))?.answers.last?.name.description == "a")
        #expect(DNSMessage.parse(message(hops: 127))?.answers.last?.name.description == "a")
        #expect(DNSMessage.parse(message(hops: 128)) == nil)
        #expect(DNSMessage.parse(message(hops: 2000)) == nil)
    }

    @Test func rejectsExtendedLabelTypes() {
        #expect(DNSMessage.parse(header(qd: 1) + [0x40, 0, 0, 1, 0, 1]) == nil)
        #expect(DNSMessage.parse(header(qd: 1) + [0x80, 0, 0, 1, 0, 1]) == nil)
    }

    @Test func enforcesTheNameLengthLimit() throws {
        let label63 = [63] + [UInt8](repeating: 0x61, count: 63)
        let label61 = [61] + [UInt8](repeating: 0x62, count: 61)
        // 3 × 64 + 62 + 1 = 255 bytes: the longest legal name.
        let longest = label63 + label63 + label63 + label61 + [0]
        #expect(longest.count == 255)
        let ok = try #require(DNSMessage.parse(header(qd: 1) + longest + [0, 1, 0, 1]))
        #expect(ok.questions.first?.name.labels.count == 4)
        // One byte more is too long.
        let tooLong = label63 + label63 + label63 + [62] + [UInt8](repeating: 0x62, count: 62) + [0]
        #expect(DNSMessage.parse(header(qd: 1) + tooLong + [0, 1, 0, 1]) == nil)
        // Also when the length is reached only through a pointer.
        let viaPointer = header(qd: 2) + label63 + label63 + label63 + [0, 0, 1, 0, 1]
            + [62] + [UInt8](repeating: 0x62, count: 62) + [0xC0, 12, 0, 1, 0, 1]
        #expect(DNSMessage.parse(viaPointer) == nil)
        // And names made in code.
        #expect(DNSName(labels: [[UInt8]](repeating: [UInt8](repeating: 0x61, count: 63), count: 4)) == nil)
        #expect(DNSName(labels: [[UInt8](repeating: 0x61, count: 64)]) == nil)
        #expect(DNSName(labels: [[]]) == nil)
    }

    @Test func rejectsEveryTruncation() {
        let full = DNSMessage(header: DNSHeader(id: 3, isResponse: true),
                              questions: [DNSQuestion(name: name("www.example.com"), type: .a)],
                              answers: [.a(name("www.example.com"), IPv4Address(1, 2, 3, 4), ttl: 9)]).encode()
        #expect(DNSMessage.parse(full) != nil)
        for length in 0..<full.count {
            #expect(DNSMessage.parse(full[0..<length]) == nil, "prefix of \(length)")
        }
    }

    @Test func hugeCountsFailWithoutAllocating() {
        #expect(DNSMessage.parse(header(qd: 0xFFFF, an: 0xFFFF, ns: 0xFFFF, ar: 0xFFFF)) == nil)
        let manyQuestions: [UInt8] = Array(handQuery[0..<4]) + [0xFF, 0xFF] + Array(handQuery[6...])
        #expect(DNSMessage.parse(manyQuestions) == nil)
    }

    @Test func ignoresTrailingBytesButNotOversizedInput() {
        #expect(DNSMessage.parse(handQuery + [1, 2, 3])?.questions.count == 1)
        #expect(DNSMessage.parse(handQuery + [UInt8](repeating: 0, count: 70000)) == nil)
    }

    @Test func rejectsMalformedRData() {
        let prefix = header(flags: 0x8180, an: 1) + [1, 0x61, 0]
        // A (IN) must be 4 bytes.
        #expect(DNSMessage.parse(prefix + [0, 1, 0, 1, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5]) == nil)
        #expect(DNSMessage.parse(prefix + [0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4]) != nil)
        // AAAA must be 16.
        #expect(DNSMessage.parse(prefix + [0, 28, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4]) == nil)
        // PTR: the name must fill RDLENGTH exactly, neither less nor more.
        #expect(DNSMessage.parse(prefix + [0, 12, 0, 1, 0, 0, 0, 0, 0, 4, 1, 0x62, 0, 9]) == nil)
        #expect(DNSMessage.parse(prefix + [0, 12, 0, 1, 0, 0, 0, 0, 0, 2, 1, 0x62, 0]) == nil)
        #expect(DNSMessage.parse(prefix + [0, 12, 0, 1, 0, 0, 0, 0, 0, 3, 1, 0x62, 0])?.answers.first?.data
                == .ptr(name("b")))
        // RDLENGTH past the end.
        #expect(DNSMessage.parse(prefix + [0, 16, 0, 1, 0, 0, 0, 0, 0, 9, 1, 2]) == nil)
    }

    @Test func namesFromText() {
        #expect(DNSName("www.example.com.")?.labels == [Array("www".utf8), Array("example".utf8), Array("com".utf8)])
        #expect(DNSName("") == .root && DNSName(".") == .root)
        #expect(DNSName.root.description == ".")
        #expect(DNSName("a..b") == nil && DNSName(".a") == nil && DNSName("a..") == nil)
        #expect(DNSName(labels: [[0x61, 0x2E, 0x62], [0x20, 0x5C, 0x7F]])?.description == "a\\.b.\\032\\\\\\127")
        #expect(name("Web1.Example").isSubdomain(of: name("EXAMPLE")))
        #expect(name("example").isSubdomain(of: name("example")))
        #expect(!name("badexample").isSubdomain(of: name("example")))
        #expect(!name("example").isSubdomain(of: name("a.example")))
        #expect(name("ÄB.example").lowercased.description == name("Äb.example").description, "only ASCII folds")
    }

    @Test func encodingWithinALimitTruncates() throws {
        var message = DNSMessage(header: DNSHeader(id: 5), questions: [DNSQuestion(name: name("big.example"), type: .a)])
            .response()
        message.answers = (0..<100).map { .a(name("big.example"), IPv4Address(10, 0, 0, UInt8($0)), ttl: 1) }
        message.additionals = [DNSEDNS(udpPayloadSize: 512).record]
        let full = message.encode()
        #expect(full.count > 512)
        #expect(message.encode(limit: full.count) == full)
        let cut = try #require(DNSMessage.parse(message.encode(limit: 512)))
        #expect(cut.header.isTruncated && cut.answers.isEmpty)
        #expect(cut.questions == message.questions)
        #expect(cut.edns == DNSEDNS(udpPayloadSize: 512), "OPT survives truncation")
    }

    @Test func responseCopiesWhatAResponseMust() {
        let query = DNSMessage(header: DNSHeader(id: 99, opcode: 0, recursionDesired: true, authenticData: true,
                                                 checkingDisabled: true),
                               questions: [DNSQuestion(name: name("x.example"), type: .mx)])
        let response = query.response(rcode: .nameError, authoritative: true)
        #expect(response.header == DNSHeader(id: 99, isResponse: true, isAuthoritative: true, recursionDesired: true,
                                             recursionAvailable: true, checkingDisabled: true, rcode: 3))
        #expect(response.questions == query.questions)
        #expect(response.answers.isEmpty && response.authorities.isEmpty && response.additionals.isEmpty)
    }

    @Test func ednsFields() throws {
        let edns = DNSEDNS(udpPayloadSize: 1400, extendedRCode: 1, version: 2, dnssecOK: true, options: [1])
        let record = edns.record
        #expect(record.name == .root && record.type == .opt && record.class.rawValue == 1400)
        #expect(record.ttl == 0x0102_8000)
        #expect(DNSEDNS(record) == edns)
        var message = DNSMessage(header: DNSHeader(rcode: 0), additionals: [record])
        #expect(message.extendedResponseCode == .badVersion)
        message.additionals.append(record)
        #expect(message.edns == nil, "two OPT records are no EDNS at all")
    }
}
