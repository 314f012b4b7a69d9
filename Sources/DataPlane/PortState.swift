import FrameSwitch

// PortState: one guest port's share of the frame path's state.
//
// Theory of operation. The socket, the output queue and the traffic counters of a guest
// belong to its endpoint (SlirpDaemon's GuestPort); what the frame path decides with
// belongs here: the MAC it uses, a MAC it is muted for, its NAT connections, its flow
// budget and its drop counts. `FramePath` keeps one per attached port, keyed by PortID;
// the endpoint holds the same object, so both see one set of values and no lookup is
// needed to find a guest's state from its socket. A class, not a struct in a dictionary:
// the frame path calls out (to libslirp, which calls back) while a guest's frame is in
// flight, and a class's properties are accessed one at a time, never as one inout.
public final class PortState {
    public let id: PortID
    /// A stream guest refused for a duplicate MAC is disconnected (its peer sees why); a
    /// datagram or tap guest has no connection to reset, so it is muted until the MAC is free.
    public let closesOnDuplicateMAC: Bool
    /// The first MAC the guest sent from.
    public var mac: MACAddress?
    /// Set while the guest is muted for using a MAC another port holds.
    public var refusedFor: MACAddress?
    /// Its TCP connections through the NAT, reset in libslirp when it leaves for good.
    public var natConnections = NATConnections()
    /// Its flows in libslirp, counted against the network's caps.
    public var flows: FlowBudget
    /// Frames of this guest dropped, by the frame path or by its full output queue.
    public var drops = 0
    /// Frames port security dropped, by reason; paces the log, so a flood of one kind does not hide another.
    public var securityDrops: [SecurityViolation: Int] = [:]
    /// The largest IP packet the guest takes: the network's MTU, raised when `learnsMTU` to
    /// the largest packet it has sent or said it takes (the MSS in its SYNs, plus headers):
    /// a guest at MTU 9000 on a 1500 network does both. Larger frames toward it are cut (FramePath.put).
    public var mtu: Int
    /// False for a port whose reads are not bounded by its MTU (a tap handing over
    /// 64 KiB GSO frames).
    public var learnsMTU: Bool
    /// The port's writer cuts TCP segments itself (a tap with the kernel's TSO): TCP
    /// segments of any size go to it whole; other oversized frames are still fragmented.
    public var takesLargeSegments = false
    /// Its in-order TCP segments toward libslirp, merged within a loop turn, up to what
    /// libslirp's MRU takes behind the largest IP and TCP headers (one read batch of a
    /// stream guest is about 64 KiB: one segment, one send to the host, one ACK).
    public var coalescer = TCPCoalescer(maxPayload: MSSClamp.natMTU - 40 - 60)
    /// libslirp's in-order TCP segments toward the guest, merged within a loop turn when
    /// the port takes large segments (`mergeLimit`).
    public var fromNATMerge = TCPCoalescer(maxPayload: 1)

    /// The most TCP payload one merged frame toward this guest may carry, or nil when
    /// libslirp's segments go to it one by one: a port that takes large segments (its
    /// writer cuts them, or its kernel or driver takes them whole) takes one IP packet's
    /// worth. Others are not merged: at MTU 1500 libslirp's segments already fill frames,
    /// and two of a jumbo guest's (32 KiB, libslirp's TCP_MAXSEG_MAX) never share one.
    public var mergeLimit: Int? { takesLargeSegments ? TCPCoalescer.payloadLimit : nil }

    public init(id: PortID, closesOnDuplicateMAC: Bool, flows: FlowBudget = FlowBudget(dnsAddress: nil),
                mtu: Int = 1500, learnsMTU: Bool = true) {
        self.id = id
        self.closesOnDuplicateMAC = closesOnDuplicateMAC
        self.flows = flows
        self.mtu = mtu
        self.learnsMTU = learnsMTU
    }
}
