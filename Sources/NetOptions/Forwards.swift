public enum ForwardProtocol: String, Sendable {
    case tcp, udp
}

/// `hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`: the host listens on
/// hostaddr:hostport and connections or datagrams go to the guest.
public struct HostForward: Hashable, Sendable, CustomStringConvertible {
    public var proto: ForwardProtocol
    /// `.any` when empty: listen on every host address.
    public var hostAddress: IPv4Address
    /// 0 (also written as an empty port, as QEMU 7.2 allows) lets the kernel pick one.
    public var hostPort: UInt16
    /// `.any` when empty: libslirp then uses the DHCP start address.
    public var guestAddress: IPv4Address
    /// 1...65535.
    public var guestPort: UInt16
    /// The rule as written, for messages.
    public var rule: String

    public init(proto: ForwardProtocol, hostAddress: IPv4Address, hostPort: UInt16,
                guestAddress: IPv4Address, guestPort: UInt16, rule: String) {
        self.proto = proto
        self.hostAddress = hostAddress
        self.hostPort = hostPort
        self.guestAddress = guestAddress
        self.guestPort = guestPort
        self.rule = rule
    }

    /// Parses one rule with QEMU 7.2's steps and reasons, in its order (slirp_hostfwd):
    /// each field ends at the first following separator, so `tcp::-5-:80` fails on the
    /// guest address, as in QEMU. Ports are read like C's strtol with base 0 (`0x50` is
    /// 80, `010` is 8); the host port may be 0 or empty, the guest port may not.
    /// Addresses must be strict dotted quads (see `IPv4Address.init?(_:)`).
    public static func parse(_ rule: String) throws(OptionError) -> HostForward {
        var rest = Substring(rule)
        func fail(_ reason: String) -> OptionError { .hostForward(rule, reason) }

        guard let protoText = takeField(&rest, until: ":") else { throw fail("No : separators") }
        let proto: ForwardProtocol
        switch protoText {
        case "", "tcp": proto = .tcp
        case "udp": proto = .udp
        default: throw fail("Bad protocol name")  // QEMU 7.2 also has no unix: form
        }

        guard let hostText = takeField(&rest, until: ":") else { throw fail("Missing : separator") }
        guard let hostAddress = optionalAddress(hostText) else { throw fail("Bad host address") }

        guard let hostPortText = takeField(&rest, until: "-") else { throw fail("Bad host port separator") }
        let hostPort = CNumber(hostPortText, base: 0)
        guard hostPort.consumedAll, (0...65535).contains(hostPort.clamped) else { throw fail("Bad host port") }

        guard let guestText = takeField(&rest, until: ":") else { throw fail("Missing guest address") }
        guard let guestAddress = optionalAddress(guestText) else { throw fail("Bad guest address") }

        let guestPort = CNumber(rest, base: 0)
        guard guestPort.consumedAll, (1...65535).contains(guestPort.clamped) else { throw fail("Bad guest port") }

        return HostForward(proto: proto, hostAddress: hostAddress, hostPort: UInt16(hostPort.clamped),
                           guestAddress: guestAddress, guestPort: UInt16(guestPort.clamped), rule: rule)
    }

    /// The guest address libslirp will use: the DHCP start address stands in for `.any`.
    public func resolvedGuestAddress(in options: NetworkOptions) -> IPv4Address {
        guestAddress == .any ? options.dhcpStart : guestAddress
    }

    public var description: String { rule }
}

/// `guestfwd=[tcp]:[server]:port-dev`: guest TCP connections to server:port (a virtual
/// address inside the network) are handed to `target`.
public struct GuestForward: Hashable, Sendable, CustomStringConvertible {
    public enum Target: Hashable, Sendable {
        /// `cmd:COMMAND`: each connection runs COMMAND with the connection as its
        /// stdin and stdout.
        case command(String)
        /// `tcp:HOST:PORT`: each connection is joined to a TCP connection to HOST:PORT.
        /// HOST may be a name, an IPv4 address or a bracketed IPv6 address (brackets
        /// removed here).
        case tcp(host: String, port: UInt16)
        /// `unix:PATH`: each connection is joined to the Unix socket at PATH.
        case unix(path: String)
    }

