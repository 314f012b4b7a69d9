import DataPlane
import FrameSwitch
import TestSupport
import Testing

/// Crafted guest frames for NATIngressCheck: headers are written field by field so each
/// test can break exactly one of them.
enum Frames {
    static let guest4: [UInt8] = [10, 0, 2, 15]
    static let gateway4: [UInt8] = [10, 0, 2, 2]
    static let guest6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x0F]
    static let gateway6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x02]
    static let ethernet4 = MACAddress(raw: 0x5255_0A00_0202).bytes + MACAddress(raw: 0x5254_0012_3456).bytes + [0x08, 0x00]
    static let ethernet6 = MACAddress(raw: 0x5255_0A00_0202).bytes + MACAddress(raw: 0x5254_0012_3456).bytes + [0x86, 0xDD]

    static func be16(_ v: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)] }

    static func pseudoHeader(v6: Bool, protocol proto: UInt8, length: Int) -> [UInt8] {
        v6 ? guest6 + gateway6 + [0, 0] + be16(length) + [0, 0, 0, proto]
           : guest4 + gateway4 + [0, proto] + be16(length)
    }

    /// A TCP segment from the guest to the gateway's port 80 with a correct checksum.
    static func tcp(flags: UInt8 = 0x18, urgent: Int = 0, payload: [UInt8] = Array("0123456789".utf8),
                    options: [UInt8] = [], dataOffset: Int? = nil, v6: Bool = false) -> [UInt8] {
        let offset = dataOffset ?? (20 + options.count) / 4
        var segment = be16(40000) + be16(80) + [0, 0, 0x03, 0xE8, 0, 0, 0x13, 0x88]
            + [UInt8(offset << 4), flags] + be16(65535) + [0, 0] + be16(urgent) + options + payload
        IPChecksum.store(in: &segment, at: 16, pseudoHeader: pseudoHeader(v6: v6, protocol: 6, length: segment.count))
        return segment
    }

    static func udp(payload: [UInt8] = Array("query".utf8), length: Int? = nil, v6: Bool = false) -> [UInt8] {
        var datagram = be16(40000) + be16(53) + be16(length ?? 8 + payload.count) + [0, 0] + payload
        IPChecksum.store(in: &datagram, at: 6, pseudoHeader: pseudoHeader(v6: v6, protocol: 17, length: datagram.count))
        return datagram
    }

    static func icmpEcho(payloadLength: Int = 8) -> [UInt8] {
        var message: [UInt8] = [8, 0, 0, 0, 0, 1, 0, 1] + Array(repeating: 0x61, count: payloadLength)
        IPChecksum.store(in: &message, at: 2)
        return message
    }

    static func ipv4(_ proto: UInt8, _ payload: [UInt8], totalLength: Int? = nil, headerWords: Int = 5,
                     options: [UInt8] = [], fragment: Int = 0x4000, padding: Int = 0) -> [UInt8] {
        var header: [UInt8] = [UInt8(0x40 | headerWords), 0] + be16(totalLength ?? 20 + options.count + payload.count)
            + [0, 1] + be16(fragment) + [64, proto, 0, 0] + guest4 + gateway4 + options
        IPChecksum.store(in: &header, at: 10)
        return ethernet4 + header + payload + Array(repeating: 0, count: padding)
    }

    static func ipv6(_ nextHeader: UInt8, _ payload: [UInt8], payloadLength: Int? = nil, trailing: [UInt8] = []) -> [UInt8] {
        ethernet6 + [0x60, 0, 0, 0] + be16(payloadLength ?? payload.count) + [nextHeader, 64] + guest6 + gateway6
            + payload + trailing
    }

    /// Whether a TCP segment inside `frame` (IPv4 without options, or IPv6) has a valid checksum.
    static func tcpChecksumVerifies(_ frame: [UInt8], v6: Bool) -> Bool {
        let segment = Array(frame[(v6 ? 54 : 34)...])
        let pseudo = pseudoHeader(v6: v6, protocol: 6, length: segment.count)
        return IPChecksum.sum(segment, initial: IPChecksum.sum(pseudo)) == 0xFFFF
    }
}

@Suite("NATIngressCheck: what libslirp is given")
struct NATIngressCheckTests {
    typealias Reason = NATIngressCheck.Reason

    func expectDrop(_ frame: [UInt8], _ reason: Reason, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(NATIngressCheck.verdict(frame) == .drop(reason), sourceLocation: sourceLocation)
    }

    func expectPass(_ frame: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(NATIngressCheck.verdict(frame) == .pass, sourceLocation: sourceLocation)
    }

