import FrameSwitch
import NetOptions
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
