import DataPlane
import FrameSwitch
import Testing
import TestSupport

/// The frame path's guest edge: frames cut to each port's MTU, the MSS of handshakes, and
/// guest segments merged for libslirp within a loop turn.
@Suite("Frame path edge")
struct FramePathEdgeTests {
    let guest = PortState(id: PortID(1), closesOnDuplicateMAC: true)
    let other = PortState(id: PortID(2), closesOnDuplicateMAC: false)
    let sink = FakeSink()
    let now: Int64 = 1_000_000_000

    /// A frame path whose guest has claimed 10.0.2.15 and fec0::f (by sending from them).
    func path() -> FramePath {
        let path = FramePath(natPort: PortID(0), settings: FramePath.Settings(isolateGuests: false, ipv6: true,
                                                                              network: 0x0A00_0200, mask: 0xFFFF_FF00))
        path.security = PortSecurity(addresses: PortSecurity.Addresses(
            network: 0x0A00_0200, mask: 0xFFFF_FF00, reserved: [0x0A00_0202, 0x0A00_0203], reserved6: []))
        path.addPort(guest)
        path.addPort(other)
        for v6 in [false, true] {
            var hello = TCPFrame.fromGuest(v6: v6)
            hello.flags = TCPFrame.rst
            hello.bytes.withUnsafeBytes { path.fromGuest($0, from: guest, now: now, sink: sink) }
        }
        path.injectPending(now: now, sink)
        sink.toNAT.removeAll()
        return path
    }

    func fromNAT(_ path: FramePath, _ frame: [UInt8]) {
        frame.withUnsafeBytes { path.fromNAT($0, now: now, sink: sink) }
    }

    func fromGuest(_ path: FramePath, _ frame: [UInt8], port: PortState? = nil) {
        frame.withUnsafeBytes { path.fromGuest($0, from: port ?? guest, now: now, sink: sink) }
    }

