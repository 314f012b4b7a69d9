import DaemonConfig
import PosixIO

/// The sockets systemd passed in (socket activation), as endpoints of networks.
///
/// Theory of operation: each socket belongs to the network its FileDescriptorName=
/// names, or, when there is only one network, to that one whatever its name. A socket
/// whose path or address the network's config already lists is used in place of
/// binding it (a Unix stream socket may serve the config's `vhost-user` path as well as a
/// `stream` one); any other is added to the network's endpoints. The descriptors stay
/// here for the daemon's whole life: a network that stops (or restarts on reload) only
/// stops polling them, and their socket files are never removed, because they are
/// systemd's. So a datagram socket held by systemd outlives a daemon restart, and
/// guests that send to it carry on.
public final class InheritedEndpoints {
    private struct Entry {
        let socket: InheritedSocket
        let spec: EndpointSpec

        func serves(_ endpoint: EndpointSpec) -> Bool {
            if case .vhostUser(let path) = endpoint, case .stream(path) = spec { return true }
            return endpoint == spec
        }
    }
    private let entries: [Entry]

    public init(_ sockets: [InheritedSocket]) {
        entries = sockets.map { socket in
            let spec: EndpointSpec
            switch (socket.address, socket.kind) {
            case (.unix(let path), .stream): spec = .stream(path: path)
            case (.unix(let path), .datagram): spec = .dgram(path: path)
            // takeInheritedSockets refuses UDP, so an inet socket here is TCP.
            case (.inet(let host, let port), _): spec = .tcp(host: host, port: port)
            }
            return Entry(socket: socket, spec: spec)
        }
    }

    public var isEmpty: Bool { entries.isEmpty }

    /// `configs` with every inherited socket among its network's endpoints. Throws when a
    /// socket names no network and there are several to choose from.
    public func apply(to configs: [NetworkConfig]) throws(DaemonError) -> [NetworkConfig] {
        var result = configs
        for entry in entries {
            let name = entry.socket.name
            guard let index = result.firstIndex(where: { $0.name == name }) ?? (result.count == 1 ? 0 : nil) else {
                throw DaemonError("socket-activated \(entry.spec) has FileDescriptorName=\(name.isEmpty ? "(none)" : name), which names no network (networks: \(result.map(\.name).joined(separator: ", "))); set FileDescriptorName= to a network's name")
            }
            if !result[index].endpoints.contains(where: entry.serves) { result[index].endpoints.append(entry.spec) }
        }
        return result
    }

    /// The inherited socket serving `spec`, if systemd passed one.
    func descriptor(for spec: EndpointSpec) -> Descriptor? {
        entries.first { $0.serves(spec) }?.socket.descriptor
    }

    /// A line for the log: what came from systemd.
    public var summary: String {
        "socket activation: " + entries.map { "\($0.spec)\($0.socket.name.isEmpty ? "" : " (\($0.socket.name))")" }.joined(separator: ", ")
    }
}
