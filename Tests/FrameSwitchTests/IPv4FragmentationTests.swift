import FrameSwitch
import Testing

@Suite("IPv4 fragmentation of the daemon's own replies")
struct IPv4FragmentationTests {
    /// An unfragmented IPv4 UDP frame of `payload` bytes of IP payload, from 10.0.2.3 to 10.0.2.15.
    static func frame(payload: Int, flags: UInt16 = 0, id: UInt16 = 0x1234) -> [UInt8] {
        let total = 20 + payload
        var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), UInt8(id >> 8), UInt8(id & 0xFF),
                           UInt8(flags >> 8), UInt8(flags & 0xFF), 64, 17, 0, 0, 10, 0, 2, 3, 10, 0, 2, 15]
        IPChecksum.store(in: &ip, at: 10)
        let body = (0..<payload).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        return [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x55, 10, 0, 2, 3, 0x08, 0x00] + ip + body
    }

    @Test func aFrameThatFitsIsUnchanged() {
        let small = Self.frame(payload: 1480)
        #expect(IPv4Fragmentation.fragments(of: small, mtu: 1500) == [small])
        let notIP: [UInt8] = Array(repeating: 0, count: 12) + [0x86, 0xDD] + Array(repeating: 0, count: 3000)
        #expect(IPv4Fragmentation.fragments(of: notIP, mtu: 1500) == [notIP])
    }

    @Test(arguments: [1500, 576, 1280, 68, 9000])
    func piecesFitTheMTUAndReassembleToTheOriginal(mtu: Int) {
        let whole = Self.frame(payload: 3024)
        let pieces = IPv4Fragmentation.fragments(of: whole, mtu: mtu)
        if mtu >= 3044 {
            #expect(pieces == [whole])
            return
        }
        #expect(pieces.count == (3024 + (mtu - 20) / 8 * 8 - 1) / ((mtu - 20) / 8 * 8))
        var covered = 0
        for (i, piece) in pieces.enumerated() {
            let total = Int(piece[16]) << 8 | Int(piece[17])
            #expect(piece.count == 14 + total && total <= mtu)
            #expect(IPChecksum.sum(Array(piece[14..<34])) == 0xFFFF)
            #expect(Array(piece[0..<14]) == Array(whole[0..<14]) && piece[18] == 0x12 && piece[19] == 0x34)
            let flags = Int(piece[20]) << 8 | Int(piece[21])
            #expect((flags & 0x1FFF) * 8 == covered)
            #expect((flags & 0x2000 != 0) == (i < pieces.count - 1))
            if i < pieces.count - 1 { #expect((total - 20) % 8 == 0) }
            covered += total - 20
        }
        #expect(covered == 3024)
        // The guest's side: any order gives back the datagram, byte for byte.
        var reassembly = IPv4Reassembly()
        var outcomes: [IPv4Reassembly.Outcome] = []
        for piece in pieces.reversed() { outcomes.append(reassembly.input(piece, now: 0)) }
        #expect(outcomes.last == .complete(whole))
        #expect(outcomes.dropLast().allSatisfy { $0 == .held })
    }

    @Test func dontFragmentAndHopelessMTUsLeaveTheFrameWhole() {
        let df = Self.frame(payload: 3000, flags: 0x4000)
        #expect(IPv4Fragmentation.fragments(of: df, mtu: 1500) == [df])
        let big = Self.frame(payload: 3000)
        #expect(IPv4Fragmentation.fragments(of: big, mtu: 27) == [big])
        // A header that claims more than the frame holds is not cut.
        var lying = big
        lying[16] = 0x20
        #expect(IPv4Fragmentation.fragments(of: lying, mtu: 1500) == [lying])
    }
}

@Suite("IPv6 fragmentation of the daemon's own replies")
struct IPv6FragmentationTests {
    /// An IPv6 UDP frame (from fec0::3 to fec0::f) with `payload` bytes of payload.
    static func frame(payload: Int) -> [UInt8] {
        let source: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [3]
        let destination: [UInt8] = [0xFE, 0xC0] + Array(repeating: 0, count: 13) + [0x0F]
        let body = (0..<payload).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        return [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x56, 0, 0, 0, 3, 0x86, 0xDD,
                0x60, 0, 0, 0, UInt8(payload >> 8), UInt8(payload & 0xFF), 17, 64] + source + destination + body
    }

    @Test func aFrameThatFitsIsUnchanged() {
        let small = Self.frame(payload: 1460)
        #expect(IPv6Fragmentation.fragments(of: small, mtu: 1500, identification: 1) == [small])
    }

    @Test(arguments: [1500, 1280])
    func piecesFitTheMTUAndCarryThePayloadInOrder(mtu: Int) {
        let whole = Self.frame(payload: 3100)
        let pieces = IPv6Fragmentation.fragments(of: whole, mtu: mtu, identification: 0xABCD_0123)
        #expect(pieces.count > 1)
        var payload: [UInt8] = []
        for (i, piece) in pieces.enumerated() {
            let length = Int(piece[18]) << 8 | Int(piece[19])
            #expect(piece.count == 54 + length && 40 + length <= mtu)
            #expect(Array(piece[0..<18]) == Array(whole[0..<18]) && Array(piece[21..<54]) == Array(whole[21..<54]))
            #expect(piece[20] == 44 && piece[54] == 17 && piece[55] == 0)
            let field = Int(piece[56]) << 8 | Int(piece[57])
            #expect(field & ~7 == payload.count)
            #expect((field & 1 == 1) == (i < pieces.count - 1))
            #expect(Array(piece[58..<62]) == [0xAB, 0xCD, 0x01, 0x23])
            if i < pieces.count - 1 { #expect((length - 8) % 8 == 0) }
            payload += piece[62...]
        }
        #expect(payload == Array(whole[54...]))
    }
}
