import FrameSwitch

// FlowBudget: how many flows one guest holds open in libslirp, and a cap on each kind.
//
// Theory of operation. libslirp 4.7 opens a host socket, a descriptor, for every flow a
// guest starts: a TCP connection (with 2 x 128 KiB of socket buffers), a UDP socket per
// guest source address and port (udp_input looks sockets up by the guest's end only, so
// one socket serves every destination of that port), and an ICMP socket per echo request
// (icmp_send makes a new one each time, closed on the reply). Nothing in libslirp bounds
// them, and every guest of a network shares one process's descriptor limit, so one guest
// could take them all. This stage sees every frame between a guest and libslirp, so it
// counts the guest's flows the way libslirp holds them and refuses a new flow past the
// guest's cap with the answer a host would give: a RST for a SYN, an ICMP port
// unreachable for a UDP datagram; an echo request is dropped. The guest's other flows,
// and every other guest, are untouched.
//
// Flows end as libslirp ends them, seen on the wire, or age out on libslirp's own timers:
//   - TCP: a RST from libslirp; a RST from the guest only when libslirp would take it
//     (a good checksum and a sequence number in its window, the ACK it last sent), since
//     it ignores any other; when the guest closed first (libslirp in LAST_ACK), the
//     guest's ACK of libslirp's FIN, which libslirp takes under the same conditions and
//     then frees the connection at once; when libslirp closed first, a FIN each way once
//     libslirp has acknowledged the guest's, then 2 x TCPTV_MSL (10 s) more, libslirp's
//     TIME_WAIT (counting that too after a guest-first close would refuse a guest that
//     makes more than max-tcp / 10 short connections a second). A connection not
//     established after TCPTV_KEEP_INIT (75 s) is dropped by libslirp, so here too. An
//     established one has no idle limit: libslirp runs no keepalive (DO_KEEPALIVE 0).
//   - UDP: SO_EXPIRE (240 s) after the last datagram either way, or SO_EXPIREFAST (10 s)
//     after a reply from port 53 (sorecvfrom's DNS shortcut).
//   - ICMP echo: the reply, or SO_EXPIRE (240 s).
// Host forwards' connections (libslirp's SYN toward the guest) are the host's doing and
// are not counted. The DNS service's TCP slots (`DNSService.maximumConnections`) are
// reached through libslirp too, so TCP to the network's DNS address, port 53, also has a
// small share of its own per guest. The counts can only be low when a flow escaped
// this stage's view; they are never lowered by what a guest merely claims.

/// Per-guest caps on flows toward libslirp.
public struct FlowLimits: Sendable, Equatable {
    public var tcp: Int
    public var udp: Int
    public var icmp: Int
    /// TCP connections to the DNS address, port 53 (also counted in `tcp`).
    public var dnsTCP: Int

    public init(tcp: Int, udp: Int, icmp: Int, dnsTCP: Int) {
        self.tcp = tcp
        self.udp = udp
        self.icmp = icmp
        self.dnsTCP = dnsTCP
    }

    /// The defaults (see NetworkOptions' `max-tcp=` etc. for why these numbers).
    public static let standard = FlowLimits(tcp: 512, udp: 256, icmp: 64, dnsTCP: 8)
}

public enum FlowKind: String, Sendable, CaseIterable {
    case tcp, udp, icmp, dnsTCP = "dns-tcp"
}

/// One guest's flows in libslirp.
public struct FlowBudget: Sendable {
    public enum Verdict: Equatable, Sendable {
        case pass
        /// A new flow refused: `reply` goes to the guest (nil: the frame is just dropped).
        /// `shortage`: refused for the process's descriptors, not the guest's cap.
        case refuse(FlowKind, shortage: Bool, reply: [UInt8]?)
    }

    // libslirp 4.7's timers, in nanoseconds.
    public static let handshakeTimeout: Int64 = 75_000_000_000   // TCPTV_KEEP_INIT
    public static let timeWait: Int64 = 10_000_000_000           // 2 * TCPTV_MSL
    public static let udpExpiry: Int64 = 240_000_000_000         // SO_EXPIRE
    public static let dnsExpiry: Int64 = 10_000_000_000          // SO_EXPIREFAST
    public static let icmpExpiry: Int64 = 240_000_000_000        // SO_EXPIRE

