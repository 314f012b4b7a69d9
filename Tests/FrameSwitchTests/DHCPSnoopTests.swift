import FrameSwitch
import TestSupport
import Testing

/// Builders for DHCP frames. Namespaced: other test files in this target define free helpers.
enum DHCPFixture {
    static let guestMAC = MACAddress(raw: 0x5254_0012_3456)
    static let xid: UInt32 = 0x3C1D_9A42

    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)] }

    static func ip(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) -> UInt32 {
        UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// DHCP options for a client message of `kind`, ending in 255.
    static func clientOptions(kind: UInt8, hostname: [UInt8]? = Array("guest".utf8), extra: [UInt8] = []) -> [UInt8] {
        var o: [UInt8] = [53, 1, kind]
        if let hostname { o += [12, UInt8(hostname.count)] + hostname }
        o += [55, 4, 1, 3, 6, 26]
        return o + extra + [255]
    }

    /// Ethernet / IPv4 / UDP / BOOTP with `options` after the magic cookie. The IP header
    /// checksum is real so tools show the frame clean; UDP's is 0 ("none"), as IPv4 allows.
    static func frame(
        op: UInt8 = 1, sourcePort: UInt16 = 68, destinationPort: UInt16 = 67,
        ciaddr: UInt32 = 0, yiaddr: UInt32 = 0, options: [UInt8],
        vlan: UInt16? = nil, ipOptions: [UInt8] = [], source: (UInt32, UInt32) = (0, 0xFFFF_FFFF)
    ) -> [UInt8] {
        var bootp = [UInt8](repeating: 0, count: 236)
        bootp[0] = op
        bootp[1] = 1
        bootp[2] = 6
        bootp.replaceSubrange(4..<8, with: be32(xid))
        bootp.replaceSubrange(12..<16, with: be32(ciaddr))
        bootp.replaceSubrange(16..<20, with: be32(yiaddr))
        bootp.replaceSubrange(28..<34, with: guestMAC.bytes)
        bootp += [99, 130, 83, 99] + options

        let udpLength = 8 + bootp.count
        let udp: [UInt8] = [UInt8(sourcePort >> 8), UInt8(truncatingIfNeeded: sourcePort), UInt8(destinationPort >> 8), UInt8(truncatingIfNeeded: destinationPort),
                            UInt8(udpLength >> 8), UInt8(truncatingIfNeeded: udpLength), 0, 0] + bootp

        let headerLength = 20 + ipOptions.count
        let total = headerLength + udp.count
        var ipHeader: [UInt8] = [0x40 | UInt8(headerLength / 4), 0x10, UInt8(total >> 8), UInt8(truncatingIfNeeded: total), 0, 0, 0, 0, 64, 17, 0, 0]
            + be32(source.0) + be32(source.1) + ipOptions
        let sum = checksum(ipHeader)
        ipHeader[10] = UInt8(sum >> 8)
        ipHeader[11] = UInt8(truncatingIfNeeded: sum)

        var ethernet = MACAddress.broadcast.bytes + guestMAC.bytes
        if let vlan { ethernet += [0x81, 0x00, UInt8(vlan >> 8), UInt8(truncatingIfNeeded: vlan)] }
        ethernet += [0x08, 0x00]
        return ethernet + ipHeader + udp
    }

    static func checksum(_ header: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        for i in stride(from: 0, to: header.count, by: 2) { sum += UInt32(header[i]) << 8 | UInt32(header[i + 1]) }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }

}


@Suite("DHCP snooping")
struct DHCPSnoopTests {
    typealias F = DHCPFixture

    @Test("libslirp's real DHCPOFFER and DHCPACK parse in full")
    func slirpOfferAndAck() {
        for (kind, expectedKind) in [(UInt8(2), DHCPMessage.Kind.offer), (5, .ack)] {
            let frame = libslirpDHCPReply(kind: kind)
            #expect(frame.count == 590)
            let expected = DHCPMessage(
                op: 2, kind: expectedKind, transactionID: 0x3C1D_9A42, clientMAC: F.guestMAC,
                clientAddress: 0, yourAddress: F.ip(10, 0, 2, 15), serverID: F.ip(10, 0, 2, 2),
                leaseSeconds: 86400, subnetMask: F.ip(255, 255, 255, 0), router: F.ip(10, 0, 2, 2),
                dnsServers: [F.ip(10, 0, 2, 3)])
            #expect(DHCPMessage.parse(frame: frame) == expected)
        }
    }

    @Test("a client DISCOVER and REQUEST: hostname, requested address, server ID")
    func clientMessages() {
        let discover = F.frame(options: F.clientOptions(kind: 1))
        #expect(DHCPMessage.parse(frame: discover) == DHCPMessage(op: 1, kind: .discover, transactionID: F.xid, clientMAC: F.guestMAC, hostname: "guest"))

        let request = F.frame(options: F.clientOptions(kind: 3, extra: [50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2]))
        let parsed = DHCPMessage.parse(frame: request)
        #expect(parsed?.kind == .request)
        #expect(parsed?.requestedAddress == F.ip(10, 0, 2, 15))
        #expect(parsed?.serverID == F.ip(10, 0, 2, 2))

        let renew = F.frame(ciaddr: F.ip(10, 0, 2, 15), options: F.clientOptions(kind: 3))
        #expect(DHCPMessage.parse(frame: renew)?.clientAddress == F.ip(10, 0, 2, 15))
    }

