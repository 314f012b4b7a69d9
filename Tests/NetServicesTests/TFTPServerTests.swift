import FrameSwitch
import TestSupport
import Testing

@testable import NetServices

/// A file whose byte at offset i is a function of i, so 40 MiB need no memory.
final class FakeTFTPFile: TFTPFile {
    var size: UInt64
    var changed = false
    var closed = false
    var reads = 0
    init(size: UInt64) { self.size = size }
    static func byte(_ i: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13 ^ i) }
    func read(at offset: UInt64, count: Int) -> [UInt8]? {
        reads += 1
        guard offset <= size else { return [] }
        let n = Int(min(UInt64(count), size - offset))
        return (0..<n).map { Self.byte(offset + UInt64($0)) }
    }
    func hasChanged() -> Bool { changed }
    func close() { closed = true }
}

final class FakeTFTPSource: TFTPFileSource {
    var files: [String: Result<UInt64, TFTPOpenFailure>] = [:]
    var opened: [String] = []
    var handles: [FakeTFTPFile] = []
    func open(_ path: String) -> Result<any TFTPFile, TFTPOpenFailure> {
        opened.append(path)
        switch files[path] ?? .failure(.notFound) {
        case .success(let size):
            let file = FakeTFTPFile(size: size)
            handles.append(file)
            return .success(file)
        case .failure(let e): return .failure(e)
        }
    }
}

/// A reply, decoded.
enum TFTPPacket: Equatable {
    case data(UInt16, [UInt8])
    case oack([String: String])
    case error(UInt16, String)
    case other([UInt8])

    init(frame: [UInt8]) {
        guard let d = UDPDatagram.parse(frame: frame), d.payload.count >= 4 else {
            self = .other(frame)
            return
        }
        let p = d.payload
        let op = UInt16(p[0]) << 8 | UInt16(p[1])
        let n = UInt16(p[2]) << 8 | UInt16(p[3])
        switch op {
        case 3: self = .data(n, Array(p[4...]))
        case 5: self = .error(n, String(decoding: p[4...].prefix { $0 != 0 }, as: UTF8.self))
        case 6:
            let parts = p[2...].split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            var o: [String: String] = [:]
            var i = 0
            while i + 1 < parts.count { o[parts[i]] = parts[i + 1]; i += 2 }
            self = .oack(o)
        default: self = .other(p)
        }
    }

    var block: UInt16? { if case .data(let n, _) = self { n } else { nil } }
    var errorCode: UInt16? { if case .error(let c, _) = self { c } else { nil } }
}

@Suite("TFTP server")
struct TFTPServerTests {
    static let guestMAC = MACAddress(raw: 0x5254_0012_3456)
    static let gatewayMAC = MACAddress(raw: 0x5255_0A00_0202)
    static let guestIP: UInt32 = 0x0A00_020F
    static let gatewayIP: UInt32 = 0x0A00_0202
    static let second: Int64 = 1_000_000_000

    static func datagram(_ payload: [UInt8], port: UInt16 = 2000, v6: Bool = false) -> UDPDatagram {
        let addresses: UDPDatagram.Addresses = v6
            ? .v6(source: [0xFE, 0xC0] + [UInt8](repeating: 0, count: 13) + [15], destination: [0xFE, 0xC0] + [UInt8](repeating: 0, count: 13) + [2])
            : .v4(source: guestIP, destination: gatewayIP)
        return UDPDatagram(sourceMAC: guestMAC, destinationMAC: gatewayMAC, addresses: addresses,
                           sourcePort: port, destinationPort: 69, payload: payload)
    }

    static func rrq(_ name: String, mode: String = "octet", _ options: [(String, String)] = [], port: UInt16 = 2000, v6: Bool = false) -> UDPDatagram {
        var p: [UInt8] = [0, 1] + Array(name.utf8) + [0] + Array(mode.utf8) + [0]
        for (k, v) in options { p += Array(k.utf8) + [0] + Array(v.utf8) + [0] }
        return datagram(p, port: port, v6: v6)
    }

    static func ack(_ n: UInt16, port: UInt16 = 2000) -> UDPDatagram { datagram([0, 4, UInt8(n >> 8), UInt8(n & 0xFF)], port: port) }

    static func make(_ files: [String: UInt64], limits: TFTPLimits = TFTPLimits()) -> (TFTPServer, FakeTFTPSource) {
        let source = FakeTFTPSource()
        for (k, v) in files { source.files[k] = .success(v) }
        return (TFTPServer(serverMAC: gatewayMAC, files: source, limits: limits), source)
    }