    /// libslirp's buffers per TCP connection: TCP_SNDSPACE + TCP_RCVSPACE (128 KiB each,
    /// reserved by tcp_attach), plus its socket and control block.
    public static let tcpBufferBytes = 2 * 128 * 1024 + 1024
    /// A UDP or ICMP socket has no socket buffers in libslirp, only its socket and an mbuf.
    public static let datagramBufferBytes = 4 * 1024

    struct TCPState {
        var established = false
        /// The sequence number libslirp takes next from the guest, and its window.
        var expected: UInt32
        var window: UInt32 = 1
        /// The guest's FIN's sequence number + 1 once sent, and whether libslirp acknowledged it.
        var guestFinEnd: UInt32?
        var guestFinAcked = false
        var natFin = false
        /// libslirp's FIN's sequence number + 1, once sent after the guest's (LAST_ACK).
        var natFinEndAfterGuest: UInt32?
        var since: Int64
        var closingSince: Int64?
        var dns: Bool
    }

    struct UDPKey: Hashable {
        var guest: IPv6Key
        var port: UInt16
    }

    struct UDPState {
        var lastSeen: Int64
        var fast: Bool
    }

    struct ICMPKey: Hashable {
        var guest: IPv6Key
        var nat: IPv6Key
        var id: UInt16
        var sequence: UInt16
    }

    var tcp: [NATConnections.Flow: TCPState] = [:]
    var udp: [UDPKey: UDPState] = [:]
    var icmp: [ICMPKey: Int64] = [:]
    /// The network's DNS address (IPv4-mapped), whose TCP port 53 has its own share.
    let dnsAddress: IPv6Key?
    public private(set) var dnsTCPCount = 0

    /// New flows refused, by kind, for the guest's caps and for the process's descriptors.
    public private(set) var refusedByCap: [FlowKind: Int] = [:]
    public private(set) var refusedForShortage = 0
    var lastCapExpiry: Int64?
    static let capExpiryInterval: Int64 = 1_000_000_000

    public init(dnsAddress: UInt32?) {
        self.dnsAddress = dnsAddress.map { IPv6Key(mappedIPv4: $0) }
    }

    public var tcpCount: Int { tcp.count }
    public var udpCount: Int { udp.count }
    public var icmpCount: Int { icmp.count }
    public var refusedTotal: Int { refusedByCap.values.reduce(0, +) + refusedForShortage }

    /// libslirp's buffer memory for these flows, estimated.
    public var bufferEstimate: Int {
        tcp.count * Self.tcpBufferBytes + (udp.count + icmp.count) * Self.datagramBufferBytes
    }

    // MARK: Guest to NAT

    /// Checks a guest's frame on its way to libslirp (whole datagrams: no fragments).
    /// `shortage` is asked only before a new flow is admitted under the guest's cap.
    public mutating func admit<C: RandomAccessCollection<UInt8>>(
        _ frame: C, now: Int64, limits: FlowLimits, shortage: () -> Bool
    ) -> Verdict where C.Index == Int {
        guard let packet = Packet(frame) else { return .pass }
        switch packet.proto {
        case 6: return admitTCP(frame, packet, now: now, limits: limits, shortage: shortage)
        case 17:
            guard packet.payload + 8 <= packet.end else { return .pass }
            let key = UDPKey(guest: packet.source, port: read16(frame, packet.payload))
            if udp[key] != nil {
                udp[key] = UDPState(lastSeen: now, fast: false)
                return .pass
            }
            if udp.count >= limits.udp { expireAtCap(now: now) }
            guard udp.count < limits.udp else { return refuse(.udp, frame, packet) }
            if shortage() { return refuseForShortage(.udp, frame, packet) }
            udp[key] = UDPState(lastSeen: now, fast: false)
            return .pass
        case 1, 58:
            guard packet.payload + 8 <= packet.end, frame[frame.startIndex + packet.payload] == (packet.proto == 1 ? 8 : 128) else {
                return .pass
            }
            let key = ICMPKey(guest: packet.source, nat: packet.destination,
                              id: read16(frame, packet.payload + 4), sequence: read16(frame, packet.payload + 6))
            if icmp[key] != nil { return .pass }
            if icmp.count >= limits.icmp { expireAtCap(now: now) }
            guard icmp.count < limits.icmp else {
                refusedByCap[.icmp, default: 0] += 1
                return .refuse(.icmp, shortage: false, reply: nil)
            }
            if shortage() {
                refusedForShortage += 1
                return .refuse(.icmp, shortage: true, reply: nil)
            }
            icmp[key] = now
            return .pass
        default:
            return .pass
        }
    }

