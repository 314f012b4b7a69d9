// ConfigTOML: the config file's TOML parsed in this process, with TOMLKit (toml++).
//
// Theory of operation. `TOMLKitReader.read` turns text into the plain `TOMLNode` tree the
// loader walks (DaemonConfig), copying everything out of TOMLKit's objects at once. The
// daemon never links this module: it runs the helper executable slirpd-toml, which is
// this module behind a pipe, because TOMLKit links the full Foundation with ICU (about
// 11 MiB resident) and leaks each document it parses. Tests, the fuzzer and slirpd-toml
// itself use it directly, through the `load(path:)` and `parse(_:file:)` overloads.
internal import TOMLKit
import DaemonConfig

public enum TOMLKitReader {
    /// The root table of `text`, or toml++'s syntax error with its line.
    public static func read(_ text: String) throws(TOMLSyntaxError) -> [String: TOMLNode] {
        do {
            return node(try TOMLTable(string: text))
        } catch let error as TOMLParseError {
            throw TOMLSyntaxError(line: error.source.begin.line, message: error.description)
        } catch {
            throw TOMLSyntaxError(line: nil, message: "\(error)")
        }
    }

    private static func node(_ table: TOMLTable) -> [String: TOMLNode] {
        var result: [String: TOMLNode] = [:]
        for key in table.keys {
            if let value = table[key] { result[key] = node(value.tomlValue) }
        }
        return result
    }

    private static func node(_ value: TOMLValue) -> TOMLNode {
        switch value.type {
        case .string: return .string(value.string ?? "")
        case .int: return .integer(value.int ?? 0, written: value.debugDescription)
        case .bool: return .boolean(value.bool ?? false)
        case .array: return .array((value.array ?? []).map { node($0.tomlValue) })
        case .table: return .table(value.table.map(node) ?? [:])
        case .double: return .other(.double)
        case .date: return .other(.date)
        case .time: return .other(.time)
        case .dateTime: return .other(.dateTime)
        }
    }
}

extension ConfigFile {
    /// Reads and parses the file at `path` with TOMLKit in this process.
    public static func load(path: String) throws(ConfigError) -> DaemonConfiguration {
        try load(path: path, reader: TOMLKitReader.read)
    }

    /// Parses config text with TOMLKit in this process; `file` is only for messages.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> DaemonConfiguration {
        try parse(text, file: file, reader: TOMLKitReader.read)
    }
}
