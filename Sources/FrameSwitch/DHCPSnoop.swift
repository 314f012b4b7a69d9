/// DHCPv4 snooping: reads a DHCP message out of a whole Ethernet frame, so the daemon can
/// learn which guest (MAC) holds which address and hostname from the traffic it switches.
///
/// Every read is bounds-checked against the frame: the input is whatever a guest sends,
/// so anything malformed yields `nil` (or, inside the options, stops at the damage).
public struct DHCPMessage: Equatable, Sendable {
    /// Option 53, DHCP message type (RFC 2132 9.6).
    public enum Kind: UInt8, Sendable { case discover = 1, offer, request, decline, ack, nak, release, inform }

    /// 1 for BOOTREQUEST (client to server), 2 for BOOTREPLY.
    public var op: UInt8
    /// Option 53; nil when missing or an unknown type (plain BOOTP has none).
    public var kind: Kind?
    public var transactionID: UInt32
    /// chaddr: the client's MAC as the client claims it, which need not be the frame's source.
    public var clientMAC: MACAddress
    /// ciaddr, host byte order.
    public var clientAddress: UInt32
    /// yiaddr, host byte order: the address a server offers or assigns.
    public var yourAddress: UInt32
    /// Option 50.
    public var requestedAddress: UInt32?
    /// Option 54.
    public var serverID: UInt32?
    /// Option 51.
    public var leaseSeconds: UInt32?
    /// Option 12, decoded as lossy UTF-8 with trailing NULs trimmed (some clients count one).
    public var hostname: String?
    /// Option 1.
    public var subnetMask: UInt32?
    /// Option 3, the first router listed.
    public var router: UInt32?
    /// Option 6, in order.
    public var dnsServers: [UInt32]
    /// Option 26, interface MTU.
    public var mtu: UInt16?

    public init(
        op: UInt8, kind: Kind?, transactionID: UInt32, clientMAC: MACAddress,
        clientAddress: UInt32 = 0, yourAddress: UInt32 = 0, requestedAddress: UInt32? = nil,
        serverID: UInt32? = nil, leaseSeconds: UInt32? = nil, hostname: String? = nil,
        subnetMask: UInt32? = nil, router: UInt32? = nil, dnsServers: [UInt32] = [], mtu: UInt16? = nil
    ) {
        self.op = op
        self.kind = kind
        self.transactionID = transactionID
        self.clientMAC = clientMAC
        self.clientAddress = clientAddress
        self.yourAddress = yourAddress
        self.requestedAddress = requestedAddress
        self.serverID = serverID
        self.leaseSeconds = leaseSeconds
        self.hostname = hostname
        self.subnetMask = subnetMask
        self.router = router
        self.dnsServers = dnsServers
        self.mtu = mtu
    }

    /// The fixed BOOTP header up to and including `file` (RFC 2131 figure 1).
    public static let bootpHeaderLength = 236
    public static let magicCookie: UInt32 = 0x6382_5363  // 99.130.83.99

