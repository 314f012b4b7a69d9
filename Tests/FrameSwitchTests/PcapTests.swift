import FrameSwitch
import TestSupport
import Testing

@Suite("pcap files")
struct PcapTests {
    static func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) }
    }

    @Test("the file header: nanosecond magic, v2.4, zone and sigfigs 0, snap length, Ethernet")
    func fileHeader() {
        #expect(Pcap.fileHeader() == [
            0x4D, 0x3C, 0xB2, 0xA1,  // 0xa1b23c4d little-endian
            0x02, 0x00, 0x04, 0x00,  // version 2.4
            0, 0, 0, 0, 0, 0, 0, 0,  // thiszone, sigfigs
            0xFF, 0xFF, 0x00, 0x00,  // snaplen 65535
            0x01, 0x00, 0x00, 0x00,  // LINKTYPE_ETHERNET
        ])
        let big = Pcap.fileHeader(snapLength: 0x0004_0000)
        #expect(big.count == Pcap.fileHeaderLength)
        #expect(Array(big[16..<20]) == [0x00, 0x00, 0x04, 0x00])
    }

    @Test("a record header splits the timestamp into seconds and nanoseconds, little-endian")
    func recordHeader() {
        let h = Pcap.recordHeader(timestampNanoseconds: 1_700_000_000_123_456_789, capturedLength: 342, originalLength: 1514)
        #expect(h.count == Pcap.recordHeaderLength)
        #expect(Array(h[0..<4]) == [0x00, 0xF1, 0x53, 0x65])  // 1_700_000_000 = 0x6553F100
        #expect(Array(h[4..<8]) == [0x15, 0xCD, 0x5B, 0x07])  // 123_456_789 = 0x075BCD15
        #expect(Array(h[8..<12]) == [0x56, 0x01, 0x00, 0x00])
        #expect(Array(h[12..<16]) == [0xEA, 0x05, 0x00, 0x00])
    }

    @Test("timestamps outside the format's range clamp instead of wrapping")
    func clamping() {
        #expect(Array(Pcap.recordHeader(timestampNanoseconds: -1, capturedLength: 0, originalLength: 0)[0..<8]) == [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(Pcap.recordHeader(timestampNanoseconds: .max, capturedLength: 0, originalLength: 0)[0..<4]) == [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(Pcap.recordHeader(timestampNanoseconds: 999_999_999, capturedLength: -5, originalLength: 1 << 40)[8..<16] == [0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
    }

    @Test("append cuts a frame to the snap length but records its original length")
    func snap() {
        let frame = [UInt8](0..<100)
        var out: [UInt8] = []
        Pcap.append(frame: frame, timestampNanoseconds: 5_000_000_001, snapLength: 60, to: &out)
        #expect(out.count == 16 + 60)
        #expect(Self.le32(out, 0) == 5)
        #expect(Self.le32(out, 4) == 1)
        #expect(Self.le32(out, 8) == 60)
        #expect(Self.le32(out, 12) == 100)
        #expect(Array(out[16...]) == Array(frame[0..<60]))
    }

    @Test("a file of three frames reads back record by record")
    func threeFrames() {
        let frames = [
            DHCPFixture.frame(options: DHCPFixture.clientOptions(kind: 1)),
            libslirpDHCPReply(kind: 2),
            [UInt8](repeating: 0xAB, count: 60),
        ]
        var file = Pcap.fileHeader()
        for (i, frame) in frames.enumerated() {
            // A raw buffer, as the daemon passes them.
            frame.withUnsafeBytes { Pcap.append(frame: $0, timestampNanoseconds: 1_700_000_000_000_000_000 + Int64(i) * 1_500_000, snapLength: 65535, to: &file) }
        }
        #expect(file.count == 24 + frames.reduce(0) { $0 + 16 + $1.count })

        var offset = Pcap.fileHeaderLength
        var read: [[UInt8]] = []
        var times: [UInt32] = []
        while offset + 16 <= file.count {
            let captured = Int(Self.le32(file, offset + 8))
            #expect(Self.le32(file, offset + 12) == UInt32(captured))
            times.append(Self.le32(file, offset + 4))
            read.append(Array(file[(offset + 16)..<(offset + 16 + captured)]))
            offset += 16 + captured
        }
        #expect(offset == file.count)
        #expect(read == frames)
        #expect(times == [0, 1_500_000, 3_000_000])
    }
}
