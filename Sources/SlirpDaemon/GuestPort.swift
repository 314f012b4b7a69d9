import DataPlane
import FrameSwitch
import PosixIO
import SlirpAPI

/// One attached guest: a stream connection (Unix or TCP), a datagram peer, a tap or a vhost-user connection.
///
/// Every guest has its own socket and a bounded output queue of length-prefixed
/// frames, flushed once per loop iteration and again when the socket turns writable.
/// A full queue drops the frame and counts it, so a guest that stops reading never
/// blocks the loop or anyone else. A datagram peer's socket is connected to the
/// peer's path: only then does poll() report when the peer's receive queue (10
/// datagrams by default, net.unix.max_dgram_qlen) has room again.
final class GuestPort {
    /// SlirpAPI's list, so the API and its schema name exactly the transports there are.
    typealias Transport = GuestTransport

    enum Kind {
        /// Frames arrive on `socket` with a length prefix and are reassembled in `received`.
        case stream(received: ByteBuffer)
        /// Frames arrive on the endpoint's shared socket; `socket` only sends to `peer`.
        case datagram(endpoint: DatagramEndpoint, peer: UnixAddress)
        /// A tap device: each read or write on `socket` is one frame (behind a virtio-net
        /// header when `offload` has one).
        case tap(name: String, received: ByteBuffer, offload: TapOffload)
        /// A vhost-user connection: `socket` carries protocol messages; frames move through
        /// the guest's virtqueues in shared memory (VhostUserPort.swift).
        case vhostUser(VhostUserLink)
    }

    /// The output queue at most: about 700 full-size frames, or 16 of the largest.
    static let queueCapacity = 1 << 20
    /// Room for two of the largest frames with their prefixes, so a read never stalls mid-frame.
    static let receiveCapacity = 2 * (StreamFraming.prefixLength + StreamFraming.maximumFrame)
    /// What the queue and the receive buffer start with, and shrink back to when drained
    /// (Network.shrinkBuffers): an idle guest holds this, not the capacities above (issue 19
    /// item 6: 1 MiB + 128 KiB up front per guest stayed with the allocator after they left).
    static let initialBuffer = 2048

    static func receiveBuffer() -> ByteBuffer {
        ByteBuffer(capacity: receiveCapacity, initial: initialBuffer)
    }

    let id: PortID
    let transport: Transport
    let peer: String
    let endpointName: String
    let kind: Kind
    let socket: Descriptor
    let queued = ByteBuffer(capacity: GuestPort.queueCapacity, initial: GuestPort.initialBuffer)
    let connectedAt: Int64
    /// RFC 3339, for the API.
    let connectedSince = wallClockTimestamp()

    /// The frame path's side of this guest (MAC, NAT connections, flow budget, drops);
    /// the properties below read and write it.
    let state: PortState
    /// Set once the port must go; the loop removes it at the end of the iteration.
    var closeReason: String?
    var inFlushList = false

    var mac: MACAddress? {
        get { state.mac }
        set { state.mac = newValue }
    }
    /// A datagram peer refused for a duplicate MAC stays attached but mute until the MAC is free.
    var refusedFor: MACAddress? { state.refusedFor }
    /// Its TCP connections through the NAT, reset in libslirp when it leaves for good.
    var natConnections: NATConnections {
        get { state.natConnections }
        _modify { yield &state.natConnections }
    }
    /// Its flows in libslirp, counted against the network's caps (NetworkBudget.swift).
    var flows: FlowBudget {
        get { state.flows }
        _modify { yield &state.flows }
    }

    var rxFrames = 0, rxBytes = 0, txFrames = 0, txBytes = 0
    var drops: Int {
        get { state.drops }
        set { state.drops = newValue }
    }

    init(id: PortID, transport: Transport, peer: String, endpointName: String, kind: Kind, socket: Descriptor, now: Int64) {
        self.id = id
        self.transport = transport
        self.peer = peer
        self.endpointName = endpointName
        self.kind = kind
        self.socket = socket
        self.connectedAt = now
        switch kind {
        case .stream, .vhostUser:
            state = PortState(id: id, closesOnDuplicateMAC: true)
        case .datagram, .tap:
            state = PortState(id: id, closesOnDuplicateMAC: false)
        }
    }

    var label: String {
        let who = mac.map { " mac \($0)" } ?? ""
        return "guest \(id.raw) (\(transport.rawValue) \(peer)\(who))"
    }

    /// The tap's offloads, for a tap port.
    var tapOffload: TapOffload? {
        if case .tap(_, _, let offload) = kind { return offload }
        return nil
    }

    /// The protocol state, for a vhost-user port.
    var vhostUser: VhostUserLink? {
        if case .vhostUser(let link) = kind { return link }
        return nil
    }

    var isStream: Bool {
        if case .stream = kind { return true }
        return false
    }

    /// Whether frames arrive on the port's own descriptor (not on a shared endpoint socket).
    var readsOwnDescriptor: Bool {
        if case .datagram = kind { return false }
        return true
    }

    /// Counts a frame handed to the guest (written, or queued for writing).
    func countSent(_ frame: UnsafeRawBufferPointer) {
        txFrames += 1
        txBytes += frame.count
    }

    func close(_ reason: String) {
        if closeReason == nil { closeReason = reason }
    }

    /// A datagram peer whose socket is closed or whose file is gone.
    func closeAsGone() {
        close("its socket \(peer) is gone")
    }
}
