// The config file: TOML describing the control socket and any number of networks.
//
// Theory of operation. toml++ (through TOMLKit) checks the syntax and builds a tree; a
// syntax error carries its line. That happens behind a `TOMLReader`: in the daemon, the
// helper executable slirpd-toml (see TOMLNode.swift for why), elsewhere ConfigTOML in
// the same process; either way the tree arrives as `TOMLNode`s. The tree is then walked
// table by table, each table's keys in file order so that of several mistakes the first
// in the file is reported. Every key is checked against the keys its table allows (so a typo is an error, not a
// silently ignored setting) and against its type. A network's option keys are turned
// back into QEMU `-netdev user` syntax and appended to its `options` string, and the
// whole string goes through NetworkOptions.parse: one parser, one set of QEMU-worded
// errors, whether a setting is written as a key or inside `options`. Because
// TOMLKit gives no positions for parsed nodes, KeyLines finds each key's line in the
// text. An option error is pinned to the key that brings it about: the shortest prefix
// of the option pieces (`options` first, then the keys in file order) that fails with
// the very same error. Static leases are checked on their own while the walk meets
// them, and against the network's addresses and each other once the options are parsed.
import FrameSwitch
import NetOptions
import NetServices
import PosixIO

/// Reads slirpd's config file.
///
/// The format, TOML; every key is optional unless marked required:
///
/// ```toml
/// [control]
/// socket = "/run/slirpd/control.sock"  # default: chosen by the daemon
/// mode = "0600"                        # octal string, at most 0777; default 0600
/// allow-uids = [1000, 1001]            # users besides the daemon's own; default none
///
/// [[network]]                          # one table per network; at least one
/// name = "lab"                         # required, unique, [A-Za-z0-9_.-]+
/// options = "net=192.168.0.0/24,hostfwd=tcp::8080-:80"  # QEMU -netdev user string
/// # QEMU's options as keys, instead of or besides `options`:
/// net = "192.168.0.0/24"               # strings: net host dns dhcpstart ipv6-net
/// restrict = true                      #   ipv6-host ipv6-dns hostname domainname
/// ipv4 = true                          #   tftp tftp-server-name bootfile
/// ipv6 = false                         #   dns-upstream dns-domain
/// dnssearch = ["example.com"]          # booleans: restrict ipv4 ipv6
/// hostfwd = ["tcp::8080-:80"]          # arrays of strings: dnssearch hostfwd
/// guestfwd = ["tcp:10.0.2.100:80-tcp:127.0.0.1:8000"]  #   (or `forwards`) guestfwd
/// # slirpd's own keys, for the DNS server it runs in place of libslirp's:
/// dns-upstream = "192.168.1.1:53"      # where other names go: IP[:PORT] or [V6]:PORT;
///                                      #   default the host's first resolv.conf server
/// dns-domain = "lab.internal"          # names it answers itself; default slirpd.internal
/// # Endpoints; none at all means the daemon's default stream socket for the name:
/// stream = ["/run/slirpd/lab.sock"]    # Unix stream socket paths
/// dgram = ["/run/slirpd/lab.dgram"]    # Unix datagram socket paths
/// tcp = ["127.0.0.1:5555"]             # HOST:PORT or [V6]:PORT
/// vhost-user = ["/run/slirpd/lab.vu"]  # Unix sockets serving vhost-user (virtio-net)
/// mtu = 1500                           # 68 to 65521; default libslirp's 1500
/// socket-mode = "0660"                 # octal string, at most 0777; default 0660
/// socket-group = "kvm"                 # group of the socket files; default unchanged
/// connect = ["unix:/run/vm/a.sock"]    # QEMU server=on sockets slirpd dials
/// guest-uids = [1000]                  # who may attach over Unix sockets (besides the
/// guest-gids = [993]                   #   daemon's user and root); default anyone
/// vxlan = "vni=42,local=198.51.100.1,remote=198.51.100.2"  # a VXLAN uplink to other hosts
/// dhcpend = "10.0.2.99"                # the DHCP pool's last address (split it between hosts)
///
/// [[network.static-lease]]             # a fixed DHCP address; any number per network
/// mac = "52:54:00:12:34:56"            # required; unicast, one lease per MAC
/// ip = "192.168.0.50"                  # required; inside net, one lease per IP, not
///                                      #   the host, dns, guestfwd, network or broadcast
/// hostname = "web1"                    # offered to the guest; one DNS label [A-Za-z0-9-]
/// ```
///
/// Static leases may instead be inline tables in the network's own table, under the same
/// key: `static-lease = [{ mac = "52:54:00:12:34:56", ip = "192.168.0.50" }]`. Either
/// way they are numbered from 1 in file order for messages, and kept in that order.
///
/// Option keys become `key=value` items (`,` in a value doubled to `,,`, booleans as
/// `on`/`off`, one item per array element) appended after `options` in file order, so
/// a key also given in `options` wins, as the later item does in QEMU. Endpoints keep
/// the order stream, dgram, tcp, as on the command line; a path or TCP address may
/// serve only one endpoint in the whole file. Unknown keys, wrong types, duplicate
/// network names and a file without networks are errors, each reported with its line
/// where it has one; option errors use QEMU's wording, at the line of the key that
/// causes them.
public enum ConfigFile {
    /// Reads and parses the file at `path`; errors name `path` as given.
    public static func load(path: String, reader: TOMLReader) throws(ConfigError) -> DaemonConfiguration {
        let bytes: [UInt8]
        do {
            // 1 MiB is far above any sane config, and stops a mistaken /dev/zero.
            bytes = try readWholeFile(path, limit: 1 << 20)
        } catch {
            // POSIX's words ("No such file or directory"), without the call's name.
            throw ConfigError(file: path, line: nil, message: error.fileTooLarge ? "file too large (over 1 MiB)" : error.reason)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigError(
                file: path, line: lineOfInvalidUTF8(bytes),
                message: "not valid UTF-8 (TOML files must be UTF-8)")
        }
        return try parse(text, file: path, reader: reader)
    }

