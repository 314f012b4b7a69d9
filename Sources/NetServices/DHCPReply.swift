// Building DHCP replies: BOOTP body, options, and the Ethernet/IPv4/UDP frame around them,
// laid out as libslirp 4.7 lays out its own (bootp.c), so a guest sees no difference.

import FrameSwitch

/// The per-reply values; the rest comes from the configuration.
struct DHCPReplyFields {
    var kind: DHCPMessage.Kind
    var transactionID: UInt32
    var clientMAC: MACAddress
    var clientAddress: UInt32
    var yourAddress: UInt32
    /// Option 12.
    var hostname: String?
    /// Option 51; not in an ACK to INFORM (RFC 2131 table 3).
    var includeLeaseTime: Bool
}

enum DHCPFrameBuilder {
    /// libslirp's DHCP_OPT_LEN: the options area, magic cookie included, is always this
    /// long, so every reply is a 576-byte datagram, the size every client must accept.
    static let optionsAreaLength = 312
    static let nakMessage = "requested address not available"  // libslirp's option 56
    static let httpClientClass = "HTTPClient"  // libslirp's UEFI_HTTP_VENDOR_CLASS_ID

    /// The BOOTP message: 236-byte header, cookie, options, END, zero padding.
    static func bootp(_ fields: DHCPReplyFields, config: DHCPServerConfig) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: DHCPMessage.bootpHeaderLength)
        b[0] = 2  // BOOTREPLY
        b[1] = 1
        b[2] = 6
        put32(fields.transactionID, into: &b, at: 4)
        put32(fields.clientAddress, into: &b, at: 12)
        put32(fields.yourAddress, into: &b, at: 16)
        if fields.kind != .nak { put32(config.server.value, into: &b, at: 20) }  // siaddr: next server (TFTP)
        b.replaceSubrange(28..<34, with: fields.clientMAC.bytes)
        if fields.kind != .nak {
            // Both fields keep a terminating NUL.
            if let name = config.tftpServerName, name.utf8.count < 64 { b.replaceSubrange(44..<(44 + name.utf8.count), with: Array(name.utf8)) }
            if let file = config.bootfile, file.utf8.count < 128 { b.replaceSubrange(108..<(108 + file.utf8.count), with: Array(file.utf8)) }
        }
        var options = OptionWriter(capacity: optionsAreaLength - 4)
        options.append(53, [fields.kind.rawValue])
        options.append(54, bytes32(config.server.value))
        if fields.kind == .nak {
            options.append(56, Array(nakMessage.utf8))
        } else {
            options.append(1, bytes32(config.network.mask))
            if let router = config.router { options.append(3, bytes32(router.value)) }
            if let dns = config.dns { options.append(6, bytes32(dns.value)) }
            if fields.includeLeaseTime { options.append(51, bytes32(config.leaseSeconds)) }
            if let name = fields.hostname, !name.isEmpty { options.append(12, Array(name.utf8)) }
            if let domain = config.domainName, !domain.isEmpty { options.append(15, Array(domain.utf8)) }
            if let name = config.tftpServerName, !name.isEmpty { options.append(66, Array(name.utf8)) }
            if let file = config.bootfile, !file.isEmpty { options.append(67, Array(file.utf8)) }
            if !config.searchList.isEmpty { options.appendRaw(DHCPSearchList.options(config.searchList)) }
            // UEFI HTTP boot takes only offers carrying option 60 "HTTPClient". libslirp 4.7
            // sends it whenever the boot file is an http:// URL, whatever the client's own
            // class; so does this, so that every client sees what libslirp would send.
            if let file = config.bootfile, file.hasPrefix("http://") { options.append(60, Array(httpClientClass.utf8)) }
            if let mtu = config.mtu, (68...65535).contains(mtu) { options.append(26, [UInt8(mtu >> 8), UInt8(mtu & 0xFF)]) }
        }
        b += [0x63, 0x82, 0x53, 0x63]
        b += options.bytes
        b.append(255)
        b += [UInt8](repeating: 0, count: DHCPMessage.bootpHeaderLength + optionsAreaLength - b.count)
        return b
    }

    /// Ethernet, IPv4 (TOS low-delay, TTL 64, as libslirp's udp_output) and UDP from port
    /// 67 to 68, both checksums filled in.
    static func frame(
        bootp: [UInt8], ipID: UInt16, source: (mac: MACAddress, ip: UInt32), destination: (mac: MACAddress, ip: UInt32)
    ) -> [UInt8] {
        UDPDatagram(sourceMAC: source.mac, destinationMAC: destination.mac,
                    addresses: .v4(source: source.ip, destination: destination.ip),
                    sourcePort: 67, destinationPort: 68, payload: bootp).frame(ipID: ipID, typeOfService: 0x10)
    }

    static func bytes32(_ v: UInt32) -> [UInt8] { be32(v) }

    static func put32(_ v: UInt32, into b: inout [UInt8], at offset: Int) {
        b.replaceSubrange(offset..<(offset + 4), with: bytes32(v))
    }
}

/// Options in a fixed space. Like libslirp, an option that does not fit (with room left
/// for END) is left out and later, smaller ones still get their chance.
struct OptionWriter {
    let capacity: Int
    var bytes: [UInt8] = []

    init(capacity: Int) { self.capacity = capacity }

    mutating func append(_ code: UInt8, _ value: [UInt8]) {
        guard value.count <= 255 else { return }
        appendRaw([code, UInt8(value.count)] + value)
    }

    mutating func appendRaw(_ encoded: [UInt8]) {
        guard bytes.count + encoded.count < capacity else { return }
        bytes += encoded
    }
}

/// Option 119, the domain search list (RFC 3397): the names in DNS wire format, with
/// RFC 1035 pointers for suffixes already written, split into as many 119 options as
/// 255-byte values need (RFC 3396 concatenates them again).
public enum DHCPSearchList {
    /// The names' wire form, pointers counted from the start of the whole value. Names
    /// with an empty or over-63-byte label are skipped (NetOptions refuses them anyway).
    public static func encode(_ names: [String]) -> [UInt8] {
        var data: [UInt8] = []
        var written: [[UInt8]: Int] = [:]  // a suffix, as dotted bytes, to its offset
        for name in names {
            var labels = name.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false).map(Array.init)
            if labels.count > 1, labels.last?.isEmpty == true { labels.removeLast() }
            guard labels.allSatisfy({ (1...63).contains($0.count) }) else { continue }
            var pointer: Int?
            for i in labels.indices {
                let suffix = Array(labels[i...].joined(separator: [UInt8(ascii: ".")]))
                if let offset = written[suffix] {
                    pointer = offset
                    break
                }
                if data.count < 0x4000 { written[suffix] = data.count }  // pointers have 14 bits
                data.append(UInt8(labels[i].count))
                data += labels[i]
            }
            if let pointer {
                data += [0xC0 | UInt8(pointer >> 8), UInt8(pointer & 0xFF)]
            } else {
                data.append(0)
            }
        }
        return data
    }

    /// `encode` as complete options: code 119, length, up to 255 bytes each.
    public static func options(_ names: [String]) -> [UInt8] {
        let data = encode(names)
        var out: [UInt8] = []
        var start = 0
        while start < data.count {
            let end = min(start + 255, data.count)
            out += [119, UInt8(end - start)] + data[start..<end]
            start = end
        }
        return out
    }
}
