// fuzz-tcp-shim: the libFuzzer target for TCPWindowShim, which rewrites every TCP frame
// between guests and libslirp and holds guest data for libslirp.
//
// Theory of operation. The input is a program: each step's first byte picks an action
// (low 4 bits) and a flow (bit 4: port 40000 or 40001; bit 5: IPv4 or IPv6), the next
// bytes are its arguments. Actions build mostly valid TCP frames (correct checksums) from
// the guest or from "libslirp": SYNs with and without Window Scale, SYN-ACKs, data at an
// offset from the flow's initial sequence number (chosen near the 32-bit wrap), ACKs with
// a window, FIN, RST; one action sends the input's raw bytes instead; others drain
// releases, close the port or advance time to expire flows. After every step the target
// traps when a promise breaks:
// - a rewritten frame, from a valid one, has valid IP and TCP checksums and lengths;
// - a flow's recorded offered edge never moves back, and what the guest is shown (ack +
//   field << 7) never moves back by 128 bytes or more;
// - a flow holds at most `flowCap` bytes, the shim at most `networkCap`;
// - releases come out in sequence order per flow within one drain, none overlapping the
//   one before, each fits the flow's libslirp edge, and has valid checksums.
// TCPEarlyACK sits outside the shim as in FramePath (guest -> early -> shim, shim ->
// early -> guest); action 15 adds libslirp's data and the guest's ACKs of it, the drain
// feeds its early ACKs to the shim, and time steps fire its retransmit timers. Its
// promises: every frame it makes or rewrites has valid checksums; on an established flow
// the ACK libslirp is given never goes backwards; what it keeps stays within its caps
// (plus libslirp's 64 KiB) and adds up.

import DataPlane
import FrameSwitch

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-tcp-shim invariant broken: \(what())") }
}

let guest4: [UInt8] = [10, 0, 2, 15], gateway4: [UInt8] = [10, 0, 2, 2]
let guest6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x0F]
let gateway6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x02]
let flowCap = 20_000, networkCap = 30_000
let earlyFlowCap = 70_000, earlyNetworkCap = 100_000

/// The ACK an established flow's frame gives libslirp never goes backwards.
func checkToSlirp(_ f: [UInt8], _ id: FlowID, _ last: inout [FlowID: UInt32]) {
    let t = f[12] == 0x86 ? 54 : 34
    guard f.count >= t + 20, f[t + 13] & 0x16 == 0x10 else { return }
    let ack = read32(f, t + 8)
    if let old = last[id] { check(Int32(bitPattern: ack &- old) >= 0, "the ACK libslirp is given went backwards") }
    last[id] = ack
}

struct Reader {
    var bytes: [UInt8]
    var at = 0
    var done: Bool { at >= bytes.count }
    mutating func u8() -> UInt8 {
        defer { at += 1 }
        return at < bytes.count ? bytes[at] : 0
    }
    mutating func u16() -> UInt16 { UInt16(u8()) << 8 | UInt16(u8()) }
}

func frame(v6: Bool, fromGuest: Bool, guestPort: UInt16, seq: UInt32, ack: UInt32, flags: UInt8,
           window: UInt16, options: [UInt8], payload: Int) -> [UInt8] {
    let (g, r) = v6 ? (guest6, gateway6) : (guest4, gateway4)
    let (src, dst) = fromGuest ? (g, r) : (r, g)
    let (sp, dp) = fromGuest ? (guestPort, UInt16(80)) : (UInt16(80), guestPort)
    var seg = bigEndianBytes(sp) + bigEndianBytes(dp) + bigEndianBytes(seq) + bigEndianBytes(ack)
        + [UInt8((20 + options.count) / 4) << 4, flags] + bigEndianBytes(window) + [0, 0, 0, 0] + options
        + [UInt8](repeating: 0xA5, count: payload)
    let len = UInt16(seg.count)
    let pseudo = v6 ? src + dst + [0, 0] + bigEndianBytes(len) + [0, 0, 0, 6] : src + dst + [0, 6] + bigEndianBytes(len)
    IPChecksum.store(in: &seg, at: 16, pseudoHeader: pseudo)
    let eth: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x55, 10, 0, 2, 2]
    if v6 { return eth + [0x86, 0xDD, 0x60, 0, 0, 0] + bigEndianBytes(len) + [6, 64] + src + dst + seg }
    var ip: [UInt8] = [0x45, 0] + bigEndianBytes(UInt16(20 + seg.count)) + [0, 1, 0x40, 0, 64, 6, 0, 0] + src + dst
    IPChecksum.store(in: &ip, at: 10)
    return eth + [0x08, 0x00] + ip + seg
}

