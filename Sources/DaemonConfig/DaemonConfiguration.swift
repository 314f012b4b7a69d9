// What a config file (`slirpd --config FILE`) describes: the control socket and every
// network. ConfigFile.swift reads the file into these values.
import NetOptions

/// The control socket's settings.
public struct ControlConfig: Sendable, Equatable {
    /// nil leaves the choice of path to the daemon.
    public var socketPath: String?
    /// Permission bits of the control socket file.
    public var socketMode: UInt32
    /// Users allowed on the control socket besides the daemon's own uid.
    public var allowUIDs: [UInt32]

    public init(socketPath: String? = nil, socketMode: UInt32 = 0o600, allowUIDs: [UInt32] = []) {
        self.socketPath = socketPath
        self.socketMode = socketMode
        self.allowUIDs = allowUIDs
    }
}

/// Everything a config file configures.
public struct DaemonConfiguration: Sendable, Equatable {
    public var control: ControlConfig
    /// At least one; names are unique.
    public var networks: [NetworkConfig]

    public init(control: ControlConfig = ControlConfig(), networks: [NetworkConfig]) {
        self.control = control
        self.networks = networks
    }
}

/// A config file that cannot be used, located as precisely as the mistake allows.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    /// 1-based; nil when the mistake has no single line (a missing file, no networks).
    public var line: Int?
    public var message: String

    public init(file: String, line: Int?, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    /// `FILE:LINE: MESSAGE`, the form editors and compilers use, or `FILE: MESSAGE`.
    public var description: String {
        if let line { return "\(file):\(line): \(message)" }
        return "\(file): \(message)"
    }
}
