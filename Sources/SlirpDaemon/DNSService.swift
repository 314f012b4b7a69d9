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
// socket (`tcpPath`), where queries arrive length-prefixed. Either way `DNSResponder`
// decides: names under the network's domain and their PTRs are answered from `zone`;
// the rest go to the upstream resolver over one connected UDP socket. Each forwarded
// query gets a fresh id, so answers from the upstream are matched to their guest by id
// and then checked against the question asked (RFC 5452); anything else is dropped.
// A query still unanswered after `upstreamTimeout`, or any query when the upstream is
// unreachable (ECONNREFUSED) or there is none, is answered SERVFAIL, so a guest sees
// a failure at once instead of its resolver's timeouts. With `restrict=on` nothing is
// forwarded: the guest may not reach outside, so it gets SERVFAIL too.
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
    let upstream: DNSUpstream?
    let restricted: Bool
    let log: Logger
    /// Sends a UDP answer to the guest port it belongs to.
    let answerUDP: (UDPDatagram, PortID, [UInt8]) -> Void

    private(set) var upstreamSocket: Descriptor?
    private var pending: [UInt16: Pending] = [:]
    private var receiveBuffer = [UInt8](repeating: 0, count: 65535)
    private var generator = SystemRandomNumberGenerator()

    let tcpPath: String?
    private(set) var listener: Descriptor?
    private(set) var connections: [DNSConnection] = []

    private(set) var answeredLocally = 0
    private(set) var forwarded = 0
    private(set) var failed = 0

    init(zone: LocalZone, upstream: DNSUpstream?, restricted: Bool, tcpPath: String?, log: Logger,
         answerUDP: @escaping (UDPDatagram, PortID, [UInt8]) -> Void) {
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
    }

    func close() {
        upstreamSocket?.close()
        listener?.close()
        if let tcpPath, listener != nil { removeFile(tcpPath) }
        listener = nil
        for connection in connections { connection.socket.close() }
        connections.removeAll()
    }

    // MARK: Queries

    func query(_ datagram: UDPDatagram, from port: PortID, now: Int64) {
        handle(datagram.payload, origin: .udp(datagram, port), transport: .udp, now: now)
    }

    private func handle(_ message: [UInt8], origin: Origin, transport: DNSTransport, now: Int64) {
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
            pending[id] = nil
            answer(entry.origin, reply)
        }
    }

    /// Answers SERVFAIL to queries the upstream left unanswered too long.
    func expire(now: Int64) {
        for (id, entry) in pending where entry.deadline <= now {
            pending[id] = nil
            fail(entry.query, entry.origin)
        }
    }

    var nextDeadline: Int64? { pending.values.lazy.map(\.deadline).min() }

    private func failAll() {
        let all = pending.values
        pending.removeAll()
        for entry in all { fail(entry.query, entry.origin) }
    }

    private func fail(_ query: [UInt8], _ origin: Origin) {
        guard let reply = DNSResponder.serverFailure(for: query) else { return }
        failed += 1
        answer(origin, reply)
    }

    private func answer(_ origin: Origin, _ reply: [UInt8]) {
        switch origin {
        case .udp(let datagram, let port):
            answerUDP(datagram, port, reply)
        case .tcp(let connection):
            guard connection.socket.isOpen else { return }
            // A UDP-sized answer with TC set tells the guest nothing new over TCP, but
            // it is what the upstream said; it goes back as it came.
            let framed = DNSResponder.tcpFrame(reply)
            if !framed.withUnsafeBytes({ connection.output.append($0) }) { connection.failed = true }
        }
    }

    // MARK: DNS over TCP

    func acceptConnections() {
        guard let listener else { return }
        while true {
            let accepted: Descriptor
            do {
                guard case .done(let (socket, _)) = try listener.accept() else { return }
                accepted = socket
            } catch {
                log.warning("DNS: cannot accept a TCP query connection: \(error)")
                return
            }
            guard connections.count < Self.maximumConnections else {
                accepted.close()
                continue
            }
            connections.append(DNSConnection(socket: accepted))
        }
    }

    func service(_ connection: DNSConnection, events: PollEvents, now: Int64) {
        if events.contains(.output) { flush(connection) }
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
            while true {
                let bytes = Array(connection.input.readable)
                switch DNSResponder.tcpScan(bytes) {
                case .needMore:
                    break
                case .badLength:
                    connection.failed = true
                case .message(let length):
                    connection.input.consume(2 + length)
                    handle(Array(bytes[2..<(2 + length)]), origin: .tcp(connection), transport: .tcp, now: now)
                    continue
                }
                break
            }
        }
        flush(connection)
    }

    private func flush(_ connection: DNSConnection) {
        while !connection.output.isEmpty && !connection.failed {
            do {
                guard case .done = try connection.socket.write(from: connection.output) else { return }
            } catch {
                connection.failed = true
            }
        }
    }

    /// Drops connections that failed, or whose guest closed and got every answer.
    func reapConnections() {
        connections.removeAll { connection in
            let waiting = pending.values.contains { if case .tcp(let c) = $0.origin { return c === connection } else { return false } }
            guard connection.failed || (connection.closedByPeer && connection.output.isEmpty && !waiting) else { return false }
            connection.socket.close()
            return true
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

    init(socket: Descriptor) { self.socket = socket }
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