    private mutating func admitTCP<C: RandomAccessCollection<UInt8>>(
        _ frame: C, _ packet: Packet, now: Int64, limits: FlowLimits, shortage: () -> Bool
    ) -> Verdict where C.Index == Int {
        let t = packet.payload
        guard t + 20 <= packet.end else { return .pass }
        let flow = NATConnections.Flow(guest: packet.source, nat: packet.destination,
                                       guestPort: read16(frame, t), natPort: read16(frame, t + 2))
        let flags = frame[frame.startIndex + t + 13]
        let seq = read32(frame, t + 4)
        guard var state = tcp[flow] else {
            // Only a SYN without ACK starts a flow; anything else libslirp answers itself.
            guard flags & 0x17 == 0x02 else { return .pass }
            let dns = dnsAddress == packet.destination && flow.natPort == 53
            if tcp.count >= limits.tcp || (dns && dnsTCPCount >= limits.dnsTCP) { expireAtCap(now: now) }
            if dns && dnsTCPCount >= limits.dnsTCP { return refuse(.dnsTCP, frame, packet) }
            guard tcp.count < limits.tcp else { return refuse(.tcp, frame, packet) }
            if shortage() { return refuseForShortage(dns ? .dnsTCP : .tcp, frame, packet) }
            tcp[flow] = TCPState(expected: seq &+ 1, since: now, dns: dns)
            if dns { dnsTCPCount += 1 }
            return .pass
        }
        // libslirp takes a RST, or the ACK that ends LAST_ACK, only inside its window and
        // with a good checksum.
        let acceptable = { seq &- state.expected < max(state.window, 1) && packet.checksumIsValid(frame) }
        if flags & 0x04 != 0 {
            if acceptable() { remove(flow) }
            return .pass
        }
        if flags & 0x10 != 0, let natEnd = state.natFinEndAfterGuest,
           Int32(bitPattern: read32(frame, t + 8) &- natEnd) >= 0, acceptable() {
            remove(flow)
            return .pass
        }
        if flags & 0x01 != 0, state.guestFinEnd == nil, packet.checksumIsValid(frame) {
            let length = UInt32(max(0, packet.end - t - Int(frame[frame.startIndex + t + 12] >> 4) * 4))
            state.guestFinEnd = seq &+ length &+ (flags & 0x02 != 0 ? 1 : 0) &+ 1
            tcp[flow] = state
        }
        return .pass
    }

    // MARK: NAT to guest

    /// Notes a frame libslirp sends the guest: ends of TCP connections, replies.
    public mutating func observe<C: RandomAccessCollection<UInt8>>(toGuest frame: C, now: Int64) where C.Index == Int {
        guard !(tcp.isEmpty && udp.isEmpty && icmp.isEmpty), let packet = Packet(frame) else { return }
        switch packet.proto {
        case 6:
            let t = packet.payload
            guard t + 20 <= packet.end else { return }
            let flow = NATConnections.Flow(guest: packet.destination, nat: packet.source,
                                           guestPort: read16(frame, t + 2), natPort: read16(frame, t))
            guard var state = tcp[flow] else { return }
            let flags = frame[frame.startIndex + t + 13]
            if flags & 0x04 != 0 { return remove(flow) }
            if flags & 0x10 != 0 {
                let ack = read32(frame, t + 8)
                state.expected = ack
                state.window = UInt32(read16(frame, t + 14))
                if flags & 0x02 != 0 { state.established = true }
                if let end = state.guestFinEnd, Int32(bitPattern: ack &- end) >= 0 { state.guestFinAcked = true }
            }
            if flags & 0x01 != 0, !state.natFin {
                state.natFin = true
                if state.guestFinEnd != nil {
                    let length = UInt32(max(0, packet.end - t - Int(frame[frame.startIndex + t + 12] >> 4) * 4))
                    state.natFinEndAfterGuest = read32(frame, t + 4) &+ length &+ 1
                }
            }
            if state.natFin, state.guestFinAcked, state.closingSince == nil { state.closingSince = now }
            tcp[flow] = state
        case 17:
            guard packet.payload + 8 <= packet.end else { return }
            let key = UDPKey(guest: packet.destination, port: read16(frame, packet.payload + 2))
            guard udp[key] != nil else { return }
            udp[key] = UDPState(lastSeen: now, fast: read16(frame, packet.payload) == 53)
        case 1, 58:
            guard packet.payload + 8 <= packet.end, frame[frame.startIndex + packet.payload] == (packet.proto == 1 ? 0 : 129) else {
                return
            }
            icmp[ICMPKey(guest: packet.destination, nat: packet.source,
                         id: read16(frame, packet.payload + 4), sequence: read16(frame, packet.payload + 6))] = nil
        default:
            return
        }
    }