func checksumsVerify(_ f: [UInt8]) -> Bool {
    guard f.count >= 54 else { return false }
    if f[12] == 0x86 {
        let len = Int(read16(f, 18))
        guard 54 + len <= f.count else { return false }
        let pseudo = Array(f[22..<54]) + [0, 0] + bigEndianBytes(UInt16(len)) + [0, 0, 0, 6]
        return IPChecksum.sum(Array(f[54..<(54 + len)]), initial: IPChecksum.sum(pseudo)) == 0xFFFF
    }
    let ihl = Int(f[14] & 0x0F) * 4, total = Int(read16(f, 16))
    guard ihl >= 20, total >= ihl, 14 + total <= f.count, IPChecksum.sum(Array(f[14..<(14 + ihl)])) == 0xFFFF else { return false }
    let pseudo = Array(f[26..<34]) + [0, 6] + bigEndianBytes(UInt16(total - ihl))
    return IPChecksum.sum(Array(f[(14 + ihl)..<(14 + total)]), initial: IPChecksum.sum(pseudo)) == 0xFFFF
}

struct FlowID: Hashable { var v6: Bool; var port: UInt16 }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var r = Reader(bytes: Array(UnsafeBufferPointer(start: data, count: size)))
    var shim = TCPWindowShim(flowCap: flowCap, networkCap: networkCap, maxFlows: 3)
    var early = TCPEarlyACK(flowCap: earlyFlowCap, networkCap: earlyNetworkCap, maxFlows: 3)
    var toSlirp: [FlowID: UInt32] = [:]
    let guestISN = 0xFFFF_0000 &+ UInt32(r.u16())
    let slirpISN: UInt32 = 0x7FFF_FF00
    var now: Int64 = 0
    var edges: [FlowID: UInt32] = [:]
    var views: [FlowID: UInt32] = [:]
    var steps = 0
    while !r.done, steps < 400 {
        steps += 1
        let op = r.u8()
        let id = FlowID(v6: op & 0x20 != 0, port: op & 0x10 != 0 ? 40001 : 40000)
        func make(_ fromGuest: Bool, seq: UInt32, ack: UInt32, flags: UInt8, window: UInt16,
                  options: [UInt8] = [], payload: Int = 0) -> [UInt8] {
            frame(v6: id.v6, fromGuest: fromGuest, guestPort: id.port, seq: seq, ack: ack, flags: flags,
                  window: window, options: options, payload: payload)
        }
        var sent: (bytes: [UInt8], fromGuest: Bool, valid: Bool)?
        if [0, 9].contains(op & 0x0F) {  // a SYN may start the flow afresh
            edges[id] = nil
            views[id] = nil
            toSlirp[id] = nil
        }
        switch op & 0x0F {
        case 0:  // guest SYN, with Window Scale when the shift byte is below 16
            let shift = r.u8()
            sent = (make(true, seq: guestISN, ack: 0, flags: 0x02, window: 64240,
                         options: [2, 4, 5, 0xB4] + (shift < 16 ? [1, 3, 3, shift] : [])), true, true)
        case 1:  // libslirp's SYN-ACK
            sent = (make(false, seq: slirpISN, ack: guestISN &+ 1, flags: 0x12, window: r.u16(), options: [2, 4, 5, 0xB4]), false, true)
        case 2, 3, 4:  // guest data (FIN with bit 0 of the length byte's high nibble)
            let offset = UInt32(r.u16()) * 16
            let lengthByte = r.u8()
            let flags: UInt8 = 0x18 | (lengthByte & 0x80 != 0 ? 0x01 : 0)
            sent = (make(true, seq: guestISN &+ 1 &+ offset, ack: slirpISN &+ 1, flags: flags, window: r.u16(),
                         payload: Int(lengthByte & 0x7F) * 12), true, true)
        case 5, 6:  // libslirp's ACK with a window
            let acked = UInt32(r.u16()) * 16
            sent = (make(false, seq: slirpISN &+ 1, ack: guestISN &+ 1 &+ acked, flags: 0x10, window: r.u16()), false, true)
        case 7:  // guest pure ACK
            sent = (make(true, seq: guestISN &+ 1, ack: slirpISN &+ 1, flags: 0x10, window: r.u16()), true, true)
        case 8:  // RST, either side
            let side = r.u8() & 1 == 0
            sent = (make(side, seq: side ? guestISN &+ 1 : slirpISN &+ 1, ack: 0, flags: 0x04, window: 0), side, true)
        case 9:  // libslirp opens (host forward)
            sent = (make(false, seq: slirpISN, ack: 0, flags: 0x02, window: 65535, options: [2, 4, 5, 0xB4]), false, true)
        case 10:  // the guest's SYN-ACK, with or without Window Scale
            let shift = r.u8()
            sent = (make(true, seq: guestISN, ack: slirpISN &+ 1, flags: 0x12, window: 64240,
                         options: shift < 16 ? [1, 3, 3, shift] : []), true, true)
        case 11:  // FIN from libslirp
            sent = (make(false, seq: slirpISN &+ 1, ack: guestISN &+ 1 &+ UInt32(r.u16()) * 16, flags: 0x11, window: r.u16()), false, true)
        case 12:  // raw bytes, either side
            let side = r.u8() & 1 == 0
            let n = Int(r.u8())
            let end = min(r.bytes.count, r.at + n)
            sent = (Array(r.bytes[min(r.at, end)..<end]), side, false)
            r.at = end
        case 13:
            let port = PortID(UInt32(r.u8() & 1))
            shim.removePort(port)
            early.removePort(port)
        case 14:
            now += Int64(r.u8()) * 100_000_000
            shim.expire(now: now)
            early.expire(now: now)
            while let t = early.nextTimeout(now: now) {
                switch t {
                case .retransmit(let f, _): check(checksumsVerify(f), "a resend with bad checksums")
                case .reset(let a, let b, _): check(checksumsVerify(a) && checksumsVerify(b), "a reset with bad checksums")
                }
            }
        case 15:  // libslirp's data (bit 0 of the first byte), or the guest's ACK of it
            let which = r.u8()
            let offset = UInt32(r.u16()) * 16
            if which & 1 == 0 {
                sent = (make(false, seq: slirpISN &+ 1 &+ offset, ack: guestISN &+ 1, flags: 0x18, window: 512,
                             payload: Int(r.u8() & 0x7F) * 12), false, true)
            } else {
                sent = (make(true, seq: guestISN &+ 1, ack: slirpISN &+ 1 &+ offset, flags: 0x10, window: r.u16()), true, true)
            }
        default:
            break
        }
        if let (original, fromGuest, valid) = sent {
            var bytes = original
            if fromGuest {
                let before = early.flowState(guest: id.v6 ? guest6 : guest4, guestPort: id.port,
                                             remote: id.v6 ? gateway6 : gateway4, remotePort: 80)?.established == true
                let ev = bytes.withUnsafeBytes { early.fromGuest($0, port: PortID(0), now: now) }
                if ev == .rewritten {
                    bytes = early.guestOutput
                    if valid { check(checksumsVerify(bytes), "a guest frame the early stage rewrote has bad checksums") }
                }
                if valid, before, ev != .absorbed { checkToSlirp(bytes, id, &toSlirp) }
                while let (f, _) = early.takeRetransmit() { check(checksumsVerify(f), "a resend with bad checksums") }
                if ev == .absorbed { bytes = [] }
            }
            let v = bytes.isEmpty ? TCPWindowShim.Verdict.drop : bytes.withUnsafeBytes {
                fromGuest ? shim.fromGuest($0, port: PortID(0), now: now) : shim.fromNAT($0, port: PortID(0), now: now)
            }
            var output: [UInt8]?
            if v == .rewritten { output = fromGuest ? shim.guestOutput : shim.natOutput }
            // libslirp has had it (its answer, if any, comes in a later step): the shim keeps
            // what needs keeping.
            if fromGuest, v == .pass || v == .rewritten { (output ?? bytes).withUnsafeBytes { shim.afterInput($0) } }
            if v == .held {
                // Taken now, as at the end of a loop turn; the drain below takes any others.
                var held: [UInt8] = []
                check(shim.takeHeldACK(into: &held) != nil, "a held ACK was not kept")
                output = held
            }
            if !fromGuest {
                let toEarly = output ?? bytes
                let ev = toEarly.withUnsafeBytes { early.fromNAT($0, port: PortID(0), now: now) }
                if ev == .rewritten, valid { check(checksumsVerify(early.natOutput), "a SYN the early stage rewrote has bad checksums") }
            }
            if let out = output {
                if valid { check(checksumsVerify(out), "rewritten frame with bad checksums") }
                // What the guest is shown: never back by 128 or more.
                if !fromGuest, valid, out[out[12] == 0x86 ? 67 : 47] & 0x12 == 0x10 {
                    let t = out[12] == 0x86 ? 54 : 34
                    let view = read32(out, t + 8) &+ UInt32(read16(out, t + 14)) << 7
                    if let old = views[id], let state = flowState(shim, id), state.scaled {
                        check(Int32(bitPattern: view &- old) > -128, "the guest's view of the edge moved back")
                    }
                    views[id] = view
                }
            }
        }
        // Every release fits libslirp's edge, in order per flow within this drain.
        if op & 0x40 != 0 {
            while let (a, _) = early.nextACK() {
                check(checksumsVerify(a), "an early ACK with bad checksums")
                let t = a[12] == 0x86 ? 54 : 34
                let fid = FlowID(v6: a[12] == 0x86, port: read16(a, t))
                checkToSlirp(a, fid, &toSlirp)
                _ = a.withUnsafeBytes { shim.fromGuest($0, port: PortID(0), now: now) }
            }
            var held: [UInt8] = []
            while shim.takeHeldACK(into: &held) != nil { check(checksumsVerify(held), "held ACK with bad checksums") }
            // Keyed by the whole 4-tuple: raw frames may open flows beside the harness's own.
            var last: [[UInt8]: UInt32] = [:]
            while let f = shim.nextRelease() {
                check(checksumsVerify(f), "release with bad checksums")
                guard let t = tcpOffset(f) else { continue }
                let fid = FlowID(v6: f[12] == 0x86, port: read16(f, t))
                let tuple = Array(f[(f[12] == 0x86 ? 22 : 26)..<t]) + Array(f[t..<(t + 4)])
                let seq = read32(f, t + 4)
                let payload = (f[12] == 0x86 ? Int(read16(f, 18)) + 54 : Int(read16(f, 16)) + 14) - t - Int(f[t + 12] >> 4) * 4
                // Each starts where the one before ended, or later: nothing is handed twice.
                if let prev = last[tuple] { check(Int32(bitPattern: seq &- prev) >= 0, "releases out of order or overlapping") }
                last[tuple] = seq &+ UInt32(payload)
                if tuple == standardTuple(fid), let s = flowState(shim, fid) {
                    check(Int32(bitPattern: seq &+ UInt32(payload) &- s.slirpEdge) <= 0, "release beyond libslirp's edge")
                }
            }
        }
        var total = 0
        for v6 in [false, true] {
            for port: UInt16 in [40000, 40001] {
                let fid = FlowID(v6: v6, port: port)
                guard let s = flowState(shim, fid) else {
                    edges[fid] = nil
                    views[fid] = nil
                    continue
                }
                check(s.queued <= flowCap, "a flow holds more than its cap")
                total += s.queued
                if s.hasEdges {
                    if let old = edges[fid] { check(Int32(bitPattern: s.edge &- old) >= 0, "offered edge moved back") }
                    edges[fid] = s.edge
                }
            }
        }
        check(total == shim.queuedBytes, "queued bytes do not add up")
        var kept = 0
        for v6 in [false, true] {
            for port: UInt16 in [40000, 40001] {
                let fid = FlowID(v6: v6, port: port)
                guard let s = early.flowState(guest: v6 ? guest6 : guest4, guestPort: port, remote: v6 ? gateway6 : gateway4,
                                              remotePort: 80), s.established else {
                    toSlirp[fid] = nil
                    continue
                }
                check(s.held <= earlyFlowCap + 65535, "the early stage keeps more than a flow's cap")
                kept += s.held
            }
        }
        check(kept == early.heldBytes, "the early stage's kept bytes do not add up")
        check(early.heldBytes <= earlyNetworkCap + 65535 * 2, "the early stage keeps more than the network cap")
        check(shim.queuedBytes <= networkCap, "the shim holds more than the network cap")
    }
    return 0
}

/// The TCP header's offset in a frame the shim parsed: IPv4 with its IHL, IPv6 without
/// extension headers (nil with them: the checks that need it skip the frame).
func tcpOffset(_ f: [UInt8]) -> Int? {
    if f[12] == 0x86 { return f[20] == 6 ? 54 : nil }
    return 14 + Int(f[14] & 0x0F) * 4
}

/// A harness flow's addresses and ports, guest first, as a release carries them.
func standardTuple(_ id: FlowID) -> [UInt8] {
    (id.v6 ? guest6 + gateway6 : guest4 + gateway4) + bigEndianBytes(id.port) + bigEndianBytes(UInt16(80))
}

func flowState(_ shim: TCPWindowShim, _ id: FlowID)
    -> (slirpEdge: UInt32, edge: UInt32, queued: Int, committed: Int, scaled: Bool, hasEdges: Bool)? {
    shim.flowState(guest: id.v6 ? guest6 : guest4, guestPort: id.port, remote: id.v6 ? gateway6 : gateway4, remotePort: 80)
}
