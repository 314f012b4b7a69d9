// DHCPServer: a DHCPv4 server for one user-mode network, answering in place of libslirp's
// (which the daemon then disables), so a network is no longer limited to libslirp's 16
// leases.
//
// Theory of operation. The daemon hands every Ethernet frame a guest sends to `handle`.
// Frames that are not a BOOTREQUEST to UDP port 67 at this server (or at the limited
// broadcast address) give nil and go on to libslirp as before. The rest are answered
// here, with frames built to look like libslirp's own: same option set and order, same
// 576-byte datagram from the gateway's address, OFFERs and ACKs to Ethernet and IP
// broadcast. The one deliberate difference: a client that already has an address
// (ciaddr set: renewing, or INFORM) is answered by unicast, as RFC 2131 4.1 asks.
//
// State is a table of leases keyed by client MAC (chaddr), like libslirp's. A lease
// that has expired, or was released, stays in the table as a memory of the client's
// address: nobody else takes that address while never-used ones remain, so a returning
// client gets its old address back. OFFERs reserve their address for `offerHoldSeconds`
// without making a lease. Static leases always win for their MAC and are never handed
// to anyone else. Time is the caller's (`now`, in seconds), so there are no clocks here.
//
// Starvation. One guest sending DISCOVERs from many MACs could otherwise fill the pool
// with offers (and with REQUESTs, leases). So offers are held only a few seconds, enough
// for a slow emulated guest's REQUEST (which is granted afterwards anyway if the address
// is still free), and each switch port the requests arrive on (`handle`'s `port`) may hold
// at most `clientsPerPort` offers and unexpired leases at once: past that a new client
// from the port gets nothing (`.portCap`), while the port's existing clients renew as
// before. Leases read back at start have no port until their client asks again.
//
// The pool is every address from `poolStart` to `poolEnd` inside the network, minus the
// network and broadcast addresses, the server, the DNS address and guest-forward
// addresses (libslirp answers ARP for all of those itself), and static addresses. It is
// searched from the bottom, resuming where the last search found the taken part to end,
// so a /8 costs nothing and each new client costs about one step. Only when no address
// was ever left untouched does a search run over the whole pool for the longest-expired
// lease of another client.

import FrameSwitch
import NetOptions

/// A fixed address for one MAC, optionally with the hostname to offer it (option 12).
public struct StaticLease: Sendable, Equatable {
    public var mac: MACAddress
    public var address: IPv4Address
    public var hostname: String?

    public init(mac: MACAddress, address: IPv4Address, hostname: String? = nil) {
        self.mac = mac
        self.address = address
        self.hostname = hostname
    }
}

/// What the server offers, derived from a network's options the way libslirp derives it.
public struct DHCPServerConfig: Sendable, Equatable {
    public var network: IPv4Network
    /// Option 54 and the replies' source address: the gateway (`host=`).
    public var server: IPv4Address
    /// Option 3; nil with `restrict=on`, as libslirp then offers no router.
    public var router: IPv4Address?
    /// Option 6; nil with `restrict=on`, as libslirp then offers no DNS.
    public var dns: IPv4Address?
    /// `dhcpstart=`.
    public var poolStart: IPv4Address
    /// The last usable address: the broadcast address minus one.
    public var poolEnd: IPv4Address
    /// Addresses never leased: the server, the DNS address (even when not offered) and
    /// guest-forward addresses, all of which libslirp answers ARP for.
    public var excluded: [IPv4Address]
    /// Option 12 for every client without a static hostname (`hostname=`, which QEMU
    /// documents as the name the DHCP server offers the guest).
    public var hostname: String?
    /// Option 15.
    public var domainName: String?
    /// Option 119 (RFC 3397).
    public var searchList: [String]
    /// The BOOTP `file` field (where libslirp puts it) and option 67.
    public var bootfile: String?
    /// Option 66 and the BOOTP `sname` field.
    public var tftpServerName: String?
    /// Option 26 when set (libslirp never sends it).
    public var mtu: Int?
    /// Option 51; libslirp's fixed 86400.
    public var leaseSeconds: UInt32
    public var staticLeases: [StaticLease]
    /// Offers and unexpired leases one switch port may hold at once (`max-macs=`: a
    /// port's clients are its MACs).
    public var clientsPerPort: Int

