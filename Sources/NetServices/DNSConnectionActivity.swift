// DNSConnectionActivity: when the daemon gives up on a guest's DNS-over-TCP connection,
// and which connection makes room for a new one.
//
// Theory of operation. The daemon serves DNS over TCP on a bounded number of
// connections, and a guest could hold them all by opening connections and sending
// nothing, or half a message. So each connection must make progress:
// - Idle (no query being answered and nothing left to send): closed `idleTimeout` after
//   its last progress (accepted, bytes read, bytes written, an answer queued). RFC 7766
//   6.2.3 asks servers for idle timeouts "of the order of seconds"; 5 s keeps a
//   connection for a client's follow-up queries (A then AAAA, a search list, `dig +tcp`
//   with several names), which come within milliseconds, yet frees a stalled slot fast.
// - A message started (its length prefix or any part of it read) must be complete
//   within `partialMessageTimeout` of its first byte, however it trickles in. A guest
//   on the virtual link sends a whole message, up to 64 KiB, in milliseconds; 3 s
//   allows for a few retransmissions of a lost segment (Linux's minimum RTO is 200 ms).
// - Waiting for the guest to read its answers counts as idle: a guest that never reads
//   is closed `idleTimeout` after the last byte it took.
// - While a query is with the upstream the daemon owes the answer, so there is no
//   deadline: the upstream timeout answers it SERVFAIL at worst.
// When every slot is taken, a new connection closes the idlest one instead of being
// refused: a connection not waiting for the upstream before one that is, then the one
// whose last progress is oldest. An honest client's query, which arrives just after its
// connection, is then always served, whatever other connections are held open.
public struct DNSConnectionActivity: Sendable, Equatable {
    public static let idleTimeout: Int64 = 5_000_000_000
    public static let partialMessageTimeout: Int64 = 3_000_000_000

    /// When the connection last made progress (nanoseconds, monotonic).
    public var lastProgress: Int64
    /// When the first byte of the message not yet complete was read; nil: none started.
    public var messageStarted: Int64?
    /// Queries of this connection waiting for the upstream.
    public var inFlight = 0

    public init(opened: Int64) {
        lastProgress = opened
    }

    /// When the connection is to be closed, given whether answer bytes wait to be sent.
    public func deadline(unsent: Bool) -> Int64? {
        if inFlight > 0 { return nil }
        if !unsent, let started = messageStarted {
            return started + Self.partialMessageTimeout
        }
        return lastProgress + Self.idleTimeout
    }

    /// Notes bytes read at `now`, and whether part of a message is left unread after the
    /// whole ones were taken (`completed`: at least one was).
    public mutating func didRead(at now: Int64, completed: Bool, partialLeft: Bool) {
        lastProgress = now
        if !partialLeft {
            messageStarted = nil
        } else if completed || messageStarted == nil {
            messageStarted = now
        }
    }

    /// The index of the connection to close to make room for a new one: the idlest.
    public static func idlest<C: Collection<DNSConnectionActivity>>(_ connections: C) -> C.Index? {
        connections.indices.min { a, b in
            let x = connections[a], y = connections[b]
            if (x.inFlight > 0) != (y.inFlight > 0) { return y.inFlight > 0 }
            return x.lastProgress < y.lastProgress
        }
    }
}
