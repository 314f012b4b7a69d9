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
    }

    struct Entry: Sendable {
        var port: PortID
        var lastSeen: Int64
    }

    public let agingTime: Int64
    public let capacity: Int
    private var table: [MACAddress: Entry] = [:]

    /// - Parameters:
    ///   - agingTime: nanoseconds of silence after which a learned MAC is forgotten (bridges use 300 s).
    ///   - capacity: the most MACs learned; past it new ones are flooded to, never learned.
    public init(agingTime: Int64 = 300_000_000_000, capacity: Int = 4096) {
        self.agingTime = agingTime
        self.capacity = capacity
    }

    /// Learns from one frame and decides where it goes. `now` is in nanoseconds.
    public mutating func ingress(from port: PortID, source: MACAddress, destination: MACAddress, now: Int64) -> Verdict {
        guard !source.isGroup, source != .zero else { return .drop(.invalidSource) }
        if let entry = table[source], entry.port != port, now - entry.lastSeen < agingTime {
            return .duplicate(owner: entry.port)
        }
        if table[source] != nil || table.count < capacity {
            table[source] = Entry(port: port, lastSeen: now)
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
        return gone.sorted()
    }

    /// Drops entries silent for longer than the aging time; returns how many.
    @discardableResult
    public mutating func expire(now: Int64) -> Int {
        let before = table.count
        table = table.filter { now - $0.value.lastSeen < agingTime }
        return before - table.count
    }

    public func port(of mac: MACAddress) -> PortID? { table[mac]?.port }

    public func macs(on port: PortID) -> [MACAddress] {
        table.filter { $0.value.port == port }.map(\.key).sorted()
    }

    public var count: Int { table.count }
}
