import NetOptions

// A DNS message codec (RFC 1035 section 4, with RFC 2181 and RFC 6891 corrections).
//
// Decoding is defensive: the input comes from guests and from the network. Every read
// is bounds-checked, compression pointers must point strictly backwards (so a chain
// can neither loop nor run ahead into bytes not yet validated), names are held to 255
// bytes on the wire and 63 per label, and section counts can never make the decoder
// allocate more than the message itself could hold. `parse` returns nil for anything
// it does not understand instead of trapping.

/// A record or question type (RFC 1035 3.2.2, 3.2.3), open to values this module
/// does not know.
public struct DNSType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(_ rawValue: UInt16) { self.rawValue = rawValue }

    public static let a = DNSType(1)
    public static let ns = DNSType(2)
    public static let cname = DNSType(5)
    public static let soa = DNSType(6)
    public static let ptr = DNSType(12)
    public static let mx = DNSType(15)
    public static let txt = DNSType(16)
    public static let aaaa = DNSType(28)
    /// The EDNS pseudo-record (RFC 6891).
    public static let opt = DNSType(41)
    public static let ixfr = DNSType(251)
    public static let axfr = DNSType(252)
    /// QTYPE `*`: all records.
    public static let any = DNSType(255)

    public var description: String {
        switch self {
        case .a: "A"
        case .ns: "NS"
        case .cname: "CNAME"
        case .soa: "SOA"
        case .ptr: "PTR"
        case .mx: "MX"
        case .txt: "TXT"
        case .aaaa: "AAAA"
        case .opt: "OPT"
        case .ixfr: "IXFR"
        case .axfr: "AXFR"
        case .any: "ANY"
        default: "TYPE\(rawValue)"
        }
    }
}

/// A record or question class (RFC 1035 3.2.4, 3.2.5).
public struct DNSClass: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(_ rawValue: UInt16) { self.rawValue = rawValue }

    public static let internet = DNSClass(1)
    public static let chaos = DNSClass(3)
    /// QCLASS `*`.
    public static let any = DNSClass(255)
}

/// The header's 4-bit RCODE (RFC 1035 4.1.1), plus the EDNS extension values.
public struct DNSResponseCode: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(_ rawValue: UInt16) { self.rawValue = rawValue }

    public static let noError = DNSResponseCode(0)
    public static let formatError = DNSResponseCode(1)
    public static let serverFailure = DNSResponseCode(2)
    public static let nameError = DNSResponseCode(3)  // NXDOMAIN
    public static let notImplemented = DNSResponseCode(4)
    public static let refused = DNSResponseCode(5)
    /// 12 bits wide: the header holds the low 4, the OPT record the high 8 (RFC 6891 6.1.3).
    public static let badVersion = DNSResponseCode(16)
}

/// A domain name as its wire labels. Labels are kept byte for byte, so the case a
/// client used is echoed back; comparisons that should ignore case use `lowercased`.
public struct DNSName: Hashable, Sendable, CustomStringConvertible {
    /// Each 1...63 bytes; at most 255 bytes on the wire in all (RFC 1035 2.3.4).
    public let labels: [[UInt8]]

    public static let maximumWireLength = 255
    public static let maximumLabelLength = 63
    public static let root = DNSName(uncheckedLabels: [])

    public init?(labels: [[UInt8]]) {
        guard labels.allSatisfy({ (1...Self.maximumLabelLength).contains($0.count) }),
              Self.wireLength(labels) <= Self.maximumWireLength else { return nil }
        self.labels = labels
    }

    /// Dotted text; one trailing dot is allowed and `""` or `"."` is the root. No escapes:
    /// a label containing a dot cannot be written this way.
    public init?(_ text: String) {
        var bytes = Array(text.utf8)
        if bytes.last == UInt8(ascii: ".") { bytes.removeLast() }
        let parts = bytes.isEmpty ? [] : bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        self.init(labels: parts.map { Array($0) })
    }

    init(uncheckedLabels: [[UInt8]]) { labels = uncheckedLabels }