    /// At a cap, forgets timed-out flows before refusing, but at most once a second: a
    /// guest sending new flows at its cap in a loop must not make every frame a full scan.
    mutating func expireAtCap(now: Int64) {
        guard lastCapExpiry.map({ now - $0 >= Self.capExpiryInterval }) ?? true else { return }
        lastCapExpiry = now
        expire(now: now)
    }

    /// Forgets flows that libslirp has timed out by now.
    public mutating func expire(now: Int64) {
        for (flow, state) in tcp {
            let gone = if let closing = state.closingSince {
                now - closing >= Self.timeWait
            } else {
                !state.established && now - state.since >= Self.handshakeTimeout
            }
            if gone { remove(flow) }
        }
        udp = udp.filter { now - $0.value.lastSeen < ($0.value.fast ? Self.dnsExpiry : Self.udpExpiry) }
        icmp = icmp.filter { now - $0.value < Self.icmpExpiry }
    }

    private mutating func remove(_ flow: NATConnections.Flow) {
        guard let state = tcp.removeValue(forKey: flow) else { return }
        if state.dns { dnsTCPCount -= 1 }
    }

    // MARK: Refusals

    private mutating func refuse<C: RandomAccessCollection<UInt8>>(_ kind: FlowKind, _ frame: C, _ packet: Packet) -> Verdict
    where C.Index == Int {
        refusedByCap[kind, default: 0] += 1
        return .refuse(kind, shortage: false, reply: Self.refusal(frame, packet))
    }

    private mutating func refuseForShortage<C: RandomAccessCollection<UInt8>>(_ kind: FlowKind, _ frame: C, _ packet: Packet) -> Verdict
    where C.Index == Int {
        refusedForShortage += 1
        return .refuse(kind, shortage: true, reply: Self.refusal(frame, packet))
    }

    /// The frame a host refusing the flow would send: RST|ACK for a SYN, ICMP(v6) port
    /// unreachable for UDP, from the address and MAC the guest sent to.
    static func refusal<C: RandomAccessCollection<UInt8>>(_ frame: C, _ packet: Packet) -> [UInt8] where C.Index == Int {
        guard packet.proto == 6 else {
            // Port unreachable: ICMP type 3 code 3 (RFC 792), ICMPv6 type 1 code 4 (RFC 4443).
            return packet.isIPv4 ? ICMPError.about(frame, packet, type: 3, code: 3)
                : ICMPError.about(frame, packet, type: 1, code: 4)
        }
        let bytes = Array(frame)
        let t = packet.payload
        let length = UInt32(max(0, packet.end - t - Int(bytes[t + 12] >> 4) * 4))
        let ack = read32(bytes, t + 4) &+ length &+ 1
        var body = Array(bytes[(t + 2)..<(t + 4)]) + Array(bytes[t..<(t + 2)]) + [0, 0, 0, 0] + bigEndianBytes(ack)
        body += [5 << 4, 0x14, 0, 0, 0, 0, 0, 0]   // data offset 5, RST|ACK, window 0
        return ICMPError.reply(to: bytes, packet, proto: 6, body: body, checksumAt: 16)
    }
}

/// Answers slirpd sends a guest about one of its packets, as the host or router it sent
/// the packet to would: from that address and MAC, back to the guest's.
enum ICMPError {
    /// An ICMP (IPv4) or ICMPv6 error: `type`, `code`, `rest` as the header's last four
    /// bytes (the MTU of Fragmentation Needed or Packet Too Big), quoting the packet's IP
    /// header and the first 8 bytes of its payload (RFC 792, RFC 4443).
    static func about<C: RandomAccessCollection<UInt8>>(_ frame: C, _ packet: Packet, type: UInt8, code: UInt8,
                                                        rest: [UInt8] = [0, 0, 0, 0]) -> [UInt8] where C.Index == Int {
        let bytes = Array(frame)
        var body = [type, code, 0, 0] + rest + Array(bytes[14..<min(packet.payload + 8, packet.end)])
        if packet.isIPv4 { IPChecksum.store(in: &body, at: 2) }
        return reply(to: bytes, packet, proto: packet.isIPv4 ? 1 : 58, body: body, checksumAt: packet.isIPv4 ? nil : 2)
    }

