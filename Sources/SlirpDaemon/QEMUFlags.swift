import DaemonConfig
import SlirpAPI
import PosixIO

/// What slirpd prints at start-up to attach a guest to each endpoint.
enum QEMUFlags {
    /// One block per endpoint, ready to paste. Each draws a fresh MAC, since two guests
    /// with QEMU's default MAC would collide on a shared network.
    static func instructions(network: String, endpoint: EndpointSpec, mtu: Int) -> [String] {
        if case .tap(let name) = endpoint {
            return ["attach a network namespace or container to network \(network) over \(endpoint):",
                    "  ip link set \(name) netns NS, then inside NS: ip link set \(name) up and run a DHCP client on \(name)"]
        }
        let mac = QEMUArgs.freshMAC()
        let text = "\(endpoint)"
        if case .connect(let path) = endpoint {
            return ["network \(network) dials QEMU at unix:\(path) (again after every drop or restart); start that QEMU with:",
                    "  " + ((try? QEMUArgs.flags(endpoint: text, mac: mac, mtu: mtu)) ?? "")]
        }
        let note = switch endpoint {
        case .dgram: " (local.path must be unique per guest)"
        case .vhostUser: " (virtio-net only; the guest's RAM is shared with slirpd: keep -m and size= equal)"
        default: ""
        }
        var lines = ["attach a guest to network \(network) over \(text)\(note):"]
        if let flags = try? QEMUArgs.flags(endpoint: text, mac: mac, mtu: mtu) { lines.append("  " + flags) }
        if case .tcp = endpoint, let flags = try? QEMUArgs.flags(endpoint: text, mac: mac, mtu: mtu, legacySocket: true) {
            lines.append("  or: " + flags)
        }
        return lines
    }
}

/// A random guest MAC, for advice in log lines.
func randomGuestMAC() -> String { QEMUArgs.freshMAC() }

/// Where sockets go when no path is given.
public enum RuntimePaths {
    /// Creates the default directory (see `defaultRuntimeDirectory`), refusing one another user owns.
    public static func prepareDefaultDirectory() throws(DaemonError) -> String {
        let (path, mode) = defaultRuntimeDirectory()
        do {
            try makeRuntimeDirectory(path, mode: mode)
        } catch {
            throw DaemonError("cannot use runtime directory: \(error)")
        }
        return path
    }
}
