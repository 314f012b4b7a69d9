import DataPlane
import FrameSwitch
import Testing
import TestSupport

@Suite("MSSClamp")
struct MSSClampTests {
    static func syn(v6: Bool = false, mss: UInt16?, flags: UInt8 = TCPFrame.syn, fromGuest: Bool = true) -> [UInt8] {
        var f = fromGuest ? TCPFrame.fromGuest(v6: v6) : TCPFrame.toGuest(v6: v6)
        f.flags = flags
        if let mss { f.options = [2, 4, UInt8(mss >> 8), UInt8(mss & 0xFF), 1, 3, 3, 7] } else { f.options = [1, 3, 3, 7] }
        return f.bytes
    }

    static func mss(_ frame: [UInt8]) -> Int? {
        let options = TCPFrame.options(frame)
        guard let i = options.firstIndex(of: 2), i + 3 < options.count else { return nil }
        return Int(read16(options, i + 2))
    }

    @Test("a guest offering its full MTU is raised to natMSS toward libslirp", arguments: [false, true])
    func raisesFullMSS(v6: Bool) throws {
        let frame = Self.syn(v6: v6, mss: v6 ? 1440 : 1460)
        let out = try #require(frame.withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 1500) })
        #expect(Self.mss(out) == MSSClamp.natMSS)
        #expect(TCPFrame.checksumsVerify(out))
        #expect(out.count == frame.count)
    }

    @Test("a SYN-ACK (a host forward's answer) is raised too")
    func raisesSYNACK() throws {
        let frame = Self.syn(mss: 1460, flags: TCPFrame.syn | TCPFrame.ackFlag)
        let out = try #require(frame.withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 1500) })
        #expect(Self.mss(out) == MSSClamp.natMSS)
    }

    @Test("a guest asking for less than its MTU carries keeps its MSS")
    func keepsSmallMSS() {
        #expect(Self.syn(mss: 536).withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 1500) } == nil)
        #expect(Self.syn(mss: 1400).withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 1500) } == nil)
    }

    @Test("a jumbo guest's MSS of natMSS or more goes to libslirp as it is; one at MTU 9000 is raised")
    func keepsJumboMSS() throws {
        #expect(Self.syn(mss: 65480).withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 65520) } == nil)
        #expect(Self.syn(mss: UInt16(MSSClamp.natMSS)).withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 65520) } == nil)
        let out = try #require(Self.syn(mss: 8960).withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 9000) })
        #expect(Self.mss(out) == MSSClamp.natMSS)
    }

    @Test("libslirp's jumbo MSS is lowered to what the port's MTU carries", arguments: [false, true])
    func lowersTowardGuest(v6: Bool) throws {
        let frame = Self.syn(v6: v6, mss: 65480, flags: TCPFrame.syn | TCPFrame.ackFlag, fromGuest: false)
        let out = try #require(frame.withUnsafeBytes { MSSClamp.towardGuest($0, portMTU: 1500) })
        #expect(Self.mss(out) == (v6 ? 1440 : 1460))
        #expect(TCPFrame.checksumsVerify(out))
        #expect(Self.syn(mss: 1460, fromGuest: false).withUnsafeBytes { MSSClamp.towardGuest($0, portMTU: 1500) } == nil)
        let jumbo = try #require(frame.withUnsafeBytes { MSSClamp.towardGuest($0, portMTU: 9000) })
        #expect(Self.mss(jumbo) == (v6 ? 8940 : 8960))
    }

    @Test("segments that are not SYNs, and SYNs without MSS, pass untouched")
    func passesOthers() {
        var data = TCPFrame.fromGuest()
        data.payload = Array(repeating: 7, count: 100)
        #expect(data.bytes.withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 1500) } == nil)
        #expect(Self.syn(mss: nil).withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 1500) } == nil)
        #expect(Self.syn(mss: nil, fromGuest: false).withUnsafeBytes { MSSClamp.towardGuest($0, portMTU: 1500) } == nil)
    }

    @Test("truncated and non-TCP frames never crash")
    func malformed() {
        let syn = Self.syn(mss: 1460)
        for length in 0..<syn.count {
            let cut = Array(syn[0..<length])
            _ = cut.withUnsafeBytes { MSSClamp.towardNAT($0, portMTU: 1500) }
            _ = cut.withUnsafeBytes { MSSClamp.towardGuest($0, portMTU: 1500) }
        }
    }
}