    /// Parses config text; `file` is only for error messages.
    public static func parse(_ text: String, file: String, reader: TOMLReader) throws(ConfigError) -> DaemonConfiguration {
        // TOMLKit hands toml++ a C string, which would silently end at a NUL.
        if let nul = text.utf8.firstIndex(of: 0) {
            throw ConfigError(
                file: file, line: lineNumber(at: nul, in: text.utf8),
                message: "NUL character (TOML allows no control characters)")
        }
        let lines = KeyLines(text)
        if let (line, statement, message) = lines.parserAbort {
            // toml++ would abort the process there (see KeyLines.parserAbort). A mistake in
            // the statements above still comes first, as it would from toml++.
            let above = text.utf8.split(separator: UInt8(ascii: "\n"), maxSplits: statement - 1, omittingEmptySubsequences: false)
                .dropLast().map { String(decoding: $0, as: UTF8.self) }.joined(separator: "\n")
            _ = try table(above, file: file, reader: reader)
            throw ConfigError(file: file, line: line, message: message)
        }
        let root = try table(text, file: file, reader: reader)
        if let line = lines.nulEscape {
            throw ConfigError(file: file, line: line, message: "NUL character escape in a string (not supported)")
        }
        var loader = Loader(file: file, lines: lines)
        return try loader.load(root)
    }

    /// toml++'s tree of `text`, or its syntax error.
    private static func table(_ text: String, file: String, reader: TOMLReader) throws(ConfigError) -> [String: TOMLNode] {
        do {
            return try reader(text)
        } catch {
            throw ConfigError(file: file, line: error.line, message: error.message)
        }
    }
}

/// Walks the parsed tree, collecting the configuration or the first mistake.
private struct Loader {
    let file: String
    let lines: KeyLines
    /// Every network name so far, with its line, for duplicate reports.
    var names: [String: Int?] = [:]
    /// Socket paths and TCP addresses so far, with the network that has each.
    var endpointOwners: [(key: String, network: String)] = []

    init(file: String, lines: KeyLines) {
        self.file = file
        self.lines = lines
    }

