// VhostUser messages: the framing of the vhost-user protocol on its Unix stream socket.
//
// Theory of operation. Every message is a 12-byte header (request, flags, payload size;
// little-endian u32s, as QEMU sends them on every host slirpd runs on) followed by `size`
// payload bytes; descriptors (memory regions, eventfds) travel as SCM_RIGHTS with the
// message. The reader (MessageAssembler) asks for the header and then the payload, each
// in its own read: the kernel hands over a message's descriptors with the first byte of
// the write that carried them and never glues a later write's bytes onto a read that
// returned descriptors, so descriptors that arrive while a message is being read belong
// to that message. Sizes are checked here only against the cap; each request's own size
// and descriptor count are checked by `VhostUserDevice.handle` (Device.swift), which
// owns the descriptors from then on. Pure: bytes and raw descriptor numbers in, values out.

/// Why a connection is closed: the message, ring or memory layout the guest's QEMU sent
/// does not follow the protocol. The daemon logs `message` and drops the connection.
public struct VhostUserError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, CaseIterable {
        /// A message that is malformed, unknown, or out of order.
        case protocolViolation = "protocol"
        /// A ring or descriptor in guest memory that cannot be followed safely.
        case badRing = "bad ring"
        /// Mapping the guest's memory failed (mmap).
        case mapping = "mapping"
    }
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { "\(kind.rawValue): \(message)" }
}

/// The requests of the front end (QEMU) this back end knows by name.
public enum VhostUserRequest: UInt32, Sendable, CaseIterable {
    case getFeatures = 1, setFeatures = 2, setOwner = 3, resetOwner = 4, setMemTable = 5
    case setLogBase = 6, setLogFD = 7
    case setVringNum = 8, setVringAddr = 9, setVringBase = 10, getVringBase = 11
    case setVringKick = 12, setVringCall = 13, setVringErr = 14
    case getProtocolFeatures = 15, setProtocolFeatures = 16, getQueueNum = 17, setVringEnable = 18
    case sendRARP = 19, netSetMTU = 20
}

/// One message: its header fields, payload and the descriptors that came with it.
public struct VhostUserMessage: Sendable {
    public static let headerLength = 12
    /// The largest payload accepted: SET_MEM_TABLE with 8 regions is 264 bytes; nothing
    /// this back end takes is larger, so 4 KiB leaves room and bounds what a peer can make us hold.
    public static let maximumPayload = 4096
    /// Descriptors taken with one message: SET_MEM_TABLE carries at most 8.
    public static let maximumDescriptors = 8

    /// Flag bits: the version (1) in the low two bits, REPLY, NEED_REPLY.
    public static let versionMask: UInt32 = 0x3
    public static let version: UInt32 = 0x1
    public static let replyFlag: UInt32 = 0x4
    public static let needReplyFlag: UInt32 = 0x8

    public var request: UInt32
    public var flags: UInt32
    public var payload: [UInt8]
    /// Raw descriptor numbers, owned by whoever holds the message: `VhostUserDevice.handle`
    /// keeps or closes every one.
    public var descriptors: [Int32]

    public init(request: UInt32, flags: UInt32 = VhostUserMessage.version, payload: [UInt8] = [], descriptors: [Int32] = []) {
        self.request = request
        self.flags = flags
        self.payload = payload
        self.descriptors = descriptors
    }

    public var needsReply: Bool { flags & Self.needReplyFlag != 0 }

