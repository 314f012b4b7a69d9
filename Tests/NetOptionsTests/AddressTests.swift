import Testing
@testable import NetOptions

@Suite struct IPv4AddressTests {
    @Test func parsesDottedQuad() throws {
        let address = try #require(IPv4Address("192.168.76.2"))
        #expect(address.value == 0xC0A8_4C02)
        #expect(address.description == "192.168.76.2")
        #expect(address.octets == [192, 168, 76, 2])
        #expect(IPv4Address("0.0.0.0") == .any)
        #expect(IPv4Address("255.255.255.255")?.value == 0xFFFF_FFFF)
        #expect(IPv4Address(10, 0, 2, 15) == IPv4Address("10.0.2.15"))
        #expect(IPv4Address(1, 2, 3, 4) < IPv4Address(1, 2, 3, 5))
    }

    // inet_aton would take most of these; slirpd refuses them (see the theory of operation).
    @Test(arguments: ["", "1.2.3", "1.2.3.4.5", "127.1", "256.0.0.1", "1.2.3.-4", "1.2.3.4 ", " 1.2.3.4",
                      "0x7f.0.0.1", "010.0.2.15", "1..2.3", "1.2.3.", ".1.2.3", "a.b.c.d", "1.2.3.4/24", "１.2.3.4"])
    func rejects(_ text: String) {
        #expect(IPv4Address(text) == nil)
    }
}

@Suite struct IPv6AddressTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var input: String
        var printed: String
        var testDescription: String { input }
    }

    @Test(arguments: [
        Case(input: "::", printed: "::"),
        Case(input: "::1", printed: "::1"),
        Case(input: "1::", printed: "1::"),
        Case(input: "fec0::", printed: "fec0::"),
        Case(input: "FEC0::A", printed: "fec0::a"),
        Case(input: "2001:0db8:0000:0000:0000:0000:0000:0001", printed: "2001:db8::1"),
        Case(input: "2001:db8:0:0:1:0:0:1", printed: "2001:db8::1:0:0:1"),  // first of equal runs
        Case(input: "2001:db8:0:0:1:0:0:0", printed: "2001:db8:0:0:1::"),  // longest run wins
        Case(input: "2001:db8:0:1:1:1:1:1", printed: "2001:db8:0:1:1:1:1:1"),  // one zero group stays
        Case(input: "1:2:3:4:5:6:7::", printed: "1:2:3:4:5:6:7:0"),
        Case(input: "::2:3:4:5:6:7:8", printed: "0:2:3:4:5:6:7:8"),
        Case(input: "::ffff:192.0.2.1", printed: "::ffff:192.0.2.1"),
        Case(input: "::ffff:c000:0201", printed: "::ffff:192.0.2.1"),
        Case(input: "64:ff9b::192.0.2.33", printed: "64:ff9b::c000:221"),
        Case(input: "1:2:3:4:5:6:1.2.3.4", printed: "1:2:3:4:5:6:102:304"),
        Case(input: "::1.2.3.4", printed: "::102:304"),
        Case(input: "fe80::0001:00ff", printed: "fe80::1:ff"),
    ])
    func parsesAndPrints(_ c: Case) throws {
        let address = try #require(IPv6Address(c.input))
        #expect(address.bytes.count == 16)
        #expect(address.description == c.printed)
        #expect(IPv6Address(address.description) == address)  // printing round-trips
    }

    @Test func bytesAreNetworkOrder() throws {
        let address = try #require(IPv6Address("2001:db8::ff00:42:8329"))
        #expect(address.bytes == [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0x42, 0x83, 0x29])
        #expect(IPv6Address(bytes: address.bytes) == address)
        #expect(IPv6Address(bytes: [1, 2, 3]) == nil)
        #expect(IPv6Address.unspecified.description == "::")
    }

    @Test(arguments: ["", ":", ":::", "1:::2", "1::2::3", "12345::", "g::", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7",
                      ":1::", "1::2:", "::1.2.3", "::1.2.3.04", "::256.1.1.1", "1.2.3.4::", "1.2.3.4::1",
                      "fe80::1%eth0", " ::1", "1:2:3:4:5:6:7:8::", "::1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:1.2.3.4",
                      "[::1]", "::ffff:1.2.3.4:5"])
    func rejects(_ text: String) {
        #expect(IPv6Address(text) == nil)
    }

    @Test func prefixComparison() throws {
        let prefix = try #require(IPv6Address("fec0::"))
        #expect(try #require(IPv6Address("fec0::2")).hasPrefix(prefix, length: 64))
        #expect(try #require(IPv6Address("fec0:0:0:1::2")).hasPrefix(prefix, length: 64) == false)
        #expect(try #require(IPv6Address("fec0:0:0:1::2")).hasPrefix(prefix, length: 63))
        #expect(try #require(IPv6Address("fec1::")).hasPrefix(prefix, length: 15))
        #expect(try #require(IPv6Address("fec1::")).hasPrefix(prefix, length: 16) == false)
        #expect(try #require(IPv6Address("ffff::")).hasPrefix(prefix, length: 0))
    }
}

@Suite struct IPv4NetworkTests {
    @Test func masksAndContains() throws {
        let network = IPv4Network(address: try #require(IPv4Address("10.0.2.77")), prefixLength: 24)
        #expect(network.address == IPv4Address("10.0.2.0"))
        #expect(network.mask == 0xFFFF_FF00)
        #expect(network.description == "10.0.2.0/24")
        #expect(network.contains(try #require(IPv4Address("10.0.2.255"))))
        #expect(!network.contains(try #require(IPv4Address("10.0.3.0"))))
        #expect(network.host(0x0202) == IPv4Address("10.0.2.2"))
        let wide = IPv4Network(address: try #require(IPv4Address("10.9.0.0")), prefixLength: 16)
        #expect(wide.host(0x020F) == IPv4Address("10.9.2.15"))
        #expect(IPv4Network(address: .any, prefixLength: 0).mask == 0)
        #expect(IPv4Network(address: .any, prefixLength: 32).mask == 0xFFFF_FFFF)
    }

    @Test func prefixLengthOfMask() {
        #expect(IPv4Network.prefixLength(ofMask: 0xFFFF_0000) == 16)
        #expect(IPv4Network.prefixLength(ofMask: 0xFFFF_FFFF) == 32)
        #expect(IPv4Network.prefixLength(ofMask: 0) == 0)
        #expect(IPv4Network.prefixLength(ofMask: 0xFF00_FF00) == nil)
        #expect(IPv4Network.prefixLength(ofMask: 0x0000_00FF) == nil)
    }
}
