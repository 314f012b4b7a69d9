/// What the control API asks of the daemon. The daemon implements it by posting work
/// to its loop thread; the HTTP layer (and its tests) only see this protocol.
/// `network: nil` means every network.
public protocol ControlService: Sendable {
    func networks() async throws(APIError) -> [NetworkInfo]
    func guests(network: String?) async throws(APIError) -> [GuestInfo]

    func forwards(network: String?) async throws(APIError) -> [ForwardInfo]
    func addForward(network: String, _ request: ForwardRequest) async throws(APIError) -> ForwardInfo
    /// `rule` is the host part, as QEMU's hostfwd_remove takes it: `[tcp|udp]:[HOSTADDR]:HOSTPORT`.
    func removeForward(network: String, rule: String) async throws(APIError) -> ForwardInfo

    func guestForwards(network: String?) async throws(APIError) -> [GuestForwardInfo]
    func addGuestForward(network: String, _ request: GuestForwardRequest) async throws(APIError) -> GuestForwardInfo
    /// `rule` is the guest side: `[tcp]:ADDR:PORT`.
    func removeGuestForward(network: String, rule: String) async throws(APIError) -> GuestForwardInfo

    func connections(network: String?) async throws(APIError) -> [ConnectionInfo]
    /// libslirp's table as QEMU's `info usernet` prints it.
    func usernet(network: String) async throws(APIError) -> String
    func leases(network: String?) async throws(APIError) -> [LeaseInfo]

    /// Static leases in force: the config file's, then those added here.
    func staticLeases(network: String?) async throws(APIError) -> [StaticLeaseInfo]
    func addStaticLease(network: String, _ request: StaticLeaseRequest) async throws(APIError) -> StaticLeaseInfo
    /// Only leases added through the API can be removed; `mac` as in `52:54:00:12:34:56`.
    func removeStaticLease(network: String, mac: String) async throws(APIError) -> StaticLeaseInfo

    /// QEMU server sockets the networks dial: configured ones, then those added here.
    func attachments(network: String?) async throws(APIError) -> [AttachmentInfo]
    func addAttachment(network: String, _ request: AttachmentRequest) async throws(APIError) -> AttachmentInfo
    /// Only attachments added through the API can be removed; `target` as added (`unix:/path`).
    func removeAttachment(network: String, target: String) async throws(APIError) -> AttachmentInfo

    /// A network's per-guest flow caps (max-tcp= etc.), as in `NetworkInfo.flowLimits`.
    func flowLimits(network: String) async throws(APIError) -> FlowLimitsInfo
    /// Changes them for every guest's new flows; kept over reloads and restarts until the
    /// configuration's value for that key changes.
    func setFlowLimits(network: String, _ request: FlowLimitsRequest) async throws(APIError) -> FlowLimitsInfo

    /// A network's VXLAN uplink: VNI, local address, remotes with counters and learnt MACs
    /// (404 when the network has none).
    func vxlan(network: String) async throws(APIError) -> VXLANInfo
    /// Adds a remote at run time (until the next reload or restart, which apply the configuration's list).
    func addVXLANRemote(network: String, _ request: VXLANRemoteRequest) async throws(APIError) -> VXLANInfo
    /// Removes a remote (configured or added) and forgets the MACs learnt behind it.
    func removeVXLANRemote(network: String, remote: String) async throws(APIError) -> VXLANInfo

    /// Prometheus text exposition format.
    func metrics() async -> String

    /// Events from now on, one per change; the stream ends when the daemon stops.
    func events() async throws(APIError) -> AsyncStream<Event>
    /// A live pcap stream (file header first) of a network's frames, or one guest's by MAC.
    func capture(network: String, guest: String?) async throws(APIError) -> AsyncStream<[UInt8]>
}
