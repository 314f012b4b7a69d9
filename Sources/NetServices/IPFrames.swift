// IPFrames: reading and writing the few IP packets the daemon answers itself, as whole
// Ethernet frames: UDP datagrams (DNS queries and their replies, DHCP) over IPv4 or
// IPv6, and ICMP echo to the DNS address.
//
// Parsing accepts only what can be answered safely: untagged frames, IPv4 without
// fragments (a fragment's payload is not the whole datagram), IPv6 with UDP as the very
// next header, and lengths that agree with each other and fit in the frame. Checksums
// are not verified: frames come from a local socket, not a wire. Replies carry both
// checksums, as guests' stacks check them.

import FrameSwitch

public struct UDPDatagram: Sendable, Equatable {
    public enum Addresses: Sendable, Equatable {
        case v4(source: UInt32, destination: UInt32)
        /// 16 bytes each.
        case v6(source: [UInt8], destination: [UInt8])
    }

    public var sourceMAC: MACAddress
    public var destinationMAC: MACAddress
    public var addresses: Addresses
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var payload: [UInt8]

    public init(sourceMAC: MACAddress, destinationMAC: MACAddress, addresses: Addresses,
                sourcePort: UInt16, destinationPort: UInt16, payload: [UInt8]) {
        self.sourceMAC = sourceMAC
        self.destinationMAC = destinationMAC
        self.addresses = addresses
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.payload = payload
    }

    /// The destination port of a UDP frame, without copying anything: the cheap test
    /// run on every frame before `parse`.
    public static func destinationPort<C: RandomAccessCollection<UInt8>>(frame: C) -> UInt16? where C.Index == Int {
        guard let udp = udpOffset(frame) else { return nil }
        let s = frame.startIndex
        return UInt16(frame[s + udp + 2]) << 8 | UInt16(frame[s + udp + 3])
    }

    public static func parse<C: RandomAccessCollection<UInt8>>(frame: C) -> UDPDatagram? where C.Index == Int {
        guard let udp = udpOffset(frame) else { return nil }
        let s = frame.startIndex
        func u16(_ at: Int) -> UInt16 { UInt16(frame[s + at]) << 8 | UInt16(frame[s + at + 1]) }
        func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) << 16 | UInt32(u16(at + 2)) }
        let addresses: Addresses
        if u16(12) == 0x0800 {
            addresses = .v4(source: u32(26), destination: u32(30))
        } else {
            addresses = .v6(source: Array(frame[(s + 22)..<(s + 38)]), destination: Array(frame[(s + 38)..<(s + 54)]))
        }
        let length = Int(u16(udp + 4))
        return UDPDatagram(
            sourceMAC: MACAddress(frame, at: 6), destinationMAC: MACAddress(frame, at: 0), addresses: addresses,
            sourcePort: u16(udp), destinationPort: u16(udp + 2),
            payload: Array(frame[(s + udp + 8)..<(s + udp + length)]))
    }

    /// Where the UDP header starts, if this is a UDP datagram we can read whole.
    static func udpOffset<C: RandomAccessCollection<UInt8>>(_ frame: C) -> Int? where C.Index == Int {
        let s = frame.startIndex
        guard frame.count >= 14 + 20 + 8 else { return nil }
        func u16(_ at: Int) -> Int { Int(frame[s + at]) << 8 | Int(frame[s + at + 1]) }
        switch u16(12) {
        case 0x0800:
            let headerLength = Int(frame[s + 14] & 0x0F) * 4
            let total = u16(16)
            guard frame[s + 14] >> 4 == 4, headerLength >= 20, frame[s + 23] == 17,
                  u16(20) & 0x3FFF == 0,  // neither more fragments nor an offset
                  total >= headerLength + 8, 14 + total <= frame.count else { return nil }
            let udp = 14 + headerLength
            let length = u16(udp + 4)
            guard length >= 8, length <= total - headerLength else { return nil }
            return udp
        case 0x86DD:
            guard frame.count >= 14 + 40 + 8, frame[s + 14] >> 4 == 6, frame[s + 20] == 17 else { return nil }
            let payload = u16(18)
            guard payload >= 8, 54 + payload <= frame.count else { return nil }
            let length = u16(54 + 4)
            guard length >= 8, length <= payload else { return nil }
            return 54
        default:
            return nil
        }
    }

    /// The answer to this datagram: addresses and ports swapped, from `mac`.
    public func reply(_ payload: [UInt8], from mac: MACAddress) -> UDPDatagram {
        let swapped: Addresses
        switch addresses {
        case .v4(let source, let destination): swapped = .v4(source: destination, destination: source)
        case .v6(let source, let destination): swapped = .v6(source: destination, destination: source)
        }
        return UDPDatagram(sourceMAC: mac, destinationMAC: sourceMAC, addresses: swapped,
                           sourcePort: destinationPort, destinationPort: sourcePort, payload: payload)
    }

    /// The whole Ethernet frame. IPv4 gets TTL 64, no fragmentation, and `typeOfService`
    /// (libslirp sends its DHCP replies with 0x10); IPv6 a hop limit of 64.
    public func frame(ipID: UInt16 = 0, typeOfService: UInt8 = 0) -> [UInt8] {
        let udpLength = 8 + payload.count
        var frame = destinationMAC.bytes + sourceMAC.bytes
        var udp: [UInt8] = be16(sourcePort) + be16(destinationPort) + be16(UInt16(truncatingIfNeeded: udpLength)) + [0, 0]
        udp += payload
        let pseudo: [UInt8]
        switch addresses {
        case .v4(let source, let destination):
            frame += [0x08, 0x00]
            var ip: [UInt8] = [0x45, typeOfService] + be16(UInt16(truncatingIfNeeded: 20 + udpLength)) + be16(ipID)
            ip += [0, 0, 64, 17, 0, 0] + be32(source) + be32(destination)
            ip.replaceSubrange(10..<12, with: be16(~IPChecksum.sum(ip)))
            frame += ip
            pseudo = be32(source) + be32(destination) + [0, 17] + be16(UInt16(truncatingIfNeeded: udpLength))
        case .v6(let source, let destination):
            frame += [0x86, 0xDD]
            frame += [0x60, 0, 0, 0] + be16(UInt16(truncatingIfNeeded: udpLength)) + [17, 64] + source + destination
            pseudo = source + destination + be32(UInt32(udpLength)) + [0, 0, 0, 17]
        }
        var sum = ~IPChecksum.sum(udp, initial: IPChecksum.sum(pseudo))
        if sum == 0 { sum = 0xFFFF }  // 0 would mean "no checksum"
        udp.replaceSubrange(6..<8, with: be16(sum))
        return frame + udp
    }
}