    @Test("URG with urgent pointer 65535 and 10 bytes: URG and the pointer are cleared, the checksum still verifies, nothing else changes", arguments: [false, true])
    func urgentPointerCleared(v6: Bool) throws {
        let segment = Frames.tcp(flags: 0x38, urgent: 65535, v6: v6)
        let frame = v6 ? Frames.ipv6(6, segment) : Frames.ipv4(6, segment)
        guard case .rewritten(let fixed) = NATIngressCheck.verdict(frame) else {
            Issue.record("not rewritten: \(NATIngressCheck.verdict(frame))")
            return
        }
        let t = v6 ? 54 : 34
        #expect(fixed.count == frame.count)
        #expect(fixed[t + 13] == 0x18)  // PSH|ACK
        #expect(fixed[t + 18] == 0 && fixed[t + 19] == 0)
        #expect(Frames.tcpChecksumVerifies(fixed, v6: v6))
        let changed = (0..<frame.count).filter { frame[$0] != fixed[$0] }
        #expect(Set(changed).isSubset(of: [t + 13, t + 16, t + 17, t + 18, t + 19]))
        // Fixed once, the frame passes as it is.
        #expect(NATIngressCheck.verdict(fixed) == .pass)
    }

    @Test("an urgent pointer without URG, and URG with pointer 0, are cleared too")
    func urgentPieces() throws {
        for segment in [Frames.tcp(flags: 0x18, urgent: 5), Frames.tcp(flags: 0x38, urgent: 0)] {
            guard case .rewritten(let fixed) = NATIngressCheck.verdict(Frames.ipv4(6, segment)) else {
                Issue.record("not rewritten")
                continue
            }
            #expect(fixed[47] & 0x20 == 0 && fixed[52] == 0 && fixed[53] == 0)
            #expect(Frames.tcpChecksumVerifies(fixed, v6: false))
        }
    }

    @Test("a URG segment with a wrong checksum keeps a wrong checksum, so libslirp still drops it")
    func wrongChecksumStaysWrong() throws {
        var segment = Frames.tcp(flags: 0x38, urgent: 65535)
        segment[16] ^= 0x01
        guard case .rewritten(let fixed) = NATIngressCheck.verdict(Frames.ipv4(6, segment)) else {
            Issue.record("not rewritten")
            return
        }
        #expect(!Frames.tcpChecksumVerifies(fixed, v6: false))
    }

    @Test("RFC 1624 update equals recomputing, including across 0xFFFF")
    func incrementalChecksum() {
        var generator = SeededGenerator(state: 22)
        for _ in 0..<500 {
            var bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
            bytes[6] = 0; bytes[7] = 0
            IPChecksum.store(in: &bytes, at: 6)
            let old = UInt16(bytes[12]) << 8 | UInt16(bytes[13])
            let new = UInt16.random(in: 0...0xFFFF, using: &generator)
            let adjusted = IPChecksum.adjusted(UInt16(bytes[6]) << 8 | UInt16(bytes[7]), replacing: old, with: new)
            bytes[12] = UInt8(new >> 8); bytes[13] = UInt8(new & 0xFF)
            bytes[6] = UInt8(adjusted >> 8); bytes[7] = UInt8(adjusted & 0xFF)
            #expect(IPChecksum.sum(bytes) == 0xFFFF)
        }
    }

    @Test("honest frames pass byte for byte: TCP with common options, UDP, ICMP, padding, IPv6, ARP, other ethertypes")
    func honestFramesPass() {
        let options: [UInt8] = [2, 4, 0x05, 0xB4, 1, 3, 3, 7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0]
        expectPass(Frames.ipv4(6, Frames.tcp(flags: 0x02, payload: [], options: options)))
        expectPass(Frames.ipv4(6, Frames.tcp()))
        expectPass(Frames.ipv4(6, Frames.tcp(flags: 0x10, payload: []), padding: 6))  // a 54-byte ACK padded to 60
        expectPass(Frames.ipv4(6, Frames.tcp(), headerWords: 6, options: [1, 1, 1, 0]))
        expectPass(Frames.ipv4(17, Frames.udp()))
        expectPass(Frames.ipv4(17, Frames.udp(payload: [1, 2, 3], length: 9)))  // shorter than the IP payload: libslirp trims
        expectPass(Frames.ipv4(1, Frames.icmpEcho()))
        expectPass(Frames.ipv4(1, Frames.icmpEcho(payloadLength: 0)))
        expectPass(Frames.ipv6(6, Frames.tcp(options: options, v6: true)))
        expectPass(Frames.ipv6(17, Frames.udp(v6: true)))
        expectPass(Frames.ipv6(58, [128, 0, 0, 0, 0, 1, 0, 1]))
        expectPass(Frames.ipv6(0, [58, 0, 1, 4, 0, 0, 0, 0]))  // hop-by-hop: libslirp frees it unread
        expectPass(MACAddress.broadcast.bytes + MACAddress(raw: 0x5254_0012_3456).bytes + [0x08, 0x06] + Array(repeating: 0, count: 28))
        expectPass([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 1, 0x88, 0xF8])
        expectPass([1, 2, 3])
    }

