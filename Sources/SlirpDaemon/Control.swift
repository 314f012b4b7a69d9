import FrameSwitch
import NetOptions
import NetServices
import SlirpAPI

/// The daemon as the control API sees it: every call becomes a job on the loop thread.
public struct DaemonControl: ControlService {
    let mailbox: Mailbox

    public func networks() async throws(APIError) -> [NetworkInfo] {
        try await mailbox.ask { d in d.networks.map { $0.info() } }
    }

    public func guests(network: String?) async throws(APIError) -> [GuestInfo] {
        try await mailbox.ask { d throws(APIError) in try d.select(network).flatMap { $0.guestInfos() } }
    }

    public func forwards(network: String?) async throws(APIError) -> [ForwardInfo] {
        try await mailbox.ask { d throws(APIError) in try d.select(network).flatMap { $0.forwardInfos() } }
    }

    public func addForward(network: String, _ request: ForwardRequest) async throws(APIError) -> ForwardInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).addForward(request) }
    }

    public func removeForward(network: String, rule: String) async throws(APIError) -> ForwardInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).removeForward(hostPart: rule) }
    }

    public func vxlan(network: String) async throws(APIError) -> VXLANInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).vxlanInfo() }
    }

    public func addVXLANRemote(network: String, _ request: VXLANRemoteRequest) async throws(APIError) -> VXLANInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).addVXLANRemote(request.remote) }
    }

    public func removeVXLANRemote(network: String, remote: String) async throws(APIError) -> VXLANInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).removeVXLANRemote(remote) }
    }

    public func guestForwards(network: String?) async throws(APIError) -> [GuestForwardInfo] {
        try await mailbox.ask { d throws(APIError) in try d.select(network).flatMap { $0.guestForwardInfos() } }
    }

    public func addGuestForward(network: String, _ request: GuestForwardRequest) async throws(APIError) -> GuestForwardInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).addGuestForward(request.rule) }
    }

    public func removeGuestForward(network: String, rule: String) async throws(APIError) -> GuestForwardInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).removeGuestForward(rule) }
    }

    public func connections(network: String?) async throws(APIError) -> [ConnectionInfo] {
        try await mailbox.ask { d throws(APIError) in try d.select(network).flatMap { $0.connectionInfos() } }
    }

    public func usernet(network: String) async throws(APIError) -> String {
        try await mailbox.ask { d throws(APIError) in
            let net = try d.network(network)
            return "Hub -1 (\(net.config.name)):\n" + net.stack.connectionInfo()
        }
    }

    public func leases(network: String?) async throws(APIError) -> [LeaseInfo] {
        try await mailbox.ask { d throws(APIError) in try d.select(network).flatMap { $0.leaseInfos() } }
    }

    public func staticLeases(network: String?) async throws(APIError) -> [StaticLeaseInfo] {
        try await mailbox.ask { d throws(APIError) in try d.select(network).flatMap { $0.staticLeaseInfos() } }
    }

    public func addStaticLease(network: String, _ request: StaticLeaseRequest) async throws(APIError) -> StaticLeaseInfo {
        // Parsed here, off the loop thread; the network checks what depends on its settings.
        let lease = try StaticLease(request)
        return try await mailbox.ask { d throws(APIError) in
            let net = try d.network(network)
            return net.staticLeaseInfo(try net.addStaticLease(lease))
        }
    }

    public func removeStaticLease(network: String, mac text: String) async throws(APIError) -> StaticLeaseInfo {
        guard let mac = MACAddress(text) else {
            throw .badRequest("static lease: '\(text)' is not a MAC address (expected e.g. 52:54:00:12:34:56)")
        }
        return try await mailbox.ask { d throws(APIError) in
            let net = try d.network(network)
            return net.staticLeaseInfo(try net.removeStaticLease(mac: mac), source: .api)
        }
    }

    public func attachments(network: String?) async throws(APIError) -> [AttachmentInfo] {
        try await mailbox.ask { d throws(APIError) in try d.select(network).flatMap { $0.attachmentInfos() } }
    }

    public func addAttachment(network: String, _ request: AttachmentRequest) async throws(APIError) -> AttachmentInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).addAttachment(request.target) }
    }

    public func removeAttachment(network: String, target: String) async throws(APIError) -> AttachmentInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).removeAttachment(target) }
    }

    public func flowLimits(network: String) async throws(APIError) -> FlowLimitsInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).flowLimitsInfo }
    }

    public func setFlowLimits(network: String, _ request: FlowLimitsRequest) async throws(APIError) -> FlowLimitsInfo {
        try await mailbox.ask { d throws(APIError) in try d.network(network).setFlowLimits(request) }
    }

    public func metrics() async -> String {
        (try? await mailbox.ask { d in Metrics.render(d.networks) }) ?? ""
    }

    public func events() async throws(APIError) -> AsyncStream<Event> {
        try await mailbox.ask { d in d.subscribeEvents() }
    }

    public func capture(network: String, guest: String?) async throws(APIError) -> AsyncStream<[UInt8]> {
        let mac: MACAddress?
        if let guest {
            guard let parsed = MACAddress(guest) else { throw .badRequest("'\(guest)' is not a MAC address") }
            mac = parsed
        } else {
            mac = nil
        }
        return try await mailbox.ask { [mailbox] d throws(APIError) in try d.network(network).startCapture(guest: mac, mailbox: mailbox) }
    }
}

extension Daemon {
    func network(_ name: String) throws(APIError) -> Network {
        guard let net = networks.first(where: { $0.config.name == name }) else {
            throw .notFound("no network named '\(name)' (networks: \(networks.map(\.config.name).joined(separator: ", ")))")
        }
        return net
    }

    func select(_ name: String?) throws(APIError) -> [Network] {
        guard let name else { return networks }
        return [try network(name)]
    }
}

extension StaticLease {
    /// A lease as the API asks for it, its text checked.
    init(_ request: StaticLeaseRequest) throws(APIError) {
        guard let mac = MACAddress(request.mac) else {
            throw .badRequest("static lease: '\(request.mac)' is not a MAC address (expected e.g. 52:54:00:12:34:56)")
        }
        guard let ip = IPv4Address(request.ip) else {
            throw .badRequest("static lease: '\(request.ip)' is not an IPv4 address (expected a dotted quad, e.g. 10.0.2.50)")
        }
        self.init(mac: mac, address: ip, hostname: request.hostname.flatMap { $0.isEmpty ? nil : $0 })
    }
}

extension Network {
    func staticLeaseInfos() -> [StaticLeaseInfo] {
        effectiveStaticLeases.map { staticLeaseInfo($0) }
    }

    /// `source` defaults to where the lease in force for that MAC comes from.
    func staticLeaseInfo(_ lease: StaticLease, source: StaticLeaseInfo.Source? = nil) -> StaticLeaseInfo {
        StaticLeaseInfo(network: config.name, mac: "\(lease.mac)", ip: "\(lease.address)", hostname: lease.hostname,
                        source: source ?? (apiStaticLeases.contains { $0.mac == lease.mac } ? .api : .config))
    }
}
