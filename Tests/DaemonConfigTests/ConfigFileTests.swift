import Foundation
import NetOptions
import Testing

import ConfigTOML
@testable import DaemonConfig

/// Parses `text` as `test.toml` (shared by this target's files), the way the daemon does:
/// TOMLKit's tree (or syntax error) through JSON, as slirpd-toml hands it over.
func parse(_ text: String) throws(ConfigError) -> DaemonConfiguration {
    try ConfigFile.parse(text, file: "test.toml", reader: readThroughJSON)
}

/// TOMLKitReader's answer encoded and decoded as slirpd-toml and the daemon do.
func readThroughJSON(_ text: String) throws(TOMLSyntaxError) -> [String: TOMLNode] {
    let answer: TOMLReadResult
    do {
        answer = .document(try TOMLKitReader.read(text))
    } catch {
        answer = .failure(error)
    }
    guard let data = try? JSONEncoder().encode(answer),
          let back = try? JSONDecoder().decode(TOMLReadResult.self, from: data) else {
        throw TOMLSyntaxError(line: nil, message: "the tree did not survive JSON")
    }
    #expect(back == answer, "JSON changed the tree")
    switch back {
    case .document(let root): return root
    case .failure(let error): throw error
    }
}

/// Checks that `text` fails with exactly this line and message.
func expectError(_ text: String, line: Int?, _ message: String,
                         sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(throws: ConfigError(file: "test.toml", line: line, message: message), sourceLocation: sourceLocation) {
        try parse(text)
    }
}

