import Testing
@testable import DataPlane

/// Crafted tap frames: every gso_type, partial checksums completed and checked by the
/// simple byte-pair sum below (not the code under test), malformed headers, USO splits,
/// and the headers slirpd writes.
@Suite struct VirtioNetHeaderTests {
    // MARK: An independent checksum and frame builders

    /// RFC 1071 the slow way: big-endian byte pairs, carries folded at the end.
    static func onesSum(_ bytes: [UInt8], _ initial: UInt32 = 0) -> UInt16 {
        var sum = initial
        var i = 0
        while i < bytes.count {
            sum += UInt32(bytes[i]) << 8 | UInt32(i + 1 < bytes.count ? bytes[i + 1] : 0)
            i += 2
        }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return UInt16(sum)
    }

    static func be16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
    static func read16(_ b: [UInt8], _ at: Int) -> Int { Int(b[at]) << 8 | Int(b[at + 1]) }

    static let ipv4Src: [UInt8] = [10, 0, 2, 15], ipv4Dst: [UInt8] = [10, 0, 2, 2]
    static let ipv6Src: [UInt8] = [0xfe, 0xc0] + [UInt8](repeating: 0, count: 13) + [0x0f]
    static let ipv6Dst: [UInt8] = [0xfe, 0xc0] + [UInt8](repeating: 0, count: 13) + [0x02]

