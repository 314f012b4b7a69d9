import FrameSwitch

// VirtioNetHeader: the header a tap opened with IFF_VNET_HDR puts before every frame.
//
// Theory of operation. With the header, the kernel and slirpd hand each other frames the
// way a virtio-net device and its driver do: checksums may be left for the receiver to
// finish (NEEDS_CSUM: a partial sum from csum_start to the frame's end, stored at
// csum_start + csum_offset) and one TCP segment may be a GSO "super-frame" of up to 64 KiB
// that the receiver may cut into gso_size-byte segments. slirpd opens the tap with a
// 10-byte header (struct virtio_net_hdr, no num_buffers: slirpd reads one whole frame per
// read, so mergeable buffers mean nothing; it also leaves the IP header 4-byte aligned
// behind the 14-byte Ethernet header), in the host's byte order (little-endian on every
// machine slirpd runs on; the tap's legacy default).
//
// - From the kernel (`inbound`): libslirp verifies every TCP/UDP checksum and takes one
//   large TCP segment as it is, so a NEEDS_CSUM frame gets its checksum completed here and
//   a TCP super-frame then goes on whole. A UDP (USO) super-frame is cut into its
//   datagrams, each with its own lengths and checksums, since each is one datagram for the
//   host. Headers that do not describe the frame (unknown gso_type, offsets outside it, a
//   TCP gso_type on a non-TCP frame, gso_size 0, UFO, which slirpd never offers) are
//   refused: the caller drops and counts the frame. A super-frame's IPv4 total length is
//   real: a tap's gso_max_size is the legacy 64 KiB, so BIG TCP's total length 0 never
//   comes (seen: every super-frame passed NATIngressCheck's length check); one whose
//   length does not fit its frame does not parse and is refused.
// - Toward the kernel (`header(forOutgoing:mtu:)`): a TCP frame longer than the tap's MTU
//   gets a GSO header (TCPV4/TCPV6, gso_size filling the MTU) with NEEDS_CSUM and the
//   pseudo-header sum in its checksum field, which is what the kernel's own stack hands a
//   TSO device: the kernel segments it if it forwards it, and trusts it without summing
//   64 KiB if it delivers it locally. A jumbo TCP frame within the MTU (an IP packet over
//   1500 bytes: libslirp's 32 KiB segments at MTU 65520) gets NEEDS_CSUM the same way,
//   without GSO: with an all-zero header the namespace's TCP summed every byte again inside
//   slirpd's tap write (tcp_rcv_established -> __skb_checksum_complete, 1.6% of slirpd's
//   profile host->namespace at MTU 65520). Everything else gets an all-zero header: its
//   checksums are already complete, and DATA_VALID would save nothing, since the tap's
//   virtio_net_hdr_to_skb reads only NEEDS_CSUM and the GSO fields of a written header.
// Pure: bytes in, bytes out, no I/O.

/// The virtio-net header (struct virtio_net_hdr) of one tap frame.
public struct VirtioNetHeader: Equatable, Sendable {
    /// Bytes slirpd asks the tap for (TUNSETVNETHDRSZ).
    public static let length = 10

    /// VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum at csum_start + csum_offset is partial.
    public static let needsChecksum: UInt8 = 1
    /// VIRTIO_NET_HDR_F_DATA_VALID: the sender already verified the checksums.
    public static let dataValid: UInt8 = 2

    public enum GSOType: UInt8, Sendable {
        case none = 0, tcpv4 = 1, udp = 3, tcpv6 = 4, udpL4 = 5
    }
    /// VIRTIO_NET_HDR_GSO_ECN, or-ed into gso_type: the segments carry CWR.
    public static let ecnBit: UInt8 = 0x80

    public var flags: UInt8
    public var gsoType: GSOType
    public var ecn: Bool
    /// Bytes of headers (Ethernet through TCP/UDP) in front of the payload: a hint.
    public var headerLength: UInt16
    /// Payload bytes per segment when gsoType is not none.
    public var gsoSize: UInt16
    public var checksumStart: UInt16
    public var checksumOffset: UInt16

