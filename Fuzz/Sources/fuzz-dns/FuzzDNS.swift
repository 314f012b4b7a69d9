// fuzz-dns: the libFuzzer target for the DNS code that reads guest and upstream bytes.
//
// Theory of operation. Each input is one DNS message as it would arrive over UDP: it
// goes to DNSMessage.parse, to DNSResponder.answer over UDP and TCP against a small
// local zone (a couple of names, one under an empty non-terminal, so local answers,
// NXDOMAIN, NODATA and PTR are all reachable), to serverFailure, tcpScan and
// isUpstreamReply. If the input also scans as a TCP length-prefixed message, that
// message is answered too, as a slice that does not start at index 0.
//
// Besides the crashes the sanitizers catch, the target traps when a promise of the
// code breaks (the unit tests in DNSFuzzTests assert the same ones):
// - what parses re-encodes to bytes that parse to an equal message. This holds
//   because the decoder keeps labels byte for byte, keeps every header bit, and treats
//   RDATA it does not decode as opaque bytes, while the encoder's pointers only go
//   backwards to suffixes it wrote itself. One honest exception: the encoder cannot
//   point into opaque RDATA or past 16 KiB as the input may have, so the re-encoding
//   can outgrow the 65535-byte limit, and then parse rightly refuses it;
// - every reply parses, is a response with the query's id, fits 1232 bytes over UDP,
//   and survives TCP framing;
// - a forwarded query can always get a SERVFAIL, and that SERVFAIL passes
//   isUpstreamReply for the query;
// - no message is an upstream reply to itself (QR cannot be both set and clear).

import NetOptions
import NetServices

let zone: LocalZone = {
    var zone = LocalZone()
    zone.set("web1", to: IPv4Address(10, 0, 2, 15))
    zone.set("host", to: IPv4Address(10, 0, 2, 2))
    zone.add("db.lab", address: IPv4Address(10, 0, 2, 16))
    zone.add("db.lab", address: IPv4Address(10, 0, 2, 17))
    // AAAA records and the IPv6 prefix's reverse zone (issue 19).
    if let prefix = IPv6Address("fec0::"), let web1 = IPv6Address("fec0::5054:ff:fe12:3456") {
        zone.add("web1", address6: web1)
        zone.reversePrefix6 = (prefix, 64)
    }
    return zone
}()

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-dns invariant broken: \(what())") }
}

func checkReply<C: RandomAccessCollection<UInt8>>(_ query: C, transport: DNSTransport) where C.Index == Int {
    switch DNSResponder.answer(query: query, zone: zone, transport: transport) {
    case .reply(let out):
        let parsed = DNSMessage.parse(out)
        check(parsed != nil, "a \(transport) reply does not parse")
        check(parsed?.header.isResponse == true, "a \(transport) reply has QR clear")
        check(parsed?.header.id == DNSHeader(peeking: query)?.id, "a \(transport) reply has another id")
        if transport == .udp {
            check(out.count <= Int(DNSResponder.ednsPayloadSize), "a UDP reply of \(out.count) bytes")
        }
        check(DNSResponder.tcpScan(DNSResponder.tcpFrame(out)) == .message(length: out.count),
              "a reply does not survive TCP framing")
    case .forward:
        guard let failure = DNSResponder.serverFailure(for: query) else {
            return check(false, "a forwarded query gets no SERVFAIL")
        }
        check(DNSResponder.isUpstreamReply(failure, to: query), "SERVFAIL does not match its query")
    case .drop:
        break
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))

    if let message = DNSMessage.parse(input) {
        _ = message.edns
        _ = message.extendedResponseCode
        _ = message.questions.map(\.name.description)
        let wire = message.encode()
        if wire.count <= DNSMessage.maximumLength {
            check(DNSMessage.parse(wire) == message, "re-encoded message parses differently")
        }
        _ = message.encode(limit: DNSMessage.classicUDPLimit)
    }

    checkReply(input, transport: .udp)
    checkReply(input, transport: .tcp)
    _ = DNSResponder.serverFailure(for: input)
    check(!DNSResponder.isUpstreamReply(input, to: input), "a message is an upstream reply to itself")

    if case .message(let length) = DNSResponder.tcpScan(input) {
        checkReply(input[2..<(2 + length)], transport: .tcp)
    }
    return 0
}
