import FrameSwitch

// RouterAdvertisement: libslirp's router advertisements, rewritten for each guest.
//
// Theory of operation. libslirp 4.7 answers Router Solicitations and sends unsolicited
// RAs on its own timer (200-600 s), always to all-nodes (ff02::1), with a source
// link-layer address and a prefix option only; it adds RDNSS (with a lifetime of 1.2
// million seconds) only when the host has an IPv6 resolver, never DNSSL and never an MTU
// option. slirpd answers DNS itself, so guests must be told its IPv6 DNS address, and
// each guest port has its own MTU.
//
// slirpd rewrites libslirp's RAs on their way to each guest rather than answering RS and
// sending periodic RAs itself: libslirp keeps sending its RAs whatever slirpd does (its
// timer cannot be turned off without turning IPv6 off), so slirpd would have to drop
// them anyway, and a second router-advertisement source with its own timers and RS
// handling would duplicate what libslirp already does correctly (router lifetime, prefix,
// reachable time). The flood of one multicast RA becomes one copy per guest port, each
// with that port's MTU; the rewrite drops any MTU, RDNSS and DNSSL options libslirp put
// in, appends slirpd's, and recomputes the IPv6 payload length and ICMPv6 checksum.
// An RA that does not parse (no extension headers allowed, options well formed) passes
// unchanged: it comes from libslirp, never from a guest.

/// The options slirpd adds to every router advertisement toward a guest.
public struct RouterAdvertisementOptions: Equatable, Sendable {
    /// The network's IPv6 DNS address (16 bytes), for RDNSS (RFC 8106); nil: no RDNSS.
    public var dns: [UInt8]?
    /// Search domains for DNSSL (RFC 8106); empty: no DNSSL.
    public var searchDomains: [String]
    /// Lifetime of RDNSS and DNSSL, seconds: three times libslirp's longest RA interval
    /// (600 s), as RFC 8106 5.1 recommends, so one lost RA does not expire them.
    public static let lifetime: UInt32 = 1800

    public init(dns: [UInt8]? = nil, searchDomains: [String] = []) {
        precondition(dns == nil || dns?.count == 16, "an IPv6 address has 16 bytes")
        self.dns = dns
        self.searchDomains = searchDomains
    }
}

public enum RouterAdvertisement {
    static let icmpOffset = 14 + 40
    static let optionsOffset = icmpOffset + 16
    /// NDP option types slirpd sets itself: MTU, RDNSS, DNSSL.
    static let mtuOption: UInt8 = 5
    static let rdnssOption: UInt8 = 25
    static let dnsslOption: UInt8 = 31

    /// Whether `frame` is an untagged IPv6 router advertisement (ICMPv6 type 134, no
    /// extension headers, hop limit 255).
    public static func isAdvertisement<C: RandomAccessCollection<UInt8>>(_ frame: C) -> Bool where C.Index == Int {
        let s = frame.startIndex
        return frame.count >= optionsOffset && frame[s + 12] == 0x86 && frame[s + 13] == 0xDD && frame[s + 14] >> 4 == 6
            && frame[s + 20] == 58 && frame[s + 21] == 255 && frame[s + icmpOffset] == 134 && frame[s + icmpOffset + 1] == 0
    }

    /// `frame` (a router advertisement) with its MTU, RDNSS and DNSSL options replaced by
    /// an MTU option of `mtu` and the RDNSS and DNSSL of `options`; nil if it is not an RA
    /// or its length or options are malformed.
    public static func rewrite<C: RandomAccessCollection<UInt8>>(_ frame: C, mtu: Int, options: RouterAdvertisementOptions) -> [UInt8]?
    where C.Index == Int {
        guard isAdvertisement(frame) else { return nil }
        let s = frame.startIndex
        let payload = Int(frame[s + 18]) << 8 | Int(frame[s + 19])
        let end = 14 + 40 + payload
        guard payload >= 16, end <= frame.count else { return nil }
        var out = Array(frame[s..<(s + optionsOffset)])
        out.reserveCapacity(end + 96)
        var at = optionsOffset
        while at < end {
            guard at + 2 <= end else { return nil }
            let length = Int(frame[s + at + 1]) * 8
            guard length > 0, at + length <= end else { return nil }  // RFC 4861 4.6: zero length is invalid
            let type = frame[s + at]
            if type != mtuOption, type != rdnssOption, type != dnsslOption {
                out += frame[(s + at)..<(s + at + length)]
            }
            at += length
        }
        out += [mtuOption, 1, 0, 0] + bigEndianBytes(UInt32(clamping: max(mtu, 0)))
        if let dns = options.dns {
            out += [rdnssOption, 3, 0, 0] + bigEndianBytes(RouterAdvertisementOptions.lifetime) + dns
        }
        if let dnssl = searchList(options.searchDomains) {
            out += dnssl
        }
        let newPayload = out.count - icmpOffset
        guard newPayload <= 0xFFFF else { return nil }
        out[18] = UInt8(newPayload >> 8)
        out[19] = UInt8(newPayload & 0xFF)
        out[icmpOffset + 2] = 0
        out[icmpOffset + 3] = 0
        let pseudo = Array(out[22..<54]) + bigEndianBytes(UInt32(newPayload)) + [0, 0, 0, 58]
        var icmp = Array(out[icmpOffset...])
        IPChecksum.store(in: &icmp, at: 2, pseudoHeader: pseudo)
        out[icmpOffset + 2] = icmp[2]
        out[icmpOffset + 3] = icmp[3]
        return out
    }

    /// The DNSSL option (RFC 8106 5.2) for `domains` in DNS wire form, zero-padded to 8
    /// bytes; nil when there is no usable domain. Names that do not fit a label's 63 bytes
    /// or a name's 255 are left out (the options parser refuses them already).
    static func searchList(_ domains: [String]) -> [UInt8]? {
        var names: [UInt8] = []
        for domain in domains {
            var name: [UInt8] = []
            var fits = true
            for label in domain.split(separator: ".") {
                let bytes = Array(label.utf8)
                guard !bytes.isEmpty, bytes.count <= 63 else { fits = false; break }
                name += [UInt8(bytes.count)] + bytes
            }
            guard fits, !name.isEmpty, name.count < 255 else { continue }
            names += name + [0]
        }
        guard !names.isEmpty else { return nil }
        var option: [UInt8] = [dnsslOption, 0, 0, 0] + bigEndianBytes(RouterAdvertisementOptions.lifetime) + names
        while option.count % 8 != 0 { option.append(0) }
        guard option.count / 8 <= 255 else { return nil }
        option[1] = UInt8(option.count / 8)
        return option
    }
}