    /// Parses `frame` if it is an Ethernet (optionally one 802.1Q tag) / IPv4 / UDP 67<->68
    /// DHCP message; nil for anything else, including truncated or inconsistent headers.
    @inlinable
    public static func parse<C: RandomAccessCollection<UInt8>>(frame: C) -> DHCPMessage? where C.Index == Int {
        let reader = DHCPByteReader(frame)
        let count = frame.count

        // Ethernet, with at most one VLAN tag: guests on a trunked NIC still get DHCP.
        guard count >= 14 else { return nil }
        var l3 = 14
        var etherType = reader.u16(12)
        if etherType == 0x8100 {
            guard count >= 18 else { return nil }
            etherType = reader.u16(16)
            l3 = 18
        }
        guard etherType == 0x0800 else { return nil }

        // IPv4.
        guard count >= l3 + 20 else { return nil }
        let versionIHL = reader.u8(l3)
        guard versionIHL >> 4 == 4 else { return nil }
        let headerLength = Int(versionIHL & 0x0F) * 4
        guard headerLength >= 20, count >= l3 + headerLength else { return nil }
        let totalLength = Int(reader.u16(l3 + 2))
        // The frame may carry Ethernet padding past the datagram, never less than it.
        guard totalLength >= headerLength, l3 + totalLength <= count else { return nil }
        let fragment = reader.u16(l3 + 6)
        // A non-first fragment has no UDP header; a first one (MF, offset 0) is parsed as
        // far as it goes.
        guard fragment & 0x1FFF == 0 else { return nil }
        let moreFragments = fragment & 0x2000 != 0
        guard reader.u8(l3 + 9) == 17 else { return nil }
        let ipEnd = l3 + totalLength

        // UDP, server to client or client to server.
        let udp = l3 + headerLength
        guard ipEnd - udp >= 8 else { return nil }
        let sourcePort = reader.u16(udp)
        let destinationPort = reader.u16(udp + 2)
        guard (sourcePort == 67 && destinationPort == 68) || (sourcePort == 68 && destinationPort == 67) else { return nil }
        let udpLength = Int(reader.u16(udp + 4))
        guard udpLength >= 8 else { return nil }
        let end: Int
        if udp + udpLength <= ipEnd {
            end = udp + udpLength
        } else if moreFragments {
            end = ipEnd  // the rest is in later fragments, which are not reassembled
        } else {
            return nil
        }

        // BOOTP fixed header and the magic cookie.
        let bootp = udp + 8
        guard end - bootp >= bootpHeaderLength + 4 else { return nil }
        let op = reader.u8(bootp)
        guard op == 1 || op == 2 else { return nil }
        // htype 1 / hlen 6: Ethernet; anything else has no MACAddress to report.
        guard reader.u8(bootp + 1) == 1, reader.u8(bootp + 2) == 6 else { return nil }
        guard reader.u32(bootp + bootpHeaderLength) == magicCookie else { return nil }

        var message = DHCPMessage(
            op: op, kind: nil, transactionID: reader.u32(bootp + 4),
            clientMAC: MACAddress(frame, at: bootp + 28),
            clientAddress: reader.u32(bootp + 12), yourAddress: reader.u32(bootp + 16))

        // Options: code, length, value. Option 52 (overload into sname/file) is not followed.
        var i = bootp + bootpHeaderLength + 4
        while i < end {
            let code = reader.u8(i)
            if code == 0 { i += 1; continue }
            if code == 255 { break }
            guard i + 1 < end else { break }
            let length = Int(reader.u8(i + 1))
            let value = i + 2
            guard value + length <= end else { break }  // truncated: keep what came before
            switch code {
            case 53 where length >= 1: message.kind = Kind(rawValue: reader.u8(value))
            case 50 where length == 4: message.requestedAddress = reader.u32(value)
            case 54 where length == 4: message.serverID = reader.u32(value)
            case 51 where length == 4: message.leaseSeconds = reader.u32(value)
            case 1 where length == 4: message.subnetMask = reader.u32(value)
            case 3 where length >= 4 && length % 4 == 0: message.router = reader.u32(value)
            case 6 where length % 4 == 0:
                message.dnsServers = stride(from: value, to: value + length, by: 4).map { reader.u32($0) }
            case 26 where length == 2: message.mtu = reader.u16(value)
            case 12 where length >= 1:
                var last = value + length
                while last > value, reader.u8(last - 1) == 0 { last -= 1 }
                let s = frame.startIndex
                message.hostname = String(decoding: frame[(s + value)..<(s + last)], as: UTF8.self)
            default: break
            }
            i = value + length
        }
        return message
    }
}

/// Big-endian reads at offsets from the collection's start. Callers check bounds first.
@usableFromInline
struct DHCPByteReader<C: RandomAccessCollection<UInt8>> where C.Index == Int {
    @usableFromInline let bytes: C

    @inlinable init(_ bytes: C) { self.bytes = bytes }

    @inlinable func u8(_ offset: Int) -> UInt8 { bytes[bytes.startIndex + offset] }

    @inlinable func u16(_ offset: Int) -> UInt16 { UInt16(u8(offset)) << 8 | UInt16(u8(offset + 1)) }

    @inlinable func u32(_ offset: Int) -> UInt32 { UInt32(u16(offset)) << 16 | UInt32(u16(offset + 2)) }
}
