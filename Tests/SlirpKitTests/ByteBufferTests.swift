import PosixIO
import Testing

/// ByteBuffer grows on demand up to its capacity and gives grown storage back when drained.
@Suite("Byte buffer")
struct ByteBufferTests {
    static func frame(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0) } }

    @Test("starts small, doubles as frames are queued, never past its capacity, and keeps every byte")
    func grows() {
        let buffer = ByteBuffer(capacity: 16 * 1024, initial: 2048)
        #expect(buffer.allocated == 2048)
        var queued = 0
        while Self.frame(1500).withUnsafeBytes({ buffer.appendFrame($0) }) { queued += 1 }
        #expect(queued == 16 * 1024 / 1504)
        #expect(buffer.allocated == 16 * 1024)
        #expect(buffer.count == queued * 1504)
        // Every frame is intact after the moves.
        var frames = 0
        while buffer.count >= 4 {
            let bytes = buffer.readable
            let length = Int(UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self)))
            #expect(Array(bytes[4..<(4 + length)]) == Self.frame(1500))
            buffer.consume(4 + length)
            frames += 1
        }
        #expect(frames == queued)
    }

    @Test("shrinks back to its initial size only when empty")
    func shrinks() {
        let buffer = ByteBuffer(capacity: 1 << 20, initial: 2048)
        _ = Self.frame(60_000).withUnsafeBytes { buffer.appendFrame($0) }
        #expect(buffer.allocated >= 60_004)
        #expect(!buffer.shrinkIfEmpty())
        buffer.consume(buffer.count)
        #expect(buffer.shrinkIfEmpty())
        #expect(buffer.allocated == 2048)
        #expect(!buffer.shrinkIfEmpty())
        #expect(Self.frame(100).withUnsafeBytes { buffer.appendFrame($0) })
    }

    @Test("without an initial size the whole capacity is allocated up front, as before")
    func fixed() {
        let buffer = ByteBuffer(capacity: 4096)
        #expect(buffer.allocated == 4096)
        #expect(!Self.frame(4093).withUnsafeBytes { buffer.appendFrame($0) })
    }
}