/// ICMPv4 echo: the daemon answers pings to addresses it serves itself.
public enum ICMPEcho {
    /// If `frame` is an IPv4 echo request to `address`, the echo reply from `mac`.
    public static func reply<C: RandomAccessCollection<UInt8>>(to frame: C, address: UInt32, from mac: MACAddress) -> [UInt8]?
    where C.Index == Int {
        let s = frame.startIndex
        guard frame.count >= 14 + 20 + 8, frame[s + 12] == 0x08, frame[s + 13] == 0x00, frame[s + 14] >> 4 == 4 else { return nil }
        let headerLength = Int(frame[s + 14] & 0x0F) * 4
        let total = Int(frame[s + 16]) << 8 | Int(frame[s + 17])
        let fragment = (Int(frame[s + 20]) << 8 | Int(frame[s + 21])) & 0x3FFF
        guard headerLength >= 20, frame[s + 23] == 1, fragment == 0, total >= headerLength + 8, 14 + total <= frame.count else { return nil }
        let bytes = Array(frame[s..<(s + 14 + total)])
        let destination = UInt32(bytes[30]) << 24 | UInt32(bytes[31]) << 16 | UInt32(bytes[32]) << 8 | UInt32(bytes[33])
        let icmp = 14 + headerLength
        guard destination == address, bytes[icmp] == 8, bytes[icmp + 1] == 0 else { return nil }
        var reply = Array(bytes[6..<12]) + mac.bytes + [0x08, 0x00]
        // A plain header (options dropped), the addresses swapped.
        var ip: [UInt8] = [0x45, bytes[15]] + be16(UInt16(20 + total - headerLength)) + [bytes[18], bytes[19], 0, 0, 64, 1, 0, 0]
        ip += Array(bytes[30..<34]) + Array(bytes[26..<30])
        ip.replaceSubrange(10..<12, with: be16(~IPChecksum.sum(ip)))
        var message = Array(bytes[icmp...])
        message[0] = 0
        message.replaceSubrange(2..<4, with: [0, 0])
        message.replaceSubrange(2..<4, with: be16(~IPChecksum.sum(message)))
        reply += ip
        reply += message
        return reply
    }
}

func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(truncatingIfNeeded: v)] }

func be32(_ v: UInt32) -> [UInt8] {
    [UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)]
}
