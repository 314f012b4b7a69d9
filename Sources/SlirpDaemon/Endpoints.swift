import DaemonConfig
import FrameSwitch
import PosixIO

/// A listening stream socket (stream, TCP or vhost-user): every accepted connection becomes a guest port.
final class StreamListener {
    let spec: EndpointSpec
    let socket: Descriptor
    let transport: GuestPort.Transport
    /// After a failed accept (out of descriptors, say), the listener is left out of polls until then.
    var pausedUntil: Int64 = 0
    /// Pauses in a row for want of a descriptor or an accept error; 0 after an accept.
    var failedAccepts = 0
    static let pauseAfterError: Int64 = 250_000_000

    /// Whether systemd owns the socket (socket activation): then it is never closed or unlinked here.
    let inherited: Bool

    init(spec: EndpointSpec, mode: UInt32, group: String?, inherited descriptor: Descriptor?) throws(IOError) {
        self.spec = spec
        inherited = descriptor != nil
        switch spec {
        case .stream(let path):
            if let descriptor { socket = descriptor } else { socket = try bindUnixSocket(path: path, kind: .stream, mode: mode, group: group) }
            transport = .stream
        case .tcp(let host, let port):
            if let descriptor { socket = descriptor } else { socket = try listenTCP(host: host, port: port) }
            transport = .tcp
        case .vhostUser(let path):
            if let descriptor { socket = descriptor } else { socket = try bindUnixSocket(path: path, kind: .stream, mode: mode, group: group) }
            transport = .vhostUser
        case .dgram, .tap, .connect:
            preconditionFailure("only stream, TCP and vhost-user endpoints are listeners")
        }
    }

    func close() {
        guard !inherited else { return }
        socket.close()
        if case .stream(let path) = spec { removeFile(path) }
        if case .vhostUser(let path) = spec { removeFile(path) }
    }
}

/// A bound datagram socket shared by all its peers; each sender address is one guest.
final class DatagramEndpoint {
    /// Peers per endpoint; a bound on what an unauthenticated sender can make us hold.
    static let maximumPeers = 1024

    let spec: EndpointSpec
    let path: String
    let socket: Descriptor
    /// One datagram at a time; a larger one is reported truncated and dropped.
    let received = ByteBuffer(capacity: StreamFraming.maximumFrame)
    var peers: [UnixAddress: GuestPort] = [:]
    var badDatagrams = 0

    /// Whether systemd owns the socket (socket activation): then it is never closed or unlinked here.
    let inherited: Bool

    init(path: String, mode: UInt32, group: String?, inherited descriptor: Descriptor?) throws(IOError) {
        self.spec = .dgram(path: path)
        self.path = path
        inherited = descriptor != nil
        if let descriptor { socket = descriptor } else { socket = try bindUnixSocket(path: path, kind: .datagram, mode: mode, group: group) }
        // Room for bursts from many peers before the kernel drops on our side.
        socket.setBufferSizes(send: 4 << 20, receive: 4 << 20)
    }

    func close() {
        guard !inherited else { return }
        socket.close()
        removeFile(path)
    }
}