    static let rootKeys = ["control", "network"]
    static let controlKeys = ["socket", "mode", "allow-uids"]
    /// Network keys that are QEMU `-netdev user` options under the same name.
    static let stringOptions: Set<String> = [
        "net", "host", "dns", "dhcpstart", "ipv6-net", "ipv6-host", "ipv6-dns", "hostname", "domainname",
        "tftp", "tftp-server-name", "bootfile", "dns-upstream", "dns-domain", "dhcpend",
    ]
    static let booleanOptions: Set<String> = ["restrict", "ipv4", "ipv6", "host-loopback", "isolate"]
    /// Per-guest caps (FlowBudget, max-macs), integers in TOML.
    static let integerOptions: Set<String> = ["max-tcp", "max-udp", "max-icmp", "max-dns-tcp", "max-macs"]
    /// Array keys, and the QEMU option each element becomes.
    static let listOptions = ["dnssearch": "dnssearch", "hostfwd": "hostfwd", "forwards": "hostfwd", "guestfwd": "guestfwd"]
    static let networkKeys =
        ["name", "options"] + stringOptions.sorted() + booleanOptions.sorted() + integerOptions.sorted() + listOptions.keys.sorted()
        + ["stream", "dgram", "tcp", "tap", "connect", "vhost-user", "guest-uids", "guest-gids", "mtu", "socket-mode", "socket-group", "static-lease", "vxlan"]
    static let leaseKeys = ["mac", "ip", "hostname"]

    func error(_ message: String, key: String?, in scope: KeyLines.Scope) -> ConfigError {
        ConfigError(file: file, line: lines.line(of: key, in: scope), message: message)
    }

    /// A table's keys in file order; keys without a known line go last, by name.
    func keysInFileOrder(_ table: [String: TOMLNode], _ scope: KeyLines.Scope) -> [String] {
        table.keys.map { (line: lines.line(of: $0, in: scope) ?? Int.max, key: $0) }
            .sorted { ($0.line, $0.key) < ($1.line, $1.key) }
            .map(\.key)
    }

    mutating func load(_ root: [String: TOMLNode]) throws(ConfigError) -> DaemonConfiguration {
        var control = ControlConfig()
        var networkTables: [[String: TOMLNode]] = []
        for key in keysInFileOrder(root, .root) {
            guard let value = root[key] else { continue }
            switch key {
            case "control":
                guard let table = value.table else { throw typeError(key, "a table ([control])", value, .root) }
                control = try loadControl(table)
            case "network":
                let wanted = "an array of tables ([[network]])"
                guard let array = value.array else { throw typeError(key, wanted, value, .root) }
                for (offset, element) in array.enumerated() {
                    guard let table = element.table else {
                        throw elementTypeError(key, wanted, offset + 1, element, .root)
                    }
                    networkTables.append(table)
                }
            default:
                throw unknownKey(key, in: .root, known: Self.rootKeys, table: "the file")
            }
        }
        var networks: [NetworkConfig] = []
        for (index, table) in networkTables.enumerated() {
            networks.append(try loadNetwork(table, index: index))
        }
        guard !networks.isEmpty else {
            throw ConfigError(file: file, line: nil, message: "no networks (add a [[network]] table with a name)")
        }
        return DaemonConfiguration(control: control, networks: networks)
    }

    func loadControl(_ table: [String: TOMLNode]) throws(ConfigError) -> ControlConfig {
        var control = ControlConfig()
        for key in keysInFileOrder(table, .control) {
            guard let value = table[key] else { continue }
            switch key {
            case "socket":
                control.socketPath = try nonEmptyString(key, value, .control)
            case "mode":
                control.socketMode = try mode(key, value, .control)
            case "allow-uids":
                control.allowUIDs += try ids(key, value, "user", .control)
            default:
                throw unknownKey(key, in: .control, known: Self.controlKeys, table: "[control]")
            }
        }
        return control
    }