    public init(options: NetworkOptions, mtu: Int?, staticLeases: [StaticLease]) {
        network = options.network
        server = options.host
        router = options.restricted ? nil : options.host
        dns = options.restricted ? nil : options.dns
        poolStart = options.dhcpStart
        let broadcast = options.network.address.value | ~options.network.mask
        // /31 and /32 have no broadcast address to step back from.
        poolEnd = options.dhcpEnd ?? IPv4Address(options.network.prefixLength >= 31 ? broadcast : broadcast &- 1)
        excluded = [options.host, options.dns] + options.guestForwards.map { $0.resolvedAddress(in: options) }
        hostname = options.hostname
        domainName = options.domainName
        searchList = options.dnsSearch
        bootfile = options.bootfile
        tftpServerName = options.tftpServerName
        self.mtu = mtu
        leaseSeconds = 86400
        self.staticLeases = staticLeases
        clientsPerPort = options.maxMACs
    }
}

/// A bound lease. `expires` is in the caller's seconds; an expired lease is kept as a
/// memory of the client's address until someone else needs that address.
public struct DHCPLease: Sendable, Equatable {
    public var mac: MACAddress
    public var address: IPv4Address
    /// The static lease's hostname, else the one the client sent (option 12).
    public var hostname: String?
    public var expires: Int64
    public var isStatic: Bool

    public init(mac: MACAddress, address: IPv4Address, hostname: String?, expires: Int64, isStatic: Bool) {
        self.mac = mac
        self.address = address
        self.hostname = hostname
        self.expires = expires
        self.isStatic = isStatic
    }
}

public enum DHCPEvent: Sendable, Equatable {
    /// An ACK was sent: a new lease or a renewal.
    case granted(DHCPLease)
    /// The client gave its address back (static leases excepted).
    case released(MACAddress, IPv4Address)
    /// A DISCOVER (or BOOTP request) went unanswered: no free address.
    case poolFull(MACAddress)
    /// The client found the address in use by someone else; it is set aside for
    /// `DHCPServer.declineHoldSeconds`.
    case declined(MACAddress, IPv4Address)
    /// A new client went unanswered: its port already holds `clientsPerPort` offers and leases.
    case portCap(MACAddress, PortID)
}

public struct DHCPServer: Sendable {
    /// How long an OFFER reserves its address for the client it went to: a guest's
    /// REQUEST follows within a second, a slow TCG guest's within a few.
    public static let offerHoldSeconds: Int64 = 5
    /// How long a DECLINEd address stays out of the pool.
    public static let declineHoldSeconds: Int64 = 600

    public let config: DHCPServerConfig
    public let serverMAC: MACAddress

    private struct Offer: Sendable {
        var address: UInt32
        var expires: Int64
    }

    private var byMAC: [MACAddress: DHCPLease] = [:]
    private var byAddress: [UInt32: MACAddress] = [:]
    private var offers: [MACAddress: Offer] = [:]
    private var offeredTo: [UInt32: MACAddress] = [:]
    private var declinedUntil: [UInt32: Int64] = [:]
    /// The clients each port asked for, while they hold an offer or a lease; small sets
    /// (at most `clientsPerPort`), pruned when counted.
    private var clientsOfPort: [PortID: Set<MACAddress>] = [:]
    private var portOfClient: [MACAddress: PortID] = [:]
    private let staticByMAC: [MACAddress: StaticLease]
    private let staticByAddress: [UInt32: MACAddress]
    private let excluded: Set<UInt32>
    /// The IP identification of the next reply; libslirp counts from 0 too.
    private var ipID: UInt16 = 0
    /// No pool address below this is fresh (free and never held, offered or declined),
    /// so allocation does not rescan the taken bottom of the pool every time. Anything
    /// that frees an address lowers it.
    private var freshFrom: UInt64 = 0

