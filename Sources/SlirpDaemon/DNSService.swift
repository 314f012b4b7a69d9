import FrameSwitch
import Logging
import NetOptions
import NetServices
import PosixIO

// DNSService: one network's DNS server, in place of libslirp's forwarder.
//
// Theory of operation. Guests ask the network's DNS address. Over UDP the switch hands
// each query here as a parsed datagram (`query(_:from:)`); over TCP libslirp carries the
// guest's connection to a guest forward at DNS:53, which ends on this service's Unix
// socket (`tcpPath`), where queries arrive length-prefixed; to the IPv6 DNS address, it
// carries it to a TCP listener on [::1] (DNSOverTCP6.swift says how and why). Either way `DNSResponder`
// decides: names under the network's domain and their PTRs are answered from `zone`;
// the rest go to the upstream resolver over one connected UDP socket. Each forwarded
// query gets a fresh id, so answers from the upstream are matched to their guest by id
// and then checked against the question asked (RFC 5452); anything else is dropped.
// A query still unanswered after `upstreamTimeout`, or any query when the upstream is
// unreachable (ECONNREFUSED) or there is none, is answered SERVFAIL, so a guest sees
// a failure at once instead of its resolver's timeouts. With `restrict=on` nothing is
// forwarded: the guest may not reach outside, so it gets SERVFAIL too.
//
// Fairness. A UDP query that came as IPv4 fragments is put together first
// (`queryFragment`, DNSQueryReassembly.swift). DNS-over-TCP connections are bounded
// (`maximumConnections`); each is closed when idle or stuck in a partial message, and
// a new connection when all are taken closes the idlest (DNSConnectionActivity.swift),
// so connections held open by one guest cannot keep another's query out. A connection
// closed for any reason takes its queries waiting for the upstream with it. libslirp's
// guest forward hides which guest a connection belongs to, so the log cannot name it;
// the per-guest cap on connections to DNS:53 sits in the data path, before libslirp.
final class DNSService {
    static let upstreamTimeout: Int64 = 4_000_000_000
    static let maximumPending = 1024
    static let maximumConnections = 64

    /// Where a query came from, so its answer can go back.
    enum Origin {
        /// A UDP query from a guest: the reply goes to this port as a frame.
        case udp(UDPDatagram, PortID)
        case tcp(DNSConnection)
    }

    private struct Pending {
        var query: [UInt8]
        var originalID: UInt16
        var origin: Origin
        var deadline: Int64
    }

    var zone: LocalZone
    /// The guests' IPv6 addresses `zone` was built from (Network.rebuildZone).
    var zoneNeighbors6: [IPv6Key: MACAddress] = [:]
    /// Runs before each query is answered: the network refreshes `zone` if it is stale.
    var beforeAnswering: (() -> Void)?
    let upstream: DNSUpstream?
    let restricted: Bool
    let log: Logger
    /// Sends a UDP answer to the guest port it belongs to, with this IPv4 ident (for
    /// the fragments of an answer over the guest's MTU).
    let answerUDP: (UDPDatagram, PortID, [UInt8], UInt16) -> Void
    private var replyIdent: UInt16 = 0

    private(set) var upstreamSocket: Descriptor?
    private var pending: [UInt16: Pending] = [:]
    private var receiveBuffer = [UInt8](repeating: 0, count: 65535)
    private var generator = SystemRandomNumberGenerator()

    let tcpPath: String?
    private(set) var listener: Descriptor?
    /// DNS over TCP to the IPv6 DNS address: the [::1] listener libslirp reaches and the
    /// port rewrite that takes guests there (DNSOverTCP6.swift).
    private(set) var listener6: Descriptor?
    private(set) var tcp6: DNSOverTCP6?
    /// Every listener for DNS over TCP.
    var listeners: [Descriptor] { [listener, listener6].compactMap { $0 } }
    private(set) var connections: [DNSConnection] = []

    private(set) var answeredLocally = 0
    private(set) var forwarded = 0
    private(set) var failed = 0

    /// UDP queries that came as IPv4 fragments.
    private(set) var queryFragments = DNSQueryReassembly()
    private(set) var fragmentsDropped = 0
    /// DNS-over-TCP connections closed to make room for a new one, or for making no progress.
    private(set) var connectionsEvicted = 0
    private(set) var connectionsTimedOut = 0

