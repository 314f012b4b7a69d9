/// One row of libslirp's connection table (`slirp_connection_info`, which QEMU prints
/// for `info usernet`).
///
/// libslirp 4.7 prints IPv4 sockets only: TCP, then UDP, then ICMP. For a host forward
/// (and a connection accepted through one) the source is the host-side listening address,
/// `*` when bound to any; otherwise it is the guest's end.
public struct NATConnection: Equatable, Sendable {
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
    /// so_rcv: bytes from the guest not yet written to the host socket.
    public var recvQueue: Int
    /// so_snd: bytes from the host socket not yet acknowledged by the guest.
    public var sendQueue: Int

    public init(
        proto: String, state: String, hostForward: Bool, fd: Int,
        sourceAddress: String, sourcePort: Int, destinationAddress: String, destinationPort: Int,
        recvQueue: Int, sendQueue: Int
    ) {
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

/// Parses the text of `slirp_connection_info`.
///
/// Each row is `PROTO[STATE]` then seven whitespace-separated columns (fd, source address,
/// source port, destination address, destination port, RecvQ, SendQ). Column widths are
/// minimums, not fixed (a 4-digit fd widens its row), and the state may contain a space
/// ("236 sec"), so rows are split on whitespace after the closing bracket.
public enum ConnectionTable {
    /// The rows of `text`. The header, QEMU's `Hub -1 (ID):` line and anything else that
    /// is not a well-formed row are skipped.
    public static func parse(_ text: String) -> [NATConnection] {
        text.split(whereSeparator: \.isNewline).compactMap { parseRow($0) }
    }

    static func parseRow(_ line: Substring) -> NATConnection? {
        let row = line.drop(while: { $0 == " " || $0 == "\t" })
        guard let open = row.firstIndex(of: "["), let close = row[open...].firstIndex(of: "]") else { return nil }
        let proto = String(row[..<open])
        guard ["TCP", "UDP", "ICMP"].contains(proto) else { return nil }
        let state = String(row[row.index(after: open)..<close])
        guard !state.isEmpty else { return nil }

        let columns = row[row.index(after: close)...].split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard columns.count == 7,
            let fd = Int(columns[0]),
            let sourcePort = port(columns[2], proto: proto),
            let destinationPort = port(columns[4], proto: proto),
            let recvQueue = Int(columns[5]), recvQueue >= 0,
            let sendQueue = Int(columns[6]), sendQueue >= 0
        else { return nil }
        return NATConnection(
            proto: proto, state: state, hostForward: state == "HOST_FORWARD", fd: fd,
            sourceAddress: String(columns[1]), sourcePort: sourcePort,
            destinationAddress: String(columns[3]), destinationPort: destinationPort,
            recvQueue: recvQueue, sendQueue: sendQueue)
    }

    /// A port column: 0...65535, or "-" for ICMP, which has none.
    static func port(_ text: Substring, proto: String) -> Int? {
        if text == "-" { return proto == "ICMP" ? 0 : nil }
        guard let value = Int(text), (0...65535).contains(value) else { return nil }
        return value
    }
}
