// VXLANOptions: `--vxlan 'vni=N,local=ADDR[:PORT],remote=ADDR[:PORT][,remote=...]'`, or with
// a multicast underlay `--vxlan 'vni=N,local=ADDR,group=MCAST[:PORT],dev=IF[,remote=...]'`.
//
// Theory of operation. The text is QemuOpts syntax like `-o` (OptionList): `vni=` (0 to
// 2^24-1, RFC 7348's 24 bits) and `local=` once, `remote=` once or more (the order is
// kept, duplicates are refused). An address is a strict dotted quad, a bare IPv6 address,
// `IPv4:PORT` or `[IPv6]:PORT`; the port defaults to IANA's 4789, the kernel's `dstport`.
// All remotes must be of the local address's family: one UDP socket serves the uplink,
// bound to `local`. Errors follow QEMU's wording where it has one (`Invalid parameter
// 'KEY'`, `Parameter 'KEY' is missing`) and say what was expected otherwise. Nothing is
// bound here: a local address the machine does not have fails when the network starts.
// `group=` (an IPv4 multicast address, 224.0.0.0/4, port 4789 by default) needs `dev=`, the
// interface to join it on, as the kernel's `group ... dev IF`; with a group, remotes are
// optional (they then get unicast copies of floods beside the group's one).

/// One end of the VXLAN underlay: an address and a UDP port.
public struct VXLANEndpoint: Hashable, Sendable, CustomStringConvertible {
    public typealias Address = HostAddress

    /// IANA's VXLAN port (RFC 7348), the Linux vxlan device's `dstport 4789`.
    public static let defaultPort: UInt16 = 4789

    public var address: Address
    public var port: UInt16

    public init(_ address: Address, port: UInt16 = VXLANEndpoint.defaultPort) {
        self.address = address
        self.port = port
    }

    /// `IPv4`, `IPv4:PORT`, a bare IPv6 address or `[IPv6]:PORT`; port 1 to 65535.
    public init?(_ text: String) {
        guard let (address, port) = HostAddress.parse(text, defaultPort: Self.defaultPort) else { return nil }
        self.init(address, port: port)
    }

    public var isIPv6: Bool {
        if case .v6 = address { return true }
        return false
    }

    /// The address in numeric text, for the socket calls.
    public var host: String {
        switch address {
        case .v4(let a): "\(a)"
        case .v6(let a): "\(a)"
        }
    }

    /// The address's bytes in network order: 4 or 16.
    public var addressBytes: [UInt8] {
        switch address {
        case .v4(let a): [UInt8(a.value >> 24), UInt8(a.value >> 16 & 0xFF), UInt8(a.value >> 8 & 0xFF), UInt8(a.value & 0xFF)]
        case .v6(let a): a.bytes
        }
    }

    public var description: String {
        switch address {
        case .v4(let a): port == Self.defaultPort ? "\(a)" : "\(a):\(port)"
        case .v6(let a): port == Self.defaultPort ? "\(a)" : "[\(a)]:\(port)"
        }
    }
}

/// A network's VXLAN uplink, as configured.
public struct VXLANOptions: Hashable, Sendable, CustomStringConvertible {
    /// RFC 7348's VXLAN Network Identifier: 24 bits.
    public static let maximumVNI: UInt32 = 0xFF_FFFF
    /// Enough for a rack or a lab; each is one more copy of every broadcast (head-end replication).
    public static let maximumRemotes = 256

    public var vni: UInt32
    public var local: VXLANEndpoint
    public var remotes: [VXLANEndpoint]
    /// The multicast underlay: floods go to `group` (joined on `device`) instead of to each remote.
    public var group: VXLANEndpoint?
    public var device: String?

    public init(vni: UInt32, local: VXLANEndpoint, remotes: [VXLANEndpoint], group: VXLANEndpoint? = nil, device: String? = nil) {
        self.vni = vni
        self.local = local
        self.remotes = remotes
        self.group = group
        self.device = device
    }

    /// The canonical option text (what the API shows and a reload compares).
    public var description: String {
        var items = ["vni=\(vni)", "local=\(local)"]
        if let group, let device { items += ["group=\(group)", "dev=\(device)"] }
        return (items + remotes.map { "remote=\($0)" }).joined(separator: ",")
    }

    /// For the log: "VNI 42, local 198.51.100.1, remotes A, B[, group G on dev IF]".
    public var summary: String {
        var text = "VNI \(vni), local \(local), remotes \(remotes.isEmpty ? "none" : remotes.map(\.description).joined(separator: ", "))"
        if let group, let device { text += ", group \(group) on dev \(device)" }
        return text
    }

