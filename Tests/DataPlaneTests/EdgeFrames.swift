import FrameSwitch
import TestSupport

/// Straightforward byte-by-byte readers and checksums for the edge stages' tests
/// (TCPSegmentation, TCPCoalescer), independent of IPChecksum's word-at-a-time sum.
enum Edge {
    /// The one's complement sum of `bytes` as big-endian 16-bit words, one byte at a time.
    static func naiveSum(_ bytes: ArraySlice<UInt8>, _ initial: UInt32 = 0) -> UInt32 {
        var sum = initial
        var high = true
        for b in bytes {
            sum += high ? UInt32(b) << 8 : UInt32(b)
            high.toggle()
        }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return sum
    }

    static func isV6(_ f: [UInt8]) -> Bool { f[12] == 0x86 && f[13] == 0xDD }
    static func tcp(_ f: [UInt8]) -> Int { isV6(f) ? 54 : 14 + Int(f[14] & 0x0F) * 4 }
    static func end(_ f: [UInt8]) -> Int { isV6(f) ? 54 + Int(read16(f, 18)) : 14 + Int(read16(f, 16)) }
    static func payloadStart(_ f: [UInt8]) -> Int { tcp(f) + Int(f[tcp(f) + 12] >> 4) * 4 }
    static func payload(_ f: [UInt8]) -> [UInt8] { Array(f[payloadStart(f)..<end(f)]) }
    static func seq(_ f: [UInt8]) -> UInt32 { read32(f, tcp(f) + 4) }
    static func flags(_ f: [UInt8]) -> UInt8 { f[tcp(f) + 13] }
    static func urgent(_ f: [UInt8]) -> UInt16 { read16(f, tcp(f) + 18) }
    static func window(_ f: [UInt8]) -> UInt16 { read16(f, tcp(f) + 14) }
    static func ipID(_ f: [UInt8]) -> UInt16 { read16(f, 18) }

    /// The pseudo-header's sum for a segment of `length` bytes.
    static func pseudo(_ f: [UInt8], length: Int) -> UInt32 {
        let addresses = isV6(f) ? f[22..<54] : f[26..<34]
        return naiveSum(addresses, 6 + UInt32(length))
    }

    /// Whether the frame is exactly one IPv4/IPv6 datagram (no padding) whose IPv4 header
    /// checksum and TCP checksum verify.
    static func valid(_ f: [UInt8]) -> Bool {
        guard f.count >= 54 else { return false }
        if isV6(f) {
            guard f[20] == 6, end(f) == f.count else { return false }
        } else {
            let ihl = Int(f[14] & 0x0F) * 4
            guard f[12] == 8, f[13] == 0, f[23] == 6, ihl >= 20, end(f) == f.count, 14 + ihl + 20 <= f.count,
                  naiveSum(f[14..<(14 + ihl)]) == 0xFFFF else { return false }
        }
        let t = tcp(f)
        return naiveSum(f[t..<f.count], pseudo(f, length: f.count - t)) == 0xFFFF
    }

    /// Recomputes the IPv4 header checksum and the TCP checksum after a test edited a field.
    static func fix(_ f: inout [UInt8]) {
        guard f.count >= 54, tcp(f) + 20 <= end(f), end(f) <= f.count else { return }  // left broken
        if !isV6(f) {
            let ihl = Int(f[14] & 0x0F) * 4
            f[24] = 0; f[25] = 0
            let c = ~UInt16(naiveSum(f[14..<(14 + ihl)]))
            f[24] = UInt8(c >> 8); f[25] = UInt8(c & 0xFF)
        }
        let t = tcp(f), e = end(f)
        f[t + 16] = 0; f[t + 17] = 0
        let c = ~UInt16(naiveSum(f[t..<e], pseudo(f, length: e - t)))
        f[t + 16] = UInt8(c >> 8); f[t + 17] = UInt8(c & 0xFF)
    }

    /// A segment with a payload of `length` bytes whose values follow the stream offset `offset`,
    /// so that pieces and merges can be compared with the stream they came from.
    static func segment(v6: Bool = false, fromGuest: Bool = true, seq: UInt32 = 1000, offset: Int = 0, length: Int,
                        flags: UInt8 = TCPFrame.ackFlag, options: [UInt8] = [], ipOptions: [UInt8] = [],
                        window: UInt16 = 5000, padding: Int = 0) -> [UInt8] {
        var f = fromGuest ? TCPFrame.fromGuest(v6: v6) : TCPFrame.toGuest(v6: v6)
        f.seq = seq &+ UInt32(truncatingIfNeeded: offset)
        f.ack = 777
        f.flags = flags
        f.options = options
        f.ipOptions = ipOptions
        f.window = window
        f.padding = padding
        f.payload = stream(offset, length)
        return f.bytes
    }

    static func stream(_ offset: Int, _ length: Int) -> [UInt8] {
        (offset..<(offset + length)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
    }

    static func with(_ f: [UInt8], _ edit: (inout [UInt8]) -> Void) -> [UInt8] {
        var g = f
        edit(&g)
        fix(&g)
        return g
    }
}
