// A parsed TOML document as plain values, independent of the library that parsed it.
//
// Theory of operation. The config loader (ConfigFile.swift) walks these values, never a
// TOML library's own types, so the parser can run anywhere: in the same process (tests,
// the fuzzer, through ConfigTOML) or in the helper executable `slirpd-toml`, which the
// daemon runs for every load and reload and whose answer comes back as JSON (these types
// are Codable). That keeps TOMLKit, and the full Foundation with ICU it links, out of
// the daemon's address space, and frees whatever TOMLKit leaks with the helper process.
// Only what the loader asks of a value is kept: strings, integers, booleans, arrays and
// tables, and for the kinds no key accepts (floats, dates, times) just which kind it was.

/// One TOML value.
public indirect enum TOMLNode: Sendable, Equatable, Codable {
    case string(String)
    /// The value, and how TOML wrote it for messages (`0x1f` stays `0x1f`).
    case integer(Int, written: String)
    case boolean(Bool)
    case array([TOMLNode])
    case table([String: TOMLNode])
    /// A float, date, time or date-time: no key takes one, so only its kind is kept.
    case other(TOMLNodeKind)

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var int: Int? {
        if case .integer(let n, _) = self { return n }
        return nil
    }

    public var bool: Bool? {
        if case .boolean(let b) = self { return b }
        return nil
    }

    public var array: [TOMLNode]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var table: [String: TOMLNode]? {
        if case .table(let t) = self { return t }
        return nil
    }

    public var kind: TOMLNodeKind {
        switch self {
        case .string: .string
        case .integer: .int
        case .boolean: .bool
        case .array: .array
        case .table: .table
        case .other(let kind): kind
        }
    }

    /// The value as TOML wrote it, for the kinds messages quote.
    public var written: String {
        switch self {
        case .string(let s): "\"\(s)\""
        case .integer(_, let text): text
        case .boolean(let b): b ? "true" : "false"
        default: kind.rawValue
        }
    }
}

/// TOML's kinds of value.
public enum TOMLNodeKind: String, Sendable, Equatable, Codable {
    case string, int, double, bool, array, table, date, time, dateTime
}

/// A document the TOML parser refused: its words, and the line when it names one.
public struct TOMLSyntaxError: Error, Sendable, Equatable, Codable {
    public var line: Int?
    public var message: String

    public init(line: Int?, message: String) {
        self.line = line
        self.message = message
    }
}

/// What `slirpd-toml` answers: the document's root table, or why there is none.
public enum TOMLReadResult: Sendable, Equatable, Codable {
    case document([String: TOMLNode])
    case failure(TOMLSyntaxError)
}

/// Turns config text into its root table. In the daemon: runs `slirpd-toml`.
public typealias TOMLReader = (String) throws(TOMLSyntaxError) -> [String: TOMLNode]
