// fuzz-nat-stream: the libFuzzer target for issue 22's invariant: the bytes libslirp
// writes for a guest's connection are exactly the bytes that guest sent, in order.
//
// Theory of operation. One network (FrameFuzzNetwork without restrict=on, so libslirp
// opens sockets; the only address any frame names is the gateway 10.0.2.2, which
// libslirp maps to the host's 127.0.0.1) and one listener on 127.0.0.1 serve the whole
// process. Each input starts afresh: the harness's stand-in guest ARPs for the gateway,
// does a handshake to 10.0.2.2:<listener> through the real frame path (framer, switch,
// NATIngressCheck, libslirp), and the listener accepts with SO_OOBINLINE. The input then
// picks a series of segments, each a record:
//   flags (any of the 8), urgent pointer (2 bytes), a byte whose high nibble overrides
//   the data offset (0: the true one) and whose low nibble is the TCP option words (0-10,
//   their bytes follow), the payload length and payload, then a byte of length tricks:
//   bit 4 adds a signed delta (low nibble) to the IP total length, bit 5 overrides the IHL
//   (its option bytes, from the input, go into the header), bit 6 appends trailing bytes,
//   bit 7 spoils the TCP checksum.
// The addresses, ports, sequence and acknowledgment numbers are the harness's: each
// segment carries the next sequence number, which advances by the payload a standard
// reading of the frame finds (IP total length, IHL, data offset), plus one for a FIN.
// After each segment libslirp's sockets are polled and the listener is read. The target
// traps when what the listener has read is not a prefix of the concatenated payloads: a
// segment libslirp drops only leaves a gap it never fills, but a byte the guest did not
// send at that place (libslirp's heap, say) is caught at once. And when every segment is
// honest (ACK or PSH|ACK, no urgent pointer, options or tricks), the listener must read
// all of it, so a check that dropped honest traffic would be caught too.

import FrameSwitch
import SlirpDaemon

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-nat-stream invariant broken: \(what())") }
}

// nonisolated(unsafe): libFuzzer runs inputs one after another on one thread, the only
// thread that touches the network, as libslirp requires.
nonisolated(unsafe) let network: FrameFuzzNetwork = {
    do {
        return try FrameFuzzNetwork(options: "dns-upstream=127.0.0.1:9")
    } catch {
        fatalError("fuzz-nat-stream cannot build its network: \(error)")
    }
}()

nonisolated(unsafe) let listener: FuzzLoopbackListener = {
    do {
        return try FuzzLoopbackListener()
    } catch {
        fatalError("fuzz-nat-stream cannot listen on 127.0.0.1: \(error)")
    }
}()

/// A new source port for each input, so no input meets the last one's connection.
nonisolated(unsafe) var nextSourcePort: UInt16 = 20000

let guestMAC = MACAddress(raw: 0x5254_0000_0042)
let gatewayMAC = MACAddress(raw: 0x5255_0A00_0202)
let guestIP: [UInt8] = [10, 0, 2, 42]
let gatewayIP: [UInt8] = [10, 0, 2, 2]

func be16(_ v: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)] }
func be32(_ v: UInt32) -> [UInt8] { be16(Int(v >> 16)) + be16(Int(v & 0xFFFF)) }

/// Reads records from the fuzz input; zeros once it runs out.
struct Reader {
    let bytes: [UInt8]
    var at = 0
    var isEmpty: Bool { at >= bytes.count }
    mutating func byte() -> UInt8 {
        defer { at += 1 }
        return at < bytes.count ? bytes[at] : 0
    }
    mutating func take(_ n: Int) -> [UInt8] { (0..<n).map { _ in byte() } }
}

/// One segment to the listener, as the fuzz input shaped it, and the payload a standard
/// reading of it finds (nil: none, the frame is inconsistent).
/// `plain`: an honest segment (ACK or PSH|ACK, no urgent pointer, no options or tricks).
func segment(sport: UInt16, dport: UInt16, seq: UInt32, ack: UInt32, input: inout Reader)
    -> (frame: [UInt8], payload: [UInt8]?, fin: Bool, plain: Bool) {
    let flags = input.byte()
    let urgent = Int(input.byte()) << 8 | Int(input.byte())
    let shape = input.byte()
    let optionWords = min(Int(shape & 0x0F), 10)
    let options = input.take(optionWords * 4)
    let payload = input.take(Int(input.byte()))
    let tricks = input.byte()
    let dataOffset = shape >> 4 == 0 ? 5 + optionWords : Int(shape >> 4)
    let ipOptionWords = tricks & 0x20 != 0 ? Int(input.byte() & 0x0F) : 0
    let ipOptions = input.take(ipOptionWords * 4)
    let trailing = tricks & 0x40 != 0 ? input.take(Int(input.byte() & 0x3F)) : []
    let plain = (flags == 0x10 || flags == 0x18) && urgent == 0 && shape == 0 && tricks == 0

    var tcp = be16(Int(sport)) + be16(Int(dport)) + be32(seq) + be32(ack)
        + [UInt8(dataOffset << 4 & 0xF0), flags] + be16(65535) + [0, 0] + be16(urgent) + options + payload
    IPChecksum.store(in: &tcp, at: 16, pseudoHeader: guestIP + gatewayIP + [0, 6] + be16(tcp.count))
    if tricks & 0x80 != 0 { tcp[17] ^= 0x5A }
    // IHL: 5 plus the option words carried, or (bit 5) that nibble as it is, which may lie.
    let ihl = tricks & 0x20 != 0 ? Int(tricks & 0x0F) : 5
    let headerBytes = 20 + ipOptions.count
    var total = headerBytes + tcp.count
    if tricks & 0x10 != 0 { total += Int(Int8(bitPattern: tricks << 4) >> 4) }
    total = max(0, min(total, 65535))
    var ip: [UInt8] = [0x40 | UInt8(ihl & 0x0F), 0] + be16(total) + [0, 0, 0x40, 0, 64, 6, 0, 0] + guestIP + gatewayIP
        + ipOptions
    IPChecksum.store(in: &ip, at: 10)
    let frame = gatewayMAC.bytes + guestMAC.bytes + [0x08, 0x00] + ip + tcp + trailing

    // The standard reading: IHL and total length inside the frame, then the data offset.
    let ipBytes = frame.count - 14
    let l4 = 14 + ihl * 4
    guard ihl >= 5, total >= ihl * 4, total <= ipBytes else { return (frame, nil, false, plain) }
    let segmentLength = total - ihl * 4
    guard segmentLength >= 20 else { return (frame, nil, false, plain) }
    let offset = Int(frame[l4 + 12] >> 4) * 4
    guard offset >= 20, offset <= segmentLength else { return (frame, nil, false, plain) }
    return (frame, Array(frame[(l4 + offset)..<(14 + total)]), frame[l4 + 13] & 0x01 != 0, plain)
}

