import FrameSwitch
import TestSupport
import Testing

@testable import NetServices

@Suite struct IPFramesTests {
    let guest = MACAddress(raw: 0x5254_0012_3456)
    let dnsMAC = MACAddress(raw: 0x5255_0A00_0203)

    /// Verifies the IPv4 header checksum and, over the pseudo-header, the UDP one.
    func checksumsHold(_ frame: [UInt8]) -> Bool {
        let ip = Array(frame[14..<34])
        guard IPChecksum.sum(ip) == 0xFFFF else { return false }
        let udp = Array(frame[34...])
        let pseudo = Array(frame[26..<34]) + [0, 17, UInt8(udp.count >> 8), UInt8(udp.count & 0xFF)]
        return IPChecksum.sum(udp, initial: IPChecksum.sum(pseudo)) == 0xFFFF
    }

    @Test func udpRoundTripsOverIPv4AndTheReplySwapsEnds() throws {
        let query = UDPDatagram(sourceMAC: guest, destinationMAC: dnsMAC, addresses: .v4(source: 0x0A00_020F, destination: 0x0A00_0203),
                                sourcePort: 40000, destinationPort: 53, payload: Array("hello".utf8))
        let frame = query.frame(ipID: 7)
        #expect(checksumsHold(frame))
        #expect(UDPDatagram.destinationPort(frame: frame) == 53)
        #expect(UDPDatagram.parse(frame: frame) == query)
        let reply = query.reply([1, 2, 3], from: dnsMAC)
        #expect(reply.destinationMAC == guest && reply.sourceMAC == dnsMAC)
        #expect(reply.addresses == .v4(source: 0x0A00_0203, destination: 0x0A00_020F))
        #expect(reply.sourcePort == 53 && reply.destinationPort == 40000)
        #expect(checksumsHold(reply.frame()))
    }

    @Test func udpRoundTripsOverIPv6WithAValidChecksum() throws {
        let a = [0xFE, 0xC0] + [UInt8](repeating: 0, count: 13) + [0x15]
        let b = [0xFE, 0xC0] + [UInt8](repeating: 0, count: 13) + [0x03]
        let query = UDPDatagram(sourceMAC: guest, destinationMAC: dnsMAC, addresses: .v6(source: a, destination: b),
                                sourcePort: 1234, destinationPort: 53, payload: [9, 9, 9])
        let frame = query.frame()
        #expect(UDPDatagram.parse(frame: frame) == query)
        let udp = Array(frame[54...])
        let pseudo = a + b + [0, 0, 0, UInt8(udp.count), 0, 0, 0, 17]
        #expect(IPChecksum.sum(udp, initial: IPChecksum.sum(pseudo)) == 0xFFFF)
    }

    @Test func refusesFragmentsLiesAboutLengthAndOtherProtocols() {
        let good = UDPDatagram(sourceMAC: guest, destinationMAC: dnsMAC, addresses: .v4(source: 1, destination: 2),
                               sourcePort: 1, destinationPort: 53, payload: [0, 1, 2, 3]).frame()
        var fragment = good
        fragment[20] |= 0x20  // more fragments
        #expect(UDPDatagram.parse(frame: fragment) == nil)
        var longUDP = good
        longUDP[34 + 5] = 200  // UDP length past the IP packet
        #expect(UDPDatagram.parse(frame: longUDP) == nil)
        var tcp = good
        tcp[23] = 6
        #expect(UDPDatagram.parse(frame: tcp) == nil)
        #expect(UDPDatagram.parse(frame: Array(good.prefix(40))) == nil)
        // Every truncation of a valid frame is refused or parsed, never a crash.
        for n in 0..<good.count { _ = UDPDatagram.parse(frame: Array(good.prefix(n))) }
    }

    @Test func answersAPingToTheAddressOnly() throws {
        // A ping from `ping -c 1` on Linux: DF set, 56 bytes of data.
        var ip: [UInt8] = [0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 0, 2, 15, 10, 0, 2, 3]
        ip.replaceSubrange(10..<12, with: [UInt8(~IPChecksum.sum(ip) >> 8), UInt8(~IPChecksum.sum(ip) & 0xFF)])
        var icmp: [UInt8] = [8, 0, 0, 0, 0x00, 0x2A, 0x00, 0x01] + (0..<56).map { UInt8($0) }
        let sum = ~IPChecksum.sum(icmp)
        icmp[2] = UInt8(sum >> 8)
        icmp[3] = UInt8(sum & 0xFF)
        let request = dnsMAC.bytes + guest.bytes + [0x08, 0x00] + ip + icmp
        #expect(ICMPEcho.reply(to: request, address: 0x0A00_0202, from: dnsMAC) == nil)
        let reply = try #require(ICMPEcho.reply(to: request, address: 0x0A00_0203, from: dnsMAC))
        #expect(Array(reply[0..<6]) == guest.bytes && Array(reply[6..<12]) == dnsMAC.bytes)
        #expect(reply.count == request.count)
        #expect(IPChecksum.sum(Array(reply[14..<34])) == 0xFFFF)
        #expect(Array(reply[26..<30]) == [10, 0, 2, 3] && Array(reply[30..<34]) == [10, 0, 2, 15])
        #expect(reply[34] == 0)
        #expect(IPChecksum.sum(Array(reply[34...])) == 0xFFFF)
        #expect(Array(reply[38...]) == Array(icmp[4...]))
    }
}
