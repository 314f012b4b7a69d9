// slirpctl: the command-line client of slirpd's control API.
//
// Every subcommand is one HTTP request on the control socket. Output is a table for
// people, or the API's own JSON with --json for scripts; errors are one line on stderr
// and exit status 1.
import ArgumentParser
import Foundation
import NIOHTTP1
import PosixIO
import SlirpAPI

struct GlobalOptions: ParsableArguments {
    @Option(help: ArgumentHelp("slirpd's control socket (default: control.sock in slirpd's runtime directory).", valueName: "PATH"))
    var control: String?

    @Flag(help: "Print the API's JSON instead of a table.")
    var json = false

    var client: ControlClient {
        ControlClient(socketPath: control ?? "\(defaultRuntimeDirectory().path)/control.sock")
    }

    /// GETs a JSON value, failing with the API's message on an error status.
    func get<T: Decodable>(_ path: String, as type: T.Type) throws -> (T, [UInt8]) {
        try send(.GET, path, as: type)
    }

    func send<T: Decodable>(_ method: HTTPMethod, _ path: String, body: (some Encodable)? = String?.none, as type: T.Type) throws -> (T, [UInt8]) {
        let payload = try body.map { Array(try JSONEncoder().encode($0)) }
        let response = try client.request(method, path, body: payload)
        try check(response)
        do {
            return (try JSONDecoder().decode(T.self, from: Data(response.body)), response.body)
        } catch {
            throw ClientError.failed("unexpected answer from slirpd: \(error)")
        }
    }
}

func check(_ response: HTTPResponseData) throws {
    guard response.status >= 300 else { return }
    let message = (try? JSONDecoder().decode(APIError.Body.self, from: Data(response.body)))?.error
        ?? String(decoding: response.body, as: UTF8.self)
    throw ClientError.failed(message.isEmpty ? "slirpd answered HTTP \(response.status)" : message)
}

func pathComponent(_ text: String) -> String {
    text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
}

/// `/v1/networks/NAME/COLLECTION[/ITEM]`, each part escaped.
func networkPath(_ network: String, _ collection: String, _ item: String? = nil) -> String {
    "/v1/networks/\(pathComponent(network))/\(collection)" + (item.map { "/\(pathComponent($0))" } ?? "")
}

/// A collection on one network, or on every network when none is named.
func listPath(_ network: String?, _ collection: String) -> String {
    network.map { networkPath($0, collection) } ?? "/v1/\(collection)"
}

func printJSON(_ bytes: [UInt8]) {
    writeOut(bytes)
}

/// Writes to stdout; when the reader has gone (`slirpctl capture | head`), exits quietly.
@Sendable func writeOut(_ bytes: [UInt8]) {
    if !writeStandardOutput(bytes) { Foundation.exit(0) }
}

/// Prints rows under a header, columns padded to their widest cell.
func table(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max() ?? 0 }
    for row in [header] + rows {
        print(row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  "))
    }
}

/// The network to act on: the one named, or the only one there is.
func resolveNetwork(_ name: String?, _ global: GlobalOptions) throws -> String {
    if let name { return name }
    let (networks, _) = try global.get("/v1/networks", as: [NetworkInfo].self)
    guard networks.count == 1, let only = networks.first else {
        throw ClientError.failed("slirpd runs \(networks.count) networks (\(networks.map(\.name).joined(separator: ", "))): choose one with --network")
    }
    return only.name
}

@main
struct Slirpctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slirpctl",
        abstract: "Control a running slirpd: guests, forwards, attachments, connections, captures, events.",
        subcommands: [Networks.self, Guests.self, Connections.self, Leases.self, StaticLeaseCommand.self, Limits.self, Forward.self,
                      GuestFwd.self, Attach.self, Detach.self, Attachments.self, VXLANCommand.self, Capture.self, Events.self, QemuArgs.self])

    // Declared here and in each subcommand, so `slirpctl --control P guests` and
    // `slirpctl guests --control P` both work.
    @OptionGroup var global: GlobalOptions

    /// One line on stderr and exit status 1, for every failure.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let error as ClientError {
            FileHandle.standardError.write(Data("slirpctl: \(error)\n".utf8))
            Foundation.exit(1)
        } catch {
            exit(withError: error)
        }
    }
}

