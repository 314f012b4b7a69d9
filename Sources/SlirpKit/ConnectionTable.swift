// Rows of libslirp's connection table are the API's `ConnectionInfo` values.
import SlirpAPI

/// Parses the text of `slirp_connection_info`.
///
/// Each row is `PROTO[STATE]` then seven whitespace-separated columns (fd, source address,
/// source port, destination address, destination port, RecvQ, SendQ). Column widths are
/// minimums, not fixed (a 4-digit fd widens its row), and the state may contain a space
/// ("236 sec"), so rows are split on whitespace after the closing bracket.
public enum ConnectionTable {
    /// The rows of `text`. The header, QEMU's `Hub -1 (ID):` line and anything else that
    /// is not a well-formed row are skipped.
    public static func parse(_ text: String) -> [ConnectionInfo] {
        text.split(whereSeparator: \.isNewline).compactMap { parseRow($0) }
    }

    static func parseRow(_ line: Substring) -> ConnectionInfo? {
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
        return ConnectionInfo(
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
