import FrameSwitch

// FramePath, the VXLAN uplink: frames between this host's guests and other hosts' (VXLAN.swift).
//
// Theory of operation: a distributed gateway. Every host runs its own libslirp, DHCP and
// DNS with the same addresses, and libslirp's MACs follow from its addresses (52:55 +
// IPv4), so each host's gateway is the same station to a guest wherever it runs. So the
// gateway's traffic stays on its host:
//   - toward the uplink (`mayCross`): frames to the NAT's MACs never get there (the
//     switch forwards them to the NAT); DHCP and DHCPv6 requests, ARP requests and
//     Neighbor Solicitations for the gateway/DNS addresses, and Router Solicitations are
//     answered here and not flooded; libslirp's own frames never cross (fromNAT floods
//     and forwards only to guest ports).
//   - from the uplink (`fromUplink`): nothing reaches libslirp or slirpd's services; a
//     frame to a NAT MAC, DHCP in either direction, an ARP/NDP question about the gateway
//     or DNS, a frame from a MAC or a source address a local port holds or the gateway's
//     are dropped and counted by reason; the rest is switched to the local guests only
//     (never back to the uplink: a VTEP does not forward between remotes, split horizon).
// With isolate=on nothing crosses: guests reach only the NAT.
extension FramePath {
    /// Why a frame from the uplink was dropped.
    public enum UplinkDrop: String, CaseIterable, Sendable {
        /// Its source MAC is a local port's, the NAT's, a group address or all-zero.
        case localSource = "local_source"
        /// For the gateway or DNS (their MACs, or ARP/NDP about their addresses): each host answers its own.
        case gateway
        /// DHCP or DHCPv6: each host serves its own guests.
        case dhcp
        /// It claims an address a local guest holds, or the gateway's or DNS's.
        case spoofedAddress = "spoofed_address"
        /// The MAC table is full.
        case tableFull = "table_full"
        /// Its destination is behind the uplink too, or no local port wants it (isolate=on).
        case notLocal = "not_local"
    }

    /// Switches a decapsulated frame from the uplink to the local guests; nil when
    /// delivered (or flooded), else why it was dropped (counted in `uplinkDrops`).
    @discardableResult
    public func fromUplink(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, now: Int64,
                           sink: any FramePathSink) -> UplinkDrop? {
        guard let uplink = uplinkPort else { return .notLocal }
        if let reason = uplinkRefuses(frame, header, uplink: uplink, now: now, sink: sink) {
            uplinkDrops[reason, default: 0] += 1
            return reason
        }
        return nil
    }

    private func uplinkRefuses(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, uplink: PortID, now: Int64,
                               sink: any FramePathSink) -> UplinkDrop? {
        if settings.isolateGuests { return .notLocal }
        if isNATMAC(header.destination) { return .gateway }
        if let reason = Self.localOnly(frame, header, security.addresses) { return reason }
        if let reason = claimsLocalAddress(frame, header) { return reason }
        let verdict = bridge.ingress(from: uplink, source: header.source, destination: header.destination, now: now)
        switch verdict {
        case .duplicate, .drop(.natMAC), .drop(.invalidSource): return .localSource
        case .drop(.tableFull), .drop(.portMACLimit): return .tableFull
        case .drop(.sameSegment): return .notLocal
        case .forward(let id):
            guard id != natPort, ports[id] != nil else { return .gateway }
            put(frame, to: id, sink: sink)
        case .flood:
            guard !ports.isEmpty else { return .notLocal }
            for id in ports.keys { put(frame, to: id, sink: sink) }
        }
        return nil
    }

    /// Whether a local guest's frame that the switch flooded (or sent to the uplink) may go
    /// over the uplink: not the gateway's business (see the theory of operation).
    public func mayCross(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) -> Bool {
        guard uplinkPort != nil, !settings.isolateGuests, !isNATMAC(header.destination) else { return false }
        return Self.localOnly(frame, header, security.addresses) == nil
    }

    /// Why a frame belongs to this host's gateway (DHCP, ARP/NDP about the gateway or DNS,
    /// a Router Solicitation), or nil.
    static func localOnly(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader,
                          _ addresses: PortSecurity.Addresses) -> UplinkDrop? {
        switch header.etherType {
        case ARPPacket.etherType:
            guard let arp = ARPPacket.parse(frame: frame) else { return nil }
            return addresses.reserved.contains(arp.targetIP) ? .gateway : nil
        case 0x0800:
            guard frame.count >= 34, frame[14] >> 4 == 4, frame[23] == 17 else { return nil }
            let ihl = Int(frame[14] & 0x0F) * 4
            guard frame.count >= 14 + ihl + 4 else { return nil }
            let source = UInt16(frame[14 + ihl]) << 8 | UInt16(frame[15 + ihl])
            let destination = UInt16(frame[16 + ihl]) << 8 | UInt16(frame[17 + ihl])
            if (source == 68 && destination == 67) || (source == 67 && destination == 68) { return .dhcp }
            return addresses.reserved.contains(read32(frame, 30)) ? .gateway : nil
        case 0x86DD:
            guard frame.count >= 58 else { return nil }
            let next = frame[20]
            if next == 17 {
                let destination = UInt16(frame[56]) << 8 | UInt16(frame[57])
                if destination == 547 || destination == 546 { return .dhcp }
            }
            if next == 58 {
                let type = frame[54]
                if type == 133 || type == 134 { return .gateway }  // router solicitation/advertisement
                if type == 135 || type == 136, frame.count >= 78,
                   addresses.reserved6.contains(IPv6Key(frame, at: 62)) { return .gateway }
            }
            return addresses.reserved6.contains(IPv6Key(frame, at: 38)) ? .gateway : nil
        default:
            return nil
        }
    }

    /// A frame from the uplink whose ARP sender or IP source is a local guest's address or
    /// the gateway's/DNS's: it would poison the local guests' neighbour caches.
    private func claimsLocalAddress(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) -> UplinkDrop? {
        let claimed: UInt32?
        if header.etherType == ARPPacket.etherType {
            claimed = ARPPacket.parse(frame: frame)?.senderIP
        } else {
            claimed = ipv4Source(frame: frame)
        }
        if let claimed, claimed != 0,
           security.addresses.reserved.contains(claimed) || security.holder(ofIPv4: claimed) != nil {
            return .spoofedAddress
        }
        if header.etherType == 0x86DD, let source = ipv6Source(frame: frame),
           security.addresses.reserved6.contains(source) || security.holder(ofIPv6: source) != nil {
            return .spoofedAddress
        }
        return nil
    }
}
