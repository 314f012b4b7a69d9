import FrameSwitch
import NetServices
import Testing

/// The port rewrite that carries DNS over TCP to the IPv6 DNS address through libslirp.
@Suite struct DNSOverTCP6Tests {
    static let dns: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [3]
    static let guest: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x42]

    /// An IPv6 TCP segment with a correct checksum (computed by hand here).
    static func segment(from source: [UInt8], _ sourcePort: UInt16, to destination: [UInt8], _ destinationPort: UInt16,
                        payload: [UInt8] = [0, 5, 1, 2, 3, 4, 5]) -> [UInt8] {
        var tcp: [UInt8] = [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xFF), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xFF),
                            0, 0, 1, 0, 0, 0, 2, 0, 0x50, 0x18, 0xFF, 0xFF, 0, 0, 0, 0] + payload
        let value = ~checksum(source + destination + [0, 0, 0, UInt8(tcp.count), 0, 0, 0, 6] + tcp)
        tcp[16] = UInt8(value >> 8)
        tcp[17] = UInt8(value & 0xFF)
        return [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xDD, 0x60, 0, 0, 0, 0, UInt8(tcp.count), 6, 64]
            + source + destination + tcp
    }

    static func checksum(_ bytes: [UInt8]) -> UInt16 {
        let even = bytes.count % 2 == 1 ? bytes + [0] : bytes
        var sum: UInt32 = 0
        for i in stride(from: 0, to: even.count, by: 2) { sum += UInt32(even[i]) << 8 | UInt32(even[i + 1]) }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return UInt16(sum)
    }

    static func checksumIsValid(_ frame: [UInt8]) -> Bool {
        let tcp = Array(frame[54...])
        return checksum(Array(frame[22..<54]) + [0, 0, 0, UInt8(tcp.count), 0, 0, 0, 6] + tcp) == 0xFFFF
    }

    @Test func rewritesThePortBothWaysWithAValidChecksum() throws {
        let redirect = try #require(DNSOverTCP6(address: Self.dns, port: 41234))
        let query = Self.segment(from: Self.guest, 50000, to: Self.dns, 53)
        let toNAT = try #require(redirect.towardNAT(query))
        #expect(Array(toNAT[56..<58]) == [0xA1, 0x12])  // 41234
        #expect(Self.checksumIsValid(toNAT))
        #expect(Array(toNAT[0..<56]) == Array(query[0..<56]) && Array(toNAT[58..<70]) == Array(query[58..<70]))
        let answer = Self.segment(from: Self.dns, 41234, to: Self.guest, 50000)
        let toGuest = try #require(redirect.towardGuest(answer))
        #expect(Array(toGuest[54..<56]) == [0, 53])
        #expect(Self.checksumIsValid(toGuest))
        #expect(toGuest == Self.segment(from: Self.dns, 53, to: Self.guest, 50000))
    }

    @Test func leavesEverythingElseAlone() throws {
        let redirect = try #require(DNSOverTCP6(address: Self.dns, port: 41234))
        #expect(redirect.towardNAT(Self.segment(from: Self.guest, 50000, to: Self.dns, 80)) == nil)
        #expect(redirect.towardNAT(Self.segment(from: Self.guest, 50000, to: Self.guest, 53)) == nil)
        #expect(redirect.towardGuest(Self.segment(from: Self.dns, 53, to: Self.guest, 50000)) == nil)
        var udp = Self.segment(from: Self.guest, 50000, to: Self.dns, 53)
        udp[20] = 17
        #expect(redirect.towardNAT(udp) == nil)
        #expect(redirect.towardNAT(Array(Self.segment(from: Self.guest, 50000, to: Self.dns, 53).prefix(60))) == nil)
        #expect(DNSOverTCP6(address: Self.dns, port: 0) == nil)
    }
}
