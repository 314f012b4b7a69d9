import FrameSwitch
import Testing

/// A frame of `length` bytes: dst, src, ethertype, then a counting payload.
func makeFrame(dst: MACAddress = .broadcast, src: MACAddress = MACAddress(raw: 0x5254_0012_3456), length: Int = 60) -> [UInt8] {
    var frame = dst.bytes + src.bytes + [0x08, 0x00]
    while frame.count < length { frame.append(UInt8(truncatingIfNeeded: frame.count)) }
    return frame
}

/// Feeds `stream` in chunks of `chunk` bytes, collecting frames the way the daemon does.
func decode(_ stream: [UInt8], chunk: Int) -> (frames: [[UInt8]], bad: UInt32?) {
    var buffer: [UInt8] = []
    var frames: [[UInt8]] = []
    var offset = 0
    while offset < stream.count {
        buffer += stream[offset..<min(offset + chunk, stream.count)]
        offset += chunk
        scanning: while true {
            switch StreamFraming.scan(buffer) {
            case .needMore: break scanning
            case .badLength(let n): return (frames, n)
            case .frame(let length):
                frames.append(Array(buffer[4..<(4 + length)]))
                buffer.removeFirst(4 + length)
            }
        }
    }
    return (frames, nil)
}

@Suite("Stream framing")
struct StreamFramingTests {
    @Test("a frame fed one byte at a time comes out whole, once")
    func oneByteAtATime() {
        let frame = makeFrame(length: 342)
        let result = decode(StreamFraming.encode(frame), chunk: 1)
        #expect(result.frames == [frame])
        #expect(result.bad == nil)
    }

    @Test("many frames in one buffer, of mixed sizes, come out in order")
    func manyInOneBuffer() {
        let frames = (0..<50).map { makeFrame(src: MACAddress(raw: 0x0200_0000_0000 | UInt64($0)), length: 14 + ($0 * 97) % 1500) }
        let stream = frames.flatMap(StreamFraming.encode)
        #expect(decode(stream, chunk: stream.count).frames == frames)
        #expect(decode(stream, chunk: 7).frames == frames)
    }

    @Test("the largest frame is accepted", arguments: [StreamFraming.maximumFrame, 14])
    func boundaries(length: Int) {
        let frame = makeFrame(length: length)
        #expect(decode(StreamFraming.encode(frame), chunk: 4096).frames == [frame])
    }

    @Test("impossible lengths are reported as soon as the prefix is in",
          arguments: [UInt32(0), 5, 13, 65536, 0xFFFF_FFFF])
    func badLengths(expected: UInt32) {
        let prefix = [UInt8(expected >> 24), UInt8(truncatingIfNeeded: expected >> 16), UInt8(truncatingIfNeeded: expected >> 8), UInt8(truncatingIfNeeded: expected)]
        #expect(StreamFraming.scan(prefix) == .badLength(expected))
        // After a good frame too: the first frame is still delivered.
        let good = makeFrame()
        let result = decode(StreamFraming.encode(good) + prefix + [1, 2, 3], chunk: 3)
        #expect(result.frames == [good])
        #expect(result.bad == expected)
    }

    @Test("a partial prefix or body asks for more")
    func partial() {
        #expect(StreamFraming.scan([0, 0, 0]) == .needMore)
        #expect(StreamFraming.scan([0, 0, 0, 60] + [UInt8](repeating: 0, count: 59)) == .needMore)
        #expect(StreamFraming.scan([0, 0, 0, 60] + [UInt8](repeating: 0, count: 60)) == .frame(length: 60))
    }
}

@Suite("Ethernet addresses")
struct EthernetTests {
    @Test("MAC text round-trips and group bits are recognised")
    func macText() throws {
        let mac = try #require(MACAddress("52:54:00:12:34:56"))
        #expect(mac.description == "52:54:00:12:34:56")
        #expect(!mac.isGroup)
        #expect(MACAddress.broadcast.isGroup)
        #expect(MACAddress("33:33:00:00:00:01")?.isGroup == true)
        #expect(MACAddress("52:54:00:12:34") == nil)
        #expect(MACAddress("52:54:00:12:34:zz") == nil)
    }

    @Test("the header is read from the first 14 bytes")
    func header() throws {
        let frame = makeFrame(dst: MACAddress(raw: 0x5255_0A00_0202), src: MACAddress(raw: 0x5254_0012_3456))
        let header = try #require(EthernetHeader(frame))
        #expect(header.destination.description == "52:55:0a:00:02:02")
        #expect(header.source.description == "52:54:00:12:34:56")
        #expect(header.etherType == 0x0800)
        #expect(EthernetHeader(Array(frame.prefix(13))) == nil)
        #expect(EthernetHeader(frame[1...]) != nil)
    }
}