    mutating func loadNetwork(_ table: [String: TOMLNode], index: Int) throws(ConfigError) -> NetworkConfig {
        let scope = KeyLines.Scope.network(index)
        var name: String?
        var optionsString: (text: String, line: Int?)?
        var pieces: [(text: String, line: Int?)] = []
        var streams: [EndpointSpec] = [], dgrams: [EndpointSpec] = [], tcps: [EndpointSpec] = [], taps: [EndpointSpec] = [], connects: [EndpointSpec] = [],
            vhostUsers: [EndpointSpec] = []
        var endpointKeys: [(spec: EndpointSpec, key: String)] = []
        var mtu = 0
        var socketMode: UInt32 = 0o660
        var socketGroup: String?
        var guestAccess = GuestAccess()
        var leases: [(lease: StaticLease, scope: KeyLines.Scope)] = []
        var vxlan: VXLANOptions?

        for key in keysInFileOrder(table, scope) {
            guard let value = table[key] else { continue }
            let line = lines.line(of: key, in: scope)
            switch key {
            case "name":
                let text = try string(key, value, scope)
                guard !text.isEmpty, text.utf8.allSatisfy(Self.isNameByte) else {
                    throw error("invalid network name '\(text)' (use letters, digits, '_', '.' and '-')", key: key, in: scope)
                }
                if let first = names[text] {
                    let place = first.map { " (first defined at line \($0))" } ?? ""
                    throw error("duplicate network name '\(text)'\(place)", key: key, in: scope)
                }
                names[text] = line
                name = text
            case "options":
                optionsString = (try string(key, value, scope), line)
            case let key where Self.stringOptions.contains(key):
                pieces.append(("\(key)=\(Self.escaped(try string(key, value, scope)))", line))
            case let key where Self.booleanOptions.contains(key):
                guard let flag = value.bool else { throw typeError(key, "a boolean (true or false)", value, scope) }
                pieces.append(("\(key)=\(flag ? "on" : "off")", line))
            case let key where Self.integerOptions.contains(key):
                guard let number = value.int else { throw typeError(key, "an integer", value, scope) }
                pieces.append(("\(key)=\(number)", line))
            case let key where Self.listOptions[key] != nil:
                let option = Self.listOptions[key] ?? key
                let items = try strings(key, value, scope)
                if !items.isEmpty {
                    pieces.append((items.map { "\(option)=\(Self.escaped($0))" }.joined(separator: ","), line))
                }
            case "stream", "dgram", "vhost-user":
                for path in try strings(key, value, scope) {
                    guard !path.isEmpty else { throw error("'\(key)' has an empty path", key: key, in: scope) }
                    let spec: EndpointSpec
                    switch key {
                    case "stream": spec = .stream(path: path); streams.append(spec)
                    case "dgram": spec = .dgram(path: path); dgrams.append(spec)
                    default: spec = .vhostUser(path: path); vhostUsers.append(spec)
                    }
                    endpointKeys.append((spec, key))
                }
            case "tcp":
                for text in try strings(key, value, scope) {
                    guard let spec = EndpointSpec.tcp(parsing: text) else {
                        throw error("invalid tcp endpoint '\(text)' (expected HOST:PORT or [V6]:PORT)", key: key, in: scope)
                    }
                    tcps.append(spec)
                    endpointKeys.append((spec, key))
                }
            case "tap":
                for name in try strings(key, value, scope) {
                    guard !name.isEmpty, name.utf8.count < 16, !name.contains("/") else {
                        throw error("invalid tap device name '\(name)' (1 to 15 characters)", key: key, in: scope)
                    }
                    taps.append(.tap(name: name))
                    endpointKeys.append((.tap(name: name), key))
                }
            case "connect":
                for text in try strings(key, value, scope) {
                    guard let spec = EndpointSpec.connect(parsing: text) else {
                        throw error("invalid connect target '\(text)' (expected unix:PATH, a QEMU -netdev stream,server=on socket)", key: key, in: scope)
                    }
                    connects.append(spec)
                    endpointKeys.append((spec, key))
                }
            case "guest-uids":
                guestAccess.uids += try ids(key, value, "user", scope)
            case "guest-gids":
                guestAccess.gids += try ids(key, value, "group", scope)
            case "mtu":
                guard let number = value.int else { throw typeError(key, "an integer", value, scope) }
                guard (68...65521).contains(number) else {
                    throw error("Invalid MTU \(number) (must be in range 68-65521)", key: key, in: scope)
                }
                mtu = number
            case "socket-mode":
                socketMode = try mode(key, value, scope)
            case "socket-group":
                socketGroup = try nonEmptyString(key, value, scope)
            case "vxlan":
                let text = try string(key, value, scope)
                do throws(OptionError) {
                    vxlan = try VXLANOptions.parse(text)
                } catch {
                    throw self.error("vxlan: \(error.message)", key: key, in: scope)
                }
            case "static-lease":
                let wanted = "an array of tables ([[network.static-lease]])"
                for (number, element) in try elements(key, value, wanted, scope) {
                    guard let lease = element.table else { throw elementTypeError(key, wanted, number, element, scope) }
                    let leaseScope = KeyLines.Scope.staticLease(network: index, lease: number - 1)
                    leases.append((try staticLease(lease, number, leaseScope), leaseScope))
                }
            default:
                throw unknownKey(key, in: scope, known: Self.networkKeys, table: "[[network]]")
            }
        }

        guard let name else {
            throw error("[[network]] without a name (add name = \"...\")", key: nil, in: scope)
        }
        for (spec, key) in endpointKeys {
            let resource: String
            switch spec {
            case .stream(let path), .dgram(let path), .vhostUser(let path): resource = "socket path '\(path)'"
            case .tcp: resource = "TCP address \(spec.description.dropFirst("tcp:".count))"
            case .tap(let device): resource = "tap device '\(device)'"
            case .connect(let path): resource = "QEMU socket '\(path)'"
            }
            if let owner = endpointOwners.first(where: { $0.key == resource }) {
                throw error("\(resource) is already used by network '\(owner.network)'", key: key, in: scope)
            }
            endpointOwners.append((resource, name))
        }
        let options = try networkOptions(optionsString, pieces, scope)
        try checkLeases(leases, options)
        return NetworkConfig(
            name: name, options: options, endpoints: streams + dgrams + tcps + taps + connects + vhostUsers, mtu: mtu, socketMode: socketMode,
            socketGroup: socketGroup, staticLeases: leases.map(\.lease), guestAccess: guestAccess, vxlan: vxlan)
    }