    /// `leases` are typically `decodeLeases` of a saved file. Ones that no longer fit the
    /// configuration are dropped: outside the pool, a static lease that changed, or a
    /// second lease for one MAC or address (the later-expiring one is kept).
    public init(config: DHCPServerConfig, serverMAC: MACAddress, leases: [DHCPLease] = []) {
        self.config = config
        self.serverMAC = serverMAC
        var byMAC: [MACAddress: StaticLease] = [:]
        var byAddress: [UInt32: MACAddress] = [:]
        for lease in config.staticLeases where byMAC[lease.mac] == nil && byAddress[lease.address.value] == nil {
            byMAC[lease.mac] = lease
            byAddress[lease.address.value] = lease.mac
        }
        staticByMAC = byMAC
        staticByAddress = byAddress
        excluded = Set(config.excluded.map(\.value))
        freshFrom = UInt64(config.poolStart.value)

        for lease in leases.sorted(by: { $0.expires > $1.expires }) {
            guard self.byMAC[lease.mac] == nil, self.byAddress[lease.address.value] == nil else { continue }
            if lease.isStatic {
                guard staticByMAC[lease.mac]?.address == lease.address else { continue }
            } else {
                guard staticByMAC[lease.mac] == nil, isPoolAddress(lease.address.value) else { continue }
            }
            record(lease)
        }
    }

    /// Every lease held, expired ones included, in address order.
    public var leases: [DHCPLease] { byMAC.values.sorted { $0.address < $1.address } }

    /// The leases still valid at `now`.
    public func activeLeases(now: Int64) -> [DHCPLease] { leases.filter { $0.expires > now } }

    // MARK: Handling requests

    /// Handles one Ethernet frame from a guest. Returns nil if it is not a DHCP request
    /// for this server (the caller passes it on); otherwise the reply frames for the
    /// guest's port, possibly none, and what happened.
    /// `port` is the switch port the frame came in on, for the per-port cap; nil counts nothing.
    public mutating func handle<C: RandomAccessCollection<UInt8>>(
        frame: C, now: Int64, port: PortID? = nil
    ) -> (replies: [[UInt8]], events: [DHCPEvent])? where C.Index == Int {
        guard let message = DHCPMessage.parse(frame: frame), message.op == 1,
              isForThisServer(frame) else { return nil }
        forgetExpiredHolds(now: now)
        if let port, staticByMAC[message.clientMAC] == nil, message.kind == .discover || message.kind == .request || message.kind == nil,
           !admit(message.clientMAC, from: port, now: now) {
            return ([], [.portCap(message.clientMAC, port)])
        }
        let foreignServer = message.serverID.map { $0 != config.server.value } ?? false
        switch message.kind {
        case .discover:
            return discover(message, now: now)
        case .request, nil:
            // A REQUEST naming another server means the client chose that one's offer.
            // No option 53 is plain BOOTP, which libslirp answers like a REQUEST.
            if foreignServer {
                dropOffer(for: message.clientMAC)
                return nil
            }
            return request(message, now: now)
        case .decline:
            return foreignServer ? nil : decline(message, now: now)
        case .release:
            return foreignServer ? nil : release(message, now: now)
        case .inform:
            return inform(message)
        case .offer, .ack, .nak:
            return nil  // server messages; a BOOTREQUEST carrying one is nonsense
        }
    }

    private mutating func discover(_ message: DHCPMessage, now: Int64) -> (replies: [[UInt8]], events: [DHCPEvent]) {
        let mac = message.clientMAC
        guard let address = chooseAddress(for: mac, requested: message.requestedAddress, now: now) else {
            return ([], [.poolFull(mac)])
        }
        if staticByMAC[mac] == nil {
            dropOffer(for: mac)
            offers[mac] = Offer(address: address, expires: now + Self.offerHoldSeconds)
            offeredTo[address] = mac
        }
        let reply = makeReply(.offer, to: message, yourAddress: address, leased: true, unicast: false)
        return ([reply], [])
    }