    static func send(_ s: inout TFTPServer, _ d: UDPDatagram, mtu: Int = 1500, at now: Int64 = 0) -> [TFTPPacket] {
        s.handle(d, guest: 1, mtu: mtu, now: now).map(TFTPPacket.init(frame:))
    }

    static func expected(block: UInt64, size: UInt64, blockSize: UInt64 = 512) -> [UInt8] {
        let start = (block - 1) * blockSize
        let end = min(start + blockSize, size)
        return start < end ? (start..<end).map(FakeTFTPFile.byte) : []
    }

    @Test("a plain transfer: 512-byte blocks, a short last block, the session ends on its ACK")
    func plain() {
        var (s, source) = Self.make(["boot/pxelinux.0": 1300, "even": 1024])
        #expect(Self.send(&s, Self.rrq("boot/pxelinux.0")) == [.data(1, Self.expected(block: 1, size: 1300))])
        #expect(Self.send(&s, Self.ack(1)) == [.data(2, Self.expected(block: 2, size: 1300))])
        #expect(Self.send(&s, Self.ack(2)) == [.data(3, Self.expected(block: 3, size: 1300))])
        #expect(Self.expected(block: 3, size: 1300).count == 276)
        #expect(s.sessionCount == 1)
        #expect(Self.send(&s, Self.ack(3)).isEmpty)
        #expect(s.sessionCount == 0)
        #expect(source.handles[0].closed)
        #expect(s.counters.sessionsCompleted == 1)
        #expect(s.counters.bytesSent == 1300)
        #expect(s.takeEvents() == [.served(guest: 1, path: "boot/pxelinux.0", bytes: 1300)])
        #expect(s.takeEvents().isEmpty)
        #expect(s.nextDeadline == nil)
        // An exact multiple of the block size ends with an empty block.
        _ = Self.send(&s, Self.rrq("/even", port: 3000))
        _ = Self.send(&s, Self.ack(1, port: 3000))
        #expect(Self.send(&s, Self.ack(2, port: 3000)) == [.data(3, [])])
        #expect(source.opened == ["boot/pxelinux.0", "even"])
    }

    @Test("a repeated ACK gets the missing block again, never the next; older ACKs are ignored")
    func staleACK() {
        var (s, _) = Self.make(["k": 10 * 512])
        _ = Self.send(&s, Self.rrq("k"), at: 0)
        _ = Self.send(&s, Self.ack(1), at: 10)
        #expect(Self.send(&s, Self.ack(2), at: 20).map(\.block) == [3])  // DATA 3 is "lost"
        // The client re-ACKs 2: within the holdoff nothing, then block 3 again.
        #expect(Self.send(&s, Self.ack(2), at: 30).isEmpty)
        let resent = Self.send(&s, Self.ack(2), at: 20 + s.limits.duplicateACKHoldoff)
        #expect(resent == [.data(3, Self.expected(block: 3, size: 10 * 512))])
        // Again and again: still block 3.
        for i in 1...4 {
            #expect(Self.send(&s, Self.ack(2), at: Int64(i) * 2 * Self.second).map(\.block) == [3])
        }
        #expect(Self.send(&s, Self.ack(1), at: 10 * Self.second).isEmpty)  // older than the last ACK
        #expect(s.counters.retransmissions == 5)
        #expect(Self.send(&s, Self.ack(3), at: 11 * Self.second).map(\.block) == [4])
    }

    @Test("no ACK: the window is sent again after 1, 2, 4, 8, 16 s, then an ERROR ends the session")
    func timeouts() {
        var (s, source) = Self.make(["k": 3000])
        _ = Self.send(&s, Self.rrq("k"), at: 0)
        _ = Self.send(&s, Self.ack(1), at: 0)  // DATA 2 out at t=0
        #expect(s.expire(now: Self.second - 1).isEmpty)
        var t: Int64 = 0
        for wait in [1, 2, 4, 8, 16] as [Int64] {
            #expect(s.nextDeadline == t + wait * Self.second)
            t += wait * Self.second
            let out = s.expire(now: t).map { TFTPPacket(frame: $0.frame) }
            #expect(out.map(\.block) == [2], "after \(wait) s")
        }
        #expect(s.nextDeadline == t + 16 * Self.second)
        let last = s.expire(now: t + 16 * Self.second).map { TFTPPacket(frame: $0.frame) }
        #expect(last.map(\.errorCode) == [0])
        #expect(s.sessionCount == 0)
        #expect(source.handles[0].closed)
        #expect(s.counters.sessionsTimedOut == 1)
        #expect(s.takeEvents() == [.abandoned(guest: 1, path: "k", reason: "no ACK after 5 retransmissions")])
        #expect(s.counters.retransmissions == 5)
        // Progress resets the backoff.
        _ = Self.send(&s, Self.rrq("k", port: 7), at: 0)
        _ = s.expire(now: Self.second)
        _ = s.expire(now: 3 * Self.second)
        _ = Self.send(&s, Self.ack(1, port: 7), at: 4 * Self.second)
        #expect(s.nextDeadline == 5 * Self.second)
    }