struct Networks: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List networks with their addresses and counters.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let (networks, raw) = try global.get("/v1/networks", as: [NetworkInfo].self)
        if global.json { return printJSON(raw) }
        table(["NAME", "NETWORK", "GATEWAY", "DNS", "GUESTS", "RX FRAMES", "TX FRAMES", "DROPS", "ENDPOINTS"], networks.map {
            [$0.name, $0.network, $0.gateway, $0.dns, "\($0.guests)", "\($0.counters.rxFrames)", "\($0.counters.txFrames)",
             "\($0.counters.drops)", $0.endpoints.joined(separator: " ")]
        })
    }
}

struct Guests: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List attached guests: transport, peer, MAC, IP, counters.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this network.") var network: String?

    func run() throws {
        let path = listPath(network, "guests")
        let (guests, raw) = try global.get(path, as: [GuestInfo].self)
        if global.json { return printJSON(raw) }
        table(["NETWORK", "ID", "TRANSPORT", "MAC", "IP", "HOSTNAME", "RX", "TX", "DROPS", "SINCE", "PEER"], guests.map {
            [$0.network, "\($0.id)", $0.transport, $0.macs.joined(separator: ","), $0.ips.joined(separator: ","),
             $0.hostname ?? "", "\($0.counters.rxFrames)", "\($0.counters.txFrames)", "\($0.counters.drops)",
             $0.connectedSince, $0.peer]
        })
    }
}

struct Connections: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the NAT's connections (like QEMU's info usernet).")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this network.") var network: String?
    @Flag(help: "Print libslirp's own table, as QEMU's info usernet does.") var text = false

    func run() throws {
        if text {
            let name = try resolveNetwork(network, global)
            let response = try global.client.request(.GET, "/v1/networks/\(pathComponent(name))/connections?format=text")
            try check(response)
            return printJSON(response.body)
        }
        let path = listPath(network, "connections")
        let (rows, raw) = try global.get(path, as: [ConnectionInfo].self)
        if global.json { return printJSON(raw) }
        table(["PROTO", "STATE", "FD", "SOURCE", "DESTINATION", "RECV-Q", "SEND-Q"], rows.map {
            [$0.proto, $0.state, "\($0.fd)", "\($0.sourceAddress):\($0.sourcePort)",
             "\($0.destinationAddress):\($0.destinationPort)", "\($0.recvQueue)", "\($0.sendQueue)"]
        })
    }
}

struct Leases: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List DHCP leases the NAT has granted.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this network.") var network: String?

    func run() throws {
        let path = listPath(network, "leases")
        let (leases, raw) = try global.get(path, as: [LeaseInfo].self)
        if global.json { return printJSON(raw) }
        table(["NETWORK", "MAC", "IP", "HOSTNAME", "STATIC", "GRANTED", "EXPIRES"], leases.map {
            [$0.network, $0.mac, $0.ip, $0.hostname ?? "", $0.isStatic ? "yes" : "no", $0.granted, $0.expires ?? ""]
        })
    }
}