    /// `.any` when empty: libslirp then uses the network's x.x.x.4.
    public var address: IPv4Address
    public var port: UInt16
    public var target: Target
    /// The rule as written, for messages.
    public var rule: String

    public init(address: IPv4Address, port: UInt16, target: Target, rule: String) {
        self.address = address
        self.port = port
        self.target = target
        self.rule = rule
    }

    /// Parses one rule with QEMU 7.2's steps (slirp_guestfwd): the protocol must be `tcp`
    /// or empty, the port is decimal (strtol base 10) 1-65535. Where QEMU hands any other
    /// device to its character-device layer, slirpd knows only the three `Target` forms
    /// and rejects the rest (and an empty command or path) as an invalid rule.
    /// Whether the address fits the network is checked by `NetworkOptions.parse`.
    public static func parse(_ rule: String) throws(OptionError) -> GuestForward {
        var rest = Substring(rule)
        let invalid = OptionError.guestForward(rule)

        guard let protoText = takeField(&rest, until: ":"), protoText == "tcp" || protoText.isEmpty else {
            throw invalid
        }
        guard let addressText = takeField(&rest, until: ":"), let address = optionalAddress(addressText) else {
            throw invalid
        }
        guard let portText = takeField(&rest, until: "-") else { throw invalid }
        let port = CNumber(portText, base: 10)
        guard port.consumedAll, (1...65535).contains(port.clamped) else { throw invalid }

        let target: Target
        if rest.hasPrefix("cmd:") {
            let command = rest.dropFirst(4)
            guard !command.isEmpty else { throw invalid }
            target = .command(String(command))
        } else if rest.hasPrefix("tcp:") {
            let hostPort = rest.dropFirst(4)
            guard let colon = hostPort.lastIndex(of: ":") else { throw invalid }
            var host = hostPort[..<colon]
            let portText = hostPort[hostPort.index(after: colon)...]
            if host.hasPrefix("[") && host.hasSuffix("]") && host.count >= 2 {
                host = host.dropFirst().dropLast()
            } else if host.contains(":") {
                throw invalid  // an IPv6 address needs brackets
            }
            guard !host.isEmpty, let remotePort = decimalPort(portText) else { throw invalid }
            target = .tcp(host: String(host), port: remotePort)
        } else if rest.hasPrefix("unix:") {
            let path = rest.dropFirst(5)
            guard !path.isEmpty else { throw invalid }
            target = .unix(path: String(path))
        } else {
            throw invalid
        }
        return GuestForward(address: address, port: UInt16(port.clamped), target: target, rule: rule)
    }

    /// The address libslirp will use: x.x.x.4 of the network stands in for `.any`.
    public func resolvedAddress(in options: NetworkOptions) -> IPv4Address {
        address == .any ? options.network.host(0x0204) : address
    }

    public var description: String { rule }
}

/// QEMU's get_str_sep: the text before the first `separator` (which is consumed), or
/// nil when there is none.
func takeField(_ rest: inout Substring, until separator: Character) -> Substring? {
    guard let index = rest.firstIndex(of: separator) else { return nil }
    let field = rest[..<index]
    rest = rest[rest.index(after: index)...]
    return field
}

/// Empty means `.any`, as in QEMU's rules; otherwise a strict dotted quad.
private func optionalAddress(_ text: Substring) -> IPv4Address? {
    text.isEmpty ? .any : IPv4Address(String(text))
}

/// Plain decimal digits, 1-65535.
private func decimalPort(_ text: Substring) -> UInt16? {
    guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
          let value = Int(text), (1...65535).contains(value) else { return nil }
    return UInt16(value)
}
