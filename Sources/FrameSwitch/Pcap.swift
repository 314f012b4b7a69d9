/// The classic pcap file format (not pcapng), which Wireshark, tshark and tcpdump all read,
/// for capturing what the switch sees.
///
/// Written little-endian with the nanosecond magic, so timestamps keep the resolution of
/// `clock_gettime` and a reader on any host tells the byte order from the magic.
public enum Pcap {
    /// 0xa1b23c4d: "nanosecond timestamps", as opposed to 0xa1b2c3d4's microseconds.
    public static let nanosecondMagic: UInt32 = 0xA1B2_3C4D
    /// LINKTYPE_ETHERNET.
    public static let linkTypeEthernet: UInt32 = 1
    public static let fileHeaderLength = 24
    public static let recordHeaderLength = 16

    /// The 24-byte file header: magic, version 2.4, zone 0, sigfigs 0, snap length, link type.
    public static func fileHeader(snapLength: UInt32 = 65535) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(fileHeaderLength)
        appendLittleEndian(nanosecondMagic, to: &out)
        appendLittleEndian(UInt16(2), to: &out)
        appendLittleEndian(UInt16(4), to: &out)
        appendLittleEndian(UInt32(0), to: &out)  // thiszone: timestamps are UTC
        appendLittleEndian(UInt32(0), to: &out)  // sigfigs: always 0 in practice
        appendLittleEndian(snapLength, to: &out)
        appendLittleEndian(linkTypeEthernet, to: &out)
        return out
    }

    /// The 16-byte header before each frame. The format holds unsigned 32-bit seconds,
    /// so times before 1970 or after 2106 are clamped rather than wrapped.
    public static func recordHeader(timestampNanoseconds: Int64, capturedLength: Int, originalLength: Int) -> [UInt8] {
        // Floor division, so the nanosecond field stays in 0..<1e9 for negative inputs too.
        var seconds = timestampNanoseconds / 1_000_000_000
        var nanoseconds = timestampNanoseconds % 1_000_000_000
        if nanoseconds < 0 {
            seconds -= 1
            nanoseconds += 1_000_000_000
        }
        if seconds < 0 { (seconds, nanoseconds) = (0, 0) }
        var out: [UInt8] = []
        out.reserveCapacity(recordHeaderLength)
        appendLittleEndian(UInt32(clamping: seconds), to: &out)
        appendLittleEndian(UInt32(clamping: nanoseconds), to: &out)
        appendLittleEndian(UInt32(clamping: capturedLength), to: &out)
        appendLittleEndian(UInt32(clamping: originalLength), to: &out)
        return out
    }

    /// Appends one record, the frame cut to `snapLength` bytes (the original length is
    /// still recorded, so readers show the frame as truncated).
    @inlinable
    public static func append<C: Collection<UInt8>>(frame: C, timestampNanoseconds: Int64, snapLength: Int, to output: inout [UInt8]) {
        let captured = min(frame.count, max(snapLength, 0))
        output += recordHeader(timestampNanoseconds: timestampNanoseconds, capturedLength: captured, originalLength: frame.count)
        output.append(contentsOf: frame.prefix(captured))
    }

    @usableFromInline
    static func appendLittleEndian<T: FixedWidthInteger>(_ value: T, to out: inout [UInt8]) {
        for i in 0..<(T.bitWidth / 8) { out.append(UInt8(truncatingIfNeeded: value >> (8 * i))) }
    }
}