    /// An array of user or group IDs (`kind`: "user" or "group").
    func ids(_ key: String, _ value: TOMLNode, _ kind: String, _ scope: KeyLines.Scope) throws(ConfigError) -> [UInt32] {
        let wanted = "an array of \(kind) IDs"
        var result: [UInt32] = []
        for (number, element) in try elements(key, value, wanted, scope) {
            // The all-ones value is (uid_t)-1 or (gid_t)-1, "nobody in particular", never a real ID.
            guard let id = element.int, let id32 = UInt32(exactly: id), id32 != UInt32.max else {
                if element.kind == .int {
                    throw error("'\(key)' element \(number) is \(element.written), not a \(kind) ID "
                                + "(0 to \(UInt32.max - 1))", key: key, in: scope)
                }
                throw elementTypeError(key, wanted, number, element, scope)
            }
            result.append(id32)
        }
        return result
    }

    /// One static lease table, checked on its own; `number` counts from 1.
    func staticLease(_ table: [String: TOMLNode], _ number: Int, _ scope: KeyLines.Scope) throws(ConfigError) -> StaticLease {
        let lease = "static lease \(number)"
        var mac: MACAddress?
        var address: IPv4Address?
        var hostname: String?
        for key in keysInFileOrder(table, scope) {
            guard let value = table[key] else { continue }
            switch key {
            case "mac":
                let text = try string(key, value, scope)
                guard let parsed = MACAddress(text) else {
                    throw error("\(lease): invalid MAC '\(text)' (expected six hex pairs such as 52:54:00:12:34:56)",
                                key: key, in: scope)
                }
                // No frame comes from a group address, so no guest could ask for this lease.
                guard !parsed.isGroup else {
                    throw error("\(lease): MAC \(parsed) is a group (multicast) address, not a guest's", key: key, in: scope)
                }
                mac = parsed
            case "ip":
                let text = try string(key, value, scope)
                guard let parsed = IPv4Address(text) else {
                    throw error("\(lease): invalid IP '\(text)' (expected an IPv4 address such as 10.0.2.50)",
                                key: key, in: scope)
                }
                address = parsed
            case "hostname":
                let text = try string(key, value, scope)
                guard StaticLease.isLabel(text) else {
                    throw error("\(lease): invalid hostname '\(text)' (a single DNS label: 1 to 63 letters, digits "
                                    + "and '-')", key: key, in: scope)
                }
                hostname = text
            default:
                throw unknownKey(key, in: scope, known: Self.leaseKeys, table: lease)
            }
        }
        guard let mac else { throw error("\(lease) without a MAC (add mac = \"...\")", key: nil, in: scope) }
        guard let address else { throw error("\(lease) without an IP (add ip = \"...\")", key: nil, in: scope) }
        return StaticLease(mac: mac, address: address, hostname: hostname)
    }

