import Testing

@testable import DaemonConfig

/// `connect = [...]`: QEMU server=on sockets a network dials.
@Suite struct ConnectTests {
    @Test func connectTargetsAreEndpoints() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            stream = ["/run/slirpd/lab.sock"]
            connect = ["unix:/run/vm/a.sock", "unix:relative.sock"]
            """)
        let net = try #require(config.networks.first)
        #expect(net.endpoints == [.stream(path: "/run/slirpd/lab.sock"), .connect(path: "/run/vm/a.sock"), .connect(path: "relative.sock")])
        #expect(net.endpoints.last?.description == "connect:unix:relative.sock")
    }

    @Test(arguments: ["/run/vm/a.sock", "tcp:127.0.0.1:5555", "unix:", ""])
    func badTargetsAreRefusedWithTheirLine(target: String) {
        expectError("""
            [[network]]
            name = "lab"
            connect = ["\(target)"]
            """, line: 3, "invalid connect target '\(target)' (expected unix:PATH, a QEMU -netdev stream,server=on socket)")
    }

    @Test func oneSocketDialledByTwoNetworksIsRefused() {
        expectError("""
            [[network]]
            name = "a"
            connect = ["unix:/run/vm/a.sock"]
            [[network]]
            name = "b"
            options = "net=10.0.3.0/24"
            connect = ["unix:/run/vm/a.sock"]
            """, line: 7, "QEMU socket '/run/vm/a.sock' is already used by network 'a'")
    }

    @Test func parsingTheFlag() {
        #expect(EndpointSpec.connect(parsing: "unix:/a/b.sock") == .connect(path: "/a/b.sock"))
        #expect(EndpointSpec.connect(parsing: "unix:") == nil)
        #expect(EndpointSpec.connect(parsing: "/a/b.sock") == nil)
        #expect(EndpointSpec.connect(parsing: "unix:/a\u{0}b") == nil)
    }
}
