/// A rejected option string. `message` uses QEMU 7.2's wording wherever QEMU has one, so
/// users see the error they would get from `-netdev user`; slirpd's own checks (see the
/// theory of operation in NetworkOptions.swift) say what is wrong and why.
public struct OptionError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

extension OptionError {
    static func invalidParameter(_ name: String) -> OptionError {
        OptionError("Invalid parameter '\(name)'")
    }

    static func expectsOnOff(_ name: String) -> OptionError {
        OptionError("Parameter '\(name)' expects 'on' or 'off'")
    }

    static func hostForward(_ rule: String, _ reason: String) -> OptionError {
        OptionError("Invalid host forwarding rule '\(rule)' (\(reason))")
    }

    static func guestForward(_ rule: String) -> OptionError {
        OptionError("Invalid guest forwarding rule '\(rule)'")
    }

    static func guestForwardConflict(_ rule: String) -> OptionError {
        OptionError("Conflicting/invalid host:port in guest forwarding rule '\(rule)'")
    }
}
