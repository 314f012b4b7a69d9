import NetOptions
import NetServices
import TestSupport
import Testing


private func fuzzName(_ text: String) -> DNSName {
    DNSName(text) ?? .root
}

/// Valid messages of every shape the codec knows, as the mutation seeds.
private func seeds() -> [[UInt8]] {
    func q(_ name: String, _ type: DNSType, edns: Bool = false) -> DNSMessage {
        var m = DNSMessage(header: DNSHeader(id: 0x1111, recursionDesired: true),
                           questions: [DNSQuestion(name: fuzzName(name), type: type)])
        if edns { m.additionals = [DNSEDNS(udpPayloadSize: 4096, dnssecOK: true).record] }
        return m
    }
    var response = q("www.example.com", .a).response(rcode: .noError)
    response.answers = [
        DNSRecord(name: fuzzName("www.example.com"), type: .cname, ttl: 5, data: .cname(fuzzName("web.example.com"))),
        .a(fuzzName("web.example.com"), IPv4Address(192, 0, 2, 1), ttl: 5),
        .ptr(fuzzName("1.2.0.192.in-addr.arpa"), fuzzName("web.example.com"), ttl: 5),
    ]
    response.authorities = [DNSRecord(name: fuzzName("example.com"), type: .ns, ttl: 5, data: .ns(fuzzName("ns.example.com")))]
    response.additionals = [DNSEDNS(udpPayloadSize: 1232).record]
    return [
        q("web1.slirpd.internal", .a).encode(),
        q("WEB1.slirpd.internal", .aaaa, edns: true).encode(),
        q("15.2.0.10.in-addr.arpa", .ptr).encode(),
        q("nope.slirpd.internal", .any, edns: true).encode(),
        q("example.com", .mx).encode(),
        q("slirpd.internal", .axfr).encode(),
        response.encode(),
    ]
}

private func fuzzZone() -> LocalZone {
    var zone = LocalZone()
    zone.set("web1", to: IPv4Address(10, 0, 2, 15))
    zone.set("host", to: IPv4Address(10, 0, 2, 2))
    for i in 0..<50 { zone.add("big", address: IPv4Address(10, 0, 3, UInt8(i))) }
    return zone
}

/// How many inputs reached each outcome, to show the fuzzing gets past the first checks.
private struct Outcomes {
    var parsed = 0, replied = 0, forwarded = 0, dropped = 0
}

/// Everything the DNS code does with untrusted bytes; traps would end the test run.
private func exercise(_ bytes: [UInt8], zone: LocalZone, _ outcomes: inout Outcomes) {
    if let message = DNSMessage.parse(bytes) {
        outcomes.parsed += 1
        // Whatever parses re-encodes to something that parses to the same message.
        let again = DNSMessage.parse(message.encode())
        #expect(again == message, "round trip of \(bytes)")
    }
    for transport in [DNSTransport.udp, .tcp] {
        switch DNSResponder.answer(query: bytes, zone: zone, transport: transport) {
        case .reply(let out):
            if transport == .udp { outcomes.replied += 1 }
            let parsed = DNSMessage.parse(out)
            #expect(parsed != nil, "reply to \(bytes) does not parse")
            #expect(parsed?.header.isResponse == true)
            #expect(parsed?.header.id == DNSHeader(peeking: bytes)?.id)
            if transport == .udp { #expect(out.count <= Int(DNSResponder.ednsPayloadSize), "reply to \(bytes)") }
        case .forward:
            if transport == .udp { outcomes.forwarded += 1 }
            // Only well-formed single-question queries go upstream, so SERVFAIL is possible.
            #expect(DNSResponder.serverFailure(for: bytes) != nil, "forwarded \(bytes)")
        case .drop:
            if transport == .udp { outcomes.dropped += 1 }
        }
    }
    _ = DNSResponder.serverFailure(for: bytes)
    _ = DNSResponder.tcpScan(bytes)
}

@Suite struct DNSFuzzTests {
    @Test func mutatedMessagesNeverTrap() {
        var rng = SeededGenerator(state: 0x5EED_D115)
        let corpus = seeds()
        let zone = fuzzZone()
        var outcomes = Outcomes()
        for _ in 0..<20000 {
            var bytes = corpus[Int.random(in: 0..<corpus.count, using: &rng)]
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                guard !bytes.isEmpty else { break }
                let at = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<7, using: &rng) {
                case 0: bytes[at] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
                case 1: bytes[at] = UInt8.random(in: 0...255, using: &rng)
                case 2: bytes[at] = [0x00, 0x3F, 0x40, 0xC0, 0xFF, 0x0C][Int.random(in: 0..<6, using: &rng)]
                case 3: bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...8, using: &rng)))
                case 4: bytes.insert(contentsOf: (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }, at: at)
                case 5: bytes = Array(bytes.prefix(at))
                default:
                    // A compression pointer to anywhere, the classic attack.
                    let target = Int.random(in: 0..<max(1, bytes.count + 4), using: &rng)
                    bytes[at] = 0xC0 | UInt8((target >> 8) & 0x3F)
                    if at + 1 < bytes.count { bytes[at + 1] = UInt8(target & 0xFF) }
                }
            }
            exercise(bytes, zone: zone, &outcomes)
        }
        #expect(outcomes.parsed > 1500 && outcomes.replied > 5000 && outcomes.forwarded > 1000 && outcomes.dropped > 1000,
                "\(outcomes)")
    }

    @Test func randomBytesNeverTrap() {
        var rng = SeededGenerator(state: 0xD15C_0BAD)
        let zone = fuzzZone()
        var outcomes = Outcomes()
        for round in 0..<10000 {
            let length = Int.random(in: 0...600, using: &rng)
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if round.isMultiple(of: 2) && bytes.count >= 12 {
                // A plausible header (a query, one question, few records) gets the
                // random tail past the first checks and into the name decoder.
                bytes[2] &= 0x07
                bytes[4] = 0
                bytes[5] = 1
                for i in [6, 8, 10] { bytes[i] = 0; bytes[i + 1] &= 0x03 }
            }
            exercise(bytes, zone: zone, &outcomes)
        }
        #expect(outcomes.replied > 2500 && outcomes.dropped > 2500, "\(outcomes)")
    }
}
