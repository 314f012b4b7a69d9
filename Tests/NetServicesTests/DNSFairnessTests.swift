import FrameSwitch
import NetOptions
import NetServices
import Testing

/// A query padded to `size` bytes with an EDNS padding option (RFC 7830).
private func paddedQuery(_ name: String, size: Int, id: UInt16 = 0x5151) -> [UInt8] {
    var message = DNSMessage(header: DNSHeader(id: id, recursionDesired: true),
                             questions: [DNSQuestion(name: DNSName(name) ?? .root, type: .a)])
    message.additionals = [DNSEDNS(udpPayloadSize: 4096).record]
    let bare = message.encode().count
    let padding = size - bare - 4
    message.additionals = [DNSEDNS(udpPayloadSize: 4096, options: [0, 12, UInt8(padding >> 8), UInt8(padding & 0xFF)]
                                   + Array(repeating: 0, count: padding)).record]
    return message.encode()
}

/// The query as a guest's UDP datagram to 10.0.2.3:`port`, one Ethernet frame (unfragmented).
private func datagram(_ payload: [UInt8], port: UInt16 = 53) -> UDPDatagram {
    UDPDatagram(sourceMAC: MACAddress(raw: 0x5254_0012_3456), destinationMAC: MACAddress(raw: 0x5255_0A00_0203),
                addresses: .v4(source: 0x0A00_020F, destination: 0x0A00_0203), sourcePort: 40000, destinationPort: port,
                payload: payload)
}

@Suite("DNS fairness: large queries, TCP connection timeouts")
struct DNSFairnessTests {
    @Test func aPaddedQueryIsAnsweredLikeAPlainOne() throws {
        var zone = LocalZone()
        zone.set("host", to: IPv4Address(10, 0, 2, 2))
        for size in [1544, 3044, 3000] {
            let q = paddedQuery("host.slirpd.internal", size: size)
            #expect(q.count == size)
            guard case .reply(let bytes) = DNSResponder.answer(query: q, zone: zone) else {
                Issue.record("no reply to a \(size)-byte padded query")
                continue
            }
            let r = try #require(DNSMessage.parse(bytes))
            #expect(r.header.id == 0x5151 && r.header.rcode == 0 && r.header.isAuthoritative && !r.header.isTruncated)
            #expect(r.answers.map(\.data) == [.a(IPv4Address(10, 0, 2, 2))])
            // Our own OPT back, without echoing the padding; the answer stays small.
            #expect(r.edns == DNSEDNS(udpPayloadSize: DNSResponder.ednsPayloadSize))
            #expect(bytes.count < 100)
            // Bytes after the last record are ignored.
            #expect(DNSResponder.answer(query: q + [1, 2, 3], zone: zone) == .reply(bytes))
            // A name that is not ours goes upstream whole.
            #expect(DNSResponder.answer(query: paddedQuery("www.example.test", size: size), zone: zone) == .forward)
        }
    }

    @Test func aFragmentedQueryIsPutBackTogetherInAnyOrder() {
        let query = datagram(paddedQuery("host.slirpd.internal", size: 3000))
        let pieces = IPv4Fragmentation.fragments(of: query.frame(ipID: 77), mtu: 1500)
        #expect(pieces.count == 3)
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            var assembler = DNSQueryReassembly()
            let outcomes = order.map { assembler.input(pieces[$0], now: 0) }
            #expect(outcomes.dropLast().allSatisfy { $0 == .held })
            #expect(outcomes.last == .query(query))
            #expect(assembler.reassembled == 1 && assembler.held == 0)
        }
    }

    @Test func fragmentsThatAreNotAQueryAreDropped() {
        var assembler = DNSQueryReassembly()
        let other = IPv4Fragmentation.fragments(of: datagram(paddedQuery("x.test", size: 2000), port: 54).frame(ipID: 5), mtu: 1500)
        #expect(assembler.input(other[0], now: 0) == .held)
        guard case .dropped = assembler.input(other[1], now: 0) else {
            Issue.record("a fragmented datagram to port 54 must be dropped")
            return
        }
        // Overlap drops the datagram, as on the path to libslirp; stale datagrams expire.
        let pieces = IPv4Fragmentation.fragments(of: datagram(paddedQuery("x.test", size: 3000)).frame(ipID: 6), mtu: 1500)
        #expect(assembler.input(pieces[0], now: 0) == .held)
        var overlapping = pieces[1]
        overlapping[21] -= 1  // offset 8 bytes earlier
        var ip = Array(overlapping[14..<34])
        ip[10] = 0
        ip[11] = 0
        IPChecksum.store(in: &ip, at: 10)
        overlapping.replaceSubrange(14..<34, with: ip)
        guard case .dropped = assembler.input(overlapping, now: 0) else {
            Issue.record("an overlapping fragment must drop its datagram")
            return
        }
        #expect(assembler.input(pieces[0], now: 0) == .held)
        #expect(assembler.expire(now: IPv4Reassembly.lifetime) == 1 && assembler.held == 0)
    }

    @Test func connectionDeadlines() {
        let s: Int64 = 1_000_000_000
        var a = DNSConnectionActivity(opened: 10 * s)
        #expect(a.deadline(unsent: false) == 10 * s + DNSConnectionActivity.idleTimeout)
        // Half a message: its first byte starts the partial-message clock, which trickling does not reset.
        a.didRead(at: 11 * s, completed: false, partialLeft: true)
        a.didRead(at: 12 * s, completed: false, partialLeft: true)
        #expect(a.deadline(unsent: false) == 11 * s + DNSConnectionActivity.partialMessageTimeout)
        // The message completes and the next one starts in the same read.
        a.didRead(at: 13 * s, completed: true, partialLeft: true)
        #expect(a.deadline(unsent: false) == 13 * s + DNSConnectionActivity.partialMessageTimeout)
        a.didRead(at: 14 * s, completed: true, partialLeft: false)
        #expect(a.messageStarted == nil && a.deadline(unsent: false) == 14 * s + DNSConnectionActivity.idleTimeout)
        // The upstream owes an answer: no deadline. An answer the guest does not read: idle.
        a.inFlight = 1
        #expect(a.deadline(unsent: false) == nil)
        a.inFlight = 0
        a.lastProgress = 15 * s
        #expect(a.deadline(unsent: true) == 15 * s + DNSConnectionActivity.idleTimeout)
        #expect(DNSConnectionActivity.partialMessageTimeout <= DNSConnectionActivity.idleTimeout)
    }

    @Test func theIdlestConnectionMakesRoom() {
        let s: Int64 = 1_000_000_000
        var waiting = DNSConnectionActivity(opened: 1 * s)
        waiting.inFlight = 2
        var stalled = DNSConnectionActivity(opened: 2 * s)
        stalled.didRead(at: 3 * s, completed: false, partialLeft: true)
        let fresh = DNSConnectionActivity(opened: 9 * s)
        let older = DNSConnectionActivity(opened: 2 * s)
        #expect(DNSConnectionActivity.idlest([waiting, fresh, stalled]) == 2)
        #expect(DNSConnectionActivity.idlest([fresh, stalled, older]) == 2)
        // Only connections waiting on the upstream: the oldest of them.
        var waiting2 = waiting
        waiting2.lastProgress = 0
        #expect(DNSConnectionActivity.idlest([waiting, waiting2]) == 1)
        #expect(DNSConnectionActivity.idlest([DNSConnectionActivity]()) == nil)
    }
}
