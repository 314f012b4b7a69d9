import DaemonConfig
import FrameSwitch
import Logging
import PosixIO
import SlirpAPI

/// A QEMU `-netdev stream,server=on` socket that the network connects to.
///
/// Theory of operation: QEMU 7.2 never reconnects a stream it dialled, but a listening
/// QEMU accepts one connection after another. So for guests that must survive a daemon
/// restart, slirpd does the dialling: at start, and again whenever the connection
/// drops, with a delay that doubles from 250 ms to 8 s while QEMU is unreachable (and
/// starts over once a connection has lasted 10 s), so an absent QEMU costs a connect()
/// every few seconds and a returning one is picked up quickly. The connection is an
/// ordinary stream guest port once made.
final class DialTarget {
    static let initialDelay: Int64 = 250_000_000
    static let maximumDelay: Int64 = 8_000_000_000
    /// A connection that lasted this long was healthy: the next failure retries quickly again.
    static let healthyConnection: Int64 = 10_000_000_000

    let path: String
    /// Added at run time (slirpctl attach) rather than by the configuration.
    let fromAPI: Bool
    var port: GuestPort?
    var nextAttempt: Int64 = 0
    var delay = DialTarget.initialDelay
    /// Failed attempts since the last connection.
    var failures = 0
    var lastError: String?

    init(path: String, fromAPI: Bool) {
        self.path = path
        self.fromAPI = fromAPI
    }

    var spec: EndpointSpec { .connect(path: path) }

    /// Schedules the next attempt after a failure or a dropped connection.
    func backOff(now: Int64) {
        nextAttempt = now + delay
        delay = min(delay * 2, DialTarget.maximumDelay)
    }
}

extension Network {
    /// Dials every target that has no connection and is due.
    func dialDue(now: Int64) {
        for target in dialTargets where target.port == nil && now >= target.nextAttempt {
            dial(target, now: now)
        }
    }

    /// The earliest attempt still to make.
    var nextDialAttempt: Int64? {
        dialTargets.filter { $0.port == nil }.map(\.nextAttempt).min()
    }

    private func dial(_ target: DialTarget, now: Int64) {
        let socket: Descriptor
        do {
            socket = try connectUnix(to: UnixAddress(path: target.path), kind: .stream)
        } catch {
            target.failures += 1
            // The first failure of a streak is worth a warning; the retries are not.
            let text = "\(error)"
            let level: Logger.Level = target.failures == 1 || text != target.lastError ? .warning : .debug
            target.lastError = text
            target.backOff(now: now)
            log.log(level: level, "cannot reach QEMU at unix:\(target.path): \(error); retrying in \((target.nextAttempt - now) / 1_000_000) ms (attempt \(target.failures))")
            return
        }
        let port = GuestPort(
            id: allocatePortID(), transport: .stream, peer: "unix:\(target.path)", endpointName: "\(target.spec)",
            kind: .stream(received: GuestPort.receiveBuffer()), socket: socket, now: now)
        target.port = port
        target.failures = 0
        target.lastError = nil
        admit(port, on: "\(target.spec)")
    }

    /// Called for every port that leaves: a dialled one is dialled again later.
    func dialledPortClosed(_ port: GuestPort, now: Int64) {
        guard let target = dialTargets.first(where: { $0.port === port }) else { return }
        target.port = nil
        if now - port.connectedAt >= DialTarget.healthyConnection { target.delay = DialTarget.initialDelay }
        target.backOff(now: now)
    }

    // MARK: The API

    func attachmentInfos() -> [AttachmentInfo] {
        dialTargets.map(attachmentInfo)
    }

    private func attachmentInfo(_ target: DialTarget) -> AttachmentInfo {
        AttachmentInfo(network: config.name, target: "unix:\(target.path)", source: target.fromAPI ? .api : .config,
                       connected: target.port != nil, guest: target.port?.id.raw, failures: target.failures,
                       lastError: target.lastError)
    }

    /// Starts dialling a QEMU server socket (slirpctl attach); kept across restarts.
    func addAttachment(_ text: String) throws(APIError) -> AttachmentInfo {
        guard case .connect(let path)? = EndpointSpec.connect(parsing: text) else {
            throw .badRequest("invalid attach target '\(text)' (expected unix:PATH, a QEMU -netdev stream,server=on socket)")
        }
        guard path.hasPrefix("/") else {
            throw .badRequest("attach target '\(text)': give an absolute path (the daemon's working directory is not yours)")
        }
        do {
            _ = try UnixAddress(path: path)
        } catch {
            throw .badRequest("attach target '\(text)': \(error.detail ?? "\(error)")")
        }
        if dialTargets.contains(where: { $0.path == path }) {
            throw .conflict("network \(config.name) already dials unix:\(path)")
        }
        let target = DialTarget(path: path, fromAPI: true)
        dialTargets.append(target)
        log.notice("attachment added: unix:\(path)")
        dial(target, now: monotonicNanoseconds())
        saveRuntimeState()
        return attachmentInfo(target)
    }

    /// Stops dialling a target added through the API and closes its connection.
    func removeAttachment(_ text: String) throws(APIError) -> AttachmentInfo {
        guard case .connect(let path)? = EndpointSpec.connect(parsing: text),
              let index = dialTargets.firstIndex(where: { $0.path == path }) else {
            throw .notFound("network \(config.name) does not dial '\(text)' (expected unix:PATH as attached)")
        }
        let target = dialTargets[index]
        guard target.fromAPI else {
            throw .conflict("unix:\(path) comes from the configuration; remove it there (connect = [...]) and reload")
        }
        dialTargets.remove(at: index)
        if let port = target.port {
            port.close("detached by request")
            scheduleClose(port)
        }
        log.notice("attachment removed: unix:\(path)")
        saveRuntimeState()
        return attachmentInfo(target)
    }
}
