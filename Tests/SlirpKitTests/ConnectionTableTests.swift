import SlirpAPI
import SlirpKit
import Testing

@Suite("slirp_connection_info parsing")
struct ConnectionTableTests {
    /// The verbatim output of libslirp 4.7.0's slirp_connection_info (Debian 12), from an
    /// instance with hostfwds tcp:127.0.0.1:5555-:22, tcp::5557-:80 and
    /// udp:127.0.0.1:5556-:53, after injected guest frames: a TCP handshake to
    /// 10.0.2.2:6000 with 100 bytes pending to the guest, a UDP datagram to 10.0.2.2:7000,
    /// an ICMP echo to 127.0.0.1, and a host connect to 5555 the guest had not answered.
    static let sample = """
          Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
          TCP[SYN_SENT]      11       127.0.0.1  5555       10.0.2.15    22     0     0
          TCP[ESTABLISHED]    7       10.0.2.15 40512        10.0.2.2  6000     0   100
          TCP[HOST_FORWARD]   4               *  5557       10.0.2.15    80     0     0
          TCP[HOST_FORWARD]   3       127.0.0.1  5555       10.0.2.15    22     0     0
          UDP[237 sec]       13       10.0.2.15 35061        10.0.2.2  7000     0     0
          UDP[HOST_FORWARD]   5       127.0.0.1  5556       10.0.2.15    53     0     0
          ICMP[240 sec]      14       10.0.2.15  -          127.0.0.1  -        0     0

        """

    @Test("every row of a real table, in order, header skipped")
    func realSample() {
        let rows = ConnectionTable.parse(Self.sample)
        #expect(rows == [
            ConnectionInfo(proto: "TCP", state: "SYN_SENT", hostForward: false, fd: 11, sourceAddress: "127.0.0.1", sourcePort: 5555,
                          destinationAddress: "10.0.2.15", destinationPort: 22, recvQueue: 0, sendQueue: 0),
            ConnectionInfo(proto: "TCP", state: "ESTABLISHED", hostForward: false, fd: 7, sourceAddress: "10.0.2.15", sourcePort: 40512,
                          destinationAddress: "10.0.2.2", destinationPort: 6000, recvQueue: 0, sendQueue: 100),
            ConnectionInfo(proto: "TCP", state: "HOST_FORWARD", hostForward: true, fd: 4, sourceAddress: "*", sourcePort: 5557,
                          destinationAddress: "10.0.2.15", destinationPort: 80, recvQueue: 0, sendQueue: 0),
            ConnectionInfo(proto: "TCP", state: "HOST_FORWARD", hostForward: true, fd: 3, sourceAddress: "127.0.0.1", sourcePort: 5555,
                          destinationAddress: "10.0.2.15", destinationPort: 22, recvQueue: 0, sendQueue: 0),
            ConnectionInfo(proto: "UDP", state: "237 sec", hostForward: false, fd: 13, sourceAddress: "10.0.2.15", sourcePort: 35061,
                          destinationAddress: "10.0.2.2", destinationPort: 7000, recvQueue: 0, sendQueue: 0),
            ConnectionInfo(proto: "UDP", state: "HOST_FORWARD", hostForward: true, fd: 5, sourceAddress: "127.0.0.1", sourcePort: 5556,
                          destinationAddress: "10.0.2.15", destinationPort: 53, recvQueue: 0, sendQueue: 0),
            ConnectionInfo(proto: "ICMP", state: "240 sec", hostForward: false, fd: 14, sourceAddress: "10.0.2.15", sourcePort: 0,
                          destinationAddress: "127.0.0.1", destinationPort: 0, recvQueue: 0, sendQueue: 0),
        ])
    }

    @Test("an empty table (header only) and empty text give no rows")
    func empty() {
        #expect(ConnectionTable.parse("  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n") == [])
        #expect(ConnectionTable.parse("") == [])
    }

    @Test("QEMU's info usernet wrapping, CRLF and a widened fd column still parse")
    func qemuWrapping() {
        let text = "Hub -1 (n0):\r\n"
            + "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
            + "  TCP[ESTABLISHED] 1024       10.0.2.15 40512        10.0.2.2  6000  4096     0\r\n"
        #expect(ConnectionTable.parse(text) == [
            ConnectionInfo(proto: "TCP", state: "ESTABLISHED", hostForward: false, fd: 1024, sourceAddress: "10.0.2.15", sourcePort: 40512,
                          destinationAddress: "10.0.2.2", destinationPort: 6000, recvQueue: 4096, sendQueue: 0),
        ])
    }

    @Test("malformed lines are skipped, good ones around them kept")
    func garbage() {
        let good = "  UDP[12 sec]        13       10.0.2.15 35061        10.0.2.2  7000     0     0"
        let bad = [
            "this is not a row",
            "  TCP[ESTABLISHED]    7       10.0.2.15 40512",  // cut short
            "  TCP[ESTABLISHED]    7       10.0.2.15 40512        10.0.2.2  6000     0     0   9",  // extra column
            "  TCP[ESTABLISHED]    x       10.0.2.15 40512        10.0.2.2  6000     0     0",  // fd not a number
            "  TCP[ESTABLISHED]    7       10.0.2.15 70000        10.0.2.2  6000     0     0",  // port out of range
            "  TCP[ESTABLISHED]    7       10.0.2.15     -        10.0.2.2  6000     0     0",  // "-" only for ICMP
            "  TCP[ESTABLISHED]    7       10.0.2.15 40512        10.0.2.2  6000    -1     0",  // negative queue
            "  SCTP[ESTABLISHED]   7       10.0.2.15 40512        10.0.2.2  6000     0     0",  // unknown protocol
            "  TCP[]               7       10.0.2.15 40512        10.0.2.2  6000     0     0",  // empty state
            "  TCP[ESTABLISHED     7       10.0.2.15 40512        10.0.2.2  6000     0     0",  // no closing bracket
            "]TCP[",
        ]
        let rows = ConnectionTable.parse((bad + [good] + bad).joined(separator: "\n"))
        #expect(rows.count == 1)
        #expect(rows.first?.state == "12 sec")
        #expect(rows.first?.fd == 13)
    }
}
