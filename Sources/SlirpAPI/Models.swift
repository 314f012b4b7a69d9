// SlirpAPI: the control API's vocabulary, shared by the daemon and slirpctl.
//
// Theory of operation: these are plain Codable values, the JSON bodies of the /v1 API
// described in openapi.yaml. `ControlService` is what the HTTP layer asks of the daemon;
// the daemon answers by running work on its loop thread, so every method is async and
// every value crossing it is Sendable. Errors carry the HTTP status they map to.

/// An error for the API's client: a status (4xx for the client's mistakes) and one line.
public struct APIError: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var message: String

    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }

    public static func badRequest(_ message: String) -> APIError { APIError(400, message) }
    public static func forbidden(_ message: String) -> APIError { APIError(403, message) }
    public static func notFound(_ message: String) -> APIError { APIError(404, message) }
    public static func conflict(_ message: String) -> APIError { APIError(409, message) }

    public var description: String { message }

    /// The JSON body of an error response.
    public struct Body: Codable, Sendable, Equatable {
        public var error: String
        public init(error: String) { self.error = error }
    }
}

/// Frame and byte counters, per guest and summed per network.
public struct Counters: Codable, Sendable, Equatable {
    public var rxFrames: Int
    public var rxBytes: Int
    public var txFrames: Int
    public var txBytes: Int
    public var drops: Int

    public init(rxFrames: Int = 0, rxBytes: Int = 0, txFrames: Int = 0, txBytes: Int = 0, drops: Int = 0) {
        self.rxFrames = rxFrames
        self.rxBytes = rxBytes
        self.txFrames = txFrames
        self.txBytes = txBytes
        self.drops = drops
    }

    public static func + (a: Counters, b: Counters) -> Counters {
        Counters(rxFrames: a.rxFrames + b.rxFrames, rxBytes: a.rxBytes + b.rxBytes,
                 txFrames: a.txFrames + b.txFrames, txBytes: a.txBytes + b.txBytes, drops: a.drops + b.drops)
    }
}

public struct NetworkInfo: Codable, Sendable, Equatable {
    public var name: String
    /// The option string it was started with (QEMU -netdev user syntax).
    public var options: String
    public var network: String
    public var gateway: String
    public var dns: String
    public var dhcpStart: String
    public var mtu: Int
    public var restricted: Bool
    public var endpoints: [String]
    public var guests: Int
    public var counters: Counters
    /// Each guest's caps on flows toward libslirp (max-tcp= etc.).
    public var flowLimits: FlowLimitsInfo?

    public init(name: String, options: String, network: String, gateway: String, dns: String, dhcpStart: String,
                mtu: Int, restricted: Bool, endpoints: [String], guests: Int, counters: Counters,
                flowLimits: FlowLimitsInfo? = nil) {
        self.flowLimits = flowLimits
        self.name = name
        self.options = options
        self.network = network
        self.gateway = gateway
        self.dns = dns
        self.dhcpStart = dhcpStart
        self.mtu = mtu
        self.restricted = restricted
        self.endpoints = endpoints
        self.guests = guests
        self.counters = counters
    }
}

/// How a guest is attached: the one list of transports. The daemon's guest ports use it
/// (GuestPort.Transport), `GuestInfo.transport` is one of its raw values, and openapi.yaml's
/// `GuestInfo.transport` enum must list exactly these (OpenAPISchemaTests checks it).
public enum GuestTransport: String, CaseIterable, Codable, Sendable {
    case stream, tcp, dgram, tap
    case vhostUser = "vhost-user"
}

public struct GuestInfo: Codable, Sendable, Equatable {
    public var id: UInt32
    public var network: String
    /// A `GuestTransport` raw value.
    public var transport: String
    public var endpoint: String
    /// Who is attached: the peer's pid and uid, its TCP address, or its datagram socket path.
    public var peer: String
    public var macs: [String]
    public var ips: [String]
    public var hostname: String?
    public var counters: Counters
    /// RFC 3339, UTC.
    public var connectedSince: String
    /// Its flows open in libslirp, and the new ones refused.
    public var flows: GuestFlows?

