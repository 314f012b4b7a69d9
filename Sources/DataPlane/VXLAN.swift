import FrameSwitch

// VXLAN (RFC 7348): the pure half of a network's uplink to other hosts.
//
// Theory of operation. The uplink is one more switch port (FramePath.uplinkPort): the
// switch learns which MACs live behind it; behind it, `VXLANRemoteTable` learns which
// remote (a VTEP: another slirpd, a Linux vxlan device, OVS) each of those MACs lives on,
// from the outer source of each decapsulated frame. A frame the switch sends to the uplink
// goes to the remote its destination MAC was learnt on, or, for broadcast, multicast and
// unknown unicast, to every configured remote (head-end replication, as the kernel does
// with an all-zero fdb entry per remote). Entries age like the switch's (300 s), so a
// guest that moved to another host is found again by the next flood.
//
// `VXLANHeader` is the 8-byte header: flags (only the I bit, 0x08), 24 reserved bits, the
// 24-bit VNI, 8 reserved bits. Decoding refuses a header without the I flag, with any other
// flag bit, or for another VNI (the RFC says reserved bits are ignored on receipt; the
// flags byte is checked whole because a G/P/O bit means GBP or GPE, which carry other
// payloads). The outer UDP source port is a hash of the inner flow (RFC 7348 section 5),
// in the kernel's default range 32768-60999, so the underlay's ECMP spreads flows while
// each flow keeps its path (and order). The socket work is SlirpDaemon's (VXLANUplink).

public enum VXLANHeader {
    public static let length = 8
    /// The I flag: the VNI is valid.
    public static let flagI: UInt8 = 0x08
    /// What the uplink adds to a frame on the wire: outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8.
    public static let overheadIPv4 = 50
    public static let overheadIPv6 = 70

    public enum DecodeError: Error, Equatable, Sendable, CustomStringConvertible {
        /// Shorter than the header plus an Ethernet header.
        case tooShort
        /// The I flag missing, or another flag bit set.
        case badFlags(UInt8)
        /// A VNI other than the network's.
        case wrongVNI(UInt32)

        public var description: String {
            switch self {
            case .tooShort: "too short for VXLAN and Ethernet headers"
            case .badFlags(let f): "flags 0x\(String(f, radix: 16)) (want only the I flag, 0x08)"
            case .wrongVNI(let v): "VNI \(v)"
            }
        }
    }

    /// Writes the header for `vni` into the first 8 bytes of `out`.
    public static func write(vni: UInt32, into out: inout [UInt8]) {
        out[0] = flagI
        out[1] = 0; out[2] = 0; out[3] = 0
        out[4] = UInt8(vni >> 16 & 0xFF)
        out[5] = UInt8(vni >> 8 & 0xFF)
        out[6] = UInt8(vni & 0xFF)
        out[7] = 0
    }

    /// A VXLAN payload: the header for `vni` followed by `frame`.
    public static func encapsulate(_ frame: UnsafeRawBufferPointer, vni: UInt32) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length + frame.count)
        write(vni: vni, into: &out)
        out.withUnsafeMutableBytes { dst in
            guard let base = frame.baseAddress, frame.count > 0 else { return }
            dst.baseAddress!.advanced(by: length).copyMemory(from: base, byteCount: frame.count)
        }
        return out
    }

    /// The inner frame's range in `datagram` if it is a VXLAN packet for `vni`.
    public static func decode(_ datagram: UnsafeRawBufferPointer, vni: UInt32) -> Result<Range<Int>, DecodeError> {
        guard datagram.count >= length + EthernetHeader.length else { return .failure(.tooShort) }
        guard datagram[0] == flagI else { return .failure(.badFlags(datagram[0])) }
        let got = UInt32(datagram[4]) << 16 | UInt32(datagram[5]) << 8 | UInt32(datagram[6])
        guard got == vni else { return .failure(.wrongVNI(got)) }
        return .success(length..<datagram.count)
    }

    /// The outer UDP source port for an inner frame: a hash of its flow (MACs, EtherType,
    /// IP addresses and, for TCP/UDP, ports), in 32768-60999 like the kernel's vxlan.
    public static func sourcePort(for frame: UnsafeRawBufferPointer) -> UInt16 {
        // FNV-1a over the flow's fields: stable across runs (unlike Hasher), cheap, and
        // good enough to spread flows over ECMP paths.
        var hash: UInt32 = 2_166_136_261
        @inline(__always) func mix(_ range: Range<Int>) {
            guard range.upperBound <= frame.count else { return }
            for i in range {
                hash ^= UInt32(frame[i])
                hash = hash &* 16_777_619
            }
        }
        mix(0..<14)
        if frame.count >= 34, frame[12] == 0x08, frame[13] == 0x00 {
            let ihl = Int(frame[14] & 0x0F) * 4
            mix(26..<34)
            mix(23..<24)
            let proto = frame[23]
            let fragmented = (UInt16(frame[20]) << 8 | UInt16(frame[21])) & 0x3FFF != 0
            if (proto == 6 || proto == 17), !fragmented, ihl >= 20 { mix((14 + ihl)..<(14 + ihl + 4)) }
        } else if frame.count >= 54, frame[12] == 0x86, frame[13] == 0xDD {
            mix(22..<54)
            mix(20..<21)
            if frame[20] == 6 || frame[20] == 17 { mix(54..<58) }
        }
        let low: UInt32 = 32768, high: UInt32 = 60999
        return UInt16(low + hash % (high - low + 1))
    }
}