    @Test("a 40 MiB file at 512-byte blocks: block numbers wrap from 65535 to 0 and every byte arrives")
    func wrap() {
        let size: UInt64 = 40 << 20
        var (s, _) = Self.make(["big": size])
        var received = 0
        var digest: UInt64 = 0
        var expectedDigest: UInt64 = 0
        var block: UInt64 = 1
        var packets = Self.send(&s, Self.rrq("big"))
        var sawWrap = false
        var mismatches = 0
        while let first = packets.first, case .data(let n, let data) = first, packets.count == 1 {
            if n != UInt16(truncatingIfNeeded: block) { mismatches += 1; break }
            if block == 65536 { sawWrap = n == 0 }
            received += data.count
            for b in data { digest = digest &* 31 &+ UInt64(b) }
            // Right after the wrap, a repeated ACK of 65535 must not be taken for ACK 0 of
            // a later round, nor advance.
            if block == 65537 {
                #expect(Self.send(&s, Self.ack(65535), at: Self.second).isEmpty)  // older than ACK 0 (65536)
                #expect(Self.send(&s, Self.ack(0), at: Self.second).map(\.block) == [1])  // block 65537 again
            }
            packets = Self.send(&s, Self.ack(n), at: Int64(block))
            block += 1
        }
        for i in 0..<size { expectedDigest = expectedDigest &* 31 &+ UInt64(FakeTFTPFile.byte(i)) }
        #expect(mismatches == 0)
        #expect(sawWrap)
        #expect(block == size / 512 + 2)  // 81920 full blocks and the empty last one
        #expect(received == Int(size))
        #expect(digest == expectedDigest)
        #expect(s.sessionCount == 0)
        #expect(s.counters.sessionsCompleted == 1)
    }

    @Test("windowsize: a window per ACK; an ACK inside the window restarts it after that block")
    func window() {
        var (s, _) = Self.make(["w": 100_000])
        let oack = Self.send(&s, Self.rrq("w", [("blksize", "1024"), ("windowsize", "8"), ("tsize", "0")]))
        #expect(oack == [.oack(["blksize": "1024", "windowsize": "8", "tsize": "100000"])])
        #expect(Self.send(&s, Self.ack(0)).map(\.block) == Array(1...8))
        #expect(Self.send(&s, Self.ack(8)).map(\.block) == Array(9...16))
        // Block 12 lost: the client ACKs 11.
        #expect(Self.send(&s, Self.ack(11)).map(\.block) == Array(12...19))
        #expect(s.counters.retransmissions == 5)  // 12 to 16 again
        // The last window stops at the last block (100000 / 1024 = 97, then 98 is short).
        for n in stride(from: 19, to: 91, by: 8) { _ = Self.send(&s, Self.ack(UInt16(n))) }
        let tail = Self.send(&s, Self.ack(91))
        #expect(tail.map(\.block) == Array(92...98))
        if case .data(_, let data) = tail.last { #expect(data.count == 100_000 - 97 * 1024) }
        #expect(Self.send(&s, Self.ack(98)).isEmpty)
        #expect(s.sessionCount == 0)
    }

    @Test("windowsize is capped by count and by bytes per window")
    func windowCaps() {
        var (s, _) = Self.make(["w": 10_000_000])
        #expect(Self.send(&s, Self.rrq("w", [("windowsize", "1000")]), mtu: 9000) == [.oack(["windowsize": "64"])])
        #expect(Self.send(&s, Self.rrq("w", [("blksize", "8192"), ("windowsize", "1000")], port: 5), mtu: 9000)
            == [.oack(["blksize": "8192", "windowsize": "32"])])  // 256 KiB / 8 KiB
        #expect(Self.send(&s, Self.ack(0, port: 5), mtu: 9000).count == 32)
        #expect(Self.send(&s, Self.rrq("w", [("windowsize", "0")], port: 6)).map(\.errorCode) == [8])
    }

