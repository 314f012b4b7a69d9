// Where each key of a config file sits, so that mistakes found after parsing can name a
// line. TOMLKit 0.6.0 gives a source position only for syntax errors: parsed nodes carry
// none (toml++ keeps them, but TOMLKit does not pass them on), and its tables list keys
// sorted by name rather than in file order. So this file re-reads the text with a small
// lexer of its own.
//
// Theory of operation. The lexer runs on the text before toml++ sees it, to find the one
// mistakes toml++ cannot be shown (`parserAbort`); otherwise only its findings on text
// toml++ has accepted are used, so it needs to know just enough TOML to find where
// statements start: strings (all four kinds,
// multi-line ones included, so a `[[network]]` or `name =` inside a string is not taken
// for one), comments, and brackets that keep an array open across lines. At each
// statement start it reads either a table header or a dotted key, and records the first
// line of each key per scope: the root table, `[control]`, the Nth `[[network]]`, or
// the Nth static lease of a network. A `[network.x]` header or a `control.x = ...`
// dotted key counts as key `x` of that scope. Keys inside inline tables are not
// recorded; their lookups fall back to the enclosing table's header, then to the line
// naming that table. An inline table directly inside a network's `static-lease = [...]`
// is a lease of its own, so its line serves as that lease's header.

struct KeyLines {
    enum Scope: Hashable {
        case root
        case control
        /// The Nth `[[network]]` table, from 0, matching its index in the parsed array.
        case network(Int)
        /// A network's Nth static lease, from 0: a `[[network.static-lease]]` table or an
        /// inline table in `static-lease = [...]` (TOML allows only one form per network).
        case staticLease(network: Int, lease: Int)
    }

    private var keys: [Scope: [String: Int]] = [:]
    private var headers: [Scope: Int] = [:]
    /// The first line with a `\u0000` escape in a string value: TOMLKit reads strings as
    /// C strings, so such a value would silently end there.
    fileprivate(set) var nulEscape: Int?
    /// The first place toml++ would abort the process, and what is wrong there. toml++
    /// 3.4 as TOMLKit 0.6.0 builds it (assertions on, in release builds too) fails an
    /// assertion on a table header whose `[` or `[[` is followed by something that cannot
    /// start a key (`[.x]`, `[)x]`, `[é]`), and on an array element that starts with `}`
    /// or a Unicode line separator (U+0085, U+2028, U+2029), so it must never see either.
    /// `statement` is the line the statement there starts on: the lines above it are whole.
    fileprivate(set) var parserAbort: (line: Int, statement: Int, message: String)?

    /// The line of `key` in `scope`, or failing that the best line for the table.
    func line(of key: String?, in scope: Scope) -> Int? {
        if let key, let line = keys[scope]?[key] { return line }
        if let line = headers[scope] { return line }
        switch scope {
        case .root: return nil
        case .control: return keys[.root]?["control"]
        case .network: return keys[.root]?["network"]
        case .staticLease(let network, _): return line(of: "static-lease", in: .network(network))
        }
    }

    /// The line a table's header is on, if it has one.
    func header(of scope: Scope) -> Int? { headers[scope] }

    init(_ text: String) {
        let scanner = Scanner(Array(text.utf8))
        scanner.run(into: &self)
    }

    fileprivate mutating func record(_ key: String, in scope: Scope, line: Int) {
        if keys[scope]?[key] == nil { keys[scope, default: [:]][key] = line }
    }

    fileprivate mutating func recordHeader(of scope: Scope, line: Int) {
        if headers[scope] == nil { headers[scope] = line }
    }

    fileprivate mutating func noteAbort(_ line: Int, statement: Int, _ message: String) {
        if parserAbort == nil { parserAbort = (line, statement, message) }
    }
}

private struct Scanner {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    private static let newline = UInt8(ascii: "\n")

