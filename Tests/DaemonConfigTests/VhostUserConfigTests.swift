import Testing

@testable import DaemonConfig

/// `vhost-user = [...]`: Unix sockets that serve the vhost-user protocol.
@Suite struct VhostUserConfigTests {
    @Test func socketsAreEndpoints() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            stream = ["/run/slirpd/lab.sock"]
            vhost-user = ["/run/slirpd/lab.vu", "b.vu"]
            """)
        let net = try #require(config.networks.first)
        #expect(net.endpoints == [.stream(path: "/run/slirpd/lab.sock"), .vhostUser(path: "/run/slirpd/lab.vu"), .vhostUser(path: "b.vu")])
        #expect(net.endpoints.last?.description == "vhost-user:b.vu")
    }

    @Test func anEmptyPathIsRefusedWithItsLine() {
        expectError("""
            [[network]]
            name = "lab"
            vhost-user = [""]
            """, line: 3, "'vhost-user' has an empty path")
    }

    @Test func onePathForStreamAndVhostUserIsRefused() {
        expectError("""
            [[network]]
            name = "a"
            stream = ["/run/a.sock"]
            [[network]]
            name = "b"
            options = "net=10.0.3.0/24"
            vhost-user = ["/run/a.sock"]
            """, line: 7, "socket path '/run/a.sock' is already used by network 'a'")
    }
}