struct StaticLeaseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "static-lease", abstract: "Add, remove or list static DHCP leases (a fixed IP per MAC).",
        subcommands: [Add.self, Remove.self, List.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fix a MAC's IP and hostname, from its next DHCP exchange.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?
        @Option(help: "The DHCP hostname to give the guest.") var hostname: String?
        @Argument(help: "The guest's MAC, e.g. 52:54:00:12:34:56") var mac: String
        @Argument(help: "Its IPv4 address, inside the network, e.g. 10.0.2.50") var ip: String

        func run() throws {
            let name = try resolveNetwork(network, global)
            let (info, raw) = try global.send(.POST, networkPath(name, "static-leases"),
                                              body: StaticLeaseRequest(mac: mac, ip: ip, hostname: hostname),
                                              as: StaticLeaseInfo.self)
            if global.json { return printJSON(raw) }
            print("added \(info.mac) -> \(info.ip)\(info.hostname.map { " (\($0))" } ?? "")")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a static lease added with slirpctl or the API.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?
        @Argument(help: "The guest's MAC.") var mac: String

        func run() throws {
            let name = try resolveNetwork(network, global)
            let (info, raw) = try global.send(.DELETE, networkPath(name, "static-leases", mac),
                                              as: StaticLeaseInfo.self)
            if global.json { return printJSON(raw) }
            print("removed \(info.mac) -> \(info.ip)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List static leases, from the config file and the API.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only this network.") var network: String?

        func run() throws {
            let path = listPath(network, "static-leases")
            let (rows, raw) = try global.get(path, as: [StaticLeaseInfo].self)
            if global.json { return printJSON(raw) }
            table(["NETWORK", "MAC", "IP", "HOSTNAME", "SOURCE"], rows.map {
                [$0.network, $0.mac, $0.ip, $0.hostname ?? "", $0.source.rawValue]
            })
        }
    }
}

struct Limits: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show or change each guest's caps on NAT flows (max-tcp= etc.) at run time.",
        subcommands: [Show.self, Set.self], defaultSubcommand: Show.self)

    static func printTable(_ rows: [(String, FlowLimitsInfo)]) {
        table(["NETWORK", "MAX-TCP", "MAX-UDP", "MAX-ICMP", "MAX-DNS-TCP", "BUFFERS/GUEST", "SET BY API"], rows.map { name, l in
            [name, "\(l.maxTCP)", "\(l.maxUDP)", "\(l.maxICMP)", "\(l.maxDNSTCP)", "\(l.bufferEstimatePerGuest / 1024) KiB",
             (l.setByAPI ?? []).joined(separator: ",")]
        })
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the caps in force (the default).")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only this network.") var network: String?

        func run() throws {
            if let network {
                let (info, raw) = try global.get(networkPath(network, "flow-limits"), as: FlowLimitsInfo.self)
                if global.json { return printJSON(raw) }
                return Limits.printTable([(network, info)])
            }
            let (networks, _) = try global.get("/v1/networks", as: [NetworkInfo].self)
            let rows = networks.compactMap { n in n.flowLimits.map { (n.name, $0) } }
            if global.json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                let map = Dictionary(rows, uniquingKeysWith: { a, _ in a })
                return printJSON(Array((try? encoder.encode(map)) ?? Data("{}".utf8)) + [0x0A])
            }
            Limits.printTable(rows)
        }
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change caps for every guest's new flows; open flows are never cut. Kept across restarts until the configuration changes that key.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?
        @Option(parsing: .unconditional, help: ArgumentHelp("NAT TCP connections per guest (max-tcp=), 0 to 65535.", valueName: "N")) var tcp: String?
        @Option(parsing: .unconditional, help: ArgumentHelp("UDP flows per guest (max-udp=), 0 to 65535.", valueName: "N")) var udp: String?
        @Option(parsing: .unconditional, help: ArgumentHelp("ICMP echo flows per guest (max-icmp=), 0 to 65535.", valueName: "N")) var icmp: String?
        @Option(name: .customLong("dns-tcp"), parsing: .unconditional, help: ArgumentHelp("TCP connections per guest to the DNS service (max-dns-tcp=), 0 to 65535.", valueName: "N"))
        var dnsTCP: String?

        /// Parsed here (and taken whatever it looks like, `-1` included) so that any bad
        /// value fails the same way: exit status 1, one line.
        static func number(_ text: String?, _ flag: String) throws -> Int? {
            guard let text else { return nil }
            guard let value = Int(text), (0...65535).contains(value) else {
                throw ClientError.failed("\(flag) expects a whole number from 0 to 65535, not '\(text)'")
            }
            return value
        }

        func run() throws {
            let request = FlowLimitsRequest(maxTCP: try Self.number(tcp, "--tcp"), maxUDP: try Self.number(udp, "--udp"),
                                            maxICMP: try Self.number(icmp, "--icmp"), maxDNSTCP: try Self.number(dnsTCP, "--dns-tcp"))
            guard request != FlowLimitsRequest() else {
                throw ClientError.failed("give at least one of --tcp, --udp, --icmp, --dns-tcp")
            }
            let name = try resolveNetwork(network, global)
            let (info, raw) = try global.send(.PUT, networkPath(name, "flow-limits"), body: request, as: FlowLimitsInfo.self)
            if global.json { return printJSON(raw) }
            Limits.printTable([(name, info)])
        }
    }
}

