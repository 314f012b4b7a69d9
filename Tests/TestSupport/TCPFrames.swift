import FrameSwitch

/// Whole Ethernet frames carrying one TCP segment, with correct IP and TCP checksums,
/// for tests of stages that read or rewrite TCP (TCPWindowShim).
public struct TCPFrame {
    public var v6 = false
    public var source: [UInt8]
    public var destination: [UInt8]
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var seq: UInt32 = 0
    public var ack: UInt32 = 0
    public var flags: UInt8 = 0x10
    public var window: UInt16 = 65535
    public var options: [UInt8] = []
    public var payload: [UInt8] = []
    /// IPv4 header options (a multiple of 4 bytes).
    public var ipOptions: [UInt8] = []
    /// Ethernet padding after the IP datagram.
    public var padding = 0

    public static let fin: UInt8 = 0x01, syn: UInt8 = 0x02, rst: UInt8 = 0x04, psh: UInt8 = 0x08, ackFlag: UInt8 = 0x10

    public static let guest4: [UInt8] = [10, 0, 2, 15]
    public static let gateway4: [UInt8] = [10, 0, 2, 2]
    public static let guest6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x0F]
    public static let gateway6: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x02]

    public init(v6: Bool = false, source: [UInt8], destination: [UInt8], sourcePort: UInt16, destinationPort: UInt16) {
        self.v6 = v6
        self.source = source
        self.destination = destination
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
    }

    /// A segment from the guest (10.0.2.15 or fec0::f, port 40000) to the gateway's port 80.
    public static func fromGuest(v6: Bool = false) -> TCPFrame {
        TCPFrame(v6: v6, source: v6 ? guest6 : guest4, destination: v6 ? gateway6 : gateway4, sourcePort: 40000, destinationPort: 80)
    }

    /// The reverse direction: the NAT to the guest.
    public static func toGuest(v6: Bool = false) -> TCPFrame {
        TCPFrame(v6: v6, source: v6 ? gateway6 : gateway4, destination: v6 ? guest6 : guest4, sourcePort: 80, destinationPort: 40000)
    }

    public var bytes: [UInt8] {
        var segment = bigEndianBytes(sourcePort) + bigEndianBytes(destinationPort) + bigEndianBytes(seq) + bigEndianBytes(ack)
            + [UInt8((20 + options.count) / 4) << 4, flags] + bigEndianBytes(window) + [0, 0, 0, 0] + options + payload
        let length = UInt16(segment.count)
        let pseudo = v6 ? source + destination + [0, 0] + bigEndianBytes(length) + [0, 0, 0, 6]
            : source + destination + [0, 6] + bigEndianBytes(length)
        IPChecksum.store(in: &segment, at: 16, pseudoHeader: pseudo)
        let macs = MACAddress(raw: 0x5255_0A00_0202).bytes + MACAddress(raw: 0x5254_0012_3456).bytes
        if v6 {
            return macs + [0x86, 0xDD, 0x60, 0, 0, 0] + bigEndianBytes(length) + [6, 64] + source + destination + segment
                + Array(repeating: 0, count: padding)
        }
        var header: [UInt8] = [UInt8(0x40 | (20 + ipOptions.count) / 4), 0] + bigEndianBytes(UInt16(20 + ipOptions.count + segment.count))
            + [0, 1, 0x40, 0, 64, 6, 0, 0] + source + destination + ipOptions
        IPChecksum.store(in: &header, at: 10)
        return macs + [0x08, 0x00] + header + segment + Array(repeating: 0, count: padding)
    }

    /// Whether a frame's IPv4 header checksum (if IPv4) and TCP checksum verify, and its
    /// IP lengths are consistent with the frame.
    public static func checksumsVerify(_ frame: [UInt8]) -> Bool {
        guard frame.count >= 34 else { return false }
        let ip = 14
        if frame[12] == 0x86, frame[13] == 0xDD {
            guard frame.count >= 54 else { return false }
            let length = Int(read16(frame, ip + 4))
            guard 54 + length <= frame.count else { return false }
            let segment = Array(frame[54..<(54 + length)])
            let pseudo = Array(frame[22..<54]) + [0, 0] + bigEndianBytes(UInt16(length)) + [0, 0, 0, 6]
            return IPChecksum.sum(segment, initial: IPChecksum.sum(pseudo)) == 0xFFFF
        }
        let headerLength = Int(frame[ip] & 0x0F) * 4
        let total = Int(read16(frame, ip + 2))
        guard headerLength >= 20, total >= headerLength, ip + total <= frame.count,
              IPChecksum.sum(Array(frame[ip..<(ip + headerLength)])) == 0xFFFF else { return false }
        let segment = Array(frame[(ip + headerLength)..<(ip + total)])
        let pseudo = Array(frame[26..<34]) + [0, 6] + bigEndianBytes(UInt16(segment.count))
        return IPChecksum.sum(segment, initial: IPChecksum.sum(pseudo)) == 0xFFFF
    }

    /// The TCP header's offset in a frame (IPv4 with its IHL, or IPv6).
    public static func tcpOffset(_ frame: [UInt8]) -> Int {
        frame[12] == 0x86 ? 54 : 14 + Int(frame[14] & 0x0F) * 4
    }

    public static func window(_ frame: [UInt8]) -> UInt16 { read16(frame, tcpOffset(frame) + 14) }
    public static func seq(_ frame: [UInt8]) -> UInt32 { read32(frame, tcpOffset(frame) + 4) }
    public static func ack(_ frame: [UInt8]) -> UInt32 { read32(frame, tcpOffset(frame) + 8) }

    /// The TCP options of a frame's segment.
    public static func options(_ frame: [UInt8]) -> [UInt8] {
        let t = tcpOffset(frame)
        return Array(frame[(t + 20)..<(t + Int(frame[t + 12] >> 4) * 4)])
    }
}