    public init(flags: UInt8 = 0, gsoType: GSOType = .none, ecn: Bool = false, headerLength: UInt16 = 0,
                gsoSize: UInt16 = 0, checksumStart: UInt16 = 0, checksumOffset: UInt16 = 0) {
        self.flags = flags
        self.gsoType = gsoType
        self.ecn = ecn
        self.headerLength = headerLength
        self.gsoSize = gsoSize
        self.checksumStart = checksumStart
        self.checksumOffset = checksumOffset
    }

    public var needsChecksumCompleted: Bool { flags & Self.needsChecksum != 0 }

    /// Reads the header at the start of `bytes`; nil when it is short, has flag bits no
    /// kernel sets, or an unknown gso_type.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> VirtioNetHeader? {
        guard bytes.count >= length else { return nil }
        let flags = bytes[0]
        guard flags & ~(needsChecksum | dataValid) == 0 else { return nil }
        guard let type = GSOType(rawValue: bytes[1] & ~ecnBit) else { return nil }
        func word(_ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
        return VirtioNetHeader(flags: flags, gsoType: type, ecn: bytes[1] & ecnBit != 0, headerLength: word(2),
                               gsoSize: word(4), checksumStart: word(6), checksumOffset: word(8))
    }

    /// Writes the 10 header bytes at the start of `bytes` (which must hold them).
    public func write(to bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= Self.length, "room for a virtio-net header")
        bytes[0] = flags
        bytes[1] = gsoType.rawValue | (ecn ? Self.ecnBit : 0)
        func put(_ at: Int, _ v: UInt16) { bytes[at] = UInt8(v & 0xFF); bytes[at + 1] = UInt8(v >> 8) }
        put(2, headerLength)
        put(4, gsoSize)
        put(6, checksumStart)
        put(8, checksumOffset)
    }

    /// The 10 bytes, for tests and logs.
    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.length)
        out.withUnsafeMutableBytes { write(to: $0) }
        return out
    }

    // MARK: From the kernel

    /// Why a frame from the kernel was refused.
    public enum Malformed: String, Sendable, CaseIterable {
        /// csum_start/csum_offset do not leave two bytes inside the frame (or, for a GSO
        /// frame, csum_start is not its transport header).
        case checksumOutOfFrame = "checksum offsets outside the frame"
        /// A GSO type whose frame is not that protocol, or whose headers do not parse.
        case gsoMismatch = "GSO type does not match the frame"
        case gsoSizeZero = "GSO size 0"
        /// UFO (gso_type UDP): slirpd never offers it.
        case unsupportedGSO = "GSO type not offered"
    }

    /// What to do with a frame read from the tap once its header is known.
    public enum Inbound: Equatable, Sendable {
        /// The frame (checksum completed in place) goes on as one frame.
        case frame
        /// A UDP super-frame: hand `udpSegments` each datagram.
        case udpSegments
        case malformed(Malformed)
    }

    /// Checks the header against `frame` (the bytes after the header) and completes a
    /// NEEDS_CSUM checksum in place. A `.udpSegments` frame still needs `udpSegments`.
    public func inbound(_ frame: UnsafeMutableRawBufferPointer) -> Inbound {
        switch gsoType {
        case .none:
            break
        case .udp:
            return .malformed(.unsupportedGSO)
        case .tcpv4, .tcpv6, .udpL4:
            guard gsoSize > 0 else { return .malformed(.gsoSizeZero) }
            guard let l4 = IPLayers(UnsafeRawBufferPointer(frame), minimumL4: 8) else { return .malformed(.gsoMismatch) }
            switch gsoType {
            case .tcpv4: guard l4.isIPv4, l4.proto == 6 else { return .malformed(.gsoMismatch) }
            case .tcpv6: guard !l4.isIPv4, l4.proto == 6 else { return .malformed(.gsoMismatch) }
            default: guard l4.proto == 17 else { return .malformed(.gsoMismatch) }
            }
            // The kernel points a GSO frame's partial checksum at its transport header;
            // aimed anywhere else, completing it could overwrite the headers just checked.
            guard !needsChecksumCompleted || Int(checksumStart) == l4.l4 else { return .malformed(.checksumOutOfFrame) }
        }
        if needsChecksumCompleted {
            guard Self.completeChecksum(frame: frame, start: Int(checksumStart), offset: Int(checksumOffset)) else {
                return .malformed(.checksumOutOfFrame)
            }
        }
        return gsoType == .udpL4 ? .udpSegments : .frame
    }

    /// Completes a partial checksum: the ones-complement sum from `start` to the frame's
    /// end (the field holds the pseudo-header sum), complemented, stored at start + offset.
    /// A UDP checksum (offset 6) of 0 is sent as 0xFFFF. False when the field is not inside.
    @discardableResult
    public static func completeChecksum(frame: UnsafeMutableRawBufferPointer, start: Int, offset: Int) -> Bool {
        let field = start + offset
        guard start >= EthernetHeader.length, field + 2 <= frame.count, start < frame.count else { return false }
        var sum = ~IPChecksum.sum(UnsafeRawBufferPointer(rebasing: frame[start...]))
        if offset == 6, sum == 0 { sum = 0xFFFF }
        frame[field] = UInt8(sum >> 8)
        frame[field + 1] = UInt8(sum & 0xFF)
        return true
    }

    /// Cuts a UDP super-frame (`inbound` said `.udpSegments`, so its checksum is complete
    /// and its headers parse) into datagrams of `gsoSize` payload bytes, each with its own
    /// IP length, IPv4 ID and header checksum, UDP length and UDP checksum, and hands each
    /// to `emit` in a scratch buffer valid for that call only. Returns the count.
    @discardableResult
    public func udpSegments(_ frame: UnsafeRawBufferPointer, emit: (UnsafeRawBufferPointer) -> Void) -> Int {
        guard gsoType == .udpL4, gsoSize > 0, let l = IPLayers(frame, minimumL4: 8), l.proto == 17 else { return 0 }
        let headers = l.l4 + 8
        let end = l.end
        guard headers <= end else { return 0 }
        let step = Int(gsoSize)
        var count = 0
        withUnsafeTemporaryAllocation(byteCount: headers + step, alignment: 4) { scratch in
            var at = headers
            var ipID = l.isIPv4 ? UInt16(frame[l.ip + 4]) << 8 | UInt16(frame[l.ip + 5]) : 0
            repeat {
                let payload = min(step, end - at)
                let total = headers + payload
                let out = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<total])
                out.copyMemory(from: UnsafeRawBufferPointer(rebasing: frame[0..<headers]))
                UnsafeMutableRawBufferPointer(rebasing: out[headers...]).copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: frame[at..<(at + payload)]))
                let udpLength = 8 + payload
                if l.isIPv4 {
                    Self.put16(out, l.ip + 2, UInt16(total - l.ip))
                    Self.put16(out, l.ip + 4, ipID)
                    ipID &+= 1
                    Self.put16(out, l.ip + 10, 0)
                    let ihl = Int(out[l.ip] & 0x0F) * 4
                    Self.put16(out, l.ip + 10, ~IPChecksum.sum(UnsafeRawBufferPointer(rebasing: out[l.ip..<(l.ip + ihl)])))
                } else {
                    Self.put16(out, l.ip + 4, UInt16(total - l.ip - 40))
                }
                Self.put16(out, l.l4 + 4, UInt16(udpLength))
                Self.put16(out, l.l4 + 6, Self.pseudoHeaderSum(UnsafeRawBufferPointer(out), l, l4Length: udpLength))
                Self.completeChecksum(frame: out, start: l.l4, offset: 6)
                emit(UnsafeRawBufferPointer(out))
                count += 1
                at += payload
            } while at < end
        }
        return count
    }

    // MARK: Toward the kernel

    /// A checksum field rewritten on the way out: write `value` (big-endian) at `offset`
    /// instead of the frame's two bytes there.
    public struct ChecksumPatch: Equatable, Sendable {
        public var offset: Int
        public var value: UInt16
    }

    /// The IP packet size above which a TCP frame within the MTU still gets a partial
    /// checksum (NEEDS_CSUM, no GSO), so the receiving kernel does not sum it again.
    public static let partialChecksumAbove = 1500

    /// The header for a frame slirpd writes to the tap (its checksums complete, as libslirp
    /// and slirpd's services make them). A TCP frame whose IP packet is longer than `mtu`
    /// gets a GSO header whose segments fill the MTU, NEEDS_CSUM, and a patch that puts
    /// the pseudo-header sum in its checksum field; one within the MTU but longer than
    /// `partialChecksumAbove` the same without GSO; any other frame an all-zero header.
    public static func header(forOutgoing frame: UnsafeRawBufferPointer, mtu: Int) -> (header: VirtioNetHeader, patch: ChecksumPatch?) {
        let packet = frame.count - EthernetHeader.length
        guard packet > mtu || packet > partialChecksumAbove, let l = IPLayers(frame, minimumL4: 8), l.proto == 6,
              l.l4 + 20 <= l.end else { return (VirtioNetHeader(), nil) }
        let tcpHeader = Int(frame[l.l4 + 12] >> 4) * 4
        let headers = l.l4 + tcpHeader
        guard tcpHeader >= 20, headers <= l.end else { return (VirtioNetHeader(), nil) }
        let patch = ChecksumPatch(offset: l.l4 + 16, value: pseudoHeaderSum(frame, l, l4Length: l.end - l.l4))
        let segment = mtu - (l.l4 - l.ip) - tcpHeader
        guard l.end - l.ip > mtu else {
            guard l.end - l.ip > partialChecksumAbove else { return (VirtioNetHeader(), nil) }
            return (VirtioNetHeader(flags: needsChecksum, headerLength: UInt16(headers), checksumStart: UInt16(l.l4),
                                    checksumOffset: 16), patch)
        }
        guard headers < l.end, segment > 0 else { return (VirtioNetHeader(), nil) }
        let cwr = frame[l.l4 + 13] & 0x80 != 0
        let header = VirtioNetHeader(flags: needsChecksum, gsoType: l.isIPv4 ? .tcpv4 : .tcpv6, ecn: cwr,
                                     headerLength: UInt16(headers), gsoSize: UInt16(min(segment, 0xFFFF)),
                                     checksumStart: UInt16(l.l4), checksumOffset: 16)
        return (header, patch)
    }

    /// The folded (not complemented) pseudo-header sum for an L4 segment of `l4Length` bytes.
    static func pseudoHeaderSum(_ frame: UnsafeRawBufferPointer, _ l: IPLayers, l4Length: Int) -> UInt16 {
        let addresses = l.isIPv4 ? UnsafeRawBufferPointer(rebasing: frame[(l.ip + 12)..<(l.ip + 20)])
                                 : UnsafeRawBufferPointer(rebasing: frame[(l.ip + 8)..<(l.ip + 40)])
        let extra = IPChecksum.add(IPChecksum.add(UInt16(l.proto), UInt16(l4Length & 0xFFFF)), UInt16(l4Length >> 16))
        return IPChecksum.sum(addresses, initial: extra)
    }

    static func put16(_ bytes: UnsafeMutableRawBufferPointer, _ at: Int, _ v: UInt16) {
        bytes[at] = UInt8(v >> 8)
        bytes[at + 1] = UInt8(v & 0xFF)
    }
}
