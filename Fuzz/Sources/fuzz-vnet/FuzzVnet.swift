// fuzz-vnet: the libFuzzer target for VirtioNetHeader, which reads the virtio-net header
// the kernel puts before every frame of an offloading tap, and makes slirpd's own.
//
// Theory of operation. The input's first byte picks a shape: raw (the rest is header and
// frame as read from the tap), or a valid IPv4/IPv6 TCP/UDP frame of a size from the
// input with a header whose fields come from the input, so the deep paths (partial
// checksums over 64 KiB, USO splits) are reached. The target traps when a promise breaks:
// - `inbound` never reads or writes outside the frame (ASan) and changes at most the two
//   checksum bytes; after `.frame`/`.udpSegments` with NEEDS_CSUM, the sum from
//   csum_start to the end verifies (0xFFFF);
// - every UDP segment is at most headers + gso_size bytes, its IP and UDP lengths match
//   it, its checksums verify, and the payloads add up to the super-frame's;
// - for any frame and MTU, `header(forOutgoing:)` gives gso_size <= the MTU, and the
//   patched frame completed as the kernel would is the frame again when it was valid.

import DataPlane
import FrameSwitch

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-vnet invariant broken: \(what())") }
}

func be16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

func sum(_ bytes: ArraySlice<UInt8>, _ initial: UInt32 = 0) -> UInt16 {
    let folded = IPChecksum.add(UInt16(initial & 0xFFFF), UInt16(initial >> 16))
    return Array(bytes).withUnsafeBytes { IPChecksum.sum($0, initial: folded) }
}

/// A valid frame: IPv4 or IPv6, TCP or UDP, `size` payload bytes, checksums complete.
func validFrame(v6: Bool, udp: Bool, size: Int, fill: UInt8) -> [UInt8] {
    let src: [UInt8] = v6 ? [0xfe, 0xc0] + Array(repeating: 0, count: 13) + [15] : [10, 0, 2, 15]
    let dst: [UInt8] = v6 ? [0xfe, 0xc0] + Array(repeating: 0, count: 13) + [2] : [10, 0, 2, 2]
    let body = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* Int(fill | 1)) }
    var l4: [UInt8] = udp ? [0x30, 0x39, 0, 7] + be16(8 + size) + [0, 0]
                          : [0x30, 0x39, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]
    l4 += body
    let proto: UInt8 = udp ? 17 : 6
    let pseudo = sum((src + dst)[...], UInt32(proto) + UInt32(l4.count))
    var c = ~sum(l4[...], UInt32(pseudo))
    if udp, c == 0 { c = 0xFFFF }
    let at = udp ? 6 : 16
    l4[at] = UInt8(c >> 8)
    l4[at + 1] = UInt8(c & 0xFF)
    var ip: [UInt8]
    if v6 {
        ip = [0x60, 0, 0, 0] + be16(l4.count) + [proto, 64] + src + dst
    } else {
        ip = [0x45, 0] + be16(20 + l4.count) + [0, 1, 0x40, 0, 64, proto, 0, 0] + src + dst
        let h = ~sum(ip[...])
        ip[10] = UInt8(h >> 8)
        ip[11] = UInt8(h & 0xFF)
    }
    return [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2] + (v6 ? [0x86, 0xdd] : [0x08, 0x00]) + ip + l4
}