    private mutating func request(_ message: DHCPMessage, now: Int64) -> (replies: [[UInt8]], events: [DHCPEvent]) {
        let mac = message.clientMAC
        // SELECTING and INIT-REBOOT name the address in option 50, RENEWING and
        // REBINDING in ciaddr.
        let wanted = message.requestedAddress ?? (message.clientAddress != 0 ? message.clientAddress : nil)
        let address: UInt32
        if let wanted {
            guard canGive(wanted, to: mac, now: now) else {
                return ([makeReply(.nak, to: message, yourAddress: 0, leased: false, unicast: false)], [])
            }
            address = wanted
        } else {
            // Neither: plain BOOTP, or a client that skipped DISCOVER. libslirp hands
            // such clients an address as if they had asked for one; so does this.
            guard let chosen = chooseAddress(for: mac, requested: nil, now: now) else {
                return ([], [.poolFull(mac)])
            }
            address = chosen
        }
        let lease = bind(mac: mac, address: address, clientHostname: message.hostname, now: now)
        let reply = makeReply(.ack, to: message, yourAddress: address, leased: true, unicast: message.clientAddress != 0)
        return ([reply], [.granted(lease)])
    }

    private mutating func decline(_ message: DHCPMessage, now: Int64) -> (replies: [[UInt8]], events: [DHCPEvent]) {
        let mac = message.clientMAC
        // Only the holder of an address may take it out of the pool, or one guest could
        // empty the pool for everybody.
        guard let address = message.requestedAddress,
              byMAC[mac]?.address.value == address || offers[mac]?.address == address
                || staticByMAC[mac]?.address.value == address else { return ([], []) }
        declinedUntil[address] = now + Self.declineHoldSeconds
        dropOffer(for: mac)
        if let lease = byMAC[mac], lease.address.value == address { forget(lease) }
        return ([], [.declined(mac, IPv4Address(address))])
    }

    private mutating func release(_ message: DHCPMessage, now: Int64) -> (replies: [[UInt8]], events: [DHCPEvent]) {
        let mac = message.clientMAC
        guard var lease = byMAC[mac], lease.address.value == message.clientAddress,
              !lease.isStatic, lease.expires > now else { return ([], []) }
        // Kept, expired, so the client gets the same address back if nobody took it; its
        // hostname goes with the lease (the lease file keeps no name for it either).
        lease.expires = now
        lease.hostname = nil
        byMAC[mac] = lease
        return ([], [.released(mac, lease.address)])
    }

    private mutating func inform(_ message: DHCPMessage) -> (replies: [[UInt8]], events: [DHCPEvent]) {
        // RFC 2131 3.4: configuration only; no lease, no yiaddr, no lease time.
        let reply = makeReply(.ack, to: message, yourAddress: 0, leased: false, unicast: message.clientAddress != 0)
        return ([reply], [])
    }

    // MARK: Per-port cap

    /// Whether `mac` may have an offer or lease through `port`: it is already one of the
    /// port's clients, or the port holds fewer than `clientsPerPort`. Admitted, it counts.
    private mutating func admit(_ mac: MACAddress, from port: PortID, now: Int64) -> Bool {
        if portOfClient[mac] == port, holds(mac, now: now) { return true }
        var clients = clientsOfPort[port, default: []]
        for client in clients where !holds(client, now: now) || portOfClient[client] != port {
            clients.remove(client)
        }
        guard clients.count < config.clientsPerPort || clients.contains(mac) else {
            clientsOfPort[port] = clients
            return false
        }
        if let previous = portOfClient[mac], previous != port { clientsOfPort[previous]?.remove(mac) }
        clients.insert(mac)
        clientsOfPort[port] = clients
        portOfClient[mac] = port
        return true
    }

    /// Holds an offer or an unexpired lease (static leases need neither and are not capped).
    private func holds(_ mac: MACAddress, now: Int64) -> Bool {
        offers[mac] != nil || (byMAC[mac].map { $0.expires > now && !$0.isStatic } ?? false)
    }

    /// A port left: its offers go at once (their addresses are free again); its clients'
    /// leases stay, and count for whichever port their client asks through next.
    public mutating func removePort(_ port: PortID) {
        for mac in clientsOfPort.removeValue(forKey: port) ?? [] where portOfClient[mac] == port {
            portOfClient[mac] = nil
            dropOffer(for: mac)
        }
    }

    /// Offers not yet taken up.
    public var pendingOffers: Int { offers.count }

    // MARK: The pool