    static func wireLength(_ labels: [[UInt8]]) -> Int {
        labels.reduce(1) { $0 + 1 + $1.count }
    }

    /// ASCII letters folded to lower case only: DNS case-insensitivity is ASCII-only
    /// (RFC 4343), so other bytes must stay as they are.
    public var lowercased: DNSName {
        DNSName(uncheckedLabels: labels.map { $0.map(dnsLowercase) })
    }

    /// True when the names are equal ignoring ASCII case.
    public func equalsIgnoringCase(_ other: DNSName) -> Bool {
        lowercased == other.lowercased
    }

    /// True when `self` is `ancestor` or below it, ignoring ASCII case.
    public func isSubdomain(of ancestor: DNSName) -> Bool {
        guard labels.count >= ancestor.labels.count else { return false }
        let tail = labels.suffix(ancestor.labels.count)
        return zip(tail, ancestor.labels).allSatisfy { a, b in
            a.count == b.count && zip(a, b).allSatisfy { dnsLowercase($0) == dnsLowercase($1) }
        }
    }

    /// Dotted text without the trailing dot (`"."` for the root). Bytes that would make
    /// the text ambiguous or unprintable are written as `\DDD` (RFC 1035 5.1).
    public var description: String {
        guard !labels.isEmpty else { return "." }
        return labels.map { label in
            var text = ""
            for byte in label {
                switch byte {
                case UInt8(ascii: "."), UInt8(ascii: "\\"):
                    text.append("\\")
                    text.append(Character(Unicode.Scalar(byte)))
                case 0x21...0x7E:
                    text.append(Character(Unicode.Scalar(byte)))
                default:
                    let digits = String(byte)
                    text += "\\" + String(repeating: "0", count: 3 - digits.count) + digits
                }
            }
            return text
        }.joined(separator: ".")
    }
}