    /// The header and payload as they go on the wire (descriptors travel apart).
    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.headerLength + payload.count)
        out.appendLE(request)
        out.appendLE(flags)
        out.appendLE(UInt32(payload.count))
        out += payload
        return out
    }

    /// A reply to `request` carrying `payload`.
    public static func reply(to request: UInt32, payload: [UInt8]) -> VhostUserMessage {
        VhostUserMessage(request: request, flags: version | replyFlag, payload: payload)
    }

    /// The payload as a u64 (the whole payload must be 8 bytes).
    func u64() throws(VhostUserError) -> UInt64 {
        guard payload.count == 8 else { throw sizeError(expected: "8") }
        return payload.readLE64(0)
    }

    /// The payload as a vring state (index, num), 8 bytes.
    func vringState() throws(VhostUserError) -> (index: UInt32, num: UInt32) {
        guard payload.count == 8 else { throw sizeError(expected: "8") }
        return (payload.readLE32(0), payload.readLE32(4))
    }

    func sizeError(expected: String) -> VhostUserError {
        VhostUserError(.protocolViolation, "\(Self.name(request)) with a payload of \(payload.count) bytes (expected \(expected))")
    }

    public static func name(_ request: UInt32) -> String {
        guard let known = VhostUserRequest(rawValue: request) else { return "request \(request)" }
        return "\(known)"
    }
}

/// Reassembles messages from a stream read in two steps: `wanted` bytes of header, then
/// `wanted` bytes of payload. Descriptors are attached to the message being read.
public struct MessageAssembler: Sendable {
    private var header: [UInt8] = []
    private var payload: [UInt8] = []
    private var payloadLength = 0
    private var inPayload = false
    private var descriptors: [Int32] = []

    public init() {}

    /// How many bytes the next read should ask for (never more, so one read never spans two messages).
    public var wanted: Int {
        inPayload ? payloadLength - payload.count : VhostUserMessage.headerLength - header.count
    }

    /// Whether part of a message has arrived.
    public var isMidMessage: Bool { !header.isEmpty || !descriptors.isEmpty }

    /// Descriptors held for an unfinished message; the caller closes them when the connection goes.
    public mutating func takeDescriptors() -> [Int32] {
        defer { descriptors = [] }
        return descriptors
    }

    /// Takes bytes (at most `wanted`) and the descriptors that came with them. Returns a
    /// message when one is complete. Throws (the descriptors then stay here, for
    /// `takeDescriptors`) when the header is not version 1, a reply, or too large.
    public mutating func received(_ bytes: UnsafeRawBufferPointer, descriptors new: [Int32]) throws(VhostUserError) -> VhostUserMessage? {
        descriptors += new
        guard descriptors.count <= VhostUserMessage.maximumDescriptors else {
            throw VhostUserError(.protocolViolation, "\(descriptors.count) descriptors with one message (at most \(VhostUserMessage.maximumDescriptors))")
        }
        precondition(bytes.count <= wanted, "a read past the message")
        if inPayload {
            payload += bytes
        } else {
            header += bytes
            guard header.count == VhostUserMessage.headerLength else { return nil }
            let flags = header.readLE32(4)
            guard flags & VhostUserMessage.versionMask == VhostUserMessage.version else {
                throw VhostUserError(.protocolViolation, "message version \(flags & VhostUserMessage.versionMask) (expected 1)")
            }
            guard flags & VhostUserMessage.replyFlag == 0 else {
                throw VhostUserError(.protocolViolation, "a reply where a request was expected")
            }
            let size = Int(header.readLE32(8))
            guard size <= VhostUserMessage.maximumPayload else {
                throw VhostUserError(.protocolViolation, "\(VhostUserMessage.name(header.readLE32(0))) with a payload of \(size) bytes (at most \(VhostUserMessage.maximumPayload))")
            }
            payloadLength = size
            inPayload = true
            payload.reserveCapacity(size)
        }
        guard payload.count == payloadLength else { return nil }
        let message = VhostUserMessage(request: header.readLE32(0), flags: header.readLE32(4), payload: payload, descriptors: descriptors)
        header.removeAll(keepingCapacity: true)
        payload = []
        descriptors = []
        inPayload = false
        payloadLength = 0
        return message
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE(_ v: UInt32) {
        for i in 0..<4 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
    }

    mutating func appendLE(_ v: UInt64) {
        for i in 0..<8 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }

    func readLE32(_ at: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(self[at + i]) << (8 * UInt32(i)) }
        return v
    }

    func readLE64(_ at: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(self[at + i]) << (8 * UInt64(i)) }
        return v
    }
}
