/// The QEMU flags that attach a guest to an endpoint, shared by slirpd's start-up
/// banner and `slirpctl qemu-args`. Endpoints are given as the API lists them:
/// `stream:PATH`, `dgram:PATH`, `tcp:HOST:PORT` (`tcp:[V6]:PORT`), `connect:unix:PATH` or
/// `vhost-user:PATH`.
public enum QEMUArgs {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case unknownEndpoint(String)
        /// vhost-user serves a virtio-net device only.
        case vhostUserNeedsVirtio(model: String)

        public var description: String {
            switch self {
            case .unknownEndpoint(let endpoint): "unknown endpoint \(endpoint)"
            case .vhostUserNeedsVirtio(let model): "a vhost-user endpoint serves virtio-net devices only, not \(model)"
            }
        }
    }

    /// Guest RAM for vhost-user flags when none is given: it must be shared with slirpd,
    /// so the flags size it themselves (-m and the memory backend must agree).
    public static let defaultVhostUserMemory = "512M"

    /// NICs that a QEMU machine builds in (on a board rather than a bus): they cannot be
    /// made with `-device`, only joined to a netdev with `-net nic,model=...`.
    public static let onBoardModels: Set<String> = ["lan9118", "stellaris", "smc91c111", "cadence_gem", "xgmac", "imx.enet"]

    /// - Parameters:
    ///   - model: the NIC: a `-device` model (virtio-net-pci, e1000, ...) or one of `onBoardModels`.
    ///   - localPath: for datagram endpoints, the guest's own socket path (unique per guest).
    ///   - legacySocket: for TCP endpoints, QEMU's older `-netdev socket,connect=` form (same framing).
    ///   - memory: for vhost-user endpoints, the guest's RAM (`-m`), which QEMU must put in a
    ///     shared memfd for slirpd to map.
    public static func flags(endpoint: String, mac: String, model: String = "virtio-net-pci", mtu: Int = 0,
                             localPath: String? = nil, legacySocket: Bool = false,
                             memory: String = defaultVhostUserMemory) throws(Failure) -> String {
        // virtio-net tells the guest driver the MTU through host_mtu; other NICs have no such flag.
        // QEMU names the MAC option macaddr= on -net nic and mac= on -device.
        let device = onBoardModels.contains(model)
            ? "-net nic,model=\(model),netdev=n0,macaddr=\(mac)"
            : "-device \(model),netdev=n0,mac=\(mac)" + (mtu > 0 && mtu != 1500 && model.hasPrefix("virtio-net") ? ",host_mtu=\(mtu)" : "")
        if let path = endpoint.dropPrefix("stream:") {
            return "-netdev stream,id=n0,server=off,addr.type=unix,addr.path=\(path) \(device)"
        }
        if let path = endpoint.dropPrefix("connect:unix:") {
            // slirpd dials this one: QEMU listens, and takes slirpd again after a restart.
            return "-netdev stream,id=n0,server=on,addr.type=unix,addr.path=\(path) \(device)"
        }
        if let path = endpoint.dropPrefix("vhost-user:") {
            guard model.hasPrefix("virtio-net") else { throw .vhostUserNeedsVirtio(model: model) }
            // reconnect=1: QEMU re-attaches by itself after slirpd restarts. vectors=0 (legacy
            // INTx, no MSI-X): QEMU 7.2 without KVM (TCG) segfaults in msix_set_vector_notifiers
            // when vhost_net_start sets up the guest notifiers of an MSI-X vhost-user NIC.
            return "-m \(memory) -object memory-backend-memfd,id=mem,size=\(memory),share=on -machine memory-backend=mem "
                + "-chardev socket,id=c0,path=\(path),reconnect=1 -netdev vhost-user,id=n0,chardev=c0 \(device),vectors=0"
        }
        if let path = endpoint.dropPrefix("dgram:") {
            let local = localPath ?? guestSocket(besides: path, named: "guest-\(mac.filter { $0 != ":" }).sock")
            return "-netdev dgram,id=n0,local.type=unix,local.path=\(local),remote.type=unix,remote.path=\(path) \(device)"
        }
        if let target = endpoint.dropPrefix("tcp:"), let colon = target.lastIndex(of: ":") {
            var host = String(target[..<colon])
            let port = target[target.index(after: colon)...]
            if host.hasPrefix("[") { host = String(host.dropFirst().dropLast()) }
            // A wildcard listener is reached through loopback.
            if host == "0.0.0.0" || host == "::" || host.isEmpty { host = "127.0.0.1" }
            if legacySocket {
                return "-netdev socket,id=n0,connect=\(host.contains(":") ? "[\(host)]" : host):\(port) \(device)"
            }
            return "-netdev stream,id=n0,server=off,addr.type=inet,addr.host=\(host),addr.port=\(port) \(device)"
        }
        throw .unknownEndpoint(endpoint)
    }

    /// A random unicast MAC under QEMU's 52:54:00 prefix (0x52 has the locally
    /// administered bit set), avoiding `taken`.
    public static func freshMAC(avoiding taken: Set<String> = []) -> String {
        while true {
            let n = UInt32.random(in: 0...0xFF_FFFF)
            let mac = "52:54:00:" + [n >> 16, (n >> 8) & 0xFF, n & 0xFF].map { b in
                let s = String(b, radix: 16)
                return b < 16 ? "0" + s : s
            }.joined(separator: ":")
            if !taken.contains(mac) { return mac }
        }
    }

    /// The system units' directory and the one in it where QEMU may put its datagram socket
    /// (systemd/tmpfiles.d/slirpd.conf): slirpd's sandbox hides /home, /run/user and /tmp.
    static let systemDirectory = "/run/slirpd/"
    static let systemGuestDirectory = "/run/slirpd/guests/"

    /// Where a datagram guest's own socket goes: beside the network's socket, or, for one in
    /// the system units' directory, in its guests directory.
    private static func guestSocket(besides path: String, named name: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return name }
        let directory = String(path[...slash])
        return (directory == systemDirectory ? systemGuestDirectory : directory) + name
    }
}

extension String {
    fileprivate func dropPrefix(_ prefix: String) -> String? {
        hasPrefix(prefix) ? String(dropFirst(prefix.count)) : nil
    }
}
