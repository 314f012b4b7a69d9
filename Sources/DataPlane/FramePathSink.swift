import FrameSwitch

/// What the frame path hands back to its owner: frames to put on a guest's port or into
/// libslirp, questions only the owner can answer, and events to count or log.
///
/// The owner (SlirpDaemon's Network) holds the sockets, libslirp and the logger; the frame
/// path holds none of them, so tests drive it with a sink that collects frames.
public protocol FramePathSink: AnyObject {
    /// Puts a frame on a guest port's output (queued, or written at once).
    func deliver(_ frame: UnsafeRawBufferPointer, to port: PortID)
    /// Sends a guest a frame slirpd made (a refusal's RST or ICMP error).
    func send(_ frame: [UInt8], to port: PortID)
    /// Hands libslirp a frame (`slirp_input`). libslirp may answer at once, from inside
    /// this call, through its `send_packet` callback and so through `FramePath.fromNAT`.
    func inputToNAT(_ frame: UnsafeRawBufferPointer)
    /// Whether slirpd's own services (DHCP, DNS, which own sockets) took this guest frame.
    func serveLocally(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, from port: PortID) -> Bool
    /// The caps on every guest's new flows now (configured, or set through the API).
    var flowLimits: FlowLimits { get }
    /// Whether the daemon is too short of descriptors for any new flow; asked only just
    /// before a new flow would be admitted.
    func isShortOfDescriptors(now: Int64) -> Bool
    /// Something to count or log (the owner paces its log with the counts given).
    func frameEvent(_ event: FramePathEvent)
    /// Sends a local guest's frame over the VXLAN uplink (to the remote its destination
    /// was learnt on, or to every remote). Only called when `FramePath.uplinkPort` is set.
    func toUplink(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader)
}

extension FramePathSink {
    /// No uplink: nothing to send.
    public func toUplink(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) {}
}

/// What the frame path reports; counts are this port's or this network's so far.
public enum FramePathEvent: Equatable, Sendable {
    /// A guest sent its first frame, from `mac`.
    case macLearned(PortID, MACAddress)
    /// A guest muted for a duplicate MAC owns it now: its holder has gone.
    case macReclaimed(PortID, MACAddress)
    /// A guest used a MAC another port (or the NAT) holds. Reported once per MAC while the
    /// guest is refused: a port that `closesOnDuplicateMAC` must now be closed; any other
    /// is muted (its `refusedFor` is set) until the MAC is free.
    case duplicateMAC(PortID, MACAddress, owner: PortID)
    /// Port security dropped a guest frame; `count`: this guest's drops for this violation.
    case securityDrop(PortID, SecurityViolation, ClaimedAddress, owner: PortID?, count: Int)
    /// An IPv4 fragment for the NAT dropped; `count`: the network's so far.
    case fragmentDropped(PortID, reason: String, count: Int)
    /// NATIngressCheck fixed a frame; `count`: the network's so far.
    case natIngressRewritten(PortID, count: Int)
    /// NATIngressCheck dropped a frame; `count`: the network's for this reason so far.
    case natIngressDropped(PortID, NATIngressCheck.Reason, count: Int)
    /// A guest's new flow refused, for its cap or (`shortage`) for the daemon's descriptors.
    case flowRefused(PortID, FlowKind, shortage: Bool)
    /// The TCP window shim dropped a guest segment (beyond the window it offered, or
    /// already held); `count`: the network's so far.
    case shimDropped(PortID, count: Int)
    /// TCPEarlyACK gave up on a guest that stopped answering its retransmissions: the flow
    /// was reset both ways; `count`: the network's so far.
    case earlyACKReset(PortID, count: Int)
    /// A frame from the NAT came from a MAC a guest holds: it is dropped.
    case natMACTaken(owner: PortID, MACAddress)
}