    static func payload(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(($0 * 31 + 7) & 0xFF) } }

    /// The pseudo-header sum (folded, not complemented) for an L4 segment.
    static func pseudo(v6: Bool, proto: UInt8, length: Int) -> UInt16 {
        let addresses = v6 ? ipv6Src + ipv6Dst : ipv4Src + ipv4Dst
        return onesSum(addresses + [0, proto] + (v6 ? [UInt8(length >> 24), UInt8(length >> 16 & 0xFF)] : []) + be16(length & 0xFFFF))
    }

    /// An Ethernet + IP + TCP (or UDP) frame with a complete, valid checksum.
    static func frame(v6: Bool = false, udp: Bool = false, payload body: [UInt8], flags: UInt8 = 0x18) -> [UInt8] {
        let l4Header: [UInt8]
        if udp {
            l4Header = [0x30, 0x39, 0x00, 0x07] + be16(8 + body.count) + [0, 0]
        } else {
            l4Header = [0x30, 0x39, 0x1f, 0x90, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]
        }
        var l4 = l4Header + body
        let proto: UInt8 = udp ? 17 : 6
        var check = ~onesSum(l4, UInt32(pseudo(v6: v6, proto: proto, length: l4.count)))
        if udp, check == 0 { check = 0xFFFF }
        l4[udp ? 6 : 16] = UInt8(check >> 8)
        l4[udp ? 7 : 17] = UInt8(check & 0xFF)
        let ethernet: [UInt8] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2] + (v6 ? [0x86, 0xdd] : [0x08, 0x00])
        var ip: [UInt8]
        if v6 {
            ip = [0x60, 0, 0, 0] + be16(l4.count) + [proto, 64] + ipv6Src + ipv6Dst
        } else {
            ip = [0x45, 0] + be16(20 + l4.count) + [0x12, 0x34, 0x40, 0, 64, proto, 0, 0] + ipv4Src + ipv4Dst
            let c = ~onesSum(ip)
            ip[10] = UInt8(c >> 8)
            ip[11] = UInt8(c & 0xFF)
        }
        return ethernet + ip + l4
    }

    static func l4Offset(_ f: [UInt8]) -> Int { f[12] == 0x86 ? 54 : 34 }

    /// Whether the frame's IPv4 header and L4 checksums verify (independently).
    static func verifies(_ f: [UInt8]) -> Bool {
        let v6 = f[12] == 0x86
        let l4 = l4Offset(f)
        let proto = v6 ? f[20] : f[23]
        let end = v6 ? 54 + read16(f, 18) : 14 + read16(f, 16)
        if !v6, onesSum(Array(f[14..<34])) != 0xFFFF { return false }
        let segment = Array(f[l4..<end])
        return onesSum(segment, UInt32(pseudo(v6: v6, proto: proto, length: segment.count))) == 0xFFFF
    }

    /// What the kernel hands slirpd for a NEEDS_CSUM frame: the pseudo-header sum in the field.
    /// The patch puts the partial (pseudo-header) checksum at the TCP checksum field, which
    /// is what the kernel sees; completing it as the kernel would gives back the full frame.
    static func expectPatchCompletes(_ full: [UInt8], _ h: VirtioNetHeader, _ patch: VirtioNetHeader.ChecksumPatch?,
                                     l4: Int) throws {
        let p = try #require(patch)
        #expect(p.offset == l4 + 16)
        var written = full
        written[p.offset] = UInt8(p.value >> 8)
        written[p.offset + 1] = UInt8(p.value & 0xFF)
        #expect(written == partial(full))
        VirtioNetHeader.completeChecksum(frame: &written, start: Int(h.checksumStart), offset: Int(h.checksumOffset))
        #expect(written == full)
    }

    static func partial(_ f: [UInt8]) -> [UInt8] {
        var p = f
        let v6 = f[12] == 0x86
        let l4 = l4Offset(f)
        let udp = (v6 ? f[20] : f[23]) == 17
        let field = l4 + (udp ? 6 : 16)
        let end = v6 ? 54 + read16(f, 18) : 14 + read16(f, 16)
        let s = pseudo(v6: v6, proto: udp ? 17 : 6, length: end - l4)
        p[field] = UInt8(s >> 8)
        p[field + 1] = UInt8(s & 0xFF)
        return p
    }

    static func inbound(_ header: VirtioNetHeader, _ f: inout [UInt8]) -> VirtioNetHeader.Inbound {
        f.withUnsafeMutableBytes { header.inbound($0) }
    }

    // MARK: Parsing and building

    @Test(arguments: [(UInt8(0), VirtioNetHeader.GSOType.none), (1, .tcpv4), (3, .udp), (4, .tcpv6), (5, .udpL4)])
    func parsesEveryGSOType(raw: UInt8, type: VirtioNetHeader.GSOType) throws {
        for ecn in [false, true] {
            let bytes: [UInt8] = [1, raw | (ecn ? 0x80 : 0), 0x36, 0, 0xb4, 0x05, 0x22, 0, 0x10, 0]
            let h = try #require(bytes.withUnsafeBytes { VirtioNetHeader.parse($0) })
            #expect(h.gsoType == type)
            #expect(h.ecn == ecn)
            #expect(h.needsChecksumCompleted)
            #expect(h.headerLength == 54 && h.gsoSize == 1460 && h.checksumStart == 34 && h.checksumOffset == 16)
            #expect(h.bytes == bytes)
        }
    }

    @Test func refusesShortAndUnknownHeaders() {
        let good: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        #expect(good.withUnsafeBytes { VirtioNetHeader.parse($0) } == VirtioNetHeader())
        #expect(Array(good.prefix(9)).withUnsafeBytes { VirtioNetHeader.parse($0) } == nil)
        #expect([UInt8]().withUnsafeBytes { VirtioNetHeader.parse($0) } == nil)
        for badType: UInt8 in [2, 6, 0x7f, 0x82] {
            var b = good
            b[1] = badType
            #expect(b.withUnsafeBytes { VirtioNetHeader.parse($0) } == nil, "gso_type \(badType)")
        }
        var flags = good
        flags[0] = 4
        #expect(flags.withUnsafeBytes { VirtioNetHeader.parse($0) } == nil)
        var valid = good
        valid[0] = 2
        #expect(valid.withUnsafeBytes { VirtioNetHeader.parse($0) }?.flags == VirtioNetHeader.dataValid)
    }

    // MARK: From the kernel

    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func completesPartialChecksums(v6: Bool, udp: Bool) {
        for size in [0, 1, 100, 1459] {
            let full = Self.frame(v6: v6, udp: udp, payload: Self.payload(size))
            var f = Self.partial(full)
            #expect(!Self.verifies(f) || size == 0)
            let h = VirtioNetHeader(flags: VirtioNetHeader.needsChecksum, checksumStart: UInt16(Self.l4Offset(f)),
                                    checksumOffset: udp ? 6 : 16)
            #expect(Self.inbound(h, &f) == .frame)
            #expect(Self.verifies(f))
            #expect(f == full)
        }
    }

    @Test func aUDPChecksumOfZeroIsSentAsAllOnes() {
        // Find a payload whose UDP checksum comes out 0 (then 0xFFFF on the wire).
        for seed in 0..<70000 {
            let body: [UInt8] = Self.be16(seed) + [0, 0]
            let full = Self.frame(udp: true, payload: body)
            guard Self.read16(full, 40) == 0xFFFF else { continue }
            var f = Self.partial(full)
            let h = VirtioNetHeader(flags: VirtioNetHeader.needsChecksum, checksumStart: 34, checksumOffset: 6)
            #expect(Self.inbound(h, &f) == .frame)
            #expect(Self.read16(f, 40) == 0xFFFF)
            return
        }
        Issue.record("no payload gave a zero UDP checksum")
    }

    @Test(arguments: [false, true])
    func tcpSuperFramesGoOnWholeWithTheirChecksumCompleted(v6: Bool) {
        let full = Self.frame(v6: v6, payload: Self.payload(65535 - (v6 ? 60 : 40) - (v6 ? 0 : 0)))
        var f = Self.partial(full)
        for ecn in [false, true] {
            var g = f
            let h = VirtioNetHeader(flags: VirtioNetHeader.needsChecksum, gsoType: v6 ? .tcpv6 : .tcpv4, ecn: ecn,
                                    headerLength: UInt16(Self.l4Offset(f) + 20), gsoSize: v6 ? 1440 : 1460,
                                    checksumStart: UInt16(Self.l4Offset(f)), checksumOffset: 16)
            #expect(Self.inbound(h, &g) == .frame)
            #expect(g == full)
        }
        // A GSO frame whose checksum the kernel already completed (no NEEDS_CSUM) goes on untouched.
        f = full
        let h = VirtioNetHeader(gsoType: v6 ? .tcpv6 : .tcpv4, gsoSize: 1000)
        #expect(Self.inbound(h, &f) == .frame)
        #expect(f == full)
    }

    @Test func malformedHeadersAreRefused() {
        let tcp4 = Self.frame(payload: Self.payload(3000))
        let udp4 = Self.frame(udp: true, payload: Self.payload(3000))
        let tcp6 = Self.frame(v6: true, payload: Self.payload(3000))
        let arp = [UInt8](repeating: 0xff, count: 12) + [0x08, 0x06] + [UInt8](repeating: 0, count: 28)
        let csum = VirtioNetHeader.needsChecksum
        let cases: [(VirtioNetHeader, [UInt8], VirtioNetHeader.Malformed)] = [
            (VirtioNetHeader(flags: csum, checksumStart: UInt16(tcp4.count), checksumOffset: 0), tcp4, .checksumOutOfFrame),
            (VirtioNetHeader(flags: csum, checksumStart: UInt16(tcp4.count - 1), checksumOffset: 0), tcp4, .checksumOutOfFrame),
            (VirtioNetHeader(flags: csum, checksumStart: 34, checksumOffset: UInt16(tcp4.count - 35)), tcp4, .checksumOutOfFrame),
            (VirtioNetHeader(flags: csum, checksumStart: 60000, checksumOffset: 16), tcp4, .checksumOutOfFrame),
            (VirtioNetHeader(flags: csum, checksumStart: 2, checksumOffset: 0), tcp4, .checksumOutOfFrame),
            (VirtioNetHeader(flags: csum, gsoType: .tcpv4, gsoSize: 0, checksumStart: 34, checksumOffset: 16), tcp4, .gsoSizeZero),
            (VirtioNetHeader(flags: csum, gsoType: .tcpv4, gsoSize: 1460, checksumStart: 34, checksumOffset: 6), udp4, .gsoMismatch),
            (VirtioNetHeader(flags: csum, gsoType: .tcpv6, gsoSize: 1440, checksumStart: 34, checksumOffset: 16), tcp4, .gsoMismatch),
            (VirtioNetHeader(flags: csum, gsoType: .tcpv4, gsoSize: 1460, checksumStart: 54, checksumOffset: 16), tcp6, .gsoMismatch),
            (VirtioNetHeader(flags: csum, gsoType: .udpL4, gsoSize: 1000, checksumStart: 34, checksumOffset: 16), tcp4, .gsoMismatch),
            (VirtioNetHeader(gsoType: .tcpv4, gsoSize: 1460), arp, .gsoMismatch),
            (VirtioNetHeader(gsoType: .tcpv4, gsoSize: 1460), Array(tcp4.prefix(40)), .gsoMismatch),
            (VirtioNetHeader(gsoType: .udp, gsoSize: 1000), udp4, .unsupportedGSO),
            // A GSO frame's partial checksum aimed at its IP header (the length), not at TCP.
            (VirtioNetHeader(flags: csum, gsoType: .tcpv4, gsoSize: 1460, checksumStart: 14, checksumOffset: 2), tcp4,
             .checksumOutOfFrame),
            (VirtioNetHeader(flags: csum, gsoType: .udpL4, gsoSize: 1000, checksumStart: 18, checksumOffset: 0),
             Self.frame(v6: true, udp: true, payload: Self.payload(3000)), .checksumOutOfFrame),
        ]
        for (header, original, reason) in cases {
            var f = original
            #expect(Self.inbound(header, &f) == .malformed(reason), "\(header)")
        }
    }

    @Test(arguments: [false, true])
    func udpSuperFramesAreCutIntoDatagrams(v6: Bool) throws {
        for (size, step) in [(8000, 1000), (2500, 1000), (999, 1000), (1, 1)] {
            let body = Self.payload(size)
            var f = Self.partial(Self.frame(v6: v6, udp: true, payload: body))
            let h = VirtioNetHeader(flags: VirtioNetHeader.needsChecksum, gsoType: .udpL4, headerLength: UInt16(Self.l4Offset(f) + 8),
                                    gsoSize: UInt16(step), checksumStart: UInt16(Self.l4Offset(f)), checksumOffset: 6)
            #expect(Self.inbound(h, &f) == .udpSegments)
            var datagrams: [[UInt8]] = []
            let n = f.withUnsafeBytes { h.udpSegments($0) { datagrams.append(Array($0)) } }
            #expect(n == (size + step - 1) / step)
            #expect(datagrams.count == n)
            var joined: [UInt8] = []
            for (i, d) in datagrams.enumerated() {
                let l4 = Self.l4Offset(d)
                let length = min(step, size - i * step)
                #expect(d.count == l4 + 8 + length)
                #expect(Self.read16(d, l4 + 4) == 8 + length)
                if v6 { #expect(Self.read16(d, 18) == 8 + length) } else {
                    #expect(Self.read16(d, 16) == 28 + length)
                    #expect(Self.read16(d, 18) == 0x1234 + i)
                }
                #expect(Self.verifies(d), "datagram \(i)")
                joined += d[(l4 + 8)...]
            }
            #expect(joined == body)
        }
    }

    // MARK: Toward the kernel

    @Test func smallFramesAndNonTCPGetAnEmptyHeader() {
        for f in [Self.frame(payload: Self.payload(1460)), Self.frame(v6: true, payload: Self.payload(1440)),
                  Self.frame(udp: true, payload: Self.payload(8000)), Self.frame(v6: true, udp: true, payload: Self.payload(8000))] {
            let (h, patch) = f.withUnsafeBytes { VirtioNetHeader.header(forOutgoing: $0, mtu: 1500) }
            #expect(h == VirtioNetHeader())
            #expect(h.bytes == [UInt8](repeating: 0, count: 10))
            #expect(patch == nil)
        }
    }

    /// A jumbo TCP frame within the MTU (libslirp's 32 KiB segments at MTU 65520): NEEDS_CSUM
    /// without GSO, so the receiving kernel trusts it instead of summing it again; at or
    /// below 1500 IP bytes, and for UDP, the header stays empty.
    @Test(arguments: [false, true])
    func jumboTCPFramesWithinTheMTUGetOnlyAPartialChecksum(v6: Bool) throws {
        let ipHeader = v6 ? 40 : 20
        for (mtu, size) in [(65520, 32768), (65520, 65480 - (v6 ? 20 : 0)), (9000, 8960 - (v6 ? 20 : 0)), (9000, 1461 - ipHeader + 20)] {
            let full = Self.frame(v6: v6, payload: Self.payload(size), flags: 0x18)
            #expect(full.count - 14 > 1500 && full.count - 14 <= mtu)
            let (h, patch) = full.withUnsafeBytes { VirtioNetHeader.header(forOutgoing: $0, mtu: mtu) }
            let l4 = Self.l4Offset(full)
            #expect(h.gsoType == VirtioNetHeader.GSOType.none)
            #expect(h.gsoSize == 0)
            #expect(h.flags == VirtioNetHeader.needsChecksum)
            #expect(Int(h.checksumStart) == l4 && h.checksumOffset == 16)
            #expect(Int(h.headerLength) == l4 + 20)
            try Self.expectPatchCompletes(full, h, patch, l4: l4)
        }
        // 1500 IP bytes exactly, at a jumbo MTU; and a jumbo UDP datagram: empty headers.
        for f in [Self.frame(v6: v6, payload: Self.payload(1480 - ipHeader)),
                  Self.frame(v6: v6, udp: true, payload: Self.payload(30000))] {
            let (h, patch) = f.withUnsafeBytes { VirtioNetHeader.header(forOutgoing: $0, mtu: 65520) }
            #expect(h == VirtioNetHeader())
            #expect(patch == nil)
        }
    }

    @Test(arguments: [false, true])
    func largeTCPFramesGetAGSOHeaderAndAPartialChecksum(v6: Bool) throws {
        for (mtu, size) in [(1500, 1461 - (v6 ? 20 : 0)), (1500, 65000), (9000, 30000), (576, 4000)] {
            let full = Self.frame(v6: v6, payload: Self.payload(size), flags: 0x98)
            let (h, patch) = full.withUnsafeBytes { VirtioNetHeader.header(forOutgoing: $0, mtu: mtu) }
            let l4 = Self.l4Offset(full)
            #expect(h.gsoType == (v6 ? .tcpv6 : .tcpv4))
            #expect(h.flags == VirtioNetHeader.needsChecksum)
            #expect(Int(h.gsoSize) == mtu - (v6 ? 60 : 40))
            #expect(Int(h.headerLength) == l4 + 20)
            #expect(Int(h.checksumStart) == l4 && h.checksumOffset == 16)
            #expect(h.ecn)
            try Self.expectPatchCompletes(full, h, patch, l4: l4)
        }
    }
}

extension VirtioNetHeader {
    @discardableResult
    static func completeChecksum(frame: inout [UInt8], start: Int, offset: Int) -> Bool {
        frame.withUnsafeMutableBytes { completeChecksum(frame: $0, start: start, offset: offset) }
    }
}
