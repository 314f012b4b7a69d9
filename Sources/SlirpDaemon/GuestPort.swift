import FrameSwitch
import PosixIO

/// One attached guest: a stream connection (Unix or TCP) or a datagram peer.
///
/// Frames to a stream guest wait in a bounded queue that the loop flushes after each
/// iteration; a full queue drops the frame and counts it, so a guest that stops
/// reading never blocks the loop or anyone else. Frames to a datagram guest are sent
/// at once; when the peer's socket is full the frame is dropped and counted, as a
/// congested link would.
final class GuestPort {
    enum Transport: String {
        case stream, tcp, dgram
    }

    enum Link {
        case connection(socket: Descriptor, received: ByteBuffer, queued: ByteBuffer)
        case datagram(endpoint: DatagramEndpoint, peer: UnixAddress)
    }

    /// A stream guest's output queue: about 700 full-size frames, or 16 of the largest.
    static let queueCapacity = 1 << 20
    /// Room for two of the largest frames with their prefixes, so a read never stalls mid-frame.
    static let receiveCapacity = 2 * (StreamFraming.prefixLength + StreamFraming.maximumFrame)

    let id: PortID
    let transport: Transport
    let peer: String
    let endpointName: String
    let link: Link
    let connectedAt: Int64

    var mac: MACAddress?
    /// Set once the port must go; the loop removes it at the end of the iteration.
    var closeReason: String?
    /// A datagram peer refused for a duplicate MAC stays attached but mute until the MAC is free.
    var refusedFor: MACAddress?
    var inFlushList = false

    var rxFrames = 0, rxBytes = 0, txFrames = 0, txBytes = 0, drops = 0

    init(id: PortID, transport: Transport, peer: String, endpointName: String, link: Link, now: Int64) {
        self.id = id
        self.transport = transport
        self.peer = peer
        self.endpointName = endpointName
        self.link = link
        self.connectedAt = now
    }

    var label: String {
        let who = mac.map { " mac \($0)" } ?? ""
        return "guest \(id.raw) (\(transport.rawValue) \(peer)\(who))"
    }

    var isConnection: Bool {
        if case .connection = link { return true }
        return false
    }

    func close(_ reason: String) {
        if closeReason == nil { closeReason = reason }
    }
}
