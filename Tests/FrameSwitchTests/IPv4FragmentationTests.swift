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
