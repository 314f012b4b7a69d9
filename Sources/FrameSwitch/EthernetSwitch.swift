/// A switch port: a guest connection, a datagram peer, or the NAT itself.
public struct PortID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let raw: UInt32
    public init(_ raw: UInt32) { self.raw = raw }
    public var description: String { "port \(raw)" }
    public static func < (a: PortID, b: PortID) -> Bool { a.raw < b.raw }
}

/// A MAC-learning Ethernet switch.
///
/// - A frame's source MAC is learned on its ingress port. An entry is refreshed by
///   every frame from that MAC and ages out after `agingTime` of silence.
/// - Unicast to a learned MAC goes to that port; everything else (broadcast, multicast,
///   unknown unicast) is flooded to every port but the ingress one.
/// - A source MAC that is live on another port is a duplicate: the frame is refused
///   and the owner keeps the address, so a misconfigured second guest cannot take
///   over the first one's traffic.
/// - Port security: a port learns at most `macsPerPort` MACs and the table at most
///   `capacity`. A frame from a MAC past either cap is dropped, never switched: a table
///   that stopped learning would otherwise flood every frame to those MACs (and a guest
///   could overflow it on purpose to see the others' traffic). MACs in the NAT's own
///   ranges (52:55 and 52:56, libslirp's) are never learned from a guest port.
public struct EthernetSwitch: Sendable {
    public enum Verdict: Equatable, Sendable {
        case forward(PortID)
        case flood
        case drop(DropReason)
        case duplicate(owner: PortID)
    }

    public enum DropReason: Equatable, Sendable {
        /// The source is a group or all-zero address, which no station may send from.
        case invalidSource
        /// The destination lives on the ingress port; the segment delivered it already.
        case sameSegment
        /// The port already has `macsPerPort` MACs.
        case portMACLimit
        /// The table holds `capacity` MACs.
        case tableFull
        /// A guest sent from one of the NAT's MACs (52:55:... or 52:56:...).
        case natMAC
    }

    struct Entry: Sendable {
        var port: PortID
        var lastSeen: Int64
    }

    /// A QEMU guest uses one MAC; a namespace or container host behind a tap a few (its
    /// own, a bridge, a veth per container). The daemon sets each network's `max-macs=`
    /// (default 4); 16 here leaves room for those while a flood of invented MACs stops at once.
    public static let defaultMACsPerPort = 16

    public let agingTime: Int64
    public let capacity: Int
    /// Lowering it forgets no MAC: a port over the new cap learns no more until some leave.
    public var macsPerPort: Int
    /// The NAT's port: it has no per-port cap and may use the NAT's MAC ranges.
    public let natPort: PortID?
    /// A VXLAN uplink's port (DataPlane's VXLAN.swift): the stations of every other host
    /// live behind it, so it has no per-port cap (only `capacity`), and a MAC learnt on it
    /// moves at once to a local port that sends from it (a guest that migrated here),
    /// while a MAC live on a local port is a duplicate when it arrives from the uplink.
    public var uplinkPort: PortID?
    private var table: [MACAddress: Entry] = [:]
    private var learnedPerPort: [PortID: Int] = [:]

    /// - Parameters:
    ///   - agingTime: nanoseconds of silence after which a learned MAC is forgotten (bridges use 300 s).
    ///   - capacity: the most MACs learned; a frame from a new MAC past it is dropped.
    ///   - macsPerPort: the most MACs one port (other than `natPort`) may have learned at once.
    public init(agingTime: Int64 = 300_000_000_000, capacity: Int = 4096,
                macsPerPort: Int = EthernetSwitch.defaultMACsPerPort, natPort: PortID? = nil) {
        self.agingTime = agingTime
        self.capacity = capacity
        self.macsPerPort = macsPerPort
        self.natPort = natPort
    }

    /// What tells the NAT's MACs from a guest's that merely starts like one.
    public struct NATIdentity: Sendable, Equatable {
        /// The NAT's IPv4 network: libslirp's IPv4 MACs are 52:55 and one of its own addresses.
        public var network: UInt32
        public var mask: UInt32
        /// The last four bytes of the NAT's own IPv6 addresses (gateway, DNS): 52:56 and those.
        public var suffixes6: Set<UInt32>

