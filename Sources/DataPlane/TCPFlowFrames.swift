import FrameSwitch

// What the two TCP stages between guests and libslirp (TCPWindowShim for data from guests,
// TCPEarlyACK for data toward them) share: the key of a guest's connection, and the
// rewrites both make to libslirp's and guests' segments, with lengths and checksums
// kept right (a changed word adjusts the checksum, RFC 1624; a grown header is summed
// anew).

/// IP version, guest address and port, remote address and port.
struct FlowKey: Hashable {
    var guestHigh: UInt64 = 0, guestLow: UInt64 = 0
    var remoteHigh: UInt64 = 0, remoteLow: UInt64 = 0
    var guestPort: UInt16 = 0, remotePort: UInt16 = 0
    var v6 = false

    init() {}

    /// Hashed for every segment and ACK the two TCP stages see (`combineFlowHash`).
    func hash(into hasher: inout Hasher) {
        combineFlowHash(into: &hasher, guest: (guestHigh, guestLow), remote: (remoteHigh, remoteLow),
                        ports: UInt64(guestPort) << 32 | UInt64(remotePort) << 8 | (v6 ? 1 : 0))
    }

    /// The key of the connection `h` (parsed from `frame`) belongs to.
    init(_ frame: UnsafeRawBufferPointer, _ h: Segment, guestIsSource: Bool) {
        v6 = h.v6
        let ip = EthernetHeader.length
        let (source, destination) = v6 ? (ip + 8, ip + 24) : (ip + 12, ip + 16)
        let s = Self.address(frame, at: source, v6: v6), d = Self.address(frame, at: destination, v6: v6)
        let sp = read16(frame, h.tcp), dp = read16(frame, h.tcp + 2)
        if guestIsSource {
            (guestHigh, guestLow, guestPort, remoteHigh, remoteLow, remotePort) = (s.0, s.1, sp, d.0, d.1, dp)
        } else {
            (guestHigh, guestLow, guestPort, remoteHigh, remoteLow, remotePort) = (d.0, d.1, dp, s.0, s.1, sp)
        }
    }

    init?(guest: [UInt8], guestPort: UInt16, remote: [UInt8], remotePort: UInt16) {
        guard guest.count == remote.count, guest.count == 4 || guest.count == 16 else { return nil }
        v6 = guest.count == 16
        (guestHigh, guestLow) = guest.withUnsafeBytes { Self.address($0, at: 0, v6: v6) }
        (remoteHigh, remoteLow) = remote.withUnsafeBytes { Self.address($0, at: 0, v6: v6) }
        self.guestPort = guestPort
        self.remotePort = remotePort
    }

    static func address(_ frame: UnsafeRawBufferPointer, at offset: Int, v6: Bool) -> (UInt64, UInt64) {
        if !v6 { return (0, UInt64(read32(frame, offset))) }
        return (UInt64(read32(frame, offset)) << 32 | UInt64(read32(frame, offset + 4)),
                UInt64(read32(frame, offset + 8)) << 32 | UInt64(read32(frame, offset + 12)))
    }
}

enum TCPRewrite {
    /// Stores a 16-bit word and adjusts the checksum at `c` for it.
    static func setWord(_ bytes: inout [UInt8], at offset: Int, _ value: UInt16, checksumAt c: Int) {
        let old = read16(bytes, offset)
        guard old != value else { return }
        bytes[offset] = UInt8(value >> 8)
        bytes[offset + 1] = UInt8(value & 0xFF)
        fixChecksum(&bytes, at: c, old: old, new: value)
    }

    /// Adjusts the checksum at `c` for one word changed from `old` to `new`.
    static func fixChecksum(_ bytes: inout [UInt8], at c: Int, old: UInt16, new: UInt16) {
        let sum = IPChecksum.adjusted(read16(bytes, c), replacing: old, with: new)
        bytes[c] = UInt8(sum >> 8)
        bytes[c + 1] = UInt8(sum & 0xFF)
    }

    /// The same, in a buffer the caller owns (a guest's frame rewritten where it lies).
    static func setWord(_ bytes: UnsafeMutableRawBufferPointer, at offset: Int, _ value: UInt16, checksumAt c: Int) {
        let old = bytes.loadNet16(at: offset)
        guard old != value else { return }
        bytes.storeNet16(value, at: offset)
        bytes.storeNet16(IPChecksum.adjusted(bytes.loadNet16(at: c), replacing: old, with: value), at: c)
    }

    /// `frame` with the 4 option bytes `option` before its TCP options; nil when the
    /// header or the datagram has no room for them.
    static func prependingOption(_ option: [UInt8], to frame: UnsafeRawBufferPointer, _ h: Segment) -> [UInt8]? {
        guard option.count == 4, h.dataOffset + 4 <= 60, h.ipEnd - EthernetHeader.length + 4 <= 65535 else { return nil }
        let t = h.tcp
        var out = Array(frame[0..<(t + 20)]) + option + Array(frame[(t + 20)..<h.ipEnd])
        out[t + 12] = UInt8((h.dataOffset + 4) / 4) << 4 | (out[t + 12] & 0x0F)
        finish(&out, v6: h.v6, tcp: t)
        return out
    }

    /// Sets the IP length and checksums of a frame whose TCP header starts at `tcp`.
    static func finish(_ out: inout [UInt8], v6: Bool, tcp t: Int) {
        let ip = EthernetHeader.length
        let tcpLength = out.count - t
        let pseudo: [UInt8]
        if v6 {
            out[ip + 4] = UInt8(truncatingIfNeeded: tcpLength >> 8)
            out[ip + 5] = UInt8(truncatingIfNeeded: tcpLength)
            pseudo = Array(out[(ip + 8)..<(ip + 40)]) + [0, 0] + bigEndianBytes(UInt16(tcpLength)) + [0, 0, 0, 6]
        } else {
            let total = out.count - ip
            out[ip + 2] = UInt8(truncatingIfNeeded: total >> 8)
            out[ip + 3] = UInt8(truncatingIfNeeded: total)
            out[ip + 10] = 0
            out[ip + 11] = 0
            let headerSum = ~IPChecksum.sum(Array(out[ip..<t]))
            out[ip + 10] = UInt8(headerSum >> 8)
            out[ip + 11] = UInt8(headerSum & 0xFF)
            pseudo = Array(out[(ip + 12)..<(ip + 20)]) + [0, 6] + bigEndianBytes(UInt16(tcpLength))
        }
        out[t + 16] = 0
        out[t + 17] = 0
        let sum = ~IPChecksum.sum(Array(out[t...]), initial: IPChecksum.sum(pseudo))
        out[t + 16] = UInt8(sum >> 8)
        out[t + 17] = UInt8(sum & 0xFF)
    }
}