    init(zone: LocalZone, upstream: DNSUpstream?, restricted: Bool, tcpPath: String?, tcp6Address: IPv6Address? = nil,
         log: Logger, answerUDP: @escaping (UDPDatagram, PortID, [UInt8], UInt16) -> Void) {
        self.zone = zone
        self.upstream = upstream
        self.restricted = restricted
        self.log = log
        self.answerUDP = answerUDP
        self.tcpPath = tcpPath
        if let upstream, !restricted {
            do {
                upstreamSocket = try connectUDP(host: upstream.hostText, port: upstream.port)
            } catch {
                log.error("DNS: cannot use upstream \(upstream): \(error); names outside \(zone.domain) will fail (SERVFAIL)")
            }
        }
        if let tcpPath {
            do {
                listener = try bindUnixSocket(path: tcpPath, kind: .stream, mode: 0o600)
            } catch {
                log.error("DNS: cannot listen on \(tcpPath) for DNS over TCP: \(error); guests get DNS over UDP only")
            }
        }
        if let tcp6Address {
            do {
                let socket = try listenTCP(host: "::1", port: 0)
                listener6 = socket
                tcp6 = DNSOverTCP6(address: tcp6Address.bytes, port: try boundPort(socket))
            } catch {
                listener6?.close()
                listener6 = nil
                log.error("DNS: cannot listen on [::1] for DNS over TCP to \(tcp6Address): \(error); IPv6 guests get DNS over UDP only")
            }
        }
    }

    func close() {
        upstreamSocket?.close()
        listener?.close()
        listener6?.close()
        listener6 = nil
        tcp6 = nil
        if let tcpPath, listener != nil { removeFile(tcpPath) }
        listener = nil
        for connection in connections { connection.socket.close() }
        connections.removeAll()
        pending.removeAll()
    }

    // MARK: Queries

    func query(_ datagram: UDPDatagram, from port: PortID, now: Int64) {
        handle(datagram.payload, origin: .udp(datagram, port), transport: .udp, now: now)
    }

    /// Takes an IPv4 fragment of a UDP datagram to the DNS address, answering the query
    /// once it is whole. Returns why the fragment was dropped, if it was, for the caller
    /// to count and log against the guest.
    func queryFragment(_ frame: UnsafeRawBufferPointer, from port: PortID, now: Int64) -> String? {
        switch queryFragments.input(frame, now: now) {
        case .query(let datagram):
            query(datagram, from: port, now: now)
            return nil
        case .held:
            return nil
        case .dropped(let reason):
            fragmentsDropped += 1
            return reason
        }
    }

    private func handle(_ message: [UInt8], origin: Origin, transport: DNSTransport, now: Int64) {
        beforeAnswering?()
        switch DNSResponder.answer(query: message, zone: zone, transport: transport) {
        case .drop:
            return
        case .reply(let bytes):
            answeredLocally += 1
            answer(origin, bytes)
        case .forward:
            forward(message, origin: origin, now: now)
        }
    }

    private func forward(_ query: [UInt8], origin: Origin, now: Int64) {
        guard let socket = upstreamSocket, pending.count < Self.maximumPending else {
            fail(query, origin)
            return
        }
        var id: UInt16
        repeat { id = UInt16.random(in: 0...UInt16.max, using: &generator) } while pending[id] != nil
        let originalID = UInt16(query[0]) << 8 | UInt16(query[1])
        var rewritten = query
        rewritten[0] = UInt8(id >> 8)
        rewritten[1] = UInt8(truncatingIfNeeded: id)
        do {
            _ = try socket.send(rewritten)
        } catch {
            log.warning("DNS: sending to upstream \(upstream.map { "\($0)" } ?? "-") failed: \(error)")
            fail(query, origin)
            return
        }
        forwarded += 1
        pending[id] = Pending(query: query, originalID: originalID, origin: origin, deadline: now + Self.upstreamTimeout)
        if case .tcp(let connection) = origin { connection.activity.inFlight += 1 }
    }