    /// Linux's IFNAMSIZ less the terminating NUL.
    public static let maximumDeviceName = 15

    public static func parse(_ text: String) throws(OptionError) -> VXLANOptions {
        let list = OptionList(parsing: text)
        if let type = list.type, !type.isEmpty { throw .invalidParameter(type) }
        var vniText: String?
        var localText: String?
        var remoteTexts: [String] = []
        var groupText: String?
        var device: String?
        for item in list.items {
            switch item.key {
            case "vni": vniText = item.value
            case "local": localText = item.value
            case "remote": remoteTexts.append(item.value)
            case "group": groupText = item.value
            case "dev": device = item.value
            default: throw .invalidParameter(item.key)
            }
        }
        guard let vniText else { throw OptionError("Parameter 'vni' is missing") }
        guard let vni = UInt32(vniText), vni <= maximumVNI else {
            throw OptionError("Parameter 'vni' expects a number from 0 to \(maximumVNI) (RFC 7348's 24 bits), not '\(vniText)'")
        }
        guard let localText else { throw OptionError("Parameter 'local' is missing") }
        guard let local = VXLANEndpoint(localText) else { throw badAddress("local", localText) }
        if case .v4(let a) = local.address, a.value == 0 || a.value >> 28 == 0xE {
            throw OptionError("Parameter 'local' must be a unicast address of this machine, not '\(localText)'")
        }
        var group: VXLANEndpoint?
        if let groupText {
            guard let g = VXLANEndpoint(groupText) else {
                throw OptionError("Invalid VXLAN group address '\(groupText)' (expected an IPv4 multicast address[:PORT])")
            }
            guard case .v4(let a) = g.address, a.value >> 28 == 0xE else {
                throw OptionError("VXLAN group '\(groupText)' must be an IPv4 multicast address (224.0.0.0/4)")
            }
            guard !local.isIPv6 else {
                throw OptionError("VXLAN group '\(groupText)' is not of the local address's family (local=\(local))")
            }
            guard let device else { throw OptionError("Parameter 'dev' is missing (group= needs the interface to join it on)") }
            guard !device.isEmpty, device.utf8.count <= maximumDeviceName, device != ".", device != "..",
                  !device.contains(where: { $0 == "/" || $0 == ":" || $0.isWhitespace }) else {
                throw OptionError("Parameter 'dev' expects an interface name (1 to \(maximumDeviceName) characters, no '/', ':' or spaces), not '\(device)'")
            }
            group = g
        } else if device != nil {
            throw OptionError("Parameter 'dev' needs 'group' (dev= names the interface to join the multicast group on)")
        }
        guard !remoteTexts.isEmpty || group != nil else {
            throw OptionError("Parameter 'remote' is missing (give at least one remote=ADDR[:PORT], or group=MCAST,dev=IF)")
        }
        guard remoteTexts.count <= maximumRemotes else {
            throw OptionError("Too many VXLAN remotes (\(remoteTexts.count); at most \(maximumRemotes))")
        }
        var remotes: [VXLANEndpoint] = []
        for text in remoteTexts {
            let remote = try checkedRemote(text, local: local)
            guard !remotes.contains(remote) else { throw OptionError("Duplicate VXLAN remote '\(text)'") }
            remotes.append(remote)
        }
        return VXLANOptions(vni: vni, local: local, remotes: remotes, group: group, device: group == nil ? nil : device)
    }

    /// Parses and checks one remote against `local` (also for remotes added through the API).
    public static func checkedRemote(_ text: String, local: VXLANEndpoint) throws(OptionError) -> VXLANEndpoint {
        guard let remote = VXLANEndpoint(text) else { throw badAddress("remote", text) }
        guard remote.isIPv6 == local.isIPv6 else {
            throw OptionError("VXLAN remote '\(text)' is not of the local address's family (local=\(local))")
        }
        guard remote != local else { throw OptionError("VXLAN remote '\(text)' is the local address itself") }
        if case .v4(let a) = remote.address, a.value == 0 || a.value == 0xFFFF_FFFF || a.value >> 28 == 0xE {
            throw OptionError("VXLAN remote '\(text)' must be a unicast address")
        }
        if case .v6(let a) = remote.address, a.bytes[0] == 0xFF || a.bytes.allSatisfy({ $0 == 0 }) {
            throw OptionError("VXLAN remote '\(text)' must be a unicast address")
        }
        return remote
    }

    private static func badAddress(_ key: String, _ text: String) -> OptionError {
        OptionError("Invalid VXLAN \(key) address '\(text)' (expected IPv4[:PORT], IPv6 or [IPv6]:PORT)")
    }
}