/// The TCP segments the network wrote to the guest since the last look.
func segmentsToGuest() -> [[UInt8]] {
    let stream = network.received(by: 0).bytes
    var frames: [[UInt8]] = []
    var offset = 0
    while offset + 4 <= stream.count {
        let length = stream[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
        guard offset + 4 + length <= stream.count else { break }
        let frame = Array(stream[(offset + 4)..<(offset + 4 + length)])
        if frame.count >= 54, frame[12] == 0x08, frame[13] == 0, frame[23] == 6 { frames.append(frame) }
        offset += 4 + length
    }
    return frames
}

func send(_ frame: [UInt8]) {
    do {
        try network.send(StreamFraming.encode(frame), from: 0)
    } catch {
        fatalError("fuzz-nat-stream cannot write to its guest: \(error)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var input = Reader(bytes: Array(UnsafeBufferPointer(start: data, count: size)))
    listener.dropConnection()
    network.reset()
    nextSourcePort = nextSourcePort >= 60000 ? 20000 : nextSourcePort + 1
    let sport = nextSourcePort
    let dport = listener.port

    // ARP for the gateway (libslirp learns the guest), then the handshake.
    send(MACAddress.broadcast.bytes + guestMAC.bytes + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]
         + guestMAC.bytes + guestIP + MACAddress.zero.bytes + gatewayIP)
    var tcpSyn = be16(Int(sport)) + be16(Int(dport)) + be32(1000) + be32(0) + [0x50, 0x02] + be16(65535) + [0, 0, 0, 0]
    IPChecksum.store(in: &tcpSyn, at: 16, pseudoHeader: guestIP + gatewayIP + [0, 6] + be16(tcpSyn.count))
    var ipSyn: [UInt8] = [0x45, 0] + be16(20 + tcpSyn.count) + [0, 0, 0x40, 0, 64, 6, 0, 0] + guestIP + gatewayIP
    IPChecksum.store(in: &ipSyn, at: 10)
    send(gatewayMAC.bytes + guestMAC.bytes + [0x08, 0x00] + ipSyn + tcpSyn)
    var serverSeq: UInt32?
    for _ in 0..<200 where serverSeq == nil {
        network.pollNAT()
        for frame in segmentsToGuest() where frame[34] == UInt8(dport >> 8) && frame[35] == UInt8(dport & 0xFF)
            && frame[47] & 0x12 == 0x12 {
            serverSeq = frame[38..<42].reduce(0) { $0 << 8 | UInt32($1) }
        }
    }
    guard let serverSeq else { fatalError("fuzz-nat-stream: no SYN-ACK from libslirp for port \(sport)") }
    let ack = serverSeq &+ 1
    var seq: UInt32 = 1001
    let ackSegment: (frame: [UInt8], payload: [UInt8]?, fin: Bool, plain: Bool) = {
        var empty = Reader(bytes: [0x10, 0, 0, 0, 0, 0])
        return segment(sport: sport, dport: dport, seq: seq, ack: ack, input: &empty)
    }()
    send(ackSegment.frame)
    var accepted = false
    for _ in 0..<200 where !accepted {
        network.pollNAT()
        accepted = listener.accept()
    }
    check(accepted, "the listener saw no connection for port \(sport)")

    var sent: [UInt8] = []
    var read: [UInt8] = []
    var records = 0
    var allPlain = true
    while !input.isEmpty, records < 64 {
        records += 1
        let (frame, payload, fin, plain) = segment(sport: sport, dport: dport, seq: seq, ack: ack, input: &input)
        allPlain = allPlain && plain
        send(frame)
        if let payload {
            sent += payload
            seq = seq &+ UInt32(payload.count) &+ (fin ? 1 : 0)
        }
        network.pollNAT()
        guard let bytes = listener.read() else { break }
        read += bytes
        check(read.count <= sent.count && read[...] == sent[..<read.count],
              "the listener read \(read.count) bytes that are not the first of the \(sent.count) the guest sent")
    }
    for _ in 0..<3 {
        network.pollNAT()
        guard let bytes = listener.read() else { break }
        read += bytes
    }
    check(read.count <= sent.count && read[...] == sent[..<read.count],
          "the listener read \(read.count) bytes that are not the first of the \(sent.count) the guest sent")
    // Honest segments all arrive: the checks before libslirp must not drop them.
    check(!allPlain || read == sent, "the listener read \(read.count) of the \(sent.count) bytes of honest segments")
    return 0
}
