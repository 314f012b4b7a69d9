// fuzz-config: the libFuzzer target for ConfigFile.parse, slirpd's reader of its TOML
// config file (at start and on every SIGHUP reload).
//
// Theory of operation. Each input, decoded as UTF-8 (invalid bytes become U+FFFD, as
// ConfigFile.load refuses them before parsing), is one config file's text. It is parsed
// twice; both must agree. toml++ (C++, through TOMLKit) does the syntax and is not
// instrumented; the coverage that guides the fuzzer is slirpd's walk of the tree, its
// key-line finder and the option parser behind it.
//
// Besides the crashes the sanitizers catch, the target traps when a promise of the code
// breaks (ConfigFile.swift's documentation of the format):
// - an error has a message, and a line, when it has one, within the text;
// - a parsed file has at least one network, networks have unique names of
//   [A-Za-z0-9_.-], and no socket path, TCP address, tap device or dialled socket
//   serves two endpoints, in one network or across networks;
// - MTUs are 0 or 68 to 65521, socket modes at most 0777, allowed uids never (uid_t)-1;
// - static leases have unicast MACs and are unique by MAC and by IP within their
//   network, at addresses the network can hand out.

import ConfigTOML
import DaemonConfig
import NetOptions
import NetServices

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-config invariant broken: \(what())") }
}

/// What an endpoint occupies: the parser refuses two endpoints with the same.
func resource(_ endpoint: EndpointSpec) -> String {
    switch endpoint {
    case .stream(let path), .dgram(let path), .vhostUser(let path): "socket \(path)"
    case .tcp: "\(endpoint)"
    case .tap(let name): "tap \(name)"
    case .connect(let path): "dial \(path)"
    }
}

func checkConfiguration(_ config: DaemonConfiguration) {
    check(!config.networks.isEmpty, "a configuration without networks")
    check(config.control.socketMode <= 0o777, "control mode \(String(config.control.socketMode, radix: 8))")
    check(!config.control.allowUIDs.contains(UInt32.max), "allow-uids holds (uid_t)-1")
    let names = config.networks.map(\.name)
    check(Set(names).count == names.count, "duplicate network names in \(names)")
    let resources = config.networks.flatMap { $0.endpoints.map(resource) }
    check(Set(resources).count == resources.count, "an endpoint serves twice: \(resources)")
    for network in config.networks {
        check(!network.name.isEmpty && network.name.utf8.allSatisfy { byte in
            (byte | 0x20 >= 0x61 && byte | 0x20 <= 0x7A) || (0x30...0x39).contains(byte) || [0x5F, 0x2E, 0x2D].contains(byte)
        }, "network name '\(network.name)'")
        check(network.mtu == 0 || (68...65521).contains(network.mtu), "MTU \(network.mtu)")
        check(network.socketMode <= 0o777, "socket mode \(String(network.socketMode, radix: 8))")
        check(network.socketGroup.map { !$0.isEmpty } ?? true, "an empty socket-group")
        let leases = network.staticLeases
        check(Set(leases.map(\.mac)).count == leases.count, "two static leases for one MAC in \(network.name)")
        check(Set(leases.map(\.address)).count == leases.count, "two static leases for one IP in \(network.name)")
        for lease in leases {
            check(lease.problem(in: network.options) == nil,
                  "static lease \(lease.mac) \(lease.address): \(lease.problem(in: network.options) ?? "")")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let lines = text.utf8.reduce(1) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
    let first = Result { () throws(ConfigError) in try ConfigFile.parse(text, file: "fuzz.toml") }
    let second = Result { () throws(ConfigError) in try ConfigFile.parse(text, file: "fuzz.toml") }
    check(first == second, "parsing is not deterministic")
    switch first {
    case .failure(let error):
        check(!error.message.isEmpty, "an error without a message")
        check(error.file == "fuzz.toml", "an error names the file \(error.file)")
        if let line = error.line { check((1...lines).contains(line), "error at line \(line) of \(lines): \(error.message)") }
    case .success(let config):
        checkConfiguration(config)
    }
    return 0
}
