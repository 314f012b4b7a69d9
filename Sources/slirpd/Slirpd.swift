// slirpd: the daemon's command line. Parsing and validation happen here, before
// anything is bound, so a bad option string exits non-zero with QEMU's wording.
import ArgumentParser
import ControlAPI
import DaemonConfig
import Dispatch
import Logging
import NetOptions
import PosixIO
import SlirpDaemon

@main
struct Slirpd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slirpd",
        abstract: "A shared user-mode NAT (libslirp) for QEMU guests, over -netdev stream, dgram and socket.",
        discussion: """
            With no endpoint, listens on a Unix stream socket at $XDG_RUNTIME_DIR/slirpd/NAME.sock \
            (/run/slirpd for root, /tmp/slirpd-UID otherwise) and prints the QEMU flags to attach a guest. \
            Sockets passed by systemd (socket activation) join the network their FileDescriptorName= names.
            """)

    @Option(help: "The network's name, used for the default socket path and in logs.")
    var name = "default"

    @Option(name: [.short, .customLong("options")], help: ArgumentHelp(
        "QEMU -netdev user options, e.g. 'net=192.168.0.0/24,hostfwd=tcp::8080-:80'. Repeatable: the strings are joined with commas.", valueName: "OPTS"))
    var optionStrings: [String] = []

    /// Every -o as one QEMU option string (a second -o adds to the first, never replaces it).
    private var options: String { NetworkOptions.join(optionStrings) }

    @Option(help: ArgumentHelp("Listen on a Unix stream socket (QEMU -netdev stream). Repeatable.", valueName: "PATH"))
    var stream: [String] = []

    @Option(help: ArgumentHelp("Listen on a Unix datagram socket (QEMU -netdev dgram). Repeatable.", valueName: "PATH"))
    var dgram: [String] = []

    @Option(help: ArgumentHelp("Listen on TCP (QEMU -netdev socket,connect= or stream over inet). Repeatable.", valueName: "HOST:PORT"))
    var tcp: [String] = []

    @Option(help: ArgumentHelp("Attach a tap device you may use (ip tuntap add mode tap user USER name IFNAME), so a network namespace or container joins the network. Repeatable.", valueName: "IFNAME"))
    var tap: [String] = []

    @Option(name: .customLong("vhost-user"), help: ArgumentHelp("Listen on a Unix socket as a vhost-user virtio-net back end (QEMU -netdev vhost-user; the guest's memory must be shared: memory-backend-memfd,share=on). Repeatable.", valueName: "PATH"))
    var vhostUser: [String] = []

    @Option(name: .customLong("connect"), help: ArgumentHelp("Dial a QEMU '-netdev stream,server=on' socket, and re-dial it whenever the connection drops or slirpd restarts. Repeatable.", valueName: "unix:PATH"))
    var connectTargets: [String] = []

    @Option(help: ArgumentHelp("Join the network to other hosts over VXLAN (RFC 7348; the Linux vxlan device, OVS, other slirpd): 'vni=N,local=ADDR[:PORT],remote=ADDR[:PORT][,remote=...]', port 4789 by default. Give each host its own DHCP range with -o dhcpstart=,dhcpend=.", valueName: "OPTS"))
    var vxlan: String?

    @Option(name: .customLong("guest-uid"), help: ArgumentHelp("Admit guests on Unix sockets only from this user (besides the daemon's own and root). Repeatable.", valueName: "UID"))
    var guestUIDs: [UInt32] = []

    @Option(name: .customLong("guest-gid"), help: ArgumentHelp("Admit guests on Unix sockets only from members of this group. Repeatable.", valueName: "GID"))
    var guestGIDs: [UInt32] = []

    @Option(help: "Interface MTU for the NAT, 68-65521 (default 1500). Guests learn it from the printed host_mtu= flag.")
    var mtu: Int?

    @Option(help: ArgumentHelp("Permission bits of socket files, in octal.", valueName: "MODE"))
    var socketMode = "0660"

    @Option(help: ArgumentHelp("The control API's Unix socket (default: control.sock in the runtime directory).", valueName: "PATH"))
    var control: String?

    @Option(help: ArgumentHelp("Permission bits of the control socket, in octal (default 0600).", valueName: "MODE"))
    var controlMode: String?

    @Option(help: ArgumentHelp("Read the networks (and control settings) from a TOML file instead of the network flags; SIGHUP re-reads it.", valueName: "FILE"))
    var config: String?

    @Option(help: ArgumentHelp("Also let this uid use the control API (the daemon's own uid and root always may). Repeatable.", valueName: "UID"))
    var allowUid: [UInt32] = []

    @Option(help: ArgumentHelp("Where DHCP leases (NAME.leases), changes made through the API (NAME.runtime.json) and DNS-over-TCP sockets go (default: the runtime directory).", valueName: "DIR"))
    var stateDir: String?

    @Option(name: .customLong("busy-poll"), help: ArgumentHelp("After an interactive exchange, spin on the sockets for up to this many microseconds before sleeping (never during bulk transfers, and not while another process needs the CPU): lower latency and more connections per second for some CPU. 0 turns it off.", valueName: "US"))
    var busyPoll = 50

    @Flag(help: "Serve no control API.")
    var noControl = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    @Option(help: .hidden)
    var guestfwdRelay: String?

    func run() throws {
        if let target = guestfwdRelay { return try runRelay(target) }
        guard let level = Logger.Level(rawValue: logLevel) else { throw fail("invalid log level '\(logLevel)'") }
        guard (0...1000).contains(busyPoll) else { throw fail("--busy-poll must be 0-1000 microseconds, not \(busyPoll)") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        do {
            let inherited: InheritedEndpoints
            do {
                inherited = InheritedEndpoints(try takeInheritedSockets())
            } catch {
                throw DaemonError("\(error)")
            }
            var networks: [NetworkConfig]
            var controlConfig = ControlConfig()
            var reloadSource: (() throws(DaemonError) -> [NetworkConfig])?
            if let path = config {
                guard options.isEmpty, stream.isEmpty, dgram.isEmpty, tcp.isEmpty, tap.isEmpty, vhostUser.isEmpty, connectTargets.isEmpty, guestUIDs.isEmpty, guestGIDs.isEmpty, mtu == nil, vxlan == nil, name == "default", socketMode == "0660" else {
                    throw fail("--config replaces -o, --stream, --dgram, --tcp, --tap, --vhost-user, --connect, --guest-uid, --guest-gid, --vxlan, --name, --mtu and --socket-mode: set those in \(path)")
                }
                let loaded = try Self.load(path)
                networks = try Self.withDefaultEndpoints(inherited.apply(to: loaded.networks))
                controlConfig = loaded.control
                reloadSource = { () throws(DaemonError) in try Self.withDefaultEndpoints(inherited.apply(to: Self.load(path).networks)) }
            } else {
                networks = try Self.withDefaultEndpoints(inherited.apply(to: [commandLineNetwork()]))
            }
            let daemon = try Daemon(networks: networks, stateDirectory: try stateDirectory(), inherited: inherited, reloadSource: reloadSource,
                                    busyPollMicroseconds: busyPoll)
            // Its sockets are open: nothing slirpd or its guestfwd commands exec may gain privileges.
            do {
                try forbidNewPrivileges()
            } catch {
                throw DaemonError("cannot set no_new_privs: \(error)")
            }
            let api = try noControl ? nil : controlServerConfig(controlConfig)
            let server = api.map { startControlServer($0, daemon.control) }
            defer {
                server?.stop()
                if let api { removeFile(api.socketPath) }
            }
            try daemon.run()
        } catch let error as DaemonError {
            throw fail(error.message)
        }
    }

    /// The one network the flags describe, checked before anything is bound.
    private func commandLineNetwork() throws -> NetworkConfig {
        let parsed: NetworkOptions
        do {
            parsed = try NetworkOptions.parse(options)
        } catch {
            throw fail(error.message)
        }
        if let mtu, !(68...65521).contains(mtu) { throw fail("Invalid MTU \(mtu) (must be in range 68-65521)") }
        guard let mode = UInt32(socketMode, radix: 8), mode <= 0o777 else { throw fail("invalid socket mode '\(socketMode)' (octal, e.g. 0660)") }
        guard !name.isEmpty, !name.contains("/") else { throw fail("invalid network name '\(name)'") }
        var endpoints: [EndpointSpec] = stream.map { .stream(path: $0) } + dgram.map { .dgram(path: $0) }
        for t in tcp {
            guard let spec = EndpointSpec.tcp(parsing: t) else { throw fail("invalid --tcp '\(t)' (expected HOST:PORT)") }
            endpoints.append(spec)
        }
        endpoints += tap.map { .tap(name: $0) }
        for path in vhostUser {
            guard !path.isEmpty else { throw fail("invalid --vhost-user '' (expected a socket path)") }
            endpoints.append(.vhostUser(path: path))
        }
        for text in connectTargets {
            guard let spec = EndpointSpec.connect(parsing: text) else { throw fail("invalid --connect '\(text)' (expected unix:PATH)") }
            endpoints.append(spec)
        }
        var uplink: VXLANOptions?
        if let vxlan {
            do {
                uplink = try VXLANOptions.parse(vxlan)
            } catch {
                throw fail("--vxlan: \(error.message)")
            }
        }
        return NetworkConfig(name: name, options: parsed, endpoints: endpoints, mtu: mtu ?? 0, socketMode: mode, optionText: options,
                             guestAccess: GuestAccess(uids: guestUIDs, gids: guestGIDs), vxlan: uplink)
    }

    private func stateDirectory() throws(DaemonError) -> String {
        guard let stateDir else { return try RuntimePaths.prepareDefaultDirectory() }
        do {
            try makeRuntimeDirectory(stateDir, mode: 0o700)
        } catch {
            throw DaemonError("cannot use state directory: \(error)")
        }
        return stateDir
    }

    /// The control socket's settings: the flags win over the config file's [control].
    private func controlServerConfig(_ file: ControlConfig) throws -> ControlServerConfig {
        var mode = file.socketMode
        if let controlMode {
            guard let m = UInt32(controlMode, radix: 8), m <= 0o777 else { throw fail("invalid control socket mode '\(controlMode)' (octal, e.g. 0600)") }
            mode = m
        }
        return ControlServerConfig(
            socketPath: try control ?? file.socketPath ?? "\(RuntimePaths.prepareDefaultDirectory())/control.sock",
            socketMode: mode, allowedUIDs: Set(allowUid + file.allowUIDs))
    }

    /// Reads the config file.
    private static func load(_ path: String) throws(DaemonError) -> DaemonConfiguration {
        do {
            return try ConfigFile.load(path: path, reader: TOMLHelper.read)
        } catch {
            throw DaemonError(error.description)
        }
    }

    /// Networks that have no endpoint (none configured, none from systemd) get the default socket.
    private static func withDefaultEndpoints(_ networks: [NetworkConfig]) throws(DaemonError) -> [NetworkConfig] {
        var result = networks
        for i in result.indices where result[i].endpoints.isEmpty {
            result[i].endpoints = [.stream(path: "\(try RuntimePaths.prepareDefaultDirectory())/\(result[i].name).sock")]
        }
        return result
    }

    /// The control API's server, and how to stop it when the daemon's loop ends.
    private struct ControlServerHandle {
        let stopper: ControlServerStopper
        let finished: DispatchSemaphore
        let task: Task<Void, Never>

        /// Stops it gracefully, giving requests in flight up to 2 s, then cancels it.
        func stop() {
            stopper.stop()
            if finished.wait(timeout: .now() + 2) == .timedOut { task.cancel() }
        }
    }

    /// Serves the API on Hummingbird's threads; if it cannot start, the daemon stops with the reason.
    private func startControlServer(_ config: ControlServerConfig, _ control: DaemonControl) -> ControlServerHandle {
        let log = Logger(label: "slirpd")
        do {
            try removeStaleSocket(path: config.socketPath, kind: .stream)
        } catch {
            let hint = error.addressInUse ? " (another slirpd serves it: give this one its own --control PATH, or --no-control)" : ""
            Daemon.stop(control, error: "cannot serve the control API at \(config.socketPath): \(error)\(hint)")
        }
        let stopper = ControlServerStopper()
        let finished = DispatchSemaphore(value: 0)
        let task = Task.detached {
            defer { finished.signal() }
            do {
                try await ControlServer.run(config: config, service: control, ownUID: currentUserID(), logger: log, stopper: stopper) {
                    log.notice("control API listening on \(config.socketPath) (mode \(String(config.socketMode, radix: 8)))")
                }
            } catch is CancellationError {
            } catch {
                Daemon.stop(control, error: "the control API at \(config.socketPath) failed: \(error)")
            }
        }
        return ControlServerHandle(stopper: stopper, finished: finished, task: task)
    }

    /// The child side of a `guestfwd=...-tcp:HOST:PORT` connection: stdin/stdout are the guest's.
    private func runRelay(_ target: String) throws {
        guard case .tcp(let host, let port)? = EndpointSpec.tcp(parsing: target) else { throw fail("invalid relay target '\(target)'") }
        do {
            try relay(local: 0, host: host, port: port)
        } catch {
            throw fail("guest forward to \(target): \(error)")
        }
    }

    /// Reports a user error in one line and makes the process exit with status 1.
    private func fail(_ message: String) -> ExitCode {
        writeStandardError("slirpd: \(message)\n")
        return ExitCode.failure
    }
}