        public init(network: UInt32, mask: UInt32, suffixes6: Set<UInt32>) {
            self.network = network
            self.mask = mask
            self.suffixes6 = suffixes6
        }
    }

    /// libslirp's MACs: 52:55 and an IPv4 address, 52:56 and the end of an IPv6 one. Without
    /// `identity` every such MAC counts as the NAT's. With it, only those of the NAT's own
    /// addresses do: a random locally administered MAC (a namespace's tap) starts with 52:55
    /// or 52:56 about once in 8,000, and such a guest must not be locked out. (libslirp also
    /// sends IPv6 from 52:56 and the end of each remote source address; a guest whose MAC
    /// matched one would see it move to the NAT's port, a one in four billion chance.)
    @inlinable
    public static func isNATMAC(_ mac: MACAddress, identity: NATIdentity? = nil) -> Bool {
        let prefix = mac.raw >> 32
        guard prefix == 0x5255 || prefix == 0x5256 else { return false }
        guard let identity else { return true }
        let low = UInt32(truncatingIfNeeded: mac.raw)
        if prefix == 0x5255 { return low & identity.mask == identity.network & identity.mask }
        return identity.suffixes6.contains(low)
    }

    /// See `isNATMAC`; nil until the network's addresses are known.
    public var natIdentity: NATIdentity?

    /// Learns from one frame and decides where it goes. `now` is in nanoseconds.
    public mutating func ingress(from port: PortID, source: MACAddress, destination: MACAddress, now: Int64) -> Verdict {
        guard !source.isGroup, source != .zero else { return .drop(.invalidSource) }
        let fromNAT = port == natPort
        if natPort != nil, !fromNAT, Self.isNATMAC(source, identity: natIdentity) { return .drop(.natMAC) }
        let uncapped = fromNAT || (uplinkPort != nil && port == uplinkPort)
        // One lookup of the source for the common case, a known MAC on its own port: its
        // entry is refreshed through the index, not hashed again (this runs per frame).
        if let at = table.index(forKey: source) {
            let entry = table.values[at]
            if entry.port == port {
                table.values[at].lastSeen = now
            } else {
                if now - entry.lastSeen < agingTime, uplinkPort == nil || entry.port != uplinkPort {
                    return .duplicate(owner: entry.port)
                }
                // An aged entry of another port (or one behind the uplink): it moves here.
                if !uncapped, learnedPerPort[port, default: 0] >= macsPerPort { return .drop(.portMACLimit) }
                forget(source, on: entry.port)
                learnedPerPort[port, default: 0] += 1
                table[source] = Entry(port: port, lastSeen: now)
            }
        } else {
            if !uncapped, learnedPerPort[port, default: 0] >= macsPerPort { return .drop(.portMACLimit) }
            guard table.count < capacity else { return .drop(.tableFull) }
            table[source] = Entry(port: port, lastSeen: now)
            learnedPerPort[port, default: 0] += 1
        }
        if destination.isGroup { return .flood }
        guard let entry = table[destination], now - entry.lastSeen < agingTime else { return .flood }
        return entry.port == port ? .drop(.sameSegment) : .forward(entry.port)
    }

    /// Forgets every MAC on `port` (it closed); returns them.
    @discardableResult
    public mutating func removePort(_ port: PortID) -> [MACAddress] {
        let gone = table.filter { $0.value.port == port }.map(\.key)
        for mac in gone { table[mac] = nil }
        learnedPerPort[port] = nil
        return gone.sorted()
    }

    /// Drops entries silent for longer than the aging time; returns how many.
    @discardableResult
    public mutating func expire(now: Int64) -> Int {
        let gone = table.filter { now - $0.value.lastSeen >= agingTime }
        for (mac, entry) in gone { forget(mac, on: entry.port) }
        return gone.count
    }

    private mutating func forget(_ mac: MACAddress, on port: PortID) {
        table[mac] = nil
        let left = learnedPerPort[port, default: 0] - 1
        learnedPerPort[port] = left > 0 ? left : nil
    }

    /// How many MACs `port` has learned.
    public func learnedCount(on port: PortID) -> Int { learnedPerPort[port, default: 0] }

    public func port(of mac: MACAddress) -> PortID? { table[mac]?.port }

    public func macs(on port: PortID) -> [MACAddress] {
        table.filter { $0.value.port == port }.map(\.key).sorted()
    }

    public var count: Int { table.count }
}