struct Forward: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Add, remove or list host forwards at run time.",
        subcommands: [Add.self, Remove.self, List.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a forward: [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT (QEMU hostfwd syntax).")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?
        @Option(help: "Aim at a guest by MAC or DHCP hostname; the forward then follows its lease.") var guest: String?
        @Argument(help: "The rule, e.g. tcp:127.0.0.1:8080-10.0.2.15:80") var rule: String

        func run() throws {
            let name = try resolveNetwork(network, global)
            let (info, raw) = try global.send(.POST, networkPath(name, "forwards"),
                                              body: ForwardRequest(rule: rule, guest: guest), as: ForwardInfo.self)
            if global.json { return printJSON(raw) }
            print("added \(info.rule)\(info.guestAddress == nil ? " (waiting for guest \(info.guest) to get a lease)" : "")")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a forward by its host side: [tcp|udp]:[HOSTADDR]:HOSTPORT (like QEMU's hostfwd_remove).")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?
        @Argument(help: "The host side, e.g. tcp:127.0.0.1:8080") var rule: String

        func run() throws {
            let name = try resolveNetwork(network, global)
            let (info, raw) = try global.send(.DELETE, networkPath(name, "forwards", rule), as: ForwardInfo.self)
            if global.json { return printJSON(raw) }
            print("removed \(info.rule)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List host forwards.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only this network.") var network: String?

        func run() throws {
            let path = listPath(network, "forwards")
            let (forwards, raw) = try global.get(path, as: [ForwardInfo].self)
            if global.json { return printJSON(raw) }
            table(["NETWORK", "PROTO", "HOST", "GUEST", "TO", "RULE"], forwards.map { f in
                [f.network, f.proto, "\(f.hostAddress.contains(":") ? "[\(f.hostAddress)]" : f.hostAddress):\(f.hostPort)", f.guest,
                 f.guestAddress.map { "\($0):\(f.guestPort)" } ?? "(no lease yet)", f.rule]
            })
        }
    }
}

struct GuestFwd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guestfwd", abstract: "Add, remove or list guest forwards (QEMU guestfwd syntax).",
        subcommands: [Add.self, Remove.self, List.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add: [tcp]:ADDR:PORT-cmd:COMMAND, -tcp:HOST:PORT or -unix:PATH.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?
        @Argument var rule: String

        func run() throws {
            let name = try resolveNetwork(network, global)
            let (info, raw) = try global.send(.POST, networkPath(name, "guestfwds"),
                                              body: GuestForwardRequest(rule: rule), as: GuestForwardInfo.self)
            if global.json { return printJSON(raw) }
            print("added \(info.address):\(info.port) -> \(info.target)")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove by the guest side: [tcp]:ADDR:PORT.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?
        @Argument var rule: String

        func run() throws {
            let name = try resolveNetwork(network, global)
            let (info, raw) = try global.send(.DELETE, networkPath(name, "guestfwds", rule), as: GuestForwardInfo.self)
            if global.json { return printJSON(raw) }
            print("removed \(info.address):\(info.port) -> \(info.target)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List guest forwards.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only this network.") var network: String?

        func run() throws {
            let path = listPath(network, "guestfwds")
            let (rows, raw) = try global.get(path, as: [GuestForwardInfo].self)
            if global.json { return printJSON(raw) }
            table(["NETWORK", "GUEST SIDE", "TARGET"], rows.map { [$0.network, "\($0.address):\($0.port)", $0.target] })
        }
    }
}

struct Capture: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a live pcap of a network's frames to stdout (slirpctl capture > x.pcap; stop with Ctrl-C).")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The network (needed when slirpd runs several).") var network: String?
    @Option(help: "Only what this guest (by MAC) sends and receives, broadcasts included.") var guest: String?

    func run() throws {
        guard isatty(1) == 0 else { throw ClientError.failed("stdout is a terminal: redirect it to a file or pipe it to tshark -r -") }
        let name = try resolveNetwork(network, global)
        let query = guest.map { "?guest=\(pathComponent($0))" } ?? ""
        let response = try global.client.request(.GET, "/v1/networks/\(pathComponent(name))/capture\(query)", stream: writeOut)
        try check(response)
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Follow events: guests attaching and leaving, leases, refusals, forwards.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let json = global.json
        let response = try global.client.request(.GET, "/v1/events") { chunk in
            if json { return writeOut(chunk) }
            for line in chunk.split(separator: 0x0A) {
                guard let e = try? JSONDecoder().decode(Event.self, from: Data(line)) else { continue }
                let fields = [e.guest.map { "guest=\($0)" }, e.mac.map { "mac=\($0)" }, e.ip.map { "ip=\($0)" },
                              e.hostname.map { "hostname=\($0)" }, e.detail].compactMap { $0 }
                writeOut(Array("\(e.time) \(e.network) \(e.type.rawValue) \(fields.joined(separator: " "))\n".utf8))
            }
        }
        try check(response)
    }
}

struct QemuArgs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qemu-args", abstract: "Print QEMU flags that attach a new guest, with a MAC no attached guest uses.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The network (needed when slirpd runs several).") var network: String?
    @Option(help: "stream, dgram, tcp or vhost-user (default: the network's first endpoint).") var transport: String?
    @Option(help: ArgumentHelp("With a vhost-user endpoint: the guest's RAM, which the flags put in shared memory (-m and the backend agree).",
                               valueName: "size"))
    var memory = QEMUArgs.defaultVhostUserMemory
    @Option(help: ArgumentHelp("The NIC model (default: virtio-net-pci, or the board's with --zephyr). On-board NICs "
                               + "(lan9118, stellaris, ...) are attached with -net nic instead of -device.", valueName: "model"))
    var model: String?
    @Flag(help: "Print the flags for one Zephyr instance, as QEMU_EXTRA_FLAGS and CONFIG_QEMU_EXTRA_FLAGS.") var zephyr = false
    @Option(help: ArgumentHelp("With --zephyr: the board, which picks the NIC (\(Zephyr.boards.map(\.name).joined(separator: ", "))).",
                               valueName: "board"))
    var board: String?

    func validate() throws {
        if board != nil && !zephyr { throw ValidationError("--board goes with --zephyr") }
        if zephyr && board == nil && model == nil { throw ValidationError("--zephyr needs --board or --model") }
    }

    func run() throws {
        // The NIC first: a wrong board fails without asking slirpd.
        let nic: String
        do {
            if let model { nic = model } else if let board { nic = try Zephyr.nicModel(board: board) } else { nic = "virtio-net-pci" }
            if zephyr { try Zephyr.checkPortable(nic) }
        } catch {
            throw ClientError.failed("\(error)")
        }
        let name = try resolveNetwork(network, global)
        let (net, _) = try global.get("/v1/networks/\(pathComponent(name))", as: NetworkInfo.self)
        let (guests, _) = try global.get(networkPath(name, "guests"), as: [GuestInfo].self)
        // Tap endpoints take namespaces, and a connect: socket is one particular QEMU's.
        let candidates = net.endpoints.filter {
            !$0.hasPrefix("tap:") && !$0.hasPrefix("connect:") && (transport == nil || $0.hasPrefix("\(transport ?? ""):"))
        }
        guard let endpoint = candidates.first else {
            throw ClientError.failed("network \(name) has no \(transport ?? "") endpoint (it has: \(net.endpoints.joined(separator: ", ")))")
        }
        let mac = QEMUArgs.freshMAC(avoiding: Set(guests.flatMap(\.macs)))
        let flags: String
        do {
            flags = try QEMUArgs.flags(endpoint: endpoint, mac: mac, model: nic, mtu: net.mtu, memory: memory)
        } catch {
            throw ClientError.failed("\(error)")
        }
        guard zephyr else { return print(flags) }
        do {
            try Zephyr.checkPortable(endpoint)
        } catch {
            throw ClientError.failed("\(error)")
        }
        print(Zephyr.usage(flags: flags, board: board, model: nic, mac: mac, endpoint: endpoint, network: name), terminator: "")
    }
}
