/// Three words for a connection's hash, where its six or seven fields cost twice the
/// hashing; the key is hashed for every frame. For a given guest address each word is a
/// bijection of what varies (the remote address's halves, `ports`), so one guest's
/// distinct flows never feed the hasher the same words (no crafted collisions).
@inlinable
public func combineFlowHash(into hasher: inout Hasher, guest: (high: UInt64, low: UInt64),
                            remote: (high: UInt64, low: UInt64), ports: UInt64) {
    hasher.combine(guest.low &* 0x9E37_79B9_7F4A_7C15 ^ remote.low)
    hasher.combine(guest.high &* 0xC2B2_AE3D_27D4_EB4F ^ remote.high)
    hasher.combine(ports)
}

/// The NAT's TCP connections to one guest, as seen from the frames libslirp sends it.
///
/// Theory of operation: libslirp 4.7 has no call to drop a connection. When a guest
/// vanishes (QEMU killed, its socket gone), libslirp keeps retransmitting to it, halving
/// the segment size each time, for about ten minutes, and holds the host socket and up
/// to 128 KiB of buffers meanwhile. The guest's own stack would have answered those
/// segments with a RST had it rebooted, so the daemon says it for the guest: it notes,
/// from every TCP segment libslirp sends a guest, the connection's addresses and the
/// ACK number (the next sequence number libslirp expects from the guest), and when the
/// guest is gone it hands libslirp a RST with that sequence number for each connection.
/// libslirp takes a RST at its expected sequence number in every state and closes the
/// connection and its socket at once.
///
/// A RST from either side ends the record. A connection libslirp has sent a FIN on is
/// ending by itself; its record is dropped first when the table is full.
public struct NATConnections: Sendable {
    /// One connection, from the guest's side: IPv4 addresses are stored IPv4-mapped.
    public struct Flow: Hashable, Sendable {
        public var guest: IPv6Key
        public var nat: IPv6Key
        public var guestPort: UInt16
        public var natPort: UInt16

        @inlinable
        public init(guest: IPv6Key, nat: IPv6Key, guestPort: UInt16, natPort: UInt16) {
            self.guest = guest
            self.nat = nat
            self.guestPort = guestPort
            self.natPort = natPort
        }

        /// Hashed for every frame each way (FlowBudget, these records): see `combineFlowHash`.
        @inlinable
        public func hash(into hasher: inout Hasher) {
            combineFlowHash(into: &hasher, guest: (guest.high, guest.low), remote: (nat.high, nat.low),
                            ports: UInt64(guestPort) << 16 | UInt64(natPort))
        }
    }

    @usableFromInline
    struct State: Sendable {
        @usableFromInline var ack: UInt32
        @usableFromInline var guestMAC: MACAddress
        @usableFromInline var natMAC: MACAddress
        @usableFromInline var finSent: Bool

        @inlinable
        init(ack: UInt32, guestMAC: MACAddress, natMAC: MACAddress, finSent: Bool) {
            self.ack = ack
            self.guestMAC = guestMAC
            self.natMAC = natMAC
            self.finSent = finSent
        }
    }

    /// Records per guest; past it new connections go unrecorded (and are counted), so a
    /// guest cannot grow the daemon's memory by opening connections.
    public static let capacity = 1024

    @usableFromInline var flows: [Flow: State] = [:]
    /// Segments of connections left unrecorded because the table was full.
    @usableFromInline var unrecordedCount = 0
    public var unrecorded: Int { unrecordedCount }

    public init() {}

    public var count: Int { flows.count }
    public var isEmpty: Bool { flows.isEmpty }

