// DaemonConfig: what the daemon runs, as the command line or a config file states it.
// Pure values: binding sockets and starting networks is SlirpDaemon's job.
import NetOptions
import NetServices

/// What one virtual network is made of, as configured.
public struct NetworkConfig: Sendable, Equatable {
    public var name: String
    public var options: NetworkOptions
    public var endpoints: [EndpointSpec]
    /// 0 keeps libslirp's default (1500).
    public var mtu: Int
    /// The MTU in effect: `mtu`, or libslirp's default 1500.
    public var effectiveMTU: Int { mtu > 0 ? mtu : 1500 }
    /// Permission bits of the Unix socket files.
    public var socketMode: UInt32
    /// Group to give the Unix socket files, by name; nil keeps the daemon's own group.
    public var socketGroup: String?
    /// The option string as the user wrote it, for display.
    public var optionText: String
    /// Fixed DHCP addresses (and names) by MAC; the API can add more at run time.
    public var staticLeases: [StaticLease]
    /// Who may attach over the Unix sockets, beyond what the socket files' modes allow.
    public var guestAccess: GuestAccess
    /// The VXLAN uplink to other hosts (`--vxlan`, `vxlan = "..."`); nil: none.
    public var vxlan: VXLANOptions?

    public init(name: String, options: NetworkOptions, endpoints: [EndpointSpec], mtu: Int, socketMode: UInt32,
                socketGroup: String? = nil, optionText: String = "", staticLeases: [StaticLease] = [],
                guestAccess: GuestAccess = GuestAccess(), vxlan: VXLANOptions? = nil) {
        self.vxlan = vxlan
        self.guestAccess = guestAccess
        self.optionText = optionText
        self.staticLeases = staticLeases
        self.name = name
        self.options = options
        self.endpoints = endpoints
        self.mtu = mtu
        self.socketMode = socketMode
        self.socketGroup = socketGroup
    }
}

/// Where guests attach, as given on the command line.
public enum EndpointSpec: Hashable, Sendable, CustomStringConvertible {
    /// A Unix stream socket at a path (`-netdev stream,addr.type=unix`).
    case stream(path: String)
    /// A Unix datagram socket at a path (`-netdev dgram,remote.type=unix`).
    case dgram(path: String)
    /// A TCP listener (`-netdev socket,connect=` or `-netdev stream,addr.type=inet`).
    case tcp(host: String, port: UInt16)
    /// A tap device: a network namespace or container joins the network through it.
    case tap(name: String)
    /// A QEMU `-netdev stream,server=on` Unix socket that slirpd dials, and re-dials
    /// whenever the connection drops or slirpd restarts.
    case connect(path: String)
    /// A Unix stream socket serving the vhost-user protocol (`-netdev vhost-user`): the
    /// guest's virtio-net device talks to slirpd through shared memory.
    case vhostUser(path: String)

    public var isTap: Bool {
        if case .tap = self { return true }
        return false
    }

    public var isTCP: Bool {
        if case .tcp = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .stream(let path): "stream:\(path)"
        case .dgram(let path): "dgram:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case .tap(let name): "tap:\(name)"
        case .connect(let path): "connect:unix:\(path)"
        case .vhostUser(let path): "vhost-user:\(path)"
        }
    }

    /// Parses `unix:PATH`, a QEMU server socket to dial (config `connect = [...]`, `--connect`).
    public static func connect(parsing text: String) -> EndpointSpec? {
        guard text.hasPrefix("unix:") else { return nil }
        let path = String(text.dropFirst("unix:".count))
        guard !path.isEmpty, !path.utf8.contains(0) else { return nil }
        return .connect(path: path)
    }

    /// Parses `HOST:PORT` or `[V6]:PORT` for `--tcp`.
    public static func tcp(parsing text: String) -> EndpointSpec? {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        guard let port = UInt16(text[text.index(after: colon)...]), port > 0 else { return nil }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        return .tcp(host: host, port: port)
    }
}

/// Per-network allow-lists for guests on Unix sockets (`guest-uids`, `guest-gids`).
///
/// The socket files' mode and group already decide who may connect; these lists check
/// the peer itself, so a socket file with a wide mode, or one handed over by systemd,
/// still admits only the listed users and groups. Stream peers are checked by the
/// kernel's credentials (SO_PEERCRED, SO_PEERGROUPS: uid, primary and supplementary
/// groups); datagram peers by the owner and group of the socket file they send from.
/// TCP peers have no credentials, so a network with a list refuses TCP endpoints.
public struct GuestAccess: Sendable, Equatable {
    public var uids: [UInt32]
    public var gids: [UInt32]

    public init(uids: [UInt32] = [], gids: [UInt32] = []) {
        self.uids = uids
        self.gids = gids
    }

    /// Whether any check applies; empty lists admit everyone the socket file admits.
    public var isRestricted: Bool { !uids.isEmpty || !gids.isEmpty }

    /// The daemon's own user and root always pass, as on the control socket.
    public func admits(uid: UInt32, groups: [UInt32], ownUID: UInt32) -> Bool {
        guard isRestricted else { return true }
        return uid == 0 || uid == ownUID || uids.contains(uid) || groups.contains(where: gids.contains)
    }
}