    /// Takes a query off the waiting list.
    private func removePending(_ id: UInt16) -> Pending? {
        guard let entry = pending.removeValue(forKey: id) else { return nil }
        if case .tcp(let connection) = entry.origin { connection.activity.inFlight -= 1 }
        return entry
    }

    /// Reads every answer the upstream has sent.
    func receiveUpstream() {
        guard let socket = upstreamSocket else { return }
        while true {
            let n: Int
            do {
                guard case .done(let count) = try socket.receive(into: &receiveBuffer) else { return }
                n = count
            } catch {
                // ICMP port unreachable on a connected socket: nobody serves there. Every
                // query waiting on it is lost, so say so now rather than at the timeout.
                log.warning("DNS: upstream \(upstream.map { "\($0)" } ?? "-") failed: \(error); \(pending.count) queries answered SERVFAIL")
                failAll()
                return
            }
            guard n >= 12 else { continue }
            var reply = Array(receiveBuffer[0..<n])
            let id = UInt16(reply[0]) << 8 | UInt16(reply[1])
            guard let entry = pending[id] else { continue }
            reply[0] = UInt8(entry.originalID >> 8)
            reply[1] = UInt8(truncatingIfNeeded: entry.originalID)
            guard DNSResponder.isUpstreamReply(reply, to: entry.query) else { continue }
            _ = removePending(id)
            answer(entry.origin, reply)
        }
    }

    /// Answers SERVFAIL to queries the upstream left unanswered too long, closes
    /// DNS-over-TCP connections that made no progress in time, and forgets fragments
    /// of queries that did not arrive whole in time.
    func expire(now: Int64) {
        for (id, entry) in pending where entry.deadline <= now {
            _ = removePending(id)
            fail(entry.query, entry.origin)
        }
        for connection in connections {
            guard let deadline = connection.deadline, deadline <= now else { continue }
            connectionsTimedOut += 1
            if isLoggedOccurrence(connectionsTimedOut) {
                let what = connection.activity.messageStarted != nil && connection.output.isEmpty
                    ? "a message not completed within \(DNSConnectionActivity.partialMessageTimeout / 1_000_000_000) s"
                    : "no progress for \(DNSConnectionActivity.idleTimeout / 1_000_000_000) s"
                log.notice("DNS: closed a DNS-over-TCP connection after \(what) (\(connectionsTimedOut) timed out so far)")
            }
            drop(connection)
        }
        if queryFragments.held > 0 { queryFragments.expire(now: now) }
    }

    /// Asked every loop turn, so it allocates nothing.
    var nextDeadline: Int64? {
        let upstream = pending.values.lazy.map(\.deadline).min()
        let tcp = connections.lazy.compactMap(\.deadline).min()
        guard let upstream else { return tcp }
        return min(upstream, tcp ?? upstream)
    }

    private func failAll() {
        for id in Array(pending.keys) {
            guard let entry = removePending(id) else { continue }
            fail(entry.query, entry.origin)
        }
    }

    private func fail(_ query: [UInt8], _ origin: Origin) {
        guard let reply = DNSResponder.serverFailure(for: query) else { return }
        failed += 1
        answer(origin, reply)
    }

    private func answer(_ origin: Origin, _ reply: [UInt8]) {
        switch origin {
        case .tcp(let connection):
            guard connection.socket.isOpen else { return }
            // A UDP-sized answer with TC set tells the guest nothing new over TCP, but
            // it is what the upstream said; it goes back as it came.
            let framed = DNSResponder.tcpFrame(reply)
            if !framed.withUnsafeBytes({ connection.output.append($0) }) { connection.failed = true }
            connection.activity.lastProgress = monotonicNanoseconds()
        case .udp(let datagram, let port):
            replyIdent &+= 1
            answerUDP(datagram, port, reply, replyIdent)
        }
    }

    // MARK: DNS over TCP

    func acceptConnections() {
        for listener in listeners { accept(listener) }
    }