    @Test("every message type, and an unknown one as nil")
    func kinds() {
        for raw in UInt8(1)...8 {
            #expect(DHCPMessage.parse(frame: F.frame(options: F.clientOptions(kind: raw)))?.kind?.rawValue == raw)
        }
        let unknown = DHCPMessage.parse(frame: F.frame(options: F.clientOptions(kind: 42)))
        #expect(unknown != nil)
        #expect(unknown?.kind == nil)
        // Plain BOOTP: no option 53 at all.
        #expect(DHCPMessage.parse(frame: F.frame(options: [255]))?.kind == nil)
    }

    @Test("reply options: several routers and DNS servers, MTU, pads")
    func replyOptions() {
        let options: [UInt8] = [0, 0, 53, 1, 2, 0, 3, 8, 10, 0, 2, 2, 10, 0, 2, 1, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1, 26, 2, 0x05, 0x78, 255]
        let m = DHCPMessage.parse(frame: F.frame(op: 2, sourcePort: 67, destinationPort: 68, yiaddr: F.ip(10, 0, 2, 16), options: options))
        #expect(m?.op == 2)
        #expect(m?.yourAddress == F.ip(10, 0, 2, 16))
        #expect(m?.router == F.ip(10, 0, 2, 2))
        #expect(m?.dnsServers == [F.ip(10, 0, 2, 3), F.ip(1, 1, 1, 1)])
        #expect(m?.mtu == 1400)
    }

    @Test("hostname: trailing NULs trimmed, invalid UTF-8 replaced, not dropped")
    func hostnames() {
        let nul = DHCPMessage.parse(frame: F.frame(options: F.clientOptions(kind: 1, hostname: Array("vm1".utf8) + [0, 0])))
        #expect(nul?.hostname == "vm1")
        let bad = DHCPMessage.parse(frame: F.frame(options: F.clientOptions(kind: 1, hostname: [0x68, 0xFF, 0x69])))
        #expect(bad?.hostname == "h\u{FFFD}i")
        let none = DHCPMessage.parse(frame: F.frame(options: F.clientOptions(kind: 1, hostname: nil)))
        #expect(none?.hostname == nil)
    }

    @Test("one 802.1Q tag and IP options shift the headers, not the result")
    func vlanAndIPOptions() {
        let plain = DHCPMessage.parse(frame: F.frame(options: F.clientOptions(kind: 1)))
        #expect(plain != nil)
        #expect(DHCPMessage.parse(frame: F.frame(options: F.clientOptions(kind: 1), vlan: 42)) == plain)
        #expect(DHCPMessage.parse(frame: F.frame(options: F.clientOptions(kind: 1), ipOptions: [1, 1, 1, 0])) == plain)
    }

    @Test("Ethernet padding after the datagram is ignored, not read as options")
    func padding() {
        // Without the end option, the options run to the UDP length; padding must not count.
        var frame = F.frame(options: [53, 1, 1])
        frame += [12, 3] + Array("bad".utf8)
        #expect(DHCPMessage.parse(frame: frame)?.hostname == nil)
        #expect(DHCPMessage.parse(frame: frame)?.kind == .discover)
    }

    @Test("options cut short keep what came before and stop")
    func truncatedOptions() {
        let frame = F.frame(options: [53, 1, 3, 50, 4, 10, 0, 2, 15, 12, 200, 0x61, 0x62])
        let m = DHCPMessage.parse(frame: frame)
        #expect(m?.kind == .request)
        #expect(m?.requestedAddress == F.ip(10, 0, 2, 15))
        #expect(m?.hostname == nil)
        // A code with no length byte at the very end.
        #expect(DHCPMessage.parse(frame: F.frame(options: [53, 1, 1, 12]))?.kind == .discover)
        // Wrong lengths for fixed-size options are ignored.
        let odd = DHCPMessage.parse(frame: F.frame(options: [50, 3, 10, 0, 2, 51, 5, 0, 0, 0, 1, 0, 6, 5, 1, 2, 3, 4, 5, 255]))
        #expect(odd?.requestedAddress == nil)
        #expect(odd?.leaseSeconds == nil)
        #expect(odd?.dnsServers == [])
    }