    /// Notes a frame libslirp sends to a guest; anything but an unfragmented TCP segment
    /// over IPv4 or IPv6 (no extension headers, as libslirp sends them) is ignored.
    @inlinable
    public mutating func observe<C: RandomAccessCollection<UInt8>>(toGuest frame: C) where C.Index == Int {
        let s = frame.startIndex
        guard frame.count >= 54 else { return }
        let flow: Flow, tcp: Int
        if frame[s + 12] == 0x08, frame[s + 13] == 0x00 {
            let ihl = Int(frame[s + 14] & 0x0F) * 4
            guard frame[s + 14] >> 4 == 4, ihl >= 20, frame[s + 23] == 6,
                  frame[s + 20] & 0x1F == 0, frame[s + 21] == 0, frame.count >= 14 + ihl + 20 else { return }
            tcp = 14 + ihl
            flow = Flow(guest: IPv6Key(mappedIPv4: read32(frame, 30)), nat: IPv6Key(mappedIPv4: read32(frame, 26)),
                        guestPort: read16(frame, tcp + 2), natPort: read16(frame, tcp))
        } else if frame[s + 12] == 0x86, frame[s + 13] == 0xDD {
            guard frame[s + 14] >> 4 == 6, frame[s + 20] == 6, frame.count >= 74 else { return }
            tcp = 54
            flow = Flow(guest: IPv6Key(frame, at: 38), nat: IPv6Key(frame, at: 22),
                        guestPort: read16(frame, tcp + 2), natPort: read16(frame, tcp))
        } else {
            return
        }
        let flags = frame[s + tcp + 13]
        if flags & 0x04 != 0 {
            flows.removeValue(forKey: flow)
            return
        }
        // A segment without ACK is libslirp's SYN to a host forward's guest: nothing to answer yet.
        guard flags & 0x10 != 0 else { return }
        let ack = read32(frame, tcp + 8), fin = flags & 0x01 != 0
        if let index = flows.index(forKey: flow) {
            flows.values[index].ack = ack
            if fin { flows.values[index].finSent = true }
            return
        }
        if flows.count >= Self.capacity {
            flows = flows.filter { !$0.value.finSent }
            guard flows.count < Self.capacity else {
                unrecordedCount += 1
                return
            }
        }
        flows[flow] = State(ack: ack, guestMAC: MACAddress(frame, at: 0), natMAC: MACAddress(frame, at: 6), finSent: fin)
    }

    /// The guest MACs the records are for.
    public var guestMACs: Set<MACAddress> { Set(flows.values.map(\.guestMAC)) }

    /// Removes and returns the records of `mac`'s connections.
    public mutating func take(guestMAC mac: MACAddress) -> NATConnections {
        var taken = NATConnections()
        for (flow, state) in flows where state.guestMAC == mac { taken.flows[flow] = state }
        for flow in taken.flows.keys { flows.removeValue(forKey: flow) }
        return taken
    }

    /// Adds another table's records (a guest that came back takes up its connections).
    public mutating func merge(_ other: NATConnections) {
        flows.merge(other.flows) { _, theirs in theirs }
    }

    /// The RST a guest would send on each recorded connection, ready for libslirp's input.
    public func resets() -> [[UInt8]] {
        flows.map { flow, state in Self.reset(flow, state) }
    }

    static func reset(_ flow: Flow, _ state: State) -> [UInt8] {
        var tcp: [UInt8] = bigEndianBytes(flow.guestPort) + bigEndianBytes(flow.natPort) + bigEndianBytes(state.ack) + [0, 0, 0, 0]
        tcp += [5 << 4, 0x04, 0, 0, 0, 0, 0, 0]   // data offset 5, RST, window 0, checksum, urgent
        let ethernet = state.natMAC.bytes + state.guestMAC.bytes
        if let guest = flow.guest.mappedIPv4, let nat = flow.nat.mappedIPv4 {
            let pseudo = bigEndianBytes(guest) + bigEndianBytes(nat) + [0, 6, 0, UInt8(tcp.count)]
            IPChecksum.store(in: &tcp, at: 16, pseudoHeader: pseudo)
            var ip: [UInt8] = [0x45, 0, 0, UInt8(20 + tcp.count), 0, 0, 0x40, 0, 64, 6, 0, 0] + bigEndianBytes(guest) + bigEndianBytes(nat)
            IPChecksum.store(in: &ip, at: 10)
            return ethernet + [0x08, 0x00] + ip + tcp
        }
        let addresses = flow.guest.bytes + flow.nat.bytes
        let pseudo = addresses + [0, 0, 0, UInt8(tcp.count), 0, 0, 0, 6]
        IPChecksum.store(in: &tcp, at: 16, pseudoHeader: pseudo)
        return ethernet + [0x86, 0xDD, 0x60, 0, 0, 0, 0, UInt8(tcp.count), 6, 64] + addresses + tcp
    }
}

extension IPv6Key {
    /// `::ffff:a.b.c.d`, so one key type holds both families.
    @inlinable
    public init(mappedIPv4 address: UInt32) {
        self.high = 0
        self.low = 0xFFFF_0000_0000 | UInt64(address)
    }

    /// The IPv4 address of an IPv4-mapped key.
    public var mappedIPv4: UInt32? {
        high == 0 && low >> 32 == 0xFFFF ? UInt32(truncatingIfNeeded: low) : nil
    }

    public var bytes: [UInt8] {
        (0..<16).map { i in UInt8(truncatingIfNeeded: (i < 8 ? high : low) >> (56 - 8 * UInt64(i % 8))) }
    }
}