    public init(id: UInt32, network: String, transport: String, endpoint: String, peer: String, macs: [String],
                ips: [String], hostname: String?, counters: Counters, connectedSince: String, flows: GuestFlows? = nil) {
        self.flows = flows
        self.id = id
        self.network = network
        self.transport = transport
        self.endpoint = endpoint
        self.peer = peer
        self.macs = macs
        self.ips = ips
        self.hostname = hostname
        self.counters = counters
        self.connectedSince = connectedSince
    }
}

/// A network's caps on each guest's flows toward libslirp.
public struct FlowLimitsInfo: Codable, Sendable, Equatable {
    public var maxTCP: Int
    public var maxUDP: Int
    public var maxICMP: Int
    public var maxDNSTCP: Int
    /// libslirp's buffer memory one guest at all its caps would take, estimated.
    public var bufferEstimatePerGuest: Int
    /// The keys (maxTCP etc.) set through the API, in place of the configured value.
    public var setByAPI: [String]?

    public init(maxTCP: Int, maxUDP: Int, maxICMP: Int, maxDNSTCP: Int, bufferEstimatePerGuest: Int, setByAPI: [String]? = nil) {
        self.setByAPI = setByAPI
        self.maxTCP = maxTCP
        self.maxUDP = maxUDP
        self.maxICMP = maxICMP
        self.maxDNSTCP = maxDNSTCP
        self.bufferEstimatePerGuest = bufferEstimatePerGuest
    }
}

/// One guest's flows open in libslirp, and the new ones refused.
public struct GuestFlows: Codable, Sendable, Equatable {
    public var tcp: Int
    public var udp: Int
    public var icmp: Int
    /// Of `tcp`, those to the DNS service.
    public var dnsTCP: Int
    /// New flows refused for the guest's caps.
    public var refused: Int
    /// New flows refused because slirpd was short of descriptors.
    public var refusedForShortage: Int
    /// libslirp's buffer memory for these flows, estimated, in bytes.
    public var bufferEstimate: Int

    public init(tcp: Int, udp: Int, icmp: Int, dnsTCP: Int, refused: Int, refusedForShortage: Int, bufferEstimate: Int) {
        self.tcp = tcp
        self.udp = udp
        self.icmp = icmp
        self.dnsTCP = dnsTCP
        self.refused = refused
        self.refusedForShortage = refusedForShortage
        self.bufferEstimate = bufferEstimate
    }
}

/// A host forward to add: a QEMU hostfwd rule, optionally aimed at a guest by MAC or
/// DHCP hostname instead of an address, in which case it follows that guest's lease.
public struct ForwardRequest: Codable, Sendable, Equatable {
    public var rule: String
    public var guest: String?

    public init(rule: String, guest: String? = nil) {
        self.rule = rule
        self.guest = guest
    }
}

public struct ForwardInfo: Codable, Sendable, Equatable {
    public var network: String
    /// The rule in QEMU's hostfwd syntax, with the guest address in force now.
    public var rule: String
    public var proto: String
    public var hostAddress: String
    public var hostPort: Int
    /// How the guest was named: an address, or a MAC or hostname the forward follows.
    public var guest: String
    /// The guest address libslirp forwards to now; nil while a followed guest has no lease.
    public var guestAddress: String?
    public var guestPort: Int

    public init(network: String, rule: String, proto: String, hostAddress: String, hostPort: Int, guest: String,
                guestAddress: String?, guestPort: Int) {
        self.network = network
        self.rule = rule
        self.proto = proto
        self.hostAddress = hostAddress
        self.hostPort = hostPort
        self.guest = guest
        self.guestAddress = guestAddress
        self.guestPort = guestPort
    }
}

public struct GuestForwardRequest: Codable, Sendable, Equatable {
    /// QEMU guestfwd syntax: `[tcp]:ADDR:PORT-cmd:COMMAND`, `-tcp:HOST:PORT` or `-unix:PATH`.
    public var rule: String
    public init(rule: String) { self.rule = rule }
}