    /// Checks static leases against the parsed options and each other. Reserved are the
    /// addresses libslirp itself answers ARP for, which DHCP would never hand out.
    func checkLeases(_ leases: [(lease: StaticLease, scope: KeyLines.Scope)],
                     _ options: NetworkOptions) throws(ConfigError) {
        for (offset, (lease, scope)) in leases.enumerated() {
            let name = "static lease \(offset + 1)"
            let ip = lease.address
            if let problem = lease.addressProblem(in: options) { throw error("\(name): \(problem)", key: "ip", in: scope) }
            let earlier = leases[..<offset]
            if let first = earlier.firstIndex(where: { $0.lease.mac == lease.mac }) {
                throw error("\(name): MAC \(lease.mac) is already in static lease \(first + 1)", key: "mac", in: scope)
            }
            if let first = earlier.firstIndex(where: { $0.lease.address == ip }) {
                throw error("\(name): IP \(ip) is already in static lease \(first + 1)", key: "ip", in: scope)
            }
        }
    }

    /// Parses `options` followed by the option keys, blaming the piece that fails.
    func networkOptions(_ optionsString: (text: String, line: Int?)?,
                        _ keyPieces: [(text: String, line: Int?)],
                        _ scope: KeyLines.Scope) throws(ConfigError) -> NetworkOptions {
        var pieces = keyPieces
        if let optionsString, !optionsString.text.isEmpty { pieces.insert(optionsString, at: 0) }
        let failure: OptionError
        do {
            return try NetworkOptions.parse(NetworkOptions.join(pieces.map(\.text)))
        } catch {
            failure = error
        }
        // The first piece whose arrival produces exactly this error is the one to blame:
        // QEMU keeps the last of repeated keys, so a prefix can fail where the whole
        // would not, and the whole can fail for a reason no prefix shows.
        var blamed = pieces.last?.line ?? lines.header(of: scope)
        for count in pieces.indices.map({ $0 + 1 }) {
            do {
                _ = try NetworkOptions.parse(NetworkOptions.join(pieces.prefix(count).map(\.text)))
            } catch where error == failure {
                blamed = pieces[count - 1].line
                break
            } catch {
                continue
            }
        }
        throw ConfigError(file: file, line: blamed, message: failure.message)
    }

    /// QemuOpts' escaping: `,,` is a comma inside a value. Byte by byte, as OptionList
    /// splits: a comma and a combining mark after it are one Character, which
    /// `replacing(",", with: ",,")` would leave single, ending the value there.
    static func escaped(_ value: String) -> String {
        String(decoding: value.utf8.flatMap { $0 == UInt8(ascii: ",") ? [$0, $0] : [$0] }, as: UTF8.self)
    }