    @Test("IPv4 version and IHL: below 20, or past the frame, is dropped")
    func ipv4HeaderLength() {
        expectDrop(Frames.ipv4(6, Frames.tcp(), headerWords: 4), .ipv4Header)
        expectDrop(Array(Frames.ipv4(6, Frames.tcp()).prefix(30)), .ipv4Header)
        var version = Frames.ipv4(6, Frames.tcp())
        version[14] = 0x55
        expectDrop(version, .ipv4Header)
        // IHL 15 (60 bytes) in a frame whose total length is 20 + 30.
        expectDrop(Frames.ipv4(6, Frames.tcp(), headerWords: 15), .ipv4TotalLength)
    }

    @Test("IPv4 total length: past the frame or below the header is dropped; Ethernet padding passes")
    func ipv4TotalLength() {
        let segment = Frames.tcp()
        expectDrop(Frames.ipv4(6, segment, totalLength: 20 + segment.count + 1), .ipv4TotalLength)
        expectDrop(Frames.ipv4(6, segment, totalLength: 19), .ipv4TotalLength)
        expectDrop(Frames.ipv4(6, segment, totalLength: 65535), .ipv4TotalLength)
        expectPass(Frames.ipv4(6, segment, padding: 10))
    }

    @Test("IPv4 fragments never reach libslirp (they are reassembled before this stage)")
    func fragments() {
        expectDrop(Frames.ipv4(17, Frames.udp(), fragment: 0x2000), .ipv4Fragment)  // more fragments
        expectDrop(Frames.ipv4(17, Frames.udp(), fragment: 0x0001), .ipv4Fragment)  // offset 8
        expectPass(Frames.ipv4(17, Frames.udp(), fragment: 0x4000))  // DF only
    }

    @Test("TCP: a segment shorter than 20 bytes is dropped", arguments: [false, true])
    func tcpTruncated(v6: Bool) {
        let short = Array(Frames.tcp(v6: v6).prefix(19))
        expectDrop(v6 ? Frames.ipv6(6, short) : Frames.ipv4(6, short), .tcpHeader)
    }

    @Test("TCP data offset below 5 words or past the segment is dropped", arguments: [false, true])
    func tcpDataOffset(v6: Bool) {
        for offset in [0, 4, 11, 15] {
            let segment = Frames.tcp(payload: Array(repeating: 1, count: 20), dataOffset: offset, v6: v6)
            expectDrop(v6 ? Frames.ipv6(6, segment) : Frames.ipv4(6, segment), .tcpDataOffset)
        }
    }

    @Test("TCP options that overrun the header, a dangling kind byte, and bad MSS/window-scale lengths are dropped", arguments: [false, true])
    func tcpOptions(v6: Bool) {
        let bad: [[UInt8]] = [
            [8, 10, 0, 0],  // timestamps claiming 10 bytes in 4
            [1, 1, 1, 2],  // MSS kind in the last byte: its length byte is outside
            [2, 3, 5, 0],  // MSS of length 3
            [3, 4, 7, 0],  // window scale of length 4
            [2, 4, 5, 180, 2, 1, 0, 0],  // option of length 1
            [30, 0, 0, 0],  // option of length 0
        ]
        for options in bad {
            let segment = Frames.tcp(options: options, v6: v6)
            expectDrop(v6 ? Frames.ipv6(6, segment) : Frames.ipv4(6, segment), .tcpOptions)
        }
        let good = Frames.tcp(options: [2, 4, 5, 180, 3, 3, 7, 1, 0, 99, 99, 99], v6: v6)  // after EOL: ignored
        expectPass(v6 ? Frames.ipv6(6, good) : Frames.ipv4(6, good))
    }

    @Test("UDP length below 8, or past the IP payload, is dropped", arguments: [false, true])
    func udpLength(v6: Bool) {
        for length in [0, 7, 14] {
            let datagram = Frames.udp(payload: [1, 2, 3, 4, 5], length: length, v6: v6)
            expectDrop(v6 ? Frames.ipv6(17, datagram) : Frames.ipv4(17, datagram), .udpLength)
        }
        let short: [UInt8] = [0, 1, 0, 53, 0, 8]
        expectDrop(v6 ? Frames.ipv6(17, short) : Frames.ipv4(17, short), .udpLength)
    }

    @Test("ICMP shorter than 8 bytes is dropped")
    func icmpLength() {
        expectDrop(Frames.ipv4(1, [8, 0, 0xF7, 0xFF]), .icmpLength)
    }