    static func payload(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) } }

    /// The TCP payload of a frame (IPv4 or IPv6, lengths from the IP header).
    static func tcpPayload(_ frame: [UInt8]) -> [UInt8] {
        let t = TCPFrame.tcpOffset(frame)
        let end = frame[12] == 0x86 ? 54 + Int(read16(frame, 18)) : 14 + Int(read16(frame, 16))
        return Array(frame[(t + Int(frame[t + 12] >> 4) * 4)..<end])
    }

    @Test("libslirp's 16 KiB segment reaches a 1500-MTU guest as MSS-sized segments, in order, checksums right",
          arguments: [false, true])
    func segmentsTowardGuest(v6: Bool) {
        let path = path()
        var big = TCPFrame.toGuest(v6: v6)
        big.seq = 1000
        big.flags = TCPFrame.ackFlag | TCPFrame.psh
        big.payload = Self.payload(16384)
        fromNAT(path, big.bytes)
        let got = sink.delivered(to: guest.id)
        #expect(got.count == (16384 + (v6 ? 1439 : 1459)) / (v6 ? 1440 : 1460))
        #expect(got.allSatisfy { $0.count <= 1514 && TCPFrame.checksumsVerify($0) })
        #expect(got.flatMap(Self.tcpPayload) == big.payload)
        var seq: UInt32 = 1000
        for piece in got {
            #expect(TCPFrame.seq(piece) == seq)
            seq &+= UInt32(Self.tcpPayload(piece).count)
        }
        #expect(path.segmentedFrames == 1)
    }

    @Test("a port whose writer segments (a tap with TSO) gets the large segment whole")
    func takesLargeSegments() {
        let path = path()
        guest.takesLargeSegments = true
        var big = TCPFrame.toGuest()
        big.payload = Self.payload(16384)
        fromNAT(path, big.bytes)
        // Held for the turn's end, in case libslirp's next segment continues it.
        #expect(sink.delivered(to: guest.id).count == 0)
        path.injectPending(now: now, sink)
        #expect(sink.delivered(to: guest.id).map(\.count) == [big.bytes.count])
    }

    /// libslirp's in-order data segments of one flow toward the guest.
    static func natSegments(v6: Bool = false, sizes: [Int], seq: UInt32 = 5000, lastPSH: Bool = false) -> [TCPFrame] {
        var out: [TCPFrame] = []
        var next = seq
        for (i, size) in sizes.enumerated() {
            var f = TCPFrame.toGuest(v6: v6)
            f.seq = next
            f.flags = TCPFrame.ackFlag | (lastPSH && i == sizes.count - 1 ? TCPFrame.psh : 0)
            f.payload = Self.payload(size).map { $0 &+ UInt8(truncatingIfNeeded: i) }
            out.append(f)
            next &+= UInt32(size)
        }
        return out
    }

    @Test("libslirp's segments toward a large-segment port are merged within the turn; a pure ACK between sends the held one first",
          arguments: [false, true])
    func mergesTowardLargeSegmentPort(v6: Bool) throws {
        let path = path()
        guest.takesLargeSegments = true
        let segments = Self.natSegments(v6: v6, sizes: [16363, 16363, 16363, 16363, 16363, 1000])
        for f in segments.prefix(4) { fromNAT(path, f.bytes) }
        #expect(sink.delivered(to: guest.id).count == 0)
        fromNAT(path, segments[4].bytes)
        #expect(sink.delivered(to: guest.id).count == 1, "the fifth would pass 64 KiB: the four go")
        var ack = TCPFrame.toGuest(v6: v6)
        ack.seq = segments[5].seq
        fromNAT(path, ack.bytes)
        fromNAT(path, segments[5].bytes)
        path.injectPending(now: now, sink)
        let got = sink.delivered(to: guest.id)
        // Four filled one frame; then the fifth alone, the ACK, the last.
        #expect(got.map { Self.tcpPayload($0).count } == [4 * 16363, 16363, 0, 1000])
        #expect(got.allSatisfy { TCPFrame.checksumsVerify($0) })
        #expect(got.flatMap(Self.tcpPayload) == segments.flatMap(\.payload))
        #expect(TCPFrame.seq(got[0]) == segments[0].seq && TCPFrame.seq(got[1]) == segments[4].seq)
        #expect(path.mergedTowardGuests == 3)
    }

    @Test("a jumbo guest's 32 KiB segments toward a large-segment port go at once: two never share a frame")
    func jumboSegmentsGoAtOnce() {
        let path = path()
        guest.takesLargeSegments = true
        guest.mtu = 65520
        for f in Self.natSegments(sizes: [32768, 32768]) { fromNAT(path, f.bytes) }
        #expect(sink.delivered(to: guest.id).map { Self.tcpPayload($0).count } == [32768, 32768])
        #expect(path.mergedTowardGuests == 0)
    }

    @Test("a tap's GSO segment goes to libslirp whole when its MRU takes it, else cut to the coalescer's limit")
    func gsoTowardNAT() throws {
        let path = path()
        let tap = PortState(id: PortID(3), closesOnDuplicateMAC: false, learnsMTU: false)
        path.addPort(tap)
        for size in [60000, 65480] {
            var gso = TCPFrame(source: [10, 0, 2, 16], destination: TCPFrame.gateway4, sourcePort: 1, destinationPort: 80)
            gso.flags = TCPFrame.ackFlag | TCPFrame.psh
            gso.payload = Self.payload(size)
            var bytes = gso.bytes
            bytes[11] = 0x99   // its own MAC
            sink.toNAT.removeAll()
            bytes.withUnsafeBytes { path.fromGuest($0, from: tap, now: now, sink: sink) }
            path.injectPending(now: now, sink)
            let pieces = sink.toNAT.filter { $0[29] == 16 }
            #expect(pieces.map { Self.tcpPayload($0).count } == (size == 60000 ? [60000] : [tap.coalescer.maxPayload, 65480 - tap.coalescer.maxPayload]))
            #expect(pieces.allSatisfy { TCPFrame.checksumsVerify($0) && $0.count - 14 <= MSSClamp.natMTU })
            #expect(pieces.flatMap(Self.tcpPayload) == gso.payload)
        }
    }

    @Test("toward a port without offloads nothing is held or merged, at MTU 1500 or 65520", arguments: [1500, 65520])
    func noMergeWithoutOffloads(mtu: Int) {
        let path = path()
        guest.mtu = mtu
        for f in Self.natSegments(sizes: [700, 700]) { fromNAT(path, f.bytes) }
        #expect(sink.delivered(to: guest.id).map { Self.tcpPayload($0).count } == [700, 700])
        #expect(path.mergedTowardGuests == 0)
    }

    @Test("a UDP datagram larger than the guest's MTU arrives as fragments; with DF it is dropped and counted")
    func fragmentsTowardGuest() {
        let path = path()
        let datagram = Self.udp4(payload: 8000, dontFragment: false)
        fromNAT(path, datagram)
        let pieces = sink.delivered(to: guest.id)
        #expect(pieces.count == 6)
        #expect(pieces.allSatisfy { $0.count <= 1514 })
        #expect(path.fragmentedFrames == 1)
        var reassembly = IPv4Reassembly()
        var whole: [UInt8]?
        for piece in pieces {
            if case .complete(let d) = piece.withUnsafeBytes({ reassembly.input($0, now: now) }) { whole = d }
        }
        #expect(whole.map { Array($0[14...]) } == Array(datagram[14...]))
        sink.delivered.removeAll()
        fromNAT(path, Self.udp4(payload: 8000, dontFragment: true))
        #expect(sink.delivered(to: guest.id).isEmpty)
        #expect(path.oversizedDropped == 1)
    }

    @Test("a guest's IPv4 packet with DF too large for another guest's MTU is dropped, and its sender told the MTU")
    func fragmentationNeeded() throws {
        let path = path()
        other.mtu = 9000
        var datagram = Self.udp4(payload: 8000, dontFragment: true, fromGuest: true)
        datagram.replaceSubrange(0..<6, with: MACAddress(raw: 0x5254_0012_3456).bytes)   // to the guest's MAC
        datagram.replaceSubrange(6..<12, with: MACAddress(raw: 0x5254_0000_0B0B).bytes)
        datagram.replaceSubrange(26..<34, with: [10, 0, 2, 16] + TCPFrame.guest4)
        var ip = Array(datagram[14..<34])
        ip[10] = 0; ip[11] = 0
        IPChecksum.store(in: &ip, at: 10)
        datagram.replaceSubrange(14..<34, with: ip)
        fromGuest(path, datagram, port: other)
        #expect(sink.delivered(to: guest.id).isEmpty)
        let reply = try #require(sink.sent.first { $0.0 == other.id }?.1)
        #expect(Array(reply[34..<36]) == [3, 4])
        #expect(read16(reply, 40) == 1500)
        #expect(Array(reply[26..<34]) == TCPFrame.guest4 + [10, 0, 2, 16])
        #expect(IPChecksum.sum(Array(reply[34...])) == 0xFFFF)
    }

    @Test("an IPv6 datagram larger than the guest's MTU gets a Fragment header")
    func fragmentsIPv6TowardGuest() {
        let path = path()
        fromNAT(path, Self.udp6(payload: 3000))
        let pieces = sink.delivered(to: guest.id)
        #expect(pieces.count == 3)
        #expect(pieces.allSatisfy { $0.count <= 1514 && $0[20] == 44 })
    }

    @Test("a guest that sends a 9000-byte packet takes them: its MTU is learnt, never lowered; a tap's is not")
    func learnsMTU() {
        let path = path()
        var big = TCPFrame.fromGuest()
        big.payload = Self.payload(8960)
        fromGuest(path, big.bytes)
        #expect(guest.mtu == 9000)
        var small = TCPFrame.fromGuest()
        small.payload = Self.payload(100)
        fromGuest(path, small.bytes)
        #expect(guest.mtu == 9000)
        let tap = PortState(id: PortID(3), closesOnDuplicateMAC: false, learnsMTU: false)
        path.addPort(tap)
        var gso = TCPFrame(source: [10, 0, 2, 16], destination: TCPFrame.gateway4, sourcePort: 1, destinationPort: 80)
        gso.payload = Self.payload(30000)
        var bytes = gso.bytes
        bytes[11] = 0x99   // its own MAC
        bytes.withUnsafeBytes { path.fromGuest($0, from: tap, now: now, sink: sink) }
        #expect(tap.mtu == 1500)
        // Its 30,000-byte GSO segment is checked, cut and merged again for libslirp: one valid segment.
        path.injectPending(now: now, sink)
        let pieces = sink.toNAT.filter { $0[29] == 16 }
        #expect(pieces.count == 1)
        #expect(pieces.allSatisfy { TCPFrame.checksumsVerify($0) })
        #expect(pieces.flatMap(Self.tcpPayload) == gso.payload)
    }

    @Test("a guest whose SYN offers MSS 8960 takes 9000-byte packets: libslirp's segments are cut to that")
    func learnsMTUFromSYN() {
        let path = path()
        var syn = TCPFrame.fromGuest()
        syn.flags = TCPFrame.syn
        syn.options = [2, 4, 0x23, 0x00]   // 8960
        fromGuest(path, syn.bytes)
        #expect(guest.mtu == 9000)
        var big = TCPFrame.toGuest()
        big.payload = Self.payload(16384)
        fromNAT(path, big.bytes)
        #expect(sink.delivered(to: guest.id).map { Self.tcpPayload($0).count } == [8960, 16384 - 8960])
    }

    @Test("the handshake's MSS: a large-segment port's raised toward libslirp, a plain port's kept; libslirp's lowered toward the guest",
          arguments: [true, false])
    func clampsHandshake(takesLargeSegments: Bool) throws {
        let path = path()
        guest.takesLargeSegments = takesLargeSegments
        var syn = TCPFrame.fromGuest()
        syn.flags = TCPFrame.syn
        syn.options = [2, 4, 0x05, 0xB4]   // 1460
        fromGuest(path, syn.bytes)
        let toNAT = try #require(sink.toNAT.last)
        let raised: [UInt8] = [2, 4, UInt8(MSSClamp.natMSS >> 8), UInt8(MSSClamp.natMSS & 0xFF)]
        #expect(Array(TCPFrame.options(toNAT).prefix(4)) == (takesLargeSegments ? raised : [2, 4, 0x05, 0xB4]))
        var synACK = TCPFrame.toGuest()
        synACK.flags = TCPFrame.syn | TCPFrame.ackFlag
        synACK.options = [2, 4, 0xFF, 0xC8]   // 65480
        fromNAT(path, synACK.bytes)
        let toGuest = try #require(sink.delivered(to: guest.id).last)
        #expect(TCPFrame.options(toGuest).contains([2, 4, 0x05, 0xB4]))
        #expect(TCPFrame.checksumsVerify(toGuest))
    }

    @Test("a guest's in-order segments reach libslirp merged at the turn's end; a UDP frame between sends the held one first")
    func coalescesTowardNAT() throws {
        let path = path()
        var seq: UInt32 = 5000
        var sent: [UInt8] = []
        for _ in 0..<4 {
            var segment = TCPFrame.fromGuest()
            segment.seq = seq
            segment.payload = Self.payload(1460)
            sent += segment.payload
            seq &+= 1460
            fromGuest(path, segment.bytes)
        }
        #expect(sink.toNAT.isEmpty)
        path.injectPending(now: now, sink)
        #expect(sink.toNAT.count == 1)
        let merged = try #require(sink.toNAT.first)
        #expect(Self.tcpPayload(merged) == sent)
        #expect(TCPFrame.checksumsVerify(merged))
        #expect(path.coalescedSegments == 3)

        sink.toNAT.removeAll()
        var next = TCPFrame.fromGuest()
        next.seq = seq
        next.payload = Self.payload(1000)
        fromGuest(path, next.bytes)
        fromGuest(path, Self.udp4(payload: 10, dontFragment: false, fromGuest: true))
        #expect(sink.toNAT.count == 2)
        #expect(sink.toNAT.first.map { TCPFrame.seq($0) } == seq)
        #expect(sink.toNAT.last?[23] == 17)
    }

    // MARK: Frames

    static func udp4(payload count: Int, dontFragment: Bool, fromGuest: Bool = false) -> [UInt8] {
        let (source, destination): ([UInt8], [UInt8]) = fromGuest ? (TCPFrame.guest4, TCPFrame.gateway4) : (TCPFrame.gateway4, TCPFrame.guest4)
        let length = UInt16(8 + count)
        var ip: [UInt8] = [0x45, 0] + bigEndianBytes(20 + length) + [0, 7, dontFragment ? 0x40 : 0, 0, 64, 17, 0, 0]
            + source + destination
        IPChecksum.store(in: &ip, at: 10)
        var udp = bigEndianBytes(UInt16(5353)) + bigEndianBytes(UInt16(9)) + bigEndianBytes(length) + [0, 0] + payload(count)
        IPChecksum.store(in: &udp, at: 6, pseudoHeader: source + destination + [0, 17] + bigEndianBytes(length))
        let macs = fromGuest ? MACAddress(raw: 0x5255_0A00_0202).bytes + MACAddress(raw: 0x5254_0012_3456).bytes
            : MACAddress(raw: 0x5254_0012_3456).bytes + MACAddress(raw: 0x5255_0A00_0202).bytes
        return macs + [0x08, 0x00] + ip + udp
    }

    static func udp6(payload count: Int) -> [UInt8] {
        let length = UInt16(8 + count)
        var udp = bigEndianBytes(UInt16(5353)) + bigEndianBytes(UInt16(9)) + bigEndianBytes(length) + [0, 0] + payload(count)
        IPChecksum.store(in: &udp, at: 6, pseudoHeader: TCPFrame.gateway6 + TCPFrame.guest6 + [0, 0] + bigEndianBytes(length) + [0, 0, 0, 17])
        return MACAddress(raw: 0x5254_0012_3456).bytes + MACAddress(raw: 0x5255_0A00_0202).bytes + [0x86, 0xDD, 0x60, 0, 0, 0]
            + bigEndianBytes(length) + [17, 64] + TCPFrame.gateway6 + TCPFrame.guest6 + udp
    }

    @Test("libslirp's SYN-ACK for a guest's SYN makes the frame path give libslirp that SYN once more, as it was given",
          arguments: [false, true])
    func replaysTheGuestSYN(v6: Bool) throws {
        let path = path()
        var syn = TCPFrame.fromGuest(v6: v6)
        syn.flags = TCPFrame.syn
        syn.options = v6 ? [2, 4, 0x05, 0xA0] : [2, 4, 0x05, 0xB4]
        fromGuest(path, syn.bytes)
        let given = try #require(sink.toNAT.last)
        sink.toNAT.removeAll()
        var synACK = TCPFrame.toGuest(v6: v6)
        synACK.flags = TCPFrame.syn | TCPFrame.ackFlag
        synACK.options = [2, 4, 0xFF, 0xC8]
        fromNAT(path, synACK.bytes)
        #expect(sink.toNAT.isEmpty, "never from inside libslirp's output")
        path.injectPending(now: now, sink)
        #expect(sink.toNAT == [given])
        #expect(path.synsReplayed == 1)
        // Once only: a resent SYN-ACK finds nothing to replay.
        sink.toNAT.removeAll()
        fromNAT(path, synACK.bytes)
        path.injectPending(now: now, sink)
        #expect(sink.toNAT.isEmpty)
    }

    @Test("a SYN-ACK for another flow, or a guest SYN without MSS, replays nothing")
    func replaysOnlyItsOwnFlow() {
        let path = path()
        var syn = TCPFrame.fromGuest()
        syn.flags = TCPFrame.syn
        syn.options = [1, 1, 1, 1]
        fromGuest(path, syn.bytes)
        syn.options = [2, 4, 0x05, 0xB4]
        syn.sourcePort = 40001
        fromGuest(path, syn.bytes)
        sink.toNAT.removeAll()
        var synACK = TCPFrame.toGuest()
        synACK.flags = TCPFrame.syn | TCPFrame.ackFlag
        fromNAT(path, synACK.bytes)      // answers the SYN without MSS
        path.injectPending(now: now, sink)
        #expect(sink.toNAT.isEmpty)
        #expect(path.synsReplayed == 0)
    }
}
