import DaemonConfig
import FrameSwitch
import PosixIO

/// The QEMU command-line flags that attach a guest to an endpoint.
enum QEMUFlags {
    /// One block per endpoint, ready to paste. Each call draws a fresh MAC, since two
    /// guests with QEMU's default MAC would collide on a shared network.
    static func instructions(network: String, endpoint: EndpointSpec, mtu: Int) -> [String] {
        let mac = randomGuestMAC()
        // virtio-net tells the guest driver the MTU through host_mtu; e1000 has no such flag.
        let device = "-device virtio-net-pci,netdev=n0,mac=\(mac)" + (mtu > 0 ? ",host_mtu=\(mtu)" : "")
        switch endpoint {
        case .stream(let path):
            return ["attach a guest to network \(network) over \(endpoint):",
                    "  -netdev stream,id=n0,server=off,addr.type=unix,addr.path=\(path) \(device)"]
        case .dgram(let path):
            let local = sibling(of: path, named: "\(network)-guest-\(mac.description.replacingOccurrences(":", with: "")).sock")
            return ["attach a guest to network \(network) over \(endpoint) (local.path must be unique per guest):",
                    "  -netdev dgram,id=n0,local.type=unix,local.path=\(local),remote.type=unix,remote.path=\(path) \(device)"]
        case .tcp(let host, let port):
            let dialHost = (host == "0.0.0.0" || host == "::") ? "127.0.0.1" : host
            return ["attach a guest to network \(network) over \(endpoint):",
                    "  -netdev stream,id=n0,server=off,addr.type=inet,addr.host=\(dialHost),addr.port=\(port) \(device)",
                    "  or: -netdev socket,id=n0,connect=\(dialHost.contains(":") ? "[\(dialHost)]" : dialHost):\(port) \(device)"]
        }
    }

    private static func sibling(of path: String, named name: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return name }
        return String(path[...slash]) + name
    }
}

/// A random unicast MAC under QEMU's 52:54:00 prefix (0x52 has the locally administered bit set).
func randomGuestMAC() -> MACAddress {
    MACAddress(raw: 0x5254_0000_0000 | UInt64.random(in: 0...0xFF_FFFF))
}

extension String {
    func replacingOccurrences(_ target: Character, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

/// Where sockets go when no path is given.
public enum RuntimePaths {
    /// `$XDG_RUNTIME_DIR/slirpd`, else `/run/slirpd` for root, else `/tmp/slirpd-UID`.
    public static func directory() -> (path: String, mode: UInt32) {
        if let xdg = environmentValue("XDG_RUNTIME_DIR"), !xdg.isEmpty { return ("\(xdg)/slirpd", 0o700) }
        let uid = currentUserID()
        // Root's sockets are meant for other users' QEMUs (socket mode and group decide who).
        if uid == 0 { return ("/run/slirpd", 0o755) }
        return ("/tmp/slirpd-\(uid)", 0o700)
    }

    /// Creates the default directory, refusing one another user owns.
    public static func prepareDefaultDirectory() throws(DaemonError) -> String {
        let (path, mode) = directory()
        do {
            try makeRuntimeDirectory(path, mode: mode)
        } catch {
            throw DaemonError("cannot use runtime directory: \(error)")
        }
        return path
    }
}