/// Whether the IP packet in `f` (IPv4 or IPv6 without extensions) has valid checksums.
func verifies(_ f: [UInt8]) -> Bool {
    guard f.count >= 34 else { return false }
    let v6 = f[12] == 0x86
    guard !v6 || f.count >= 54 else { return false }
    let ip = 14, l4 = v6 ? 54 : 14 + Int(f[14] & 0x0F) * 4
    let end = v6 ? 54 + (Int(f[18]) << 8 | Int(f[19])) : 14 + (Int(f[16]) << 8 | Int(f[17]))
    guard end <= f.count, l4 <= end else { return false }
    if !v6, sum(f[ip..<l4]) != 0xFFFF { return false }
    let proto = v6 ? f[20] : f[23]
    let addresses = v6 ? f[22..<54] : f[26..<34]
    let pseudo = sum(addresses, UInt32(proto) + UInt32(end - l4))
    return sum(f[l4..<end], UInt32(pseudo)) == 0xFFFF
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard input.count >= 11 else { return 0 }
    var header: VirtioNetHeader
    var frame: [UInt8]
    var valid = false
    if input[0] & 1 == 0 {
        guard let h = input[1...].withUnsafeBytes({ VirtioNetHeader.parse($0) }) else { return 0 }
        header = h
        frame = Array(input[11...].prefix(70_000))
    } else {
        // Shape byte: bit 1 IPv6, bit 2 UDP; then size (2 bytes), then the header's fields.
        let v6 = input[0] & 2 != 0, udp = input[0] & 4 != 0
        let payload = (Int(input[1]) << 8 | Int(input[2])) % (65_535 - 60 - 8)
        frame = validFrame(v6: v6, udp: udp, size: payload, fill: input[3])
        valid = true
        let types: [VirtioNetHeader.GSOType] = [.none, .tcpv4, .udp, .tcpv6, .udpL4]
        header = VirtioNetHeader(flags: input[4] & 3, gsoType: types[Int(input[5]) % types.count], ecn: input[5] & 0x80 != 0,
                                 headerLength: 0, gsoSize: UInt16(input[6]) << 8 | UInt16(input[7]),
                                 checksumStart: input[8] & 1 == 0 ? UInt16(v6 ? 54 : 34) : UInt16(input[9]) << 8 | UInt16(input[10]),
                                 checksumOffset: input[8] & 2 == 0 ? (udp ? 6 : 16) : UInt16(input[9]))
        // What the kernel hands over with NEEDS_CSUM: the pseudo-header sum in the field.
        if header.needsChecksumCompleted, input[8] & 3 == 0 {
            let l4 = v6 ? 54 : 34
            let addresses = v6 ? frame[22..<54] : frame[26..<34]
            let p = sum(addresses, UInt32(udp ? 17 : 6) + UInt32(frame.count - l4))
            frame[Int(header.checksumStart) + Int(header.checksumOffset)] = UInt8(p >> 8)
            frame[Int(header.checksumStart) + Int(header.checksumOffset) + 1] = UInt8(p & 0xFF)
        }
    }
    let before = frame
    let verdict = frame.withUnsafeMutableBytes { header.inbound($0) }
    let changed = zip(before, frame).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
    let field = Int(header.checksumStart) + Int(header.checksumOffset)
    check(changed.allSatisfy { $0 == field || $0 == field + 1 }, "inbound changed bytes \(changed) outside the checksum at \(field)")
    let completed = (verdict == .frame || verdict == .udpSegments) && header.needsChecksumCompleted
    if completed, header.checksumOffset % 2 == 0 {
        // The field held the pseudo-header's sum: with it, the region sums to all ones.
        let old = UInt32(before[field]) << 8 | UInt32(before[field + 1])
        let s = sum(frame[Int(header.checksumStart)...], old)
        check(s == 0xFFFF || (header.checksumOffset == 6 && frame[field] == 0xFF && frame[field + 1] == 0xFF),
              "completed checksum does not verify: \(s)")
        check(frame[field] != 0 || frame[field + 1] != 0 || header.checksumOffset != 6, "a UDP checksum completed to 0")
    }
    // A valid frame stays valid unless the input aimed the completion elsewhere.
    let aimed = !header.needsChecksumCompleted || input[0] & 1 == 1 && input[8] & 3 == 0
    if valid, aimed, verdict == .frame || verdict == .udpSegments {
        check(verifies(frame), "a valid frame does not verify after inbound")
    }
    if verdict == .udpSegments {
        var payload = 0
        let step = Int(header.gsoSize)
        let n = frame.withUnsafeBytes { f in
            header.udpSegments(f) { d in
                let out = Array(d)
                let l4 = out[12] == 0x86 ? 54 : 14 + Int(out[14] & 0x0F) * 4
                check(out.count <= l4 + 8 + step, "a segment of \(out.count) bytes for gso_size \(step)")
                check(Int(out[l4 + 4]) << 8 | Int(out[l4 + 5]) == out.count - l4, "UDP length")
                if valid, aimed { check(verifies(out), "a segment's checksums") }
                payload += out.count - l4 - 8
            }
        }
        check(n > 0, "no segments from a USO frame")
        if valid {
            let l4 = frame[12] == 0x86 ? 54 : 34
            check(payload == frame.count - l4 - 8, "segments carry \(payload) bytes")
        }
    }
    for mtu in [68, 576, 1500, Int(input[1]) << 8 | Int(input[2])] where mtu >= 68 {
        let (h, patch) = before.withUnsafeBytes { VirtioNetHeader.header(forOutgoing: $0, mtu: mtu) }
        guard h.gsoType != .none else { check(patch == nil, "a patch without GSO"); continue }
        check(Int(h.gsoSize) <= mtu && h.gsoSize > 0, "gso_size \(h.gsoSize) for MTU \(mtu)")
        guard let patch else { check(false, "GSO without a patch"); continue }
        check(patch.offset + 2 <= before.count, "patch outside the frame")
        if valid, verifies(before) {
            var written = before
            written[patch.offset] = UInt8(patch.value >> 8)
            written[patch.offset + 1] = UInt8(patch.value & 0xFF)
            written.withUnsafeMutableBytes { _ = VirtioNetHeader.completeChecksum(frame: $0, start: Int(h.checksumStart), offset: Int(h.checksumOffset)) }
            check(written == before, "the kernel's completion does not give the frame back")
        }
    }
    return 0
}