func dnsLowercase(_ byte: UInt8) -> UInt8 {
    (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 : byte
}

/// The fixed 12-byte header, less the counts, which come from the sections' sizes.
public struct DNSHeader: Hashable, Sendable {
    public var id: UInt16
    /// QR: set in responses.
    public var isResponse: Bool
    /// 0 is a standard query; 4 bits.
    public var opcode: UInt8
    /// AA
    public var isAuthoritative: Bool
    /// TC
    public var isTruncated: Bool
    /// RD
    public var recursionDesired: Bool
    /// RA
    public var recursionAvailable: Bool
    /// The Z bit, which must be zero but is carried through so bytes round-trip.
    public var z: Bool
    /// AD (RFC 4035 3.2.3).
    public var authenticData: Bool
    /// CD (RFC 4035 3.2.2), copied from query to response.
    public var checkingDisabled: Bool
    /// The header's 4 bits only; see `DNSMessage.extendedResponseCode`.
    public var rcode: UInt8

    public init(id: UInt16 = 0, isResponse: Bool = false, opcode: UInt8 = 0, isAuthoritative: Bool = false,
                isTruncated: Bool = false, recursionDesired: Bool = false, recursionAvailable: Bool = false,
                z: Bool = false, authenticData: Bool = false, checkingDisabled: Bool = false, rcode: UInt8 = 0) {
        self.id = id
        self.isResponse = isResponse
        self.opcode = opcode & 0x0F
        self.isAuthoritative = isAuthoritative
        self.isTruncated = isTruncated
        self.recursionDesired = recursionDesired
        self.recursionAvailable = recursionAvailable
        self.z = z
        self.authenticData = authenticData
        self.checkingDisabled = checkingDisabled
        self.rcode = rcode & 0x0F
    }

    /// Bytes 2 and 3 of the header.
    var flags: UInt16 {
        var f = UInt16(opcode & 0x0F) << 11 | UInt16(rcode & 0x0F)
        if isResponse { f |= 0x8000 }
        if isAuthoritative { f |= 0x0400 }
        if isTruncated { f |= 0x0200 }
        if recursionDesired { f |= 0x0100 }
        if recursionAvailable { f |= 0x0080 }
        if z { f |= 0x0040 }
        if authenticData { f |= 0x0020 }
        if checkingDisabled { f |= 0x0010 }
        return f
    }

    init(id: UInt16, flags f: UInt16) {
        self.init(id: id, isResponse: f & 0x8000 != 0, opcode: UInt8(f >> 11 & 0x0F),
                  isAuthoritative: f & 0x0400 != 0, isTruncated: f & 0x0200 != 0,
                  recursionDesired: f & 0x0100 != 0, recursionAvailable: f & 0x0080 != 0,
                  z: f & 0x0040 != 0, authenticData: f & 0x0020 != 0, checkingDisabled: f & 0x0010 != 0,
                  rcode: UInt8(f & 0x0F))
    }

    public static let length = 12

    /// Reads just the header (for replying to a message the full parser rejects).
    @inlinable
    public init?<C: RandomAccessCollection<UInt8>>(peeking bytes: C) where C.Index == Int {
        guard bytes.count >= Self.length else { return nil }
        let s = bytes.startIndex
        self.init(id: UInt16(bytes[s]) << 8 | UInt16(bytes[s + 1]),
                  rawFlags: UInt16(bytes[s + 2]) << 8 | UInt16(bytes[s + 3]))
    }

    @usableFromInline
    init(id: UInt16, rawFlags: UInt16) { self.init(id: id, flags: rawFlags) }
}

public struct DNSQuestion: Hashable, Sendable {
    public var name: DNSName
    public var type: DNSType
    public var `class`: DNSClass

    public init(name: DNSName, type: DNSType, class: DNSClass = .internet) {
        self.name = name
        self.type = type
        self.class = `class`
    }
}

/// RDATA: decoded for the types this module answers with, bytes for the rest.
public enum DNSRecordData: Hashable, Sendable {
    case a(IPv4Address)
    case aaaa(IPv6Address)
    case ptr(DNSName)
    case cname(DNSName)
    case ns(DNSName)
    /// Any other type, byte for byte. Types such as SOA and MX may hold compression
    /// pointers in these bytes, which only mean something inside the message they came
    /// from; this codec never needs to re-encode such records, only to pass them on.
    case opaque([UInt8])
}

/// A resource record. For OPT (RFC 6891 6.1.2) `class` is the sender's UDP payload size
/// and `ttl` holds the extended RCODE, version and DO bit; see `DNSMessage.edns`.
public struct DNSRecord: Hashable, Sendable {
    public var name: DNSName
    public var type: DNSType
    public var `class`: DNSClass
    public var ttl: UInt32
    public var data: DNSRecordData

    public init(name: DNSName, type: DNSType, class: DNSClass = .internet, ttl: UInt32, data: DNSRecordData) {
        self.name = name
        self.type = type
        self.class = `class`
        self.ttl = ttl
        self.data = data
    }

    public static func a(_ name: DNSName, _ address: IPv4Address, ttl: UInt32) -> DNSRecord {
        DNSRecord(name: name, type: .a, ttl: ttl, data: .a(address))
    }

    public static func aaaa(_ name: DNSName, _ address: IPv6Address, ttl: UInt32) -> DNSRecord {
        DNSRecord(name: name, type: .aaaa, ttl: ttl, data: .aaaa(address))
    }

    public static func ptr(_ name: DNSName, _ target: DNSName, ttl: UInt32) -> DNSRecord {
        DNSRecord(name: name, type: .ptr, ttl: ttl, data: .ptr(target))
    }
}

/// The EDNS parameters carried by an OPT record (RFC 6891 6.1.3).
public struct DNSEDNS: Hashable, Sendable {
    public var udpPayloadSize: UInt16
    /// The high 8 bits of the 12-bit RCODE.
    public var extendedRCode: UInt8
    public var version: UInt8
    /// DO (RFC 3225).
    public var dnssecOK: Bool
    /// The options, unparsed.
    public var options: [UInt8]

    public init(udpPayloadSize: UInt16, extendedRCode: UInt8 = 0, version: UInt8 = 0, dnssecOK: Bool = false,
                options: [UInt8] = []) {
        self.udpPayloadSize = udpPayloadSize
        self.extendedRCode = extendedRCode
        self.version = version
        self.dnssecOK = dnssecOK
        self.options = options
    }

    public init?(_ record: DNSRecord) {
        guard record.type == .opt, case .opaque(let options) = record.data else { return nil }
        udpPayloadSize = record.class.rawValue
        extendedRCode = UInt8(record.ttl >> 24)
        version = UInt8(truncatingIfNeeded: record.ttl >> 16)
        dnssecOK = record.ttl & 0x8000 != 0
        self.options = options
    }

    /// The OPT record, owned by the root as RFC 6891 6.1.2 requires.
    public var record: DNSRecord {
        let ttl = UInt32(extendedRCode) << 24 | UInt32(version) << 16 | (dnssecOK ? 0x8000 : 0)
        return DNSRecord(name: .root, type: .opt, class: DNSClass(udpPayloadSize), ttl: ttl, data: .opaque(options))
    }
}

public struct DNSMessage: Hashable, Sendable {
    public var header: DNSHeader
    public var questions: [DNSQuestion]
    public var answers: [DNSRecord]
    public var authorities: [DNSRecord]
    public var additionals: [DNSRecord]

    /// The largest message: TCP's 2-byte length (RFC 1035 4.2.2).
    public static let maximumLength = 65535
    /// The UDP limit without EDNS (RFC 1035 4.2.1).
    public static let classicUDPLimit = 512

    public init(header: DNSHeader, questions: [DNSQuestion] = [], answers: [DNSRecord] = [],
                authorities: [DNSRecord] = [], additionals: [DNSRecord] = []) {
        self.header = header
        self.questions = questions
        self.answers = answers
        self.authorities = authorities
        self.additionals = additionals
    }

    /// The message in `bytes`, or nil if it is malformed in any way. Bytes after the last
    /// record are ignored, as most resolvers do.
    @inlinable
    public static func parse<C: RandomAccessCollection<UInt8>>(_ bytes: C) -> DNSMessage? where C.Index == Int {
        guard bytes.count <= maximumLength else { return nil }
        return parse(wire: Array(bytes))
    }

    @usableFromInline
    static func parse(wire: [UInt8]) -> DNSMessage? {
        var reader = DNSReader(bytes: wire)
        guard let id = reader.u16(), let flags = reader.u16(), let qd = reader.u16(), let an = reader.u16(),
              let ns = reader.u16(), let ar = reader.u16() else { return nil }
        // Each loop below consumes at least 5 bytes per item or fails, so even a count of
        // 65535 over a short message ends after a few rounds; nothing is reserved ahead.
        var questions: [DNSQuestion] = []
        for _ in 0..<qd {
            guard let name = reader.name(), let type = reader.u16(), let cls = reader.u16() else { return nil }
            questions.append(DNSQuestion(name: name, type: DNSType(type), class: DNSClass(cls)))
        }
        func records(_ count: UInt16) -> [DNSRecord]? {
            var result: [DNSRecord] = []
            for _ in 0..<count {
                guard let record = reader.record() else { return nil }
                result.append(record)
            }
            return result
        }
        guard let answers = records(an), let authorities = records(ns), let additionals = records(ar) else { return nil }
        return DNSMessage(header: DNSHeader(id: id, flags: flags), questions: questions, answers: answers,
                          authorities: authorities, additionals: additionals)
    }

    /// The wire form, with names compressed. Sections beyond 65535 entries and opaque
    /// RDATA beyond 65535 bytes cannot be expressed and are cut to fit.
    public func encode() -> [UInt8] {
        var writer = DNSWriter()
        let qd = questions.prefix(0xFFFF), an = answers.prefix(0xFFFF)
        let ns = authorities.prefix(0xFFFF), ar = additionals.prefix(0xFFFF)
        writer.u16(header.id)
        writer.u16(header.flags)
        for count in [qd.count, an.count, ns.count, ar.count] { writer.u16(UInt16(count)) }
        for question in qd {
            writer.name(question.name)
            writer.u16(question.type.rawValue)
            writer.u16(question.class.rawValue)
        }
        for record in an { writer.record(record) }
        for record in ns { writer.record(record) }
        for record in ar { writer.record(record) }
        return writer.bytes
    }

    /// The wire form within `limit` bytes: if the whole message does not fit, the answer,
    /// authority and additional records are left out (except OPT, which tells the client
    /// about EDNS) and TC is set, so the client retries over TCP (RFC 2181 9).
    public func encode(limit: Int) -> [UInt8] {
        let full = encode()
        guard full.count > limit else { return full }
        var cut = self
        cut.header.isTruncated = true
        cut.answers = []
        cut.authorities = []
        cut.additionals = additionals.filter { $0.type == .opt }
        return cut.encode()
    }

    /// The OPT records, wherever they are.
    public var optRecords: [DNSRecord] {
        (answers + authorities + additionals).filter { $0.type == .opt }
    }

    /// The EDNS parameters, when the additional section holds exactly one OPT record.
    public var edns: DNSEDNS? {
        let opts = additionals.filter { $0.type == .opt }
        guard opts.count == 1, let opt = opts.first else { return nil }
        return DNSEDNS(opt)
    }

    /// The full 12-bit RCODE: the header's 4 bits and, with EDNS, the OPT record's 8.
    public var extendedResponseCode: DNSResponseCode {
        let high = UInt16(edns?.extendedRCode ?? 0)
        return DNSResponseCode(high << 4 | UInt16(header.rcode))
    }

    /// A response to this query with no records yet: the query's id, opcode, RD, CD and
    /// questions, with QR set, and RA set because the daemon recurses (by forwarding)
    /// for any name it does not own.
    public func response(rcode: DNSResponseCode = .noError, authoritative: Bool = false) -> DNSMessage {
        let h = DNSHeader(id: header.id, isResponse: true, opcode: header.opcode, isAuthoritative: authoritative,
                          recursionDesired: header.recursionDesired, recursionAvailable: true,
                          checkingDisabled: header.checkingDisabled, rcode: UInt8(rcode.rawValue & 0x0F))
        return DNSMessage(header: h, questions: questions)
    }
}

/// Bounds-checked reads over a whole message (compression pointers are message offsets).
struct DNSReader {
    let bytes: [UInt8]
    var position = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    /// Legitimate names have at most 127 labels, and a sane compressor puts at least one
    /// label before each pointer but the first, so more hops than this is an attack on
    /// decoding time (long pointer chains reused by many records).
    static let maximumPointerHops = 128

    mutating func u8() -> UInt8? {
        guard position < bytes.count else { return nil }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u16() -> UInt16? {
        guard position + 2 <= bytes.count else { return nil }
        defer { position += 2 }
        return UInt16(bytes[position]) << 8 | UInt16(bytes[position + 1])
    }

    mutating func u32() -> UInt32? {
        guard let high = u16(), let low = u16() else { return nil }
        return UInt32(high) << 16 | UInt32(low)
    }

    /// The name at `position`, following compression pointers; advances past the name
    /// as written (up to and including its first pointer).
    mutating func name() -> DNSName? {
        var labels: [[UInt8]] = []
        var wireLength = 1
        var cursor = position
        var resume: Int?
        // Every pointer must land below this: it starts as the name's own offset and
        // drops with each jump, so chains only move backwards and always end.
        var floor = position
        var hops = 0
        while true {
            guard cursor < bytes.count else { return nil }
            let length = Int(bytes[cursor])
            switch length & 0xC0 {
            case 0x00:
                if length == 0 {
                    position = resume ?? cursor + 1
                    return DNSName(uncheckedLabels: labels)
                }
                guard cursor + 1 + length <= bytes.count else { return nil }
                wireLength += 1 + length
                guard wireLength <= DNSName.maximumWireLength else { return nil }
                labels.append(Array(bytes[(cursor + 1)..<(cursor + 1 + length)]))
                cursor += 1 + length
            case 0xC0:
                guard cursor + 1 < bytes.count else { return nil }
                let target = (length & 0x3F) << 8 | Int(bytes[cursor + 1])
                hops += 1
                guard target < floor, hops <= Self.maximumPointerHops else { return nil }
                if resume == nil { resume = cursor + 2 }
                floor = target
                cursor = target
            default:
                // 0x40 and 0x80: extended label types, deprecated (RFC 6891 5); reject.
                return nil
            }
        }
    }

    mutating func record() -> DNSRecord? {
        guard let owner = name(), let type = u16(), let cls = u16(), let ttl = u32(), let length = u16() else {
            return nil
        }
        let start = position, end = position + Int(length)
        guard end <= bytes.count else { return nil }
        let rtype = DNSType(type), rclass = DNSClass(cls)
        let data: DNSRecordData
        switch rtype {
        case .a where rclass == .internet:
            guard length == 4 else { return nil }
            data = .a(IPv4Address(UInt32(bytes[start]) << 24 | UInt32(bytes[start + 1]) << 16
                                  | UInt32(bytes[start + 2]) << 8 | UInt32(bytes[start + 3])))
        case .aaaa where rclass == .internet:
            guard length == 16, let address = IPv6Address(bytes: Array(bytes[start..<end])) else { return nil }
            data = .aaaa(address)
        case .cname, .ptr, .ns:
            // These names may be compressed (RFC 1035 4.1.4 lists them) and must fill
            // RDATA exactly.
            guard let target = name(), position == end else { return nil }
            switch rtype {
            case .cname: data = .cname(target)
            case .ptr: data = .ptr(target)
            default: data = .ns(target)
            }
        default:
            data = .opaque(Array(bytes[start..<end]))
        }
        position = end
        return DNSRecord(name: owner, type: rtype, class: rclass, ttl: ttl, data: data)
    }
}

/// Builds a message, remembering where each name suffix was written so later names
/// can point at it.
struct DNSWriter {
    var bytes: [UInt8] = []
    /// Name suffixes already written → their offsets. Matched byte for byte rather than
    /// ignoring case, so every name decodes with exactly the case it was given.
    var suffixes: [[[UInt8]]: Int] = [:]

    mutating func u16(_ value: UInt16) {
        bytes.append(UInt8(value >> 8))
        bytes.append(UInt8(truncatingIfNeeded: value))
    }

    mutating func u32(_ value: UInt32) {
        u16(UInt16(value >> 16))
        u16(UInt16(truncatingIfNeeded: value))
    }

    mutating func name(_ name: DNSName) {
        let labels = name.labels
        for i in labels.indices {
            let suffix = Array(labels[i...])
            if let offset = suffixes[suffix] {
                u16(0xC000 | UInt16(offset))
                return
            }
            // Pointers have 14 bits; later suffixes simply are not offered as targets.
            if bytes.count < 0x4000 { suffixes[suffix] = bytes.count }
            bytes.append(UInt8(labels[i].count))
            bytes.append(contentsOf: labels[i])
        }
        bytes.append(0)
    }

    mutating func record(_ record: DNSRecord) {
        name(record.name)
        u16(record.type.rawValue)
        u16(record.class.rawValue)
        u32(record.ttl)
        let lengthAt = bytes.count
        u16(0)
        switch record.data {
        case .a(let address): bytes.append(contentsOf: address.octets)
        case .aaaa(let address): bytes.append(contentsOf: address.bytes.prefix(16))
        case .ptr(let target), .cname(let target), .ns(let target): name(target)
        case .opaque(let data): bytes.append(contentsOf: data.prefix(0xFFFF))
        }
        let length = bytes.count - lengthAt - 2
        bytes[lengthAt] = UInt8(length >> 8)
        bytes[lengthAt + 1] = UInt8(truncatingIfNeeded: length)
    }
}