public struct GuestForwardInfo: Codable, Sendable, Equatable {
    public var network: String
    public var rule: String
    public var address: String
    public var port: Int
    public var target: String

    public init(network: String, rule: String, address: String, port: Int, target: String) {
        self.network = network
        self.rule = rule
        self.address = address
        self.port = port
        self.target = target
    }
}

/// One NAT connection, a row of libslirp's `slirp_connection_info` table (QEMU's
/// `info usernet`). libslirp 4.7 lists IPv4 sockets only: TCP, then UDP, then ICMP. For a
/// host forward (and a connection accepted through one) the source is the host-side
/// listening address, `*` when bound to any; otherwise it is the guest's end.
public struct ConnectionInfo: Codable, Sendable, Equatable {
    /// "TCP", "UDP" or "ICMP".
    public var proto: String
    /// The text between the brackets: a TCP state ("ESTABLISHED", "SYN_SENT", ...),
    /// "HOST_FORWARD", "NONE", or for UDP and ICMP the time left before expiry ("236 sec").
    public var state: String
    public var hostForward: Bool
    /// The host socket, -1 when libslirp has none.
    public var fd: Int
    public var sourceAddress: String
    /// 0 for ICMP, which libslirp prints as "-".
    public var sourcePort: Int
    public var destinationAddress: String
    /// 0 for ICMP, which libslirp prints as "-".
    public var destinationPort: Int
    /// Bytes from the guest not yet written to the host socket.
    public var recvQueue: Int
    /// Bytes from the host socket not yet acknowledged by the guest.
    public var sendQueue: Int

    public init(proto: String, state: String, hostForward: Bool, fd: Int, sourceAddress: String, sourcePort: Int,
                destinationAddress: String, destinationPort: Int, recvQueue: Int, sendQueue: Int) {
        self.proto = proto
        self.state = state
        self.hostForward = hostForward
        self.fd = fd
        self.sourceAddress = sourceAddress
        self.sourcePort = sourcePort
        self.destinationAddress = destinationAddress
        self.destinationPort = destinationPort
        self.recvQueue = recvQueue
        self.sendQueue = sendQueue
    }
}

public struct LeaseInfo: Codable, Sendable, Equatable {
    public var network: String
    public var mac: String
    public var ip: String
    public var hostname: String?
    /// RFC 3339, UTC: when the NAT last acknowledged it.
    public var granted: String
    /// Given by a static lease (config file or API) rather than from the pool.
    public var isStatic: Bool
    /// RFC 3339, UTC; nil when unknown.
    public var expires: String?

    // `static` is a Swift keyword, hence the different property name.
    enum CodingKeys: String, CodingKey {
        case network, mac, ip, hostname, granted, expires
        case isStatic = "static"
    }

    public init(network: String, mac: String, ip: String, hostname: String?, granted: String, isStatic: Bool = false,
                expires: String? = nil) {
        self.network = network
        self.mac = mac
        self.ip = ip
        self.hostname = hostname
        self.granted = granted
        self.isStatic = isStatic
        self.expires = expires
    }
}

/// A static lease to add: this MAC always gets this IPv4 address from DHCP.
public struct StaticLeaseRequest: Codable, Sendable, Equatable {
    public var mac: String
    public var ip: String
    /// The DHCP hostname to hand out, in place of the one the guest asks for. Empty is
    /// the same as absent.
    public var hostname: String?

    public init(mac: String, ip: String, hostname: String? = nil) {
        self.mac = mac
        self.ip = ip
        self.hostname = hostname
    }

    private enum CodingKeys: String, CodingKey, CaseIterable { case mac, ip, hostname }

    /// Refuses unknown keys: a misspelt `hostname` would otherwise be dropped silently
    /// and the lease added without it.
    public init(from decoder: any Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        mac = try c.decode(String.self, forKey: .mac)
        ip = try c.decode(String.self, forKey: .ip)
        hostname = try c.decodeIfPresent(String.self, forKey: .hostname)
    }
}

