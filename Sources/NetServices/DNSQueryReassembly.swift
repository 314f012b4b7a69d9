import FrameSwitch

// DNSQueryReassembly: guests' UDP queries to the DNS address that arrive as IPv4 fragments.
//
// Theory of operation. A query larger than the guest's MTU (a 1,544- or 3,044-byte one,
// say, padded with EDNS padding, RFC 7830) leaves the guest as IPv4 fragments. Only the
// first carries the UDP header, so none of them parses as a datagram, and the daemon
// answers the DNS address itself: libslirp, whose DNS is off, must not get them either.
// This puts them back together with `IPv4Reassembly`, the same code and the same bounds
// (64 datagrams, 1 MiB, 10 s) as the fragment path to libslirp, in an instance of its own
// so that fragments to the DNS address and to the NAT cannot crowd each other out. A
// whole datagram that is UDP to port 53 is a query; anything else the guest sent to the
// DNS address in pieces is dropped, as it would be whole.
public struct DNSQueryReassembly: Sendable {
    public enum Outcome: Equatable, Sendable {
        /// The last fragment of a query: the whole query, to be answered.
        case query(UDPDatagram)
        /// A fragment kept until its datagram is complete.
        case held
        /// The fragment, and with it possibly its datagram, is dropped; why.
        case dropped(String)
    }

    private var reassembly = IPv4Reassembly()

    public init() {}

    /// Queries put back together.
    public private(set) var reassembled = 0
    /// Datagrams waiting for fragments.
    public var held: Int { reassembly.held }

    /// Takes a guest's IPv4 frame to the DNS address, UDP, that is a fragment.
    public mutating func input<C: RandomAccessCollection<UInt8>>(_ frame: C, now: Int64) -> Outcome where C.Index == Int {
        switch reassembly.input(frame, now: now) {
        case .pass: return route(Array(frame))
        case .held: return .held
        case .dropped(let reason): return .dropped(reason)
        case .complete(let whole): return route(whole)
        }
    }

    /// Drops datagrams that did not arrive whole in time; returns how many.
    @discardableResult
    public mutating func expire(now: Int64) -> Int { reassembly.expire(now: now) }

    private mutating func route(_ whole: [UInt8]) -> Outcome {
        guard let datagram = UDPDatagram.parse(frame: whole), datagram.destinationPort == 53 else {
            return .dropped("a fragmented datagram to the DNS address that is not a UDP query to port 53")
        }
        reassembled += 1
        return .query(datagram)
    }
}
