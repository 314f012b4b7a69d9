import NetOptions
import Testing

@testable import DaemonConfig

@Suite struct GuestAccessTests {
    @Test func emptyListsAdmitEveryone() {
        #expect(GuestAccess().admits(uid: 1234, groups: [1234], ownUID: 1000))
    }

    @Test func listedUsersAndGroupsOnly() {
        let access = GuestAccess(uids: [1001], gids: [993])
        #expect(access.admits(uid: 1001, groups: [1001], ownUID: 1000))
        #expect(access.admits(uid: 1002, groups: [1002, 993], ownUID: 1000), "a supplementary group counts")
        #expect(!access.admits(uid: 1002, groups: [1002, 27], ownUID: 1000))
        #expect(access.admits(uid: 1000, groups: [], ownUID: 1000), "the daemon's own user")
        #expect(access.admits(uid: 0, groups: [], ownUID: 1000), "root")
    }

    @Test func configKeys() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            guest-uids = [1001, 1002]
            guest-gids = [993]
            """)
        #expect(config.networks.first?.guestAccess == GuestAccess(uids: [1001, 1002], gids: [993]))
    }

    @Test func badIDsNameTheirElement() {
        expectError("""
            [[network]]
            name = "lab"
            guest-gids = [993, -1]
            """, line: 3, "'guest-gids' element 2 is -1, not a group ID (0 to 4294967294)")
    }

    @Test func isolationKeys() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            host-loopback = false
            isolate = true
            """)
        let options = try #require(config.networks.first).options
        #expect(!options.hostLoopback)
        #expect(options.isolateGuests)
    }

    @Test func isolationOptionsInTheOptionString() throws {
        let defaults = try NetworkOptions.parse("")
        #expect(defaults.hostLoopback && !defaults.isolateGuests)
        let set = try NetworkOptions.parse("net=192.168.0.0/24,host-loopback=off,isolate=on")
        #expect(!set.hostLoopback && set.isolateGuests)
        #expect(throws: OptionError.self) { try NetworkOptions.parse("isolate=maybe") }
    }

    @Test func flowCapKeys() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            max-tcp = 100
            max-udp = 50
            max-icmp = 5
            max-dns-tcp = 2
            """)
        let options = try #require(config.networks.first).options
        #expect(options.maxTCP == 100 && options.maxUDP == 50 && options.maxICMP == 5 && options.maxDNSTCP == 2)
        #expect(throws: ConfigError.self) {
            try parse("""
                [[network]]
                name = "lab"
                max-tcp = "many"
                """)
        }
        #expect(throws: ConfigError.self) {
            try parse("""
                [[network]]
                name = "lab"
                max-udp = -3
                """)
        }
    }
}