/// Changes a network's per-guest flow caps at run time (slirpctl limits set); absent keys
/// stay as they are. Each value 0 to 65535; new flows only.
public struct FlowLimitsRequest: Codable, Sendable, Equatable {
    public var maxTCP: Int?
    public var maxUDP: Int?
    public var maxICMP: Int?
    public var maxDNSTCP: Int?

    public init(maxTCP: Int? = nil, maxUDP: Int? = nil, maxICMP: Int? = nil, maxDNSTCP: Int? = nil) {
        self.maxTCP = maxTCP
        self.maxUDP = maxUDP
        self.maxICMP = maxICMP
        self.maxDNSTCP = maxDNSTCP
    }

    private enum CodingKeys: String, CodingKey, CaseIterable { case maxTCP, maxUDP, maxICMP, maxDNSTCP }

    /// Refuses unknown keys: a misspelt `maxTcp` would otherwise change nothing, silently.
    public init(from decoder: any Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self, expected: "maxTCP, maxUDP, maxICMP or maxDNSTCP")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        maxTCP = try c.decodeIfPresent(Int.self, forKey: .maxTCP)
        maxUDP = try c.decodeIfPresent(Int.self, forKey: .maxUDP)
        maxICMP = try c.decodeIfPresent(Int.self, forKey: .maxICMP)
        maxDNSTCP = try c.decodeIfPresent(Int.self, forKey: .maxDNSTCP)
    }
}

/// Asks a network to dial a QEMU `-netdev stream,server=on` socket (slirpctl attach).
public struct AttachmentRequest: Codable, Sendable, Equatable {
    /// `unix:/absolute/path`.
    public var target: String
    public init(target: String) { self.target = target }
}

/// Where a static lease or an attachment comes from.
public enum ItemSource: String, Codable, Sendable {
    /// From the configuration (config file or command line); changes only with it.
    case config
    /// Added through the API; kept across restarts in the state directory.
    case api
}

/// A QEMU server socket a network dials, and how that is going.
public struct AttachmentInfo: Codable, Sendable, Equatable {
    public typealias Source = ItemSource

    public var network: String
    public var target: String
    public var source: Source
    public var connected: Bool
    /// The guest port of the connection, while connected.
    public var guest: UInt32?
    /// Failed attempts since the last connection.
    public var failures: Int
    public var lastError: String?

    public init(network: String, target: String, source: Source, connected: Bool, guest: UInt32?, failures: Int, lastError: String?) {
        self.network = network
        self.target = target
        self.source = source
        self.connected = connected
        self.guest = guest
        self.failures = failures
        self.lastError = lastError
    }
}

public struct StaticLeaseInfo: Codable, Sendable, Equatable {
    public typealias Source = ItemSource

    public var network: String
    public var mac: String
    public var ip: String
    public var hostname: String?
    public var source: Source

    public init(network: String, mac: String, ip: String, hostname: String?, source: Source) {
        self.network = network
        self.mac = mac
        self.ip = ip
        self.hostname = hostname
        self.source = source
    }
}

/// One line of the event stream.
public struct Event: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case guestAttached = "guest-attached"
        case guestDetached = "guest-detached"
        case leaseGranted = "lease-granted"
        case duplicateMACRefused = "duplicate-mac-refused"
        case forwardAdded = "forward-added"
        case forwardRemoved = "forward-removed"
    }

    public var time: String
    public var type: Kind
    public var network: String
    public var guest: UInt32?
    public var mac: String?
    public var ip: String?
    public var hostname: String?
    public var detail: String?

    public init(time: String, type: Kind, network: String, guest: UInt32? = nil, mac: String? = nil, ip: String? = nil,
                hostname: String? = nil, detail: String? = nil) {
        self.time = time
        self.type = type
        self.network = network
        self.guest = guest
        self.mac = mac
        self.ip = ip
        self.hostname = hostname
        self.detail = detail
    }
}

// MARK: Time