    /// In the pool at all, whoever holds it.
    private func isPoolAddress(_ address: UInt32) -> Bool {
        guard address >= config.poolStart.value, address <= config.poolEnd.value,
              config.network.contains(IPv4Address(address)) else { return false }
        if config.network.prefixLength <= 30 {
            let host = address & ~config.network.mask
            if host == 0 || host == ~config.network.mask { return false }
        }
        return !excluded.contains(address) && staticByAddress[address] == nil
    }

    /// Whether `mac` may have `address` now: its static address, or a pool address that
    /// no one else holds, has been offered, or declined.
    private func canGive(_ address: UInt32, to mac: MACAddress, now: Int64) -> Bool {
        if let fixed = staticByMAC[mac] { return fixed.address.value == address }
        guard isPoolAddress(address) else { return false }
        if let until = declinedUntil[address], until > now { return false }
        if let holder = byAddress[address], holder != mac, let lease = byMAC[holder], lease.expires > now { return false }
        if let taker = offeredTo[address], taker != mac { return false }
        return true
    }

    /// DISCOVER's choice: static, else the client's lease or offer, else what it asked
    /// for, else the lowest address nobody ever held, else the one idle longest.
    private mutating func chooseAddress(for mac: MACAddress, requested: UInt32?, now: Int64) -> UInt32? {
        if let fixed = staticByMAC[mac] { return fixed.address.value }
        for candidate in [byMAC[mac]?.address.value, offers[mac]?.address, requested] {
            if let candidate, canGive(candidate, to: mac, now: now) { return candidate }
        }
        // 64-bit, so a pool ending at 255.255.255.255 cannot overflow the loops.
        let start = UInt64(config.poolStart.value), end = UInt64(config.poolEnd.value)
        guard start <= end else { return nil }
        var address = max(start, freshFrom)
        while address <= end {
            if isFresh(UInt32(address)) {
                freshFrom = address
                return UInt32(address)
            }
            address += 1
        }
        freshFrom = end + 1
        // Only expired leases of other clients are left: take the one idle longest, so
        // recent ones can still come back to theirs.
        var stale: (address: UInt32, expired: Int64)?
        for candidate in start...end {
            let address = UInt32(candidate)
            guard canGive(address, to: mac, now: now), let holder = byAddress[address] else { continue }
            let expired = byMAC[holder]?.expires ?? Int64.min
            if stale.map({ expired < $0.expired }) ?? true { stale = (address, expired) }
        }
        return stale?.address
    }

    /// Free for anybody and remembered for nobody. Offers and declines still in force
    /// count as remembered; `forgetExpiredHolds` has dropped the others.
    private func isFresh(_ address: UInt32) -> Bool {
        isPoolAddress(address) && byAddress[address] == nil && offeredTo[address] == nil && declinedUntil[address] == nil
    }

    private mutating func mayBeFresh(_ address: UInt32) {
        freshFrom = min(freshFrom, UInt64(address))
    }

    private mutating func bind(mac: MACAddress, address: UInt32, clientHostname: String?, now: Int64) -> DHCPLease {
        let fixed = staticByMAC[mac]
        let sent = clientHostname.flatMap { $0.isEmpty ? nil : $0 }
        // A client that leaves option 12 out of a renewal keeps its name; one whose lease
        // was released or expired starts afresh, so a name never sticks to a MAC for
        // whoever uses it next.
        let current = byMAC[mac].flatMap { $0.expires > now ? $0.hostname : nil }
        let hostname = fixed?.hostname ?? sent ?? current
        if let previous = byMAC[mac] { forget(previous) }
        if let holder = byAddress[address], let other = byMAC[holder] { forget(other) }
        dropOffer(for: mac)
        let lease = DHCPLease(
            mac: mac, address: IPv4Address(address), hostname: hostname,
            expires: now + Int64(config.leaseSeconds), isStatic: fixed != nil)
        record(lease)
        return lease
    }

    private mutating func record(_ lease: DHCPLease) {
        byMAC[lease.mac] = lease
        byAddress[lease.address.value] = lease.mac
    }

    private mutating func forget(_ lease: DHCPLease) {
        byMAC[lease.mac] = nil
        if byAddress[lease.address.value] == lease.mac { byAddress[lease.address.value] = nil }
        mayBeFresh(lease.address.value)
    }