    static func isNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }

    // MARK: Typed values

    func string(_ key: String, _ value: TOMLNode, _ scope: KeyLines.Scope) throws(ConfigError) -> String {
        guard let text = value.string else { throw typeError(key, "a string", value, scope) }
        return text
    }

    func nonEmptyString(_ key: String, _ value: TOMLNode, _ scope: KeyLines.Scope) throws(ConfigError) -> String {
        let text = try string(key, value, scope)
        guard !text.isEmpty else { throw error("'\(key)' must not be empty", key: key, in: scope) }
        return text
    }

    /// An array's elements, numbered from 1 for messages.
    func elements(_ key: String, _ value: TOMLNode, _ wanted: String,
                  _ scope: KeyLines.Scope) throws(ConfigError) -> [(number: Int, value: TOMLNode)] {
        guard let array = value.array else { throw typeError(key, wanted, value, scope) }
        return array.enumerated().map { ($0.offset + 1, $0.element) }
    }

    func strings(_ key: String, _ value: TOMLNode, _ scope: KeyLines.Scope) throws(ConfigError) -> [String] {
        let wanted = "an array of strings"
        var result: [String] = []
        for (number, element) in try elements(key, value, wanted, scope) {
            guard let text = element.string else { throw elementTypeError(key, wanted, number, element, scope) }
            result.append(text)
        }
        return result
    }

    /// Permission bits as an octal string: TOML integers cannot be told apart by how
    /// they were written, and `mode = 660` would silently mean 0o1224.
    func mode(_ key: String, _ value: TOMLNode, _ scope: KeyLines.Scope) throws(ConfigError) -> UInt32 {
        guard let text = value.string else {
            throw typeError(key, "an octal string such as \"0660\"", value, scope)
        }
        guard !text.isEmpty, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "7")).contains($0) }),
              let mode = UInt32(text, radix: 8), mode <= 0o777 else {
            throw error("invalid '\(key)' \"\(text)\" (octal permission bits, at most 0777, e.g. \"0660\")", key: key, in: scope)
        }
        return mode
    }

    // MARK: Messages

    func typeError(_ key: String, _ wanted: String, _ value: TOMLNode, _ scope: KeyLines.Scope) -> ConfigError {
        error("'\(key)' must be \(wanted), not \(Self.noun(value.kind))", key: key, in: scope)
    }

    func elementTypeError(_ key: String, _ wanted: String, _ number: Int, _ element: TOMLNode,
                          _ scope: KeyLines.Scope) -> ConfigError {
        error("'\(key)' must be \(wanted), but element \(number) is \(Self.noun(element.kind))", key: key, in: scope)
    }

    func unknownKey(_ key: String, in scope: KeyLines.Scope, known: [String], table: String) -> ConfigError {
        var message = "unknown key '\(key)' in \(table)"
        if let guess = Self.closest(to: key, among: known) { message += " (did you mean '\(guess)'?)" }
        return error(message, key: key, in: scope)
    }

    static func noun(_ type: TOMLNodeKind) -> String {
        switch type {
        case .string: "a string"
        case .int: "an integer"
        case .double: "a floating-point number"
        case .bool: "a boolean"
        case .array: "an array"
        case .table: "a table"
        case .date: "a date"
        case .time: "a time"
        case .dateTime: "a date-time"
        }
    }

    /// The known key within two edits of a typo, if exactly one is nearest.
    static func closest(to key: String, among known: [String]) -> String? {
        let scored = known.map { (key: $0, distance: editDistance(Array(key.lowercased().utf8), Array($0.utf8))) }
        guard let best = scored.min(by: { $0.distance < $1.distance }), best.distance <= 2 else { return nil }
        return scored.filter { $0.distance == best.distance }.count == 1 ? best.key : nil
    }

    /// Levenshtein distance, one row at a time.
    static func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var current = [i + 1]
            for (j, y) in b.enumerated() {
                current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1)))
            }
            previous = current
        }
        return previous[b.count]
    }
}

/// The line of the first byte that is not UTF-8.
private func lineOfInvalidUTF8(_ bytes: [UInt8]) -> Int? {
    var parser = Unicode.UTF8.ForwardParser()
    var iterator = bytes.makeIterator()
    var offset = 0
    while true {
        switch parser.parseScalar(from: &iterator) {
        case .valid(let scalar): offset += scalar.count
        case .error: return lineNumber(at: offset, in: bytes)
        case .emptyInput: return nil
        }
    }
}

/// 1-based line of the byte at `index`.
private func lineNumber<C: Collection>(at index: C.Index, in bytes: C) -> Int where C.Element == UInt8 {
    bytes[..<index].reduce(1) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
}