    @Test("frames that are not DHCP are rejected")
    func rejections() {
        let good = F.frame(options: F.clientOptions(kind: 1))
        #expect(DHCPMessage.parse(frame: good) != nil)
        func mutated(_ offset: Int, _ value: UInt8) -> [UInt8] {
            var f = good
            f[offset] = value
            return f
        }
        let ip = 14, udp = 34, bootp = 42
        #expect(DHCPMessage.parse(frame: mutated(12, 0x86)) == nil, "IPv6 ethertype")
        #expect(DHCPMessage.parse(frame: mutated(ip, 0x65)) == nil, "IP version 6")
        #expect(DHCPMessage.parse(frame: mutated(ip, 0x44)) == nil, "IHL 4")
        #expect(DHCPMessage.parse(frame: mutated(ip, 0x4F)) == nil, "IHL 15 swallows the UDP header")
        #expect(DHCPMessage.parse(frame: mutated(ip + 9, 6)) == nil, "TCP")
        #expect(DHCPMessage.parse(frame: mutated(ip + 7, 1)) == nil, "fragment offset 1")
        #expect(DHCPMessage.parse(frame: mutated(ip + 2, 0x7F)) == nil, "IP total length beyond the frame")
        #expect(DHCPMessage.parse(frame: mutated(ip + 3, 0x10)) == nil, "IP total length shorter than the UDP length")
        #expect(DHCPMessage.parse(frame: mutated(udp + 1, 53)) == nil, "source port 53")
        #expect(DHCPMessage.parse(frame: mutated(udp + 3, 68)) == nil, "68 -> 68")
        #expect(DHCPMessage.parse(frame: mutated(udp + 4, 0x7F)) == nil, "UDP length beyond the datagram")
        #expect(DHCPMessage.parse(frame: mutated(udp + 4, 0)) == nil, "UDP length too short for BOOTP")
        #expect(DHCPMessage.parse(frame: mutated(bootp, 3)) == nil, "op 3")
        #expect(DHCPMessage.parse(frame: mutated(bootp + 1, 6)) == nil, "htype 6")
        #expect(DHCPMessage.parse(frame: mutated(bootp + 2, 16)) == nil, "hlen 16")
        #expect(DHCPMessage.parse(frame: mutated(bootp + 236, 98)) == nil, "bad magic cookie")
        #expect(DHCPMessage.parse(frame: Array(good.prefix(bootp + 239))) == nil, "cut inside the cookie")
        // Two VLAN tags are not followed.
        var qinq = F.frame(options: F.clientOptions(kind: 1), vlan: 7)
        qinq.insert(contentsOf: [0x81, 0x00, 0x00, 0x08], at: 12)
        #expect(DHCPMessage.parse(frame: qinq) == nil)
    }

    @Test("a first fragment (MF, offset 0) parses as far as it goes")
    func firstFragment() {
        var f = F.frame(options: F.clientOptions(kind: 1))
        f[14 + 6] = 0x20  // MF
        // The UDP header claims more than this fragment holds.
        let udpLength = (Int(f[38]) << 8 | Int(f[39])) + 100
        f[38] = UInt8(udpLength >> 8)
        f[39] = UInt8(truncatingIfNeeded: udpLength)
        #expect(DHCPMessage.parse(frame: f)?.hostname == "guest")
    }

    @Test("works on slices and raw buffers, whose indices do not start at 0")
    func collectionKinds() {
        let frame = libslirpDHCPReply(kind: 2)
        let expected = DHCPMessage.parse(frame: frame)
        #expect(expected != nil)
        let padded = [UInt8](repeating: 0xEE, count: 7) + frame
        #expect(DHCPMessage.parse(frame: padded[7...]) == expected)
        frame.withUnsafeBytes { raw in #expect(DHCPMessage.parse(frame: raw) == expected) }
    }

    @Test("every prefix and thousands of mutations parse or return nil, never trap")
    func fuzz() {
        let seeds = [libslirpDHCPReply(kind: 2), F.frame(options: F.clientOptions(kind: 3, extra: [50, 4, 10, 0, 2, 15]), vlan: 3)]
        for seed in seeds {
            for n in 0...seed.count { _ = DHCPMessage.parse(frame: seed[0..<n]) }
        }
        var rng = SeededGenerator(state: 2131)
        var parsed = 0
        for round in 0..<20_000 {
            var f = seeds[round % seeds.count]
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                // Bias hits toward the headers and options, where the lengths live.
                let hot = [12, 13, 14, 16, 17, 20, 21, 23, 38, 39, 42, 43, 44, 278, 279, 280, 281, 282, 283, 284]
                let i = Bool.random(using: &rng) ? (hot.randomElement(using: &rng) ?? 0) : Int.random(in: 0..<f.count, using: &rng)
                if i < f.count { f[i] = UInt8.random(in: 0...255, using: &rng) }
            }
            if Int.random(in: 0..<4, using: &rng) == 0 { f.removeLast(Int.random(in: 0..<f.count, using: &rng)) }
            if DHCPMessage.parse(frame: f) != nil { parsed += 1 }
        }
        // The mutations must not all be rejected, or the option parser went unexercised.
        #expect(parsed > 1000)
        for _ in 0..<2000 {
            let junk = (0..<Int.random(in: 0..<400, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = DHCPMessage.parse(frame: junk)
        }
    }
}