/// Unix seconds as RFC 3339 in UTC (`2026-11-21T08:30:00Z`), the form of
/// PosixIO's `wallClockTimestamp`. Pure arithmetic (Hinnant's civil-from-days), so it
/// needs no libc and takes any value: ones outside 1970 to 9999 are clamped, since a
/// lease file could hold anything and RFC 3339 has four-digit years.
public func rfc3339(unixSeconds: Int64) -> String {
    let seconds = min(max(unixSeconds, 0), 253_402_300_799)  // 9999-12-31T23:59:59Z
    let days = seconds / 86400, time = seconds % 86400
    // Days since 0000-03-01, so the leap day ends each 400-year era's years.
    let z = days + 719_468
    let era = z / 146_097                                                // z >= 0 here
    let dayOfEra = z - era * 146_097                                     // 0...146096
    let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365  // 0...399
    let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)  // 0...365, from March
    let shiftedMonth = (5 * dayOfYear + 2) / 153                         // 0...11, March is 0
    let day = dayOfYear - (153 * shiftedMonth + 2) / 5 + 1
    let month = shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9
    let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
    func pad(_ n: Int64, _ width: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
    return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(time / 3600, 2)):\(pad(time / 60 % 60, 2)):\(pad(time % 60, 2))Z"
}

/// Throws for a key of the decoded object that `Keys` does not name: a request body with a
/// misspelt key must fail loudly rather than be half applied.
func refuseUnknownKeys<Keys: CodingKey>(_ decoder: any Decoder, _: Keys.Type, expected: String? = nil) throws {
    let all = try decoder.container(keyedBy: AnyKey.self)
    if let unknown = all.allKeys.first(where: { Keys(stringValue: $0.stringValue) == nil }) {
        throw DecodingError.dataCorrupted(.init(
            codingPath: [unknown],
            debugDescription: "unknown key '\(unknown.stringValue)'" + (expected.map { " (expected \($0))" } ?? "")))
    }
}

/// Any key of a JSON object, to list them all.
private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// A network's VXLAN uplink (`GET /v1/networks/NAME/vxlan`).
public struct VXLANInfo: Codable, Sendable, Equatable {
    public var network: String
    public var vni: UInt32
    /// `ADDR[:PORT]` the uplink receives on.
    public var local: String
    public var remotes: [VXLANRemoteInfo]
    /// Datagrams and frames dropped, by reason (as in /metrics' slirpd_vxlan_dropped_total).
    public var drops: [String: Int]

    public init(network: String, vni: UInt32, local: String, remotes: [VXLANRemoteInfo], drops: [String: Int]) {
        self.network = network
        self.vni = vni
        self.local = local
        self.remotes = remotes
        self.drops = drops
    }
}

/// One VXLAN remote (VTEP), its counters and the MACs learnt behind it.
public struct VXLANRemoteInfo: Codable, Sendable, Equatable {
    /// `ADDR[:PORT]`, as configured (the port is left out when it is 4789).
    public var remote: String
    public var encapsulatedFrames: Int
    public var encapsulatedBytes: Int
    public var decapsulatedFrames: Int
    public var decapsulatedBytes: Int
    public var macs: [String]

    public init(remote: String, encapsulatedFrames: Int, encapsulatedBytes: Int, decapsulatedFrames: Int,
                decapsulatedBytes: Int, macs: [String]) {
        self.remote = remote
        self.encapsulatedFrames = encapsulatedFrames
        self.encapsulatedBytes = encapsulatedBytes
        self.decapsulatedFrames = decapsulatedFrames
        self.decapsulatedBytes = decapsulatedBytes
        self.macs = macs
    }
}

/// A remote to add to a network's VXLAN uplink (`POST /v1/networks/NAME/vxlan/remotes`).
public struct VXLANRemoteRequest: Codable, Sendable, Equatable {
    /// `IPv4[:PORT]`, an IPv6 address or `[IPv6]:PORT`, of the local address's family.
    public var remote: String
    public init(remote: String) { self.remote = remote }
}