    /// `body` in an IP packet from the packet's destination to its source; its checksum at
    /// `checksumAt` is filled with the pseudo-header's sum (TCP, ICMPv6).
    static func reply(to bytes: [UInt8], _ packet: Packet, proto: UInt8, body: [UInt8], checksumAt: Int?) -> [UInt8] {
        var body = body
        let ethernet = Array(bytes[6..<12]) + Array(bytes[0..<6])
        let source = Array(bytes[packet.destinationOffset..<(packet.destinationOffset + packet.addressLength)])
        let destination = Array(bytes[packet.sourceOffset..<(packet.sourceOffset + packet.addressLength)])
        if packet.isIPv4 {
            if let c = checksumAt {
                IPChecksum.store(in: &body, at: c, pseudoHeader: source + destination + [0, proto] + bigEndianBytes(UInt16(body.count)))
            }
            var ip: [UInt8] = [0x45, 0] + bigEndianBytes(UInt16(20 + body.count)) + [0, 0, 0x40, 0, 64, proto, 0, 0] + source + destination
            IPChecksum.store(in: &ip, at: 10)
            return ethernet + [0x08, 0x00] + ip + body
        }
        if let c = checksumAt {
            IPChecksum.store(in: &body, at: c, pseudoHeader: source + destination + bigEndianBytes(UInt32(body.count)) + [0, 0, 0, proto])
        }
        return ethernet + [0x86, 0xDD, 0x60, 0, 0, 0] + bigEndianBytes(UInt16(body.count)) + [proto, 64] + source + destination + body
    }
}

/// The IP layer of a frame, enough to find a flow: unfragmented IPv4, or IPv6 with no
/// extension header (libslirp 4.7 takes no other).
struct Packet {
    var isIPv4: Bool
    var proto: UInt8
    var source: IPv6Key
    var destination: IPv6Key
    var sourceOffset: Int
    var destinationOffset: Int
    var addressLength: Int
    /// Where the transport header starts, and where the IP packet ends, in the frame.
    var payload: Int
    var end: Int

    init?<C: RandomAccessCollection<UInt8>>(_ frame: C) where C.Index == Int {
        let s = frame.startIndex
        guard frame.count >= 34 else { return nil }
        if frame[s + 12] == 0x08, frame[s + 13] == 0x00 {
            let ihl = Int(frame[s + 14] & 0x0F) * 4
            let total = Int(read16(frame, 16))
            guard frame[s + 14] >> 4 == 4, ihl >= 20, total >= ihl, 14 + total <= frame.count,
                  read16(frame, 20) & 0x3FFF == 0 else { return nil }
            isIPv4 = true
            proto = frame[s + 23]
            source = IPv6Key(mappedIPv4: read32(frame, 26))
            destination = IPv6Key(mappedIPv4: read32(frame, 30))
            sourceOffset = 26
            destinationOffset = 30
            addressLength = 4
            payload = 14 + ihl
            end = 14 + total
        } else if frame[s + 12] == 0x86, frame[s + 13] == 0xDD {
            guard frame.count >= 54, frame[s + 14] >> 4 == 6 else { return nil }
            let total = 54 + Int(read16(frame, 18))
            guard total <= frame.count else { return nil }
            isIPv4 = false
            proto = frame[s + 20]
            source = IPv6Key(frame, at: 22)
            destination = IPv6Key(frame, at: 38)
            sourceOffset = 22
            destinationOffset = 38
            addressLength = 16
            payload = 54
            end = total
        } else {
            return nil
        }
    }

    /// Whether the transport checksum (TCP here) is right, as libslirp checks it.
    func checksumIsValid<C: RandomAccessCollection<UInt8>>(_ frame: C) -> Bool where C.Index == Int {
        let bytes = Array(frame)
        let segment = Array(bytes[payload..<end])
        let addresses = Array(bytes[sourceOffset..<(sourceOffset + addressLength)])
            + Array(bytes[destinationOffset..<(destinationOffset + addressLength)])
        let pseudo = isIPv4
            ? addresses + [0, proto] + bigEndianBytes(UInt16(segment.count))
            : addresses + bigEndianBytes(UInt32(segment.count)) + [0, 0, 0, proto]
        return IPChecksum.sum(segment, initial: IPChecksum.sum(pseudo)) == 0xFFFF
    }
}
