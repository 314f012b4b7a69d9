import Testing
import NetOptions

@Suite struct HostForwardTests {
    @Test func tcpWithEmptyAddresses() throws {
        let rule = try HostForward.parse("tcp::8080-:80")
        #expect(rule.proto == .tcp)
        #expect(rule.hostAddress == .any)
        #expect(rule.hostPort == 8080)
        #expect(rule.guestAddress == .any)
        #expect(rule.guestPort == 80)
        #expect(rule.rule == "tcp::8080-:80")
    }

    @Test func udpWithAddresses() throws {
        let rule = try HostForward.parse("udp:127.0.0.1:5555-10.0.2.15:5555")
        #expect(rule.proto == .udp)
        #expect(rule.hostAddress == IPv4Address(127, 0, 0, 1))
        #expect(rule.hostPort == 5555)
        #expect(rule.guestAddress == IPv4Address(10, 0, 2, 15))
        #expect(rule.guestPort == 5555)
    }

    @Test func emptyProtocolIsTCP() throws {
        let rule = try HostForward.parse("::8080-:80")
        #expect(rule.proto == .tcp)
        #expect(rule.hostPort == 8080 && rule.guestPort == 80)
    }

    // QEMU 7.2 reads both ports with strtol(base 0) and lets the host port be 0 or empty.
    @Test func portsReadLikeQEMU() throws {
        #expect(try HostForward.parse("tcp::0x15b4-:0x50").hostPort == 5556)
        #expect(try HostForward.parse("tcp::0x15b4-:0x50").guestPort == 80)
        #expect(try HostForward.parse("tcp::010-:80").hostPort == 8)
        #expect(try HostForward.parse("tcp:: 5555-:80").hostPort == 5555)
        #expect(try HostForward.parse("tcp::0-:80").hostPort == 0)
        #expect(try HostForward.parse("tcp::-:80").hostPort == 0)
        #expect(try HostForward.parse("tcp::65535-:65535").guestPort == 65535)
    }

    @Test func resolvedGuestAddressIsDHCPStart() throws {
        let options = try NetworkOptions.parse("net=192.168.7.0/24,dhcpstart=192.168.7.50")
        #expect(try HostForward.parse("tcp::1-:2").resolvedGuestAddress(in: options) == IPv4Address(192, 168, 7, 50))
        #expect(try HostForward.parse("tcp::1-192.168.7.9:2").resolvedGuestAddress(in: options)
            == IPv4Address(192, 168, 7, 9))
    }

    struct Failure: Sendable, CustomTestStringConvertible {
        var rule: String
        var reason: String
        var testDescription: String { rule }
    }

    // Each reason, in slirp_hostfwd's order; every one was checked against qemu-system-x86_64 7.2.
    @Test(arguments: [
        Failure(rule: "", reason: "No : separators"),
        Failure(rule: "tcp", reason: "No : separators"),
        Failure(rule: "foo:", reason: "Bad protocol name"),
        Failure(rule: "TCP::5555-:80", reason: "Bad protocol name"),
        Failure(rule: "unix:/tmp/s-:80", reason: "Bad protocol name"),
        Failure(rule: "udp:", reason: "Missing : separator"),
        Failure(rule: "tcp:127.0.0.1", reason: "Missing : separator"),
        Failure(rule: "tcp:127.0.0.x:5555-:80", reason: "Bad host address"),
        Failure(rule: "tcp:127.1:5555-:80", reason: "Bad host address"),  // QEMU takes this; slirpd is strict
        Failure(rule: "tcp:127.0.0.1:5555", reason: "Bad host port separator"),
        Failure(rule: "tcp:127.0.0.1:x-:80", reason: "Bad host port"),
        Failure(rule: "tcp:127.0.0.1:65536-:80", reason: "Bad host port"),
        Failure(rule: "tcp:127.0.0.1:08080-:80", reason: "Bad host port"),
        Failure(rule: "tcp:127.0.0.1:5555 -:80", reason: "Bad host port"),
        Failure(rule: "tcp:127.0.0.1:5555-", reason: "Missing guest address"),
        Failure(rule: "tcp:127.0.0.1:5555-10.0.2.15", reason: "Missing guest address"),
        Failure(rule: "tcp:127.0.0.1:5555-x:80", reason: "Bad guest address"),
        Failure(rule: "tcp:127.0.0.1:-5-:80", reason: "Bad guest address"),
        Failure(rule: "tcp:127.0.0.1:5555-:0", reason: "Bad guest port"),
        Failure(rule: "tcp:127.0.0.1:5555-:", reason: "Bad guest port"),
        Failure(rule: "tcp:127.0.0.1:5555-:65536", reason: "Bad guest port"),
        Failure(rule: "tcp:127.0.0.1:5555-:80x", reason: "Bad guest port"),
        Failure(rule: "tcp:127.0.0.1:5555-:-80", reason: "Bad guest port"),
        Failure(rule: "tcp:127.0.0.1:5555-10.0.2.15:80:90", reason: "Bad guest port"),
    ])
    func rejects(_ failure: Failure) {
        #expect(throws: OptionError("Invalid host forwarding rule '\(failure.rule)' (\(failure.reason))")) {
            try HostForward.parse(failure.rule)
        }
    }
}