/// MAC -> remote, learnt from decapsulated frames, with aging and a cap.
///
/// Generic over the remote's type so it stays pure (SlirpDaemon uses its endpoint type).
/// A MAC the caller says is local (a guest port's, the NAT's) is never learnt: `learn`
/// refuses it, so a remote cannot draw a local guest's traffic onto the underlay.
public struct VXLANRemoteTable<Remote: Hashable & Sendable>: Sendable {
    public enum LearnResult: Equatable, Sendable {
        case learned, refreshed, moved
        /// The MAC is a local port's or the NAT's.
        case refusedLocal
        /// A group or all-zero source, which no station sends from.
        case refusedInvalid
        /// The table is full (a remote inventing MACs).
        case refusedFull
    }

    struct Entry: Sendable {
        var remote: Remote
        var lastSeen: Int64
    }

    public let agingTime: Int64
    public let capacity: Int
    private var table: [MACAddress: Entry] = [:]

    public init(agingTime: Int64 = 300_000_000_000, capacity: Int = 4096) {
        self.agingTime = agingTime
        self.capacity = capacity
    }

    /// Learns that `mac` lives on `remote` unless `isLocal`; `now` in nanoseconds.
    public mutating func learn(_ mac: MACAddress, on remote: Remote, now: Int64, isLocal: Bool) -> LearnResult {
        guard !mac.isGroup, mac != .zero else { return .refusedInvalid }
        guard !isLocal, !EthernetSwitch.isNATMAC(mac) else { return .refusedLocal }
        if var entry = table[mac] {
            let moved = entry.remote != remote
            entry.remote = remote
            entry.lastSeen = now
            table[mac] = entry
            return moved ? .moved : .refreshed
        }
        guard table.count < capacity else { return .refusedFull }
        table[mac] = Entry(remote: remote, lastSeen: now)
        return .learned
    }

    /// The remote `mac` was learnt on, if not aged out.
    public func remote(of mac: MACAddress, now: Int64) -> Remote? {
        guard let entry = table[mac], now - entry.lastSeen < agingTime else { return nil }
        return entry.remote
    }

    /// Where a frame to `destination` goes: its learnt remote, or (group, unknown) all of `remotes`.
    public func targets(for destination: MACAddress, now: Int64, remotes: [Remote]) -> [Remote] {
        if !destination.isGroup, let remote = remote(of: destination, now: now), remotes.contains(remote) { return [remote] }
        return remotes
    }

    /// On a multicast underlay: a frame to a MAC learnt on a remote `reachable` accepts goes
    /// there; group, unknown and stale destinations go to `flood` (the group, and any remotes).
    public func targets(for destination: MACAddress, now: Int64, reachable: (Remote) -> Bool, flood: [Remote]) -> [Remote] {
        if !destination.isGroup, let remote = remote(of: destination, now: now), reachable(remote) { return [remote] }
        return flood
    }

    /// Forgets a MAC that is now local (a guest on this host took it).
    public mutating func forget(_ mac: MACAddress) { table[mac] = nil }

    /// Forgets every MAC on a remote that was removed; returns how many.
    @discardableResult
    public mutating func forget(remote: Remote) -> Int {
        let gone = table.filter { $0.value.remote == remote }.map(\.key)
        for mac in gone { table[mac] = nil }
        return gone.count
    }

    /// Drops entries silent for the aging time; returns how many.
    @discardableResult
    public mutating func expire(now: Int64) -> Int {
        let gone = table.filter { now - $0.value.lastSeen >= agingTime }.map(\.key)
        for mac in gone { table[mac] = nil }
        return gone.count
    }

    /// The live entries, sorted by MAC (for the API).
    public func entries(now: Int64) -> [(mac: MACAddress, remote: Remote)] {
        table.filter { now - $0.value.lastSeen < agingTime }.map { ($0.key, $0.value.remote) }.sorted { $0.mac < $1.mac }
    }

    public var count: Int { table.count }
}

/// The senders seen on a multicast underlay's group, as the kernel's vxlan learns its fdb from
/// the group: each becomes a remote ("member") that learnt unicast goes to and is accepted
/// from. Capped (anyone on the link can send to the group): once full, a new sender is
/// answered with the group itself, so its frames are still taken but its unicast is flooded.
public struct VXLANGroupMembers<Remote: Hashable & Sendable>: Sendable {
    public let capacity: Int
    /// In order of arrival.
    public private(set) var members: [Remote] = []
    private var known: Set<Remote> = []

    public init(capacity: Int) {
        self.capacity = capacity
    }

    public func contains(_ remote: Remote) -> Bool { known.contains(remote) }

    /// The remote to count and learn `sender`'s frames under: itself (admitted now or before)
    /// or, when the members are full, `group`.
    public mutating func admit(_ sender: Remote, group: Remote) -> Remote {
        if known.contains(sender) { return sender }
        guard members.count < capacity else { return group }
        members.append(sender)
        known.insert(sender)
        return sender
    }
}
