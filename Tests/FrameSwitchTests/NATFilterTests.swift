import Testing

@testable import FrameSwitch

@Suite struct NATFilterTests {
    private func ipv4(protocol proto: UInt8) -> [UInt8] {
        var frame = [UInt8](repeating: 0xFF, count: 6) + [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00]
        frame += [0x45, 0, 0, 20, 0, 0, 0, 0x11, 64, proto, 0, 0] + [UInt8](repeating: 0, count: 8)
        return frame
    }

    @Test func libslirpGetsOnlyTheIPv4ProtocolsItImplements() {
        #expect(natAcceptsFrame(ipv4(protocol: 6)))
        #expect(natAcceptsFrame(ipv4(protocol: 17)))
        #expect(natAcceptsFrame(ipv4(protocol: 1)))
        #expect(!natAcceptsFrame(ipv4(protocol: 0)), "the fragment that crashed libslirp 4.7")
        #expect(!natAcceptsFrame(ipv4(protocol: 47)))
    }

    @Test func otherFramesPass() {
        var arp = ipv4(protocol: 0)
        arp[12] = 0x08; arp[13] = 0x06
        #expect(natAcceptsFrame(arp))
        #expect(natAcceptsFrame([UInt8](repeating: 0, count: 14)))
    }
}