    func run(into map: inout KeyLines) {
        var i = 0
        var line = 1
        var open: [UInt8] = []  // the brackets and braces open inside a value, innermost last
        var elementDue = false  // just after an array's `[` or `,`: an element may start here
        var atStatement = true
        var statementLine = 1
        var scope: KeyLines.Scope? = .root  // nil: a table that is no scope of ours
        var networks = -1
        var leases = 0  // static leases of the current network so far
        var inlineLeases: Int?  // the network whose `static-lease = [...]` is being read
        while i < bytes.count {
            let c = bytes[i]
            switch c {
            case Self.newline:
                line += 1
                i += 1
                if open.isEmpty { atStatement = true }
                continue
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"):
                i += 1
                continue
            case UInt8(ascii: "#"):
                while i < bytes.count && bytes[i] != Self.newline { i += 1 }
                continue
            default:
                break
            }
            if atStatement {
                atStatement = false
                statementLine = line
                inlineLeases = nil
                if c == UInt8(ascii: "[") {
                    let isArray = i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "[")
                    i += isArray ? 2 : 1
                    var next = i
                    skipBlanks(&next)
                    if next < bytes.count, !Self.mayStartHeaderKey(bytes[next]) {
                        map.noteAbort(line, statement: line, "invalid table header: '[' must be followed by a key "
                                          + "(letters, digits, '_' and '-', or a quoted key)")
                    }
                    let path = keyPath(&i)
                    guard let first = path.first else { continue }
                    if isArray && path == ["network"] {
                        networks += 1
                        leases = 0
                        scope = .network(networks)
                        map.recordHeader(of: .network(networks), line: line)
                        map.record(first, in: .root, line: line)
                    } else if isArray && path == ["network", "static-lease"] && networks >= 0 {
                        let lease = KeyLines.Scope.staticLease(network: networks, lease: leases)
                        leases += 1
                        scope = lease
                        map.recordHeader(of: lease, line: line)
                        map.record(path[1], in: .network(networks), line: line)
                    } else if !isArray && path == ["control"] {
                        scope = .control
                        map.recordHeader(of: .control, line: line)
                        map.record(first, in: .root, line: line)
                    } else {
                        // A sub-table is a key of the table it extends.
                        scope = nil
                        if path.count > 1 && first == "network" && networks >= 0 {
                            map.record(path[1], in: .network(networks), line: line)
                        } else if path.count > 1 && first == "control" {
                            map.record(path[1], in: .control, line: line)
                        } else {
                            map.record(first, in: .root, line: line)
                        }
                    }
                    continue
                }
                let path = keyPath(&i)
                if let scope, let first = path.first {
                    map.record(first, in: scope, line: line)
                    if case .network(let network) = scope, path == ["static-lease"] { inlineLeases = network }
                    if scope == .root && first == "control" && path.count > 1 {
                        map.record(path[1], in: .control, line: line)
                    }
                }
                if path.isEmpty { i += 1 }  // not a key after all; never stall
                continue
            }
            if elementDue, c == UInt8(ascii: "}") || isLineSeparator(at: i) {
                map.noteAbort(line, statement: statementLine, "invalid array: '[' and ',' must be followed by a value or ']'")
            }
            elementDue = false
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                skipString(&i, line: &line, nulEscape: &map.nulEscape)
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                if c == UInt8(ascii: "{"), open.count == 1, let network = inlineLeases {
                    map.recordHeader(of: .staticLease(network: network, lease: leases), line: line)
                    leases += 1
                }
                open.append(c)
                elementDue = c == UInt8(ascii: "[")
                i += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                _ = open.popLast()
                i += 1
            case UInt8(ascii: ","):
                elementDue = open.last == UInt8(ascii: "[")
                i += 1
            default:
                i += 1
            }
        }
    }

    /// Reads `a."b c".'d'` up to whatever follows it (`=` or `]`), never past the line.
    private func keyPath(_ i: inout Int) -> [String] {
        var path: [String] = []
        while i < bytes.count {
            skipBlanks(&i)
            guard i < bytes.count else { break }
            let c = bytes[i]
            if c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") {
                path.append(quotedKey(&i, quote: c))
            } else {
                let start = i
                while i < bytes.count && Self.isBareKeyByte(bytes[i]) { i += 1 }
                guard i > start else { break }
                path.append(String(decoding: bytes[start..<i], as: UTF8.self))
            }
            skipBlanks(&i)
            guard i < bytes.count && bytes[i] == UInt8(ascii: ".") else { break }
            i += 1
        }
        return path
    }

    private func skipBlanks(_ i: inout Int) {
        while i < bytes.count && (bytes[i] == UInt8(ascii: " ") || bytes[i] == UInt8(ascii: "\t")) { i += 1 }
    }

    private static func isBareKeyByte(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }

    /// U+0085, U+2028 or U+2029 in UTF-8: line breaks to toml++, but not ones it skips in an array.
    private func isLineSeparator(at i: Int) -> Bool {
        let rest = bytes[i...]
        return rest.starts(with: [0xC2, 0x85]) || rest.starts(with: [0xE2, 0x80, 0xA8]) || rest.starts(with: [0xE2, 0x80, 0xA9])
    }

    /// A key's first byte, or the `]` of an empty header (which toml++ reports as an error).
    private static func mayStartHeaderKey(_ c: UInt8) -> Bool {
        isBareKeyByte(c) || c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") || c == UInt8(ascii: "]")
    }

    /// A quoted key. Only `\"` and `\\` are decoded: keys this loader knows are plain
    /// ASCII, so any other escape makes an unknown key whichever way it is spelled.
    private func quotedKey(_ i: inout Int, quote: UInt8) -> String {
        var out: [UInt8] = []
        i += 1
        while i < bytes.count && bytes[i] != quote && bytes[i] != Self.newline {
            if quote == UInt8(ascii: "\"") && bytes[i] == UInt8(ascii: "\\") && i + 1 < bytes.count {
                i += 1
            }
            out.append(bytes[i])
            i += 1
        }
        if i < bytes.count && bytes[i] == quote { i += 1 }
        return String(decoding: out, as: UTF8.self)
    }

    /// `u0000` or `U00000000` after a backslash.
    private func isNulEscape(at start: Int) -> Bool {
        guard start < bytes.count else { return false }
        let digits = bytes[start] == UInt8(ascii: "u") ? 4 : bytes[start] == UInt8(ascii: "U") ? 8 : 0
        let end = start + 1 + digits
        return digits > 0 && end <= bytes.count && bytes[(start + 1)..<end].allSatisfy { $0 == UInt8(ascii: "0") }
    }

    /// Skips a string value of any kind, counting the newlines inside multi-line ones.
    private func skipString(_ i: inout Int, line: inout Int, nulEscape: inout Int?) {
        let quote = bytes[i]
        let escapes = quote == UInt8(ascii: "\"")
        let multiline = i + 2 < bytes.count && bytes[i + 1] == quote && bytes[i + 2] == quote
        i += multiline ? 3 : 1
        while i < bytes.count {
            let c = bytes[i]
            if escapes && c == UInt8(ascii: "\\") {
                // An escaped newline is a line-ending backslash in a multi-line string.
                if i + 1 < bytes.count && bytes[i + 1] == Self.newline { line += 1 }
                if nulEscape == nil && isNulEscape(at: i + 1) { nulEscape = line }
                i += 2
                continue
            }
            if c == Self.newline {
                if !multiline { return }  // cannot happen in valid TOML; resync at the newline
                line += 1
                i += 1
                continue
            }
            if c == quote {
                guard multiline else {
                    i += 1
                    return
                }
                if i + 2 < bytes.count && bytes[i + 1] == quote && bytes[i + 2] == quote {
                    i += 3
                    // Up to two more quotes belong to the content, before the delimiter.
                    var extra = 0
                    while extra < 2 && i < bytes.count && bytes[i] == quote {
                        i += 1
                        extra += 1
                    }
                    return
                }
            }
            i += 1
        }
    }
}