    private func accept(_ listener: Descriptor) {
        while true {
            let accepted: Descriptor
            do {
                guard case .done(let (socket, _)) = try listener.accept() else { return }
                accepted = socket
            } catch {
                log.warning("DNS: cannot accept a TCP query connection: \(error)")
                return
            }
            let now = monotonicNanoseconds()
            if connections.count >= Self.maximumConnections,
               let index = DNSConnectionActivity.idlest(connections.lazy.map(\.activity)) {
                let idlest = connections[index]
                connectionsEvicted += 1
                if isLoggedOccurrence(connectionsEvicted) {
                    let idle = (now - idlest.activity.lastProgress) / 1_000_000
                    log.notice("DNS: all \(Self.maximumConnections) DNS-over-TCP connections taken; closed the idlest (no progress for \(idle) ms\(idlest.activity.inFlight > 0 ? ", \(idlest.activity.inFlight) queries unanswered" : "")) for a new one (\(connectionsEvicted) closed so far)")
                }
                drop(idlest)
            }
            connections.append(DNSConnection(socket: accepted, now: now))
        }
    }

    /// Closes a DNS-over-TCP connection and forgets everything about it, its queries
    /// waiting for the upstream included (their answers would have nowhere to go).
    private func drop(_ connection: DNSConnection) {
        connection.socket.close()
        if connection.activity.inFlight > 0 {
            for (id, entry) in pending {
                if case .tcp(let c) = entry.origin, c === connection { _ = removePending(id) }
            }
        }
        connections.removeAll { $0 === connection }
    }

    func service(_ connection: DNSConnection, events: PollEvents, now: Int64) {
        // Closed earlier in this round of the loop (evicted or timed out): nothing to do.
        guard connection.socket.isOpen else { return }
        if events.contains(.output) { flush(connection, now: now) }
        if !events.isDisjoint(with: [.input, .hangup, .error]) { read(connection, now: now) }
    }

    private func read(_ connection: DNSConnection, now: Int64) {
        while connection.socket.isOpen && !connection.failed {
            let result: IOResult<Int>
            do {
                // Whole messages are consumed as they arrive and one is at most 65537
                // bytes with its prefix, so the buffer never fills.
                result = try connection.socket.read(into: connection.input)
            } catch {
                connection.failed = true
                break
            }
            guard case .done(let n) = result else { break }
            if n == 0 {
                connection.closedByPeer = true
                break
            }
            var completed = false
            while true {
                let bytes = Array(connection.input.readable)
                switch DNSResponder.tcpScan(bytes) {
                case .needMore:
                    break
                case .badLength:
                    connection.failed = true
                case .message(let length):
                    connection.input.consume(2 + length)
                    completed = true
                    handle(Array(bytes[2..<(2 + length)]), origin: .tcp(connection), transport: .tcp, now: now)
                    continue
                }
                break
            }
            connection.activity.didRead(at: now, completed: completed, partialLeft: !connection.input.isEmpty)
        }
        flush(connection, now: now)
    }

    private func flush(_ connection: DNSConnection, now: Int64) {
        while !connection.output.isEmpty && !connection.failed {
            do {
                guard case .done(let n) = try connection.socket.write(from: connection.output) else { return }
                if n > 0 { connection.activity.lastProgress = now }
            } catch {
                connection.failed = true
            }
        }
    }

    /// Drops connections that failed, or whose guest closed and got every answer.
    func reapConnections() {
        for connection in connections {
            if connection.failed || (connection.closedByPeer && connection.output.isEmpty && connection.activity.inFlight == 0) {
                drop(connection)
            }
        }
    }
}

/// One TCP connection from libslirp carrying a guest's DNS-over-TCP queries.
final class DNSConnection {
    let socket: Descriptor
    /// Two of the largest messages with their prefixes.
    let input = ByteBuffer(capacity: 2 * 65537)
    let output = ByteBuffer(capacity: 4 * 65537)
    var closedByPeer = false
    var failed = false
    var activity: DNSConnectionActivity

    init(socket: Descriptor, now: Int64) {
        self.socket = socket
        activity = DNSConnectionActivity(opened: now)
    }

    /// When the daemon closes it for making no progress; nil while the upstream owes it an answer.
    var deadline: Int64? { activity.deadline(unsent: !output.isEmpty) }
}

extension DNSUpstream {
    /// The address as getaddrinfo takes it.
    var hostText: String {
        switch address {
        case .v4(let a): "\(a)"
        case .v6(let a): "\(a)"
        }
    }
}