    @Test("IPv6: a short header or a payload length past the frame is dropped; bytes past the payload are cut")
    func ipv6PayloadLength() {
        let segment = Frames.tcp(v6: true)
        expectDrop(Array(Frames.ipv6(6, segment).prefix(50)), .ipv6Header)
        var version = Frames.ipv6(6, segment)
        version[14] = 0x40
        expectDrop(version, .ipv6Header)
        expectDrop(Frames.ipv6(6, segment, payloadLength: segment.count + 1), .ipv6PayloadLength)
        let trailing = Frames.ipv6(6, segment, trailing: [0xAA, 0xBB])
        #expect(NATIngressCheck.verdict(trailing) == .rewritten(Frames.ipv6(6, segment)))
        let urgentTrailing = Frames.ipv6(6, Frames.tcp(flags: 0x38, urgent: 65535, v6: true), trailing: [1, 2, 3])
        guard case .rewritten(let fixed) = NATIngressCheck.verdict(urgentTrailing) else {
            Issue.record("not rewritten")
            return
        }
        #expect(fixed.count == urgentTrailing.count - 3)
        #expect(Frames.tcpChecksumVerifies(fixed, v6: true))
    }

    @Test("counters: drops by reason and rewrites")
    func counters() {
        var check = NATIngressCheck()
        for frame in [Frames.ipv4(6, Frames.tcp(flags: 0x38, urgent: 65535)), Frames.ipv4(1, [8, 0]), Frames.ipv4(6, Frames.tcp())] {
            _ = frame.withUnsafeBytes { check.inspect($0) }
        }
        #expect(check.rewritten == 1)
        #expect(check.dropped[Reason.icmpLength.rawValue] == 1)
        #expect(check.totalDropped == 1)
    }

    /// The stage's promise, checked on random mutations of honest frames: whatever it hands
    /// on has consistent lengths and no urgent pointer, and it never traps.
    @Test("random frames: whatever passes has consistent lengths and no URG")
    func randomFrames() {
        var generator = SeededGenerator(state: 2226)
        let seeds = [
            Frames.ipv4(6, Frames.tcp(flags: 0x38, urgent: 65535, options: [2, 4, 5, 180])),
            Frames.ipv6(6, Frames.tcp(flags: 0x38, urgent: 9, v6: true)),
            Frames.ipv4(17, Frames.udp()), Frames.ipv6(17, Frames.udp(v6: true)), Frames.ipv4(1, Frames.icmpEcho()),
        ]
        for _ in 0..<20_000 {
            var frame = seeds.randomElement(using: &generator) ?? []
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                let at = Int.random(in: 12..<frame.count, using: &generator)
                frame[at] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { frame.removeLast(Int.random(in: 0...min(30, frame.count), using: &generator)) }
            var handed = frame
            switch NATIngressCheck.verdict(frame) {
            case .drop: continue
            case .pass: break
            case .rewritten(let fixed): handed = fixed
            }
            #expect(NATIngressCheck.verdict(handed) == .pass)
            check(handed)
        }
    }

    /// The invariants libslirp relies on, written out independently of the stage.
    func check(_ frame: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        guard frame.count >= 14 else { return }
        let type = Int(frame[12]) << 8 | Int(frame[13])
        var l4 = 0, l4Length = 0, proto: UInt8 = 0
        if type == 0x0800 {
            let ihl = Int(frame[14] & 0xF) * 4
            let total = Int(frame[16]) << 8 | Int(frame[17])
            #expect(ihl >= 20 && total >= ihl && 14 + total <= frame.count, sourceLocation: sourceLocation)
            #expect(frame[20] & 0x3F == 0 && frame[21] == 0, sourceLocation: sourceLocation)
            (l4, l4Length, proto) = (14 + ihl, total - ihl, frame[23])
        } else if type == 0x86DD {
            let payload = Int(frame[18]) << 8 | Int(frame[19])
            #expect(54 + payload == frame.count, sourceLocation: sourceLocation)
            (l4, l4Length, proto) = (54, payload, frame[20])
        } else {
            return
        }
        if proto == 6 {
            #expect(l4Length >= 20, sourceLocation: sourceLocation)
            let offset = Int(frame[l4 + 12] >> 4) * 4
            #expect(offset >= 20 && offset <= l4Length, sourceLocation: sourceLocation)
            #expect(frame[l4 + 13] & 0x20 == 0 && frame[l4 + 18] == 0 && frame[l4 + 19] == 0, sourceLocation: sourceLocation)
        } else if proto == 17 {
            let length = Int(frame[l4 + 4]) << 8 | Int(frame[l4 + 5])
            #expect(length >= 8 && length <= l4Length, sourceLocation: sourceLocation)
        }
    }
}
