/// QEMU's stream framing (`-netdev stream`, `-netdev socket`): a 4-byte big-endian
/// length, then that many bytes of Ethernet frame, with no FCS.
///
/// `scan` looks at the bytes received so far, starting at a frame boundary. A length
/// is judged as soon as its 4 bytes are in, so a bad prefix resets the guest at once
/// rather than after waiting for a body that may never come.
public struct StreamFraming: Sendable {
    public static let prefixLength = 4
    /// Shorter than an Ethernet header cannot be a frame.
    public static let minimumFrame = EthernetHeader.length
    /// The largest length accepted: 65535, the largest IP MTU's worth plus header, like passt.
    public static let maximumFrame = 65535

    public enum Scan: Equatable, Sendable {
        /// Not enough bytes yet for a whole frame.
        case needMore
        /// A whole frame: its bytes start `prefixLength` into the input; consume `prefixLength + length`.
        case frame(length: Int)
        /// The prefix announces an impossible length: the stream is garbage from here on.
        case badLength(UInt32)
    }

    public init() {}

    @inlinable
    public static func scan<C: RandomAccessCollection<UInt8>>(_ bytes: C) -> Scan where C.Index == Int {
        guard bytes.count >= prefixLength else { return .needMore }
        let s = bytes.startIndex
        let length = UInt32(bytes[s]) << 24 | UInt32(bytes[s + 1]) << 16 | UInt32(bytes[s + 2]) << 8 | UInt32(bytes[s + 3])
        guard length >= minimumFrame, length <= maximumFrame else { return .badLength(length) }
        guard bytes.count >= prefixLength + Int(length) else { return .needMore }
        return .frame(length: Int(length))
    }

    /// Encodes one frame with its prefix (for tests and tools; the daemon writes into its queues).
    public static func encode(_ frame: [UInt8]) -> [UInt8] {
        let n = UInt32(frame.count)
        return [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)] + frame
    }
}