@Suite struct GuestForwardTests {
    @Test func command() throws {
        let rule = try GuestForward.parse("tcp:10.0.2.100:1234-cmd:netcat 127.0.0.1 22")
        #expect(rule.address == IPv4Address(10, 0, 2, 100))
        #expect(rule.port == 1234)
        #expect(rule.target == .command("netcat 127.0.0.1 22"))
        #expect(rule.rule == "tcp:10.0.2.100:1234-cmd:netcat 127.0.0.1 22")
    }

    @Test func tcpTarget() throws {
        let rule = try GuestForward.parse(":10.0.2.100:80-tcp:127.0.0.1:8080")
        #expect(rule.target == .tcp(host: "127.0.0.1", port: 8080))
        #expect(try GuestForward.parse("::80-tcp:localhost:80").target == .tcp(host: "localhost", port: 80))
        #expect(try GuestForward.parse("::80-tcp:[::1]:80").target == .tcp(host: "::1", port: 80))
    }

    @Test func unixTarget() throws {
        let rule = try GuestForward.parse("::80-unix:/run/web.sock")
        #expect(rule.address == .any)
        #expect(rule.port == 80)
        #expect(rule.target == .unix(path: "/run/web.sock"))
    }

    // QEMU 7.2 reads the guest port with strtol(base 10).
    @Test func portIsDecimal() throws {
        #expect(try GuestForward.parse("tcp:10.0.2.100:080-cmd:true").port == 80)
        #expect(try GuestForward.parse("tcp:10.0.2.100: 80-cmd:true").port == 80)
    }

    @Test func resolvedAddressIsDotFour() throws {
        let options = try NetworkOptions.parse("net=192.168.7.0/24")
        #expect(try GuestForward.parse("::80-cmd:x").resolvedAddress(in: options) == IPv4Address(192, 168, 7, 4))
        #expect(try GuestForward.parse(":192.168.7.9:80-cmd:x").resolvedAddress(in: options)
            == IPv4Address(192, 168, 7, 9))
    }

    @Test(arguments: [
        "", "tcp", "udp:10.0.2.100:80-cmd:true", "tcp:10.0.2.x:80-cmd:true", "tcp:10.0.2.100:80",
        "tcp:10.0.2.100:0-cmd:true", "tcp:10.0.2.100:-cmd:true", "tcp:10.0.2.100:0x50-cmd:true",
        "tcp:10.0.2.100:65536-cmd:true", "tcp:10.0.2.100:80-", "tcp:10.0.2.100:80-cmd:", "tcp:10.0.2.100:80-cmd",
        "tcp:10.0.2.100:80-foo", "tcp:10.0.2.100:80-chardev0", "tcp:10.0.2.100:80-tcp:127.0.0.1",
        "tcp:10.0.2.100:80-tcp::22", "tcp:10.0.2.100:80-tcp:127.0.0.1:0", "tcp:10.0.2.100:80-tcp:127.0.0.1:+22",
        "tcp:10.0.2.100:80-tcp:::1:22", "tcp:10.0.2.100:80-tcp:127.0.0.1:22,server=on", "tcp:10.0.2.100:80-unix:",
    ])
    func rejects(_ rule: String) {
        #expect(throws: OptionError("Invalid guest forwarding rule '\(rule)'")) {
            try GuestForward.parse(rule)
        }
    }
}
