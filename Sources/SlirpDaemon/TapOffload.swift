import DataPlane
import FrameSwitch
import PosixIO

/// A tap's kernel offloads: the virtio-net header on each frame, and what it lets through.
///
/// Theory of operation. A tap opened with IFF_VNET_HDR and TUNSETOFFLOAD lets the kernel
/// hand slirpd one TCP segment of up to 64 KiB where the namespace's MTU would make 45,
/// and take one back (GSO): libslirp's cost is per segment, so this skips most of it.
/// `open` asks for every offload slirpd handles (CSUM, TSO4/6, TSO_ECN, USO4/6) and, if the
/// kernel refuses, fewer, then none, then no header at all; the result is logged once per
/// tap. Reading: the header is checked against the frame and a partial checksum completed
/// (VirtioNetHeader.inbound), a UDP super-frame cut into datagrams; malformed ones are
/// dropped and counted. Writing: each frame gets its header, a GSO one when it is TCP and
/// longer than `mtu` (the MTU of what is behind the tap: the network's). With TSO4 and
/// TSO6 the frame path hands the tap large TCP segments whole (`segmentsTCP`,
/// PortState.takesLargeSegments). SLIRPD_TAP_OFFLOAD=off (internal, for tests) opens the
/// tap as before, without header.
final class TapOffload {
    /// TUN_F_* sets to try, the most wanted first.
    static let candidates: [UInt32] = {
        let tso = TapOffloads.checksum | TapOffloads.tso4 | TapOffloads.tso6
        return [tso | TapOffloads.tsoECN | TapOffloads.uso, tso | TapOffloads.tsoECN, tso, TapOffloads.checksum]
    }()

    /// A read holds the header and a GSO frame: 64 KiB of IP packet plus Ethernet and header.
    static let receiveCapacity = VirtioNetHeader.length + 14 + 65536 + 64

    let offloads: TapOffloads
    /// The MTU behind the tap: TCP frames longer than this go out with a GSO header.
    let mtu: Int
    /// Frames with a GSO header, read from the kernel (in) and written to it (out).
    var gsoIn = 0, gsoOut = 0
    /// Frames the kernel refused on write (EINVAL: a header built from another guest's odd
    /// frame); each is dropped rather than closing the tap.
    var refused = 0
    /// Told each refusal (with the count so far), to count and log it against the port.
    var onRefused: ((Int) -> Void)?
    /// Frames read whose header did not describe them, by reason.
    var malformed: [VirtioNetHeader.Malformed: Int] = [:]
    /// All of them, and reads too short for a header.
    var malformedTotal = 0
    /// The header bytes for the next write; allocated once.
    private var headerBytes = [UInt8](repeating: 0, count: VirtioNetHeader.length)

    init(offloads: TapOffloads, mtu: Int) {
        self.offloads = offloads
        self.mtu = mtu
    }

    var hasHeader: Bool { offloads.vnetHeaderSize > 0 }

    static var forcedOff: Bool { environmentValue("SLIRPD_TAP_OFFLOAD") == "off" }

    /// Opens the tap with the most offloads the kernel grants.
    static func open(name: String, mtu: Int) throws(IOError) -> (Descriptor, TapOffload) {
        let (tap, offloads) = try openTap(name: name, offloadCandidates: forcedOff ? [] : candidates,
                                          vnetHeaderSize: VirtioNetHeader.length)
        return (tap, TapOffload(offloads: offloads, mtu: mtu))
    }

    /// Whether the kernel cuts the large TCP segments written to it (TSO4 and TSO6).
    var segmentsTCP: Bool {
        hasHeader && offloads.flags & (TapOffloads.tso4 | TapOffloads.tso6) == TapOffloads.tso4 | TapOffloads.tso6
    }

    var summary: String {
        hasHeader ? "virtio-net header of \(offloads.vnetHeaderSize) bytes, offloads \(offloads.names)"
                  : "no virtio-net header (\(TapOffload.forcedOff ? "SLIRPD_TAP_OFFLOAD=off" : "the kernel refused IFF_VNET_HDR")), no offloads"
    }

    /// What a read (header and frame in `bytes`) holds.
    enum Read {
        /// One frame to switch, at this range of the buffer.
        case frame(Range<Int>)
        /// A UDP super-frame at this range: switch each of `header.udpSegments`.
        case udpSegments(Range<Int>, VirtioNetHeader)
        case malformed(VirtioNetHeader.Malformed?)
    }

    func read(_ bytes: UnsafeMutableRawBufferPointer) -> Read {
        guard hasHeader else { return .frame(0..<bytes.count) }
        let size = offloads.vnetHeaderSize
        guard let header = VirtioNetHeader.parse(UnsafeRawBufferPointer(bytes)), bytes.count >= size else {
            malformedTotal += 1
            return .malformed(nil)
        }
        let range = size..<bytes.count
        switch header.inbound(UnsafeMutableRawBufferPointer(rebasing: bytes[range])) {
        case .frame:
            if header.gsoType != .none { gsoIn += 1 }
            return .frame(range)
        case .udpSegments:
            gsoIn += 1
            return .udpSegments(range, header)
        case .malformed(let why):
            malformed[why, default: 0] += 1
            malformedTotal += 1
            return .malformed(why)
        }
    }

    /// Writes one frame, behind its header when the tap has one.
    func write(_ frame: UnsafeRawBufferPointer, to tap: Descriptor) throws(IOError) -> IOResult<Int> {
        guard hasHeader else { return try tap.writeFrame(frame) }
        let (header, patch) = VirtioNetHeader.header(forOutgoing: frame, mtu: mtu)
        // Array's withUnsafeMutableBytes rethrows untyped errors: carry IOError in a Result.
        let outcome = headerBytes.withUnsafeMutableBytes { bytes -> Result<IOResult<Int>, IOError> in
            header.write(to: bytes)
            do throws(IOError) {
                return .success(try tap.writeTapFrame(frame, header: UnsafeRawBufferPointer(bytes), patch: patch?.value, patchOffset: patch?.offset ?? 0))
            } catch {
                return .failure(error)
            }
        }
        switch outcome {
        case .success(let result):
            if case .done = result, header.gsoType != .none { gsoOut += 1 }
            return result
        case .failure(let error) where error.frameRefused:
            refused += 1
            onRefused?(refused)
            return .done(0)
        case .failure(let error):
            throw error
        }
    }

    /// Writes queued length-prefixed frames until the queue is empty or the tap is full.
    func writeFrames(from queue: ByteBuffer, to tap: Descriptor) throws(IOError) -> IOResult<Int> {
        guard hasHeader else { return try tap.writeFrames(from: queue) }
        var sent = 0
        while queue.count >= 4 {
            let bytes = queue.readable
            let length = Int(UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self)))
            guard case .done = try write(UnsafeRawBufferPointer(rebasing: bytes[4..<(4 + length)]), to: tap) else {
                return sent == 0 ? .wouldBlock : .done(sent)
            }
            queue.consume(4 + length)
            sent += 1
        }
        return .done(sent)
    }
}