    private mutating func dropOffer(for mac: MACAddress) {
        guard let offer = offers.removeValue(forKey: mac) else { return }
        if offeredTo[offer.address] == mac { offeredTo[offer.address] = nil }
        mayBeFresh(offer.address)
    }

    private mutating func forgetExpiredHolds(now: Int64) {
        for (mac, offer) in offers where offer.expires <= now { dropOffer(for: mac) }
        for (address, until) in declinedUntil where until <= now {
            declinedUntil[address] = nil
            mayBeFresh(address)
        }
    }

    // MARK: Frames

    /// An untagged IPv4 frame to UDP port 67 at the server or the limited broadcast
    /// address. `DHCPMessage.parse` has already checked every offset read here. Tagged
    /// frames are left alone, as libslirp leaves them.
    private func isForThisServer<C: RandomAccessCollection<UInt8>>(_ frame: C) -> Bool where C.Index == Int {
        let s = frame.startIndex
        guard frame[s + 12] == 0x08, frame[s + 13] == 0x00 else { return false }
        let headerLength = Int(frame[s + 14] & 0x0F) * 4
        var destination: UInt32 = 0
        for i in 30..<34 { destination = destination << 8 | UInt32(frame[s + i]) }
        let udp = s + 14 + headerLength
        let port = UInt16(frame[udp + 2]) << 8 | UInt16(frame[udp + 3])
        return port == 67 && (destination == 0xFFFF_FFFF || destination == config.server.value)
    }

    private mutating func makeReply(
        _ kind: DHCPMessage.Kind, to message: DHCPMessage, yourAddress: UInt32, leased: Bool, unicast: Bool
    ) -> [UInt8] {
        let hostname = staticByMAC[message.clientMAC]?.hostname ?? config.hostname
        let fields = DHCPReplyFields(
            kind: kind, transactionID: message.transactionID, clientMAC: message.clientMAC,
            clientAddress: kind == .nak ? 0 : message.clientAddress, yourAddress: yourAddress,
            hostname: hostname, includeLeaseTime: leased)
        let destination: (mac: MACAddress, ip: UInt32) =
            unicast ? (message.clientMAC, message.clientAddress) : (.broadcast, 0xFFFF_FFFF)
        let id = ipID
        ipID &+= 1
        return DHCPFrameBuilder.frame(
            bootp: DHCPFrameBuilder.bootp(fields, config: config), ipID: id,
            source: (serverMAC, config.server.value), destination: destination)
    }
}

extension StaticLease {
    /// Why this lease cannot be used on a network with `options`, or nil if it can. The
    /// config file and the API both ask, so both refuse the same leases in the same words.
    public func problem(in options: NetworkOptions) -> String? {
        if mac.isGroup { return "MAC \(mac) is a group (multicast) address, not a guest's" }
        if let problem = addressProblem(in: options) { return problem }
        if let hostname, !Self.isLabel(hostname) {
            return "invalid hostname '\(hostname)' (a single DNS label: 1 to 63 letters, digits and '-')"
        }
        return nil
    }

    /// Why the address cannot be fixed for a guest: outside the network, or one that
    /// libslirp or the network itself uses.
    public func addressProblem(in options: NetworkOptions) -> String? {
        let network = options.network
        // /31 and /32 have no network or broadcast address (RFC 3021).
        let hasBroadcast = network.prefixLength <= 30
        let what: String? =
            if !network.contains(address) { "outside the network \(network)" }
            else if address == options.host { "the gateway's address (host)" }
            else if address == options.dns { "the DNS address (dns)" }
            else if hasBroadcast && address == network.address { "the network address" }
            else if hasBroadcast && address.value == network.address.value | ~network.mask { "the broadcast address" }
            else if options.guestForwards.contains(where: { $0.resolvedAddress(in: options) == address }) {
                "a guest forward's address (guestfwd)"
            } else { nil }
        return what.map { "IP \(address) is \($0)" }
    }

    public static func isLabel(_ name: String) -> Bool {
        (1...63).contains(name.utf8.count) && name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte | 0x20 >= 0x61 && byte | 0x20 <= 0x7A) || byte == UInt8(ascii: "-")
        }
    }
}