    @Test("blksize: up to what the MTU carries, over IPv4 and IPv6; out of RFC 2348's range refused")
    func blockSizes() {
        var (s, _) = Self.make(["f": 1_000_000])
        let cases = [(1500, false, "65464", "1468"), (9000, false, "65464", "8968"), (1500, true, "65464", "1448"),
                     (1500, false, "1024", "1024"), (65520, false, "65464", "65464"), (1500, false, "8", "8")]
        for (index, (mtu, v6, asked, granted)) in cases.enumerated() {
            let port = UInt16(100 + index)
            let oack = Self.send(&s, Self.rrq("f", [("BlkSize", asked)], port: port, v6: v6), mtu: mtu)
            #expect(oack == [.oack(["blksize": granted])], "mtu \(mtu) v6 \(v6) asked \(asked)")
            let frames = s.handle(Self.datagram([0, 4, 0, 0], port: port, v6: v6), guest: 1, mtu: mtu, now: 0)
            #expect(frames.count == 1)
            if let f = frames.first {
                #expect(f.count - 14 <= mtu)
                if case .data(1, let data) = TFTPPacket(frame: f) { #expect(data.count == Int(granted)) } else { Issue.record("no DATA 1") }
            }
        }
        for bad in ["7", "65465", "x", ""] {
            #expect(Self.send(&s, Self.rrq("f", [("blksize", bad)], port: 999)).map(\.errorCode) == [8], "blksize '\(bad)'")
        }
        #expect(Self.send(&s, Self.rrq("f", [("timeout", "0")], port: 998)).map(\.errorCode) == [8])
        #expect(s.counters.errorsSent == 5)
    }

    @Test("timeout option: the first wait is the client's; unknown options are left out")
    func timeoutOption() {
        var (s, _) = Self.make(["f": 5000])
        #expect(Self.send(&s, Self.rrq("f", [("timeout", "3"), ("rollover", "0"), ("multicast", "")])) == [.oack(["timeout": "3"])])
        #expect(s.nextDeadline == 3 * Self.second)  // the OACK's own timer
        #expect(s.expire(now: 3 * Self.second).map { TFTPPacket(frame: $0.frame) } == [.oack(["timeout": "3"])])
        _ = Self.send(&s, Self.ack(0), at: 4 * Self.second)
        #expect(s.nextDeadline == 7 * Self.second)
    }

    @Test("escapes and bad requests get ERROR packets and never reach the file source")
    func refusals() {
        var (s, source) = Self.make(["ok": 10])
        source.files["secret"] = .failure(.accessViolation)
        for name in ["../etc/passwd", "a/../../etc/passwd", "/..", "..", "dir/", "", "a/b/.."] {
            #expect(Self.send(&s, Self.rrq(name)).map(\.errorCode) == [2], "'\(name)'")
        }
        #expect(Self.send(&s, Self.rrq(String(repeating: "a", count: 513))).map(\.errorCode) == [2])
        #expect(source.opened.isEmpty)
        // Absolute paths are rooted, as in libslirp: /etc/passwd is <root>/etc/passwd.
        #expect(Self.send(&s, Self.rrq("/etc/passwd")).map(\.errorCode) == [1])
        #expect(source.opened == ["etc/passwd"])
        _ = s.takeEvents()
        #expect(Self.send(&s, Self.rrq("secret")).map(\.errorCode) == [2])
        #expect(s.takeEvents() == [.refused(guest: 1, request: "secret", code: 2, message: "Access violation")])
        #expect(Self.send(&s, Self.rrq("ok", mode: "netascii")).map(\.errorCode) == [4])
        #expect(Self.send(&s, Self.datagram([0, 2] + Array("ok".utf8) + [0] + Array("octet".utf8) + [0])).map(\.errorCode) == [2])
        #expect(s.sessionCount == 0)
        // A reply goes back where the request came from.
        let frame = s.handle(Self.rrq("missing", port: 4321), guest: 1, mtu: 1500, now: 0)[0]
        let reply = UDPDatagram.parse(frame: frame)
        #expect(reply?.destinationPort == 4321)
        #expect(reply?.sourcePort == 69)
        #expect(reply?.addresses == .v4(source: Self.gatewayIP, destination: Self.guestIP))
        #expect(reply?.destinationMAC == Self.guestMAC)
    }

    @Test("sessions are capped per guest and per network; a new RRQ from the same port restarts")
    func caps() {
        var limits = TFTPLimits()
        limits.sessionsPerGuest = 2
        limits.sessionsPerNetwork = 3
        var (s, source) = Self.make(["f": 100_000], limits: limits)
        #expect(Self.send(&s, Self.rrq("f", port: 1)).map(\.block) == [1])
        #expect(Self.send(&s, Self.rrq("f", port: 2)).map(\.block) == [1])
        #expect(Self.send(&s, Self.rrq("f", port: 3)).map(\.errorCode) == [0])
        #expect(Self.send(&s, Self.rrq("f", port: 2)).map(\.block) == [1])  // restart, not a third
        #expect(source.handles[1].closed)
        #expect(s.handle(Self.rrq("f", port: 1), guest: 2, mtu: 1500, now: 0).count == 1)
        #expect(s.handle(Self.rrq("f", port: 2), guest: 3, mtu: 1500, now: 0).map(TFTPPacket.init(frame:)).map(\.errorCode) == [0])
        #expect(s.sessionCount == 3)
        s.removeGuest(1)
        #expect(s.sessionCount == 1)
    }

    @Test("a file changed in place mid-transfer ends it with an ERROR; a client ERROR ends the session")
    func changedFile() {
        var (s, source) = Self.make(["f": 5000])
        _ = Self.send(&s, Self.rrq("f"))
        source.handles[0].changed = true
        #expect(Self.send(&s, Self.ack(1)).map(\.errorCode) == [0])
        #expect(s.sessionCount == 0)
        #expect(source.handles[0].closed)
        // Cut short under our feet: the short read is caught too.
        _ = Self.send(&s, Self.rrq("f", port: 9))
        source.handles[1].size = 700  // truncated: block 2 comes back short
        #expect(Self.send(&s, Self.ack(1, port: 9)).map(\.errorCode) == [0])
        _ = Self.send(&s, Self.rrq("f", port: 10))
        _ = Self.send(&s, Self.datagram([0, 5, 0, 0, 0], port: 10))
        #expect(s.sessionCount == 0)
        #expect(source.handles[2].closed)
    }

    @Test("random datagrams and clocks: no crash, caps hold, DATA only within what the file has")
    func randomInput() {
        var limits = TFTPLimits()
        limits.sessionsPerGuest = 3
        limits.sessionsPerNetwork = 5
        var (s, _) = Self.make(["a": 0, "b": 511, "c": 513, "d": 70_000], limits: limits)
        var rng = SeededGenerator(state: 23)
        var now: Int64 = 0
        let names = ["a", "b", "c", "d", "../x", "/d", "", "e"]
        var dataSeen = 0
        for _ in 0..<30_000 {
            now += Int64.random(in: 0...400_000_000, using: &rng)
            let port = UInt16.random(in: 1...6, using: &rng)
            let guest = UInt32.random(in: 1...3, using: &rng)
            var payload: [UInt8]
            switch Int.random(in: 0..<10, using: &rng) {
            case 0:
                var options: [(String, String)] = []
                for name in ["blksize", "windowsize", "timeout", "tsize", "x"] where Bool.random(using: &rng) {
                    options.append((name, String(Int.random(in: -2...70_000, using: &rng))))
                }
                payload = Self.rrq(names.randomElement(using: &rng)!, options, port: port).payload
            case 1:
                payload = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if payload.count >= 2, Bool.random(using: &rng) { payload[0] = 0; payload[1] = UInt8.random(in: 0...7, using: &rng) }
            case 2:
                payload = [0, 5, 0, 0, 0]
            default:
                payload = [0, 4] + be16(UInt16.random(in: 0...40, using: &rng))
            }
            let mtu = [576, 1500, 9000][Int(guest) - 1]  // a guest's MTU is fixed (it only ever grows)
            let d = Self.datagram(payload, port: port)
            let frames = s.handle(d, guest: guest, mtu: mtu, now: now).map { (guest, $0) }
                + s.expire(now: now).map { ($0.guest, $0.frame) }
            for (to, f) in frames {
                let mtu = [576, 1500, 9000][Int(to) - 1]
                if case .data(let n, let data) = TFTPPacket(frame: f) {
                    dataSeen += 1
                    #expect(data.count <= 65464)
                    #expect(n <= 138)  // "d" at 512-byte blocks has 137 blocks and the last
                }
                #expect(f.count - 14 <= max(mtu, 20 + 8 + 4 + 512))
            }
            #expect(s.sessionCount <= 5)
            if let next = s.nextDeadline { #expect(next > now) }
        }
        #expect(dataSeen > 1000)
    }
}
