// fuzz-framer: the libFuzzer target for StreamFraming, the reader of QEMU's stream
// transport (a 4-byte big-endian length, then the frame), which sees every byte a stream
// or TCP guest sends.
//
// Theory of operation. The first byte of an input, low four bits, is a count N; the next N
// bytes are read sizes (each byte + 1, used in turn); the rest is the byte stream. The
// stream is fed to a receive buffer the way Network.scanFrames drains one: append a read,
// then scan and consume whole frames until the scan wants more or reports a bad length.
// It is fed three ways: whole, in the input's read sizes (the whole again when N is 0),
// and one byte at a time. The buffer is scanned as an ArraySlice that does not start at
// index 0 and as an UnsafeRawBufferPointer (the daemon's own view of its buffer).
//
// Besides the crashes the sanitizers catch, the target traps when a promise of the code
// breaks:
// - each scan agrees with a decoding written here from the format alone: a frame exactly
//   when the 4-byte prefix is in, holds 14 to 65535, and that many bytes follow; a bad
//   length exactly when the prefix is in and out of that range; otherwise more is needed;
// - both views of the buffer scan alike;
// - every frame lies within the bytes received, and re-encodes to the bytes it came from;
// - the frames, the bad length and the bytes left over are the same however the stream
//   was cut into reads.

import FrameSwitch

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-framer invariant broken: \(what())") }
}

/// What a receiver made of a whole stream.
struct Outcome: Equatable {
    var frames: [[UInt8]] = []
    var badLength: UInt32?
    /// Bytes received but not consumed: a frame still incomplete (or anything after a bad length).
    var leftover = 0
}

/// The format, decoded independently of StreamFraming: what a scan of `bytes` must say.
func expectedScan(_ bytes: ArraySlice<UInt8>) -> StreamFraming.Scan {
    guard bytes.count >= 4 else { return .needMore }
    let length = bytes.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    guard (14...65535).contains(length) else { return .badLength(length) }
    return bytes.count >= 4 + Int(length) ? .frame(length: Int(length)) : .needMore
}

/// Feeds `stream` in reads of `sizes` (used in turn), scanning after each read.
func receive(_ stream: [UInt8], sizes: [Int]) -> Outcome {
    // Three bytes of junk before the buffer's start, consumed bytes before `head`: the
    // scanned slice never starts at index 0.
    var buffer: [UInt8] = [0xEE, 0xEE, 0xEE]
    var head = 3
    var outcome = Outcome()
    var offset = 0
    var turn = 0
    while offset < stream.count {
        let size = sizes[turn % sizes.count]
        turn += 1
        buffer += stream[offset..<min(stream.count, offset + size)]
        offset += size
        scanning: while true {
            let view = buffer[head...]
            let scan = StreamFraming.scan(view)
            let raw = buffer.withUnsafeBytes { StreamFraming.scan(UnsafeRawBufferPointer(rebasing: $0[head...])) }
            check(scan == raw, "ArraySlice scans \(scan), UnsafeRawBufferPointer \(raw)")
            check(scan == expectedScan(view), "scan says \(scan) of \(view.count) bytes, the format \(expectedScan(view))")
            switch scan {
            case .needMore:
                break scanning
            case .badLength(let length):
                check(length < StreamFraming.minimumFrame || length > StreamFraming.maximumFrame,
                      "bad length \(length) is in range")
                outcome.badLength = length
                outcome.leftover = buffer.count - head + (stream.count - min(offset, stream.count))
                return outcome
            case .frame(let length):
                check((StreamFraming.minimumFrame...StreamFraming.maximumFrame).contains(length), "frame of \(length) bytes")
                let end = head + StreamFraming.prefixLength + length
                check(end <= buffer.count, "a frame of \(length) bytes runs past the \(view.count) received")
                let frame = Array(buffer[(head + StreamFraming.prefixLength)..<end])
                check(StreamFraming.encode(frame) == Array(buffer[head..<end]), "a frame does not re-encode to its bytes")
                outcome.frames.append(frame)
                head = end
            }
        }
    }
    outcome.leftover = buffer.count - head
    return outcome
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let count = Int(input.first ?? 0) & 0x0F
    let sizes = input.dropFirst().prefix(count).map { Int($0) + 1 }
    let stream = Array(input.dropFirst(1 + sizes.count))

    let whole = receive(stream, sizes: [max(1, stream.count)])
    let pieces = receive(stream, sizes: sizes.isEmpty ? [max(1, stream.count)] : sizes)
    let bytes = receive(stream, sizes: [1])
    check(pieces == whole, "read sizes \(sizes) give \(pieces.frames.count) frames, bad \(String(describing: pieces.badLength)), "
          + "left \(pieces.leftover); whole: \(whole.frames.count), \(String(describing: whole.badLength)), \(whole.leftover)")
    check(bytes == whole, "one byte at a time differs from the whole stream")
    let consumed = whole.frames.reduce(0) { $0 + StreamFraming.prefixLength + $1.count }
    check(consumed + whole.leftover == stream.count, "\(consumed) bytes in frames and \(whole.leftover) left of \(stream.count)")
    return 0
}
