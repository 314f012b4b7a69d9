import Foundation
import Testing

import ConfigTOML
@testable import DaemonConfig

@Suite struct LoadTests {
    /// Writes `bytes` to a fresh file and returns its path.
    private func temporaryFile(_ bytes: [UInt8]) throws -> String {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("slirpd-config-\(UUID().uuidString).toml").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func loadsAFile() throws {
        let path = try temporaryFile(Array("[[network]]\nname = \"lab\"\nstream = [\"/tmp/lab.sock\"]\n".utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let config = try ConfigFile.load(path: path)
        #expect(config.networks.map(\.name) == ["lab"])
        #expect(config.networks.first?.endpoints == [.stream(path: "/tmp/lab.sock")])
    }

    @Test func errorsNameThePathAsGiven() throws {
        let path = try temporaryFile(Array("[[network]]\nname = \"lab\"\nmtu = 1\n".utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: ConfigError(file: path, line: 3, message: "Invalid MTU 1 (must be in range 68-65521)")) {
            try ConfigFile.load(path: path)
        }
    }

    @Test func unreadableFilesSayWhy() {
        #expect(throws: ConfigError(file: "/nonexistent/slirpd.toml", line: nil, message: "No such file or directory")) {
            try ConfigFile.load(path: "/nonexistent/slirpd.toml")
        }
        #expect(throws: ConfigError(file: "/", line: nil, message: "Is a directory")) {
            try ConfigFile.load(path: "/")
        }
    }

    @Test func invalidUTF8HasItsLine() throws {
        let path = try temporaryFile(Array("[[network]]\nname = \"lab\"\n# caf".utf8) + [0xE9] + Array("\n".utf8))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: ConfigError(file: path, line: 3, message: "not valid UTF-8 (TOML files must be UTF-8)")) {
            try ConfigFile.load(path: path)
        }
    }
}