@Suite struct ConfigFileTests {
    @Test func fullExample() throws {
        let config = try parse("""
            # slirpd networks
            [control]
            socket = "/run/slirpd/control.sock"
            mode = "0660"
            allow-uids = [1000, 1001]

            [[network]]
            name = "lab"
            options = "net=192.168.0.0/24,hostfwd=tcp::8080-:80"
            dns = "192.168.0.53"
            dhcpstart = "192.168.0.100"
            restrict = true
            ipv4 = true
            ipv6 = false
            hostname = "guest"
            domainname = "lab.example"
            dnssearch = ["lab.example", "example"]
            tftp = "/srv/tftp"
            tftp-server-name = "boot"
            bootfile = "pxelinux.0"
            hostfwd = ["tcp::2222-:22", "udp::5353-:53"]
            guestfwd = ["tcp:192.168.0.200:80-tcp:127.0.0.1:8000"]
            stream = ["/run/slirpd/lab.sock", "/run/slirpd/lab2.sock"]
            dgram = ["/run/slirpd/lab.dgram"]
            tcp = ["127.0.0.1:5555", "[::1]:5556"]
            mtu = 9000
            socket-mode = "0600"
            socket-group = "kvm"

            [[network]]
            name = "v6.only-net_2"
            ipv6 = true
            ipv6-net = "fd00:1::/64"
            ipv6-host = "fd00:1::1"
            ipv6-dns = "fd00:1::53"
            forwards = ["tcp::9090-:90"]
            """)
        #expect(config.control == ControlConfig(socketPath: "/run/slirpd/control.sock", socketMode: 0o660, allowUIDs: [1000, 1001]))
        #expect(config.networks.count == 2)

        let lab = try #require(config.networks.first)
        #expect(lab.name == "lab")
        let labOptions = try NetworkOptions.parse(
            "net=192.168.0.0/24,hostfwd=tcp::8080-:80,dns=192.168.0.53,dhcpstart=192.168.0.100,restrict=on,"
                + "ipv4=on,ipv6=off,hostname=guest,domainname=lab.example,dnssearch=lab.example,dnssearch=example,"
                + "tftp=/srv/tftp,tftp-server-name=boot,bootfile=pxelinux.0,hostfwd=tcp::2222-:22,"
                + "hostfwd=udp::5353-:53,guestfwd=tcp:192.168.0.200:80-tcp:127.0.0.1:8000")
        #expect(lab.options == labOptions)
        #expect(lab.options.hostForwards.count == 3)
        #expect(lab.options.restricted)
        #expect(!lab.options.ipv6)
        #expect(lab.options.dnsSearch == ["lab.example", "example"])
        #expect(lab.endpoints == [
            .stream(path: "/run/slirpd/lab.sock"), .stream(path: "/run/slirpd/lab2.sock"),
            .dgram(path: "/run/slirpd/lab.dgram"),
            .tcp(host: "127.0.0.1", port: 5555), .tcp(host: "::1", port: 5556),
        ])
        #expect(lab.mtu == 9000)
        #expect(lab.socketMode == 0o600)
        #expect(lab.socketGroup == "kvm")

        let v6 = config.networks[1]
        #expect(v6.name == "v6.only-net_2")
        #expect(v6.options == (try NetworkOptions.parse(
            "ipv6=on,ipv6-net=fd00:1::/64,ipv6-host=fd00:1::1,ipv6-dns=fd00:1::53,hostfwd=tcp::9090-:90")))
        #expect(!v6.options.ipv4)
        #expect(v6.endpoints == [])
        #expect(v6.mtu == 0)
        #expect(v6.socketMode == 0o660)
        #expect(v6.socketGroup == nil)
    }

    @Test func minimalFile() throws {
        let config = try parse("""
            [[network]]
            name = "default"
            """)
        #expect(config == DaemonConfiguration(
            control: ControlConfig(socketPath: nil, socketMode: 0o600, allowUIDs: []),
            networks: [NetworkConfig(name: "default", options: NetworkOptions(), endpoints: [], mtu: 0, socketMode: 0o660)]))
    }

    @Test func keysAreAppendedAfterOptionsAndWin() throws {
        let config = try parse("""
            [[network]]
            hostname = "from-key"
            name = "lab"
            options = "net=192.168.7.0/24,hostname=from-options,hostfwd=tcp::1-:1"
            hostfwd = ["tcp::2-:2"]
            """)
        let options = try #require(config.networks.first).options
        #expect(options.hostname == "from-key")
        #expect(options.network == IPv4Network(address: IPv4Address(192, 168, 7, 0), prefixLength: 24))
        #expect(options.host == IPv4Address(192, 168, 7, 2))
        // Repeatable options accumulate, `options` first.
        #expect(options.hostForwards.map(\.hostPort) == [1, 2])
    }

    @Test func keyListsKeepFileOrder() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            forwards = ["tcp::3-:3"]
            hostfwd = ["tcp::1-:1", "tcp::2-:2"]
            """)
        #expect(try #require(config.networks.first).options.hostForwards.map(\.hostPort) == [3, 1, 2])
    }

    @Test func commasInValuesRoundTrip() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            hostname = "a,b"
            tftp = "/srv/tftp,,root,"
            bootfile = ",boot"
            domainname = "a,\\u0301b"
            dnssearch = ["x.example", "y.example"]
            """)
        let options = try #require(config.networks.first).options
        #expect(options.hostname == "a,b")
        // A comma and a combining mark are one Character but two things to QemuOpts
        // (fuzz-options found this in its own escaping).
        #expect(options.domainName == "a,\u{301}b")
        #expect(options.tftpRoot == "/srv/tftp,,root,")
        #expect(options.bootfile == ",boot")
        #expect(options.dnsSearch == ["x.example", "y.example"])
    }

    @Test(arguments: [
        // A lone trailing comma already separates; `,,` is an escaped comma that does not.
        ("net=192.168.0.0/24,", nil as String?),
        ("hostname=a,,", "a,"),
        ("hostname=a,,,", "a,"),
        // U+0600 and the comma after it are one Character; the comma still separates.
        ("hostname=\\u0600,", "\u{600}"),
    ])
    func optionsEndingInCommas(options: String, hostname: String?) throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            options = "\(options)"
            dhcpstart = "\(options.hasPrefix("net") ? "192.168.0.20" : "10.0.2.20")"
            """)
        let parsed = try #require(config.networks.first).options
        #expect(parsed.hostname == hostname)
        #expect(parsed.dhcpStart.description.hasSuffix(".20"))
    }

    @Test func dnsKeys() throws {
        let config = try parse("""
            [[network]]
            name = "lab"
            dns-upstream = "192.168.1.1:5353"
            dns-domain = "Lab.Internal."
            [[network]]
            name = "v6"
            options = "dns-upstream=[fd00::53]:53"
            [[network]]
            name = "defaults"
            """)
        let options = config.networks.map(\.options)
        #expect(options[0].dnsUpstream == DNSUpstream(.v4(IPv4Address(192, 168, 1, 1)), port: 5353))
        #expect(options[0].dnsDomain == "lab.internal")
        #expect(options[1].dnsUpstream?.description == "fd00::53")
        #expect(options[2].dnsUpstream == nil)
        #expect(options[2].dnsDomain == NetworkOptions.defaultDNSDomain)
    }

    @Test func errorDescription() {
        #expect(ConfigError(file: "a.toml", line: 3, message: "bad").description == "a.toml:3: bad")
        #expect(ConfigError(file: "a.toml", line: nil, message: "bad").description == "a.toml: bad")
    }
}

@Suite struct ConfigFileErrorTests {
    @Test func syntaxErrorHasItsLine() throws {
        let text = """
            [[network]]
            name = "lab"
            mtu = = 1500
            """
        let error = try #require(throws: ConfigError.self) { try parse(text) }
        #expect(error.line == 3)
        #expect(error.file == "test.toml")
        #expect(!error.message.isEmpty)
    }

    @Test func unterminatedStringHasItsLine() throws {
        let error = try #require(throws: ConfigError.self) {
            try parse("[[network]]\n\nname = \"lab\n")
        }
        #expect(error.line == 3)
    }

    /// toml++ fails an assertion, aborting the process, on these headers (fuzz-config found
    /// `[)`), so they must be refused before it sees them.
    @Test(arguments: ["[)network]", "[[.network]]", "[ é]", "[[[network]]]", "[=]", "[\r]"])
    func tableHeaderWithoutKey(header: String) {
        expectError("[control]\nmode = \"0600\"\n\(header)\nname = \"lab\"\n", line: 3,
                    "invalid table header: '[' must be followed by a key (letters, digits, '_' and '-', or a quoted key)")
    }

    /// toml++ also aborts on an array element that starts with `}` or a Unicode line
    /// separator (fuzz-config found `[ }]`).
    @Test(arguments: ["[}]", "[ \"a\", }]", "[\n  \"a\", # c\n  }]", "[\u{2028}]", "[\u{85}\"a\"]", "[[}]]"])
    func arrayElementThatWouldAbort(array: String) {
        expectError("[[network]]\nname = \"lab\"\ndnssearch = \(array)\n", line: 3 + array.filter { $0 == "\n" }.count,
                    "invalid array: '[' and ',' must be followed by a value or ']'")
        // A mistake in an earlier statement still comes first.
        let error = #expect(throws: ConfigError.self) { try parse("[[network]]\nname = = 1\ndnssearch = \(array)\n") }
        #expect(error?.line == 2)
    }

    @Test func mistakeAboveABadHeaderComesFirst() throws {
        let error = try #require(throws: ConfigError.self) { try parse("[[network]]\nname = = 1\n[)x]\n") }
        #expect(error.line == 2)
        // A line that starts with `[` inside a string or an array is no header.
        let config = try parse("[[network]]\nname = \"lab\"\ntftp = \"\"\"\n[)x]\"\"\"\n")
        #expect(config.networks.first?.options.tftpRoot == "[)x]")
        let nested = try #require(throws: ConfigError.self) { try parse("[[network]]\nname = \"lab\"\ndnssearch = [\n[+5]]\n") }
        #expect(nested.line == 3)
    }

    @Test func unknownKeyInNetwork() {
        expectError("""
            [[network]]
            name = "lab"
            net = "10.1.0.0/16"
            hots = "10.1.0.2"
            """, line: 4, "unknown key 'hots' in [[network]] (did you mean 'host'?)")
        expectError("""
            [[network]]
            name = "lab"
            socket_mode = "0600"
            """, line: 3, "unknown key 'socket_mode' in [[network]] (did you mean 'socket-mode'?)")
        expectError("""
            [[network]]
            name = "lab"
            smb = "/srv"
            """, line: 3, "unknown key 'smb' in [[network]]")
    }

    @Test func unknownKeyInControlAndAtTheTop() {
        expectError("""
            [control]
            socket = "/tmp/c.sock"
            allow-uid = [1000]
            [[network]]
            name = "lab"
            """, line: 3, "unknown key 'allow-uid' in [control] (did you mean 'allow-uids'?)")
        expectError("""
            [[network]]
            name = "lab"

            [networks]
            name = "other"
            """, line: 4, "unknown key 'networks' in the file (did you mean 'network'?)")
        expectError("""
            verbose = true
            [[network]]
            name = "lab"
            """, line: 1, "unknown key 'verbose' in the file")
    }

    @Test func wrongTypes() {
        expectError("""
            [[network]]
            name = "lab"
            mtu = "1500"
            """, line: 3, "'mtu' must be an integer, not a string")
        expectError("""
            [[network]]
            name = "lab"
            restrict = "on"
            """, line: 3, "'restrict' must be a boolean (true or false), not a string")
        expectError("""
            [[network]]
            name = "lab"
            hostfwd = "tcp::8080-:80"
            """, line: 3, "'hostfwd' must be an array of strings, not a string")
        expectError("""
            [[network]]
            name = "lab"
            stream = [
                "/tmp/a.sock",
                42,
            ]
            """, line: 3, "'stream' must be an array of strings, but element 2 is an integer")
        expectError("""
            [[network]]
            name = 7
            """, line: 2, "'name' must be a string, not an integer")
        expectError("""
            [network]
            name = "lab"
            """, line: 1, "'network' must be an array of tables ([[network]]), not a table")
        expectError("""
            control = "/tmp/c.sock"
            [[network]]
            name = "lab"
            """, line: 1, "'control' must be a table ([control]), not a string")
        expectError("""
            [[network]]
            name = "lab"
            socket-mode = 0o660
            """, line: 3, "'socket-mode' must be an octal string such as \"0660\", not an integer")
    }

    @Test func optionErrorsUseQEMUsWordsAtTheKeysLine() {
        expectError("""
            [[network]]
            name = "lab"
            options = "net=192.168.0.0/24"
            hostfwd = ["tcp::8080-:80", "tcp::80"]
            """, line: 4, "Invalid host forwarding rule 'tcp::80' (Bad host port separator)")
        expectError("""
            [[network]]
            name = "lab"
            hostname = "ok"
            options = "hostfwd=tcp::80"
            """, line: 4, "Invalid host forwarding rule 'tcp::80' (Bad host port separator)")
        expectError("""
            [[network]]
            name = "lab"
            options = "net=192.168.0.0/24,bogus=1"
            """, line: 3, "Invalid parameter 'bogus'")
        expectError("""
            [[network]]
            name = "lab"
            net = "192.168.0.300/24"
            """, line: 3, "Failed to parse netmask")
    }

    @Test func dnsKeyErrorsAtTheKeysLine() {
        expectError("""
            [[network]]
            name = "lab"
            dns-domain = "lab.internal"
            dns-upstream = "x"
            mtu = 1500
            """, line: 4, "Parameter 'dns-upstream' expects IP[:PORT] or [IPv6]:PORT, not 'x'")
        expectError("""
            [[network]]
            name = "lab"
            options = "dns-upstream=10.0.0.1"
            dns-domain = "a..b"
            """, line: 4, "Parameter 'dns-domain' expects a domain name (labels of 1 to 63 bytes), not 'a..b'")
        expectError("""
            [[network]]
            name = "lab"
            dns-upstream = 53
            """, line: 3, "'dns-upstream' must be a string, not an integer")
    }

    @Test func optionErrorIsBlamedOnTheKeyThatCausesIt() throws {
        // Each key is fine alone; the DNS key collides with the host the network implies.
        expectError("""
            [[network]]
            name = "lab"
            options = "net=192.168.0.0/24"
            dns = "192.168.0.2"
            """, line: 4, "DNS must be different from host")
        // QEMU checks addresses before forwards, so the net key is to blame, not the
        // earlier bad forward in `options`.
        expectError("""
            [[network]]
            name = "lab"
            options = "hostfwd=tcp::80"
            net = "10.0.0.0/40"
            """, line: 4, "Invalid netmask provided (must be in range 4-32)")
        // A host before the net it belongs to is fine: only the whole string counts.
        let config = try parse("""
            [[network]]
            name = "lab"
            host = "192.168.5.1"
            net = "192.168.5.0/24"
            """)
        #expect(try #require(config.networks.first).options.host == IPv4Address(192, 168, 5, 1))
    }

    @Test func duplicateNetworkName() {
        expectError("""
            [[network]]
            name = "lab"

            [[network]]
            name = "other"

            [[network]]
            stream = ["/tmp/x.sock"]
            name = "lab"
            """, line: 9, "duplicate network name 'lab' (first defined at line 2)")
    }

    @Test func noNetworks() {
        expectError("", line: nil, "no networks (add a [[network]] table with a name)")
        expectError("""
            [control]
            socket = "/tmp/c.sock"
            """, line: nil, "no networks (add a [[network]] table with a name)")
    }

    @Test func networkWithoutName() {
        expectError("""
            [[network]]
            name = "lab"

            [[network]]
            mtu = 1500
            """, line: 4, "[[network]] without a name (add name = \"...\")")
    }

    @Test func badNames() {
        expectError("""
            [[network]]
            name = "../etc"
            """, line: 2, "invalid network name '../etc' (use letters, digits, '_', '.' and '-')")
        expectError("""
            [[network]]
            name = ""
            """, line: 2, "invalid network name '' (use letters, digits, '_', '.' and '-')")
    }

    @Test(arguments: [67, 65522, 0, -1])
    func badMTU(mtu: Int) {
        expectError("""
            [[network]]
            name = "lab"
            mtu = \(mtu)
            """, line: 3, "Invalid MTU \(mtu) (must be in range 68-65521)")
    }

    @Test func mtuBounds() throws {
        for mtu in [68, 65521] {
            let config = try parse("[[network]]\nname = \"lab\"\nmtu = \(mtu)\n")
            #expect(config.networks.first?.mtu == mtu)
        }
    }

    @Test(arguments: ["0999", "1777", "", "+600", "0o600", "rw"])
    func badModes(mode: String) {
        expectError("""
            [[network]]
            name = "lab"
            socket-mode = "\(mode)"
            """, line: 3, "invalid 'socket-mode' \"\(mode)\" (octal permission bits, at most 0777, e.g. \"0660\")")
        expectError("""
            [control]
            mode = "\(mode)"
            [[network]]
            name = "lab"
            """, line: 2, "invalid 'mode' \"\(mode)\" (octal permission bits, at most 0777, e.g. \"0660\")")
    }

    @Test func goodModes() throws {
        let config = try parse("""
            [control]
            mode = "600"
            [[network]]
            name = "lab"
            socket-mode = "0777"
            """)
        #expect(config.control.socketMode == 0o600)
        #expect(config.networks.first?.socketMode == 0o777)
    }

    @Test(arguments: ["localhost", "127.0.0.1:0", ":5555", "127.0.0.1:70000", "[::1]"])
    func badTCPEndpoint(endpoint: String) {
        expectError("""
            [[network]]
            name = "lab"
            tcp = ["127.0.0.1:5555", "\(endpoint)"]
            """, line: 3, "invalid tcp endpoint '\(endpoint)' (expected HOST:PORT or [V6]:PORT)")
    }

    @Test func endpointsAreNotShared() {
        expectError("""
            [[network]]
            name = "a"
            stream = ["/tmp/s.sock"]

            [[network]]
            name = "b"
            dgram = ["/tmp/s.sock"]
            """, line: 7, "socket path '/tmp/s.sock' is already used by network 'a'")
        expectError("""
            [[network]]
            name = "a"
            tcp = ["127.0.0.1:5555", "127.0.0.1:5555"]
            """, line: 3, "TCP address 127.0.0.1:5555 is already used by network 'a'")
        expectError("""
            [[network]]
            name = "a"
            stream = [""]
            """, line: 3, "'stream' has an empty path")
    }

    @Test func allowUIDs() {
        expectError("""
            [control]
            allow-uids = [1000, -1]
            [[network]]
            name = "lab"
            """, line: 2, "'allow-uids' element 2 is -1, not a user ID (0 to 4294967294)")
        expectError("""
            [control]
            allow-uids = [4294967295]
            [[network]]
            name = "lab"
            """, line: 2, "'allow-uids' element 1 is 4294967295, not a user ID (0 to 4294967294)")
        expectError("""
            [control]
            allow-uids = ["alice"]
            [[network]]
            name = "lab"
            """, line: 2, "'allow-uids' must be an array of user IDs, but element 1 is a string")
        expectError("""
            [control]
            allow-uids = 1000
            [[network]]
            name = "lab"
            """, line: 2, "'allow-uids' must be an array of user IDs, not an integer")
        expectError("""
            [control]
            socket = ""
            [[network]]
            name = "lab"
            """, line: 2, "'socket' must not be empty")
    }

    @Test func firstMistakeInTheFileIsReported() {
        // toml++ lists keys alphabetically; the loader goes by line instead.
        expectError("""
            [[network]]
            name = "lab"
            zzz = 1
            aaa = 1
            """, line: 3, "unknown key 'zzz' in [[network]]")
    }

    @Test func linesSurviveMultilineStringsAndArrays() {
        // Header- and key-like lines inside strings must not be taken for statements.
        expectError(#"""
            [[network]]
            name = "lab"
            tftp-server-name = '''
            [[network]]
            name = "fake"
            '''
            domainname = """
            mtu = "x" \
            """
            hostfwd = [
                "tcp::1-:1", # mtu = 1
            ]
            mtu = "1500"
            """#, line: 13, "'mtu' must be an integer, not a string")
        expectError(#"""
            [[network]]
            name = "a"
            options = """hostname=x\""""""
            [[network]]
            name = "b"
            "mtu" = 1
            """#, line: 6, "Invalid MTU 1 (must be in range 68-65521)")
    }

    @Test func sectionsAndDottedKeysFindTheirLines() {
        expectError("""
            [[network]]
            name = "lab"

            [network.extra]
            x = 1
            """, line: 4, "unknown key 'extra' in [[network]]")
        expectError("""
            control.sokcet = "/tmp/c.sock"
            [[network]]
            name = "lab"
            """, line: 1, "unknown key 'sokcet' in [control] (did you mean 'socket'?)")
        // Keys in inline tables have no line of their own; the table's line stands in.
        expectError("""
            [[network]]
            name = "lab"
            control = { socket = "/tmp/c.sock" }
            """, line: 3, "unknown key 'control' in [[network]]")
        expectError("""

            control = { socket = "/tmp/c.sock", mdoe = "0600" }
            [[network]]
            name = "lab"
            """, line: 2, "unknown key 'mdoe' in [control] (did you mean 'mode'?)")
    }

    @Test func nulIsRefused() throws {
        expectError("[[network]]\nname = \"lab\"\n\u{0}mtu = 1\n", line: 3, "NUL character (TOML allows no control characters)")
        // TOMLKit would cut these values short at the NUL.
        expectError(#"""
            [[network]]
            name = "lab"
            tftp = """/srv
            /a\u0000b"""
            """#, line: 4, "NUL character escape in a string (not supported)")
        expectError(#"""
            [[network]]
            name = "lab"
            hostname = "a\U00000000"
            """#, line: 3, "NUL character escape in a string (not supported)")
        // Not an escape in a literal string, nor an escaped backslash.
        let config = try parse(#"""
            [[network]]
            name = "lab"
            tftp = '/srv/\u0000'
            hostname = "a\\u0000"
            """#)
        #expect(config.networks.first?.options.tftpRoot == #"/srv/\u0000"#)
        #expect(config.networks.first?.options.hostname == #"a\u0000"#)
    }
}

@Suite struct ReaderEquivalenceTests {
    @Test("in process and through JSON, configs and errors are the same", arguments: [
        "[[network]]\nname = \"a\"\nmax-macs = 8\nmtu = 9000\n",
        "[[network]]\nname = \"a\"\nratio = 1.5\n",
        "[[network]]\nname = \"a\"\nwhen = 1979-05-27T07:32:00Z\n",
        "[control]\nallow-uids = [0x10, -1]\n[[network]]\nname = \"a\"\n",
        "[[network]]\nname = \"a\"\nhostname = \"x\\u00e9\\\"y\"\n",
        "x = [\n",
        "[[network]]\nname = \"a\"\nmax-macs = 0\n",
    ])
    func same(_ text: String) {
        let inProcess = Result { () throws(ConfigError) in try ConfigFile.parse(text, file: "test.toml") }
        let viaJSON = Result { () throws(ConfigError) in try parse(text) }
        #expect(inProcess == viaJSON)
    }
}

@Suite struct MaxMACsKeyTests {
    @Test func keyAndOption() throws {
        #expect(try parse("[[network]]\nname = \"a\"\nmax-macs = 8\n").networks[0].options.maxMACs == 8)
        #expect(try parse("[[network]]\nname = \"a\"\noptions = \"max-macs=2\"\n").networks[0].options.maxMACs == 2)
        expectError("[[network]]\nname = \"a\"\n\nmax-macs = 0\n", line: 4, "Parameter 'max-macs' expects a number from 1 to 4096")
        expectError("[[network]]\nname = \"a\"\nmax-macs = \"4\"\n", line: 3, "'max-macs' must be an integer, not a string")
    }
}
