// slirpd-toml: slirpd's TOML parser, as a process of its own.
//
// Theory of operation. slirpd runs this on every load and reload of its config file,
// writes the file's text to its stdin and reads back one JSON document on stdout: the
// parsed tree (`TOMLReadResult.document`) or toml++'s syntax error with its line
// (`.failure`). The daemon checks and uses the tree itself (DaemonConfig), so every
// message and line number is the same as when parsing in process. This keeps TOMLKit and
// the full Foundation (ICU) it needs out of the daemon, and whatever it leaks ends with
// this process. Exit status 0 with either answer; 1 when stdin is unreadable or not UTF-8
// (the daemon checks both before it sends).
import ConfigTOML
import DaemonConfig
import Foundation

@main
enum SlirpdTOML {
    static func main() {
        let input = FileHandle.standardInput.readDataToEndOfFile()
        guard let text = String(data: input, encoding: .utf8) else {
            FileHandle.standardError.write(Data("slirpd-toml: input is not UTF-8\n".utf8))
            exit(1)
        }
        let result: TOMLReadResult
        do {
            result = .document(try TOMLKitReader.read(text))
        } catch {
            result = .failure(error)
        }
        do {
            FileHandle.standardOutput.write(try JSONEncoder().encode(result))
        } catch {
            FileHandle.standardError.write(Data("slirpd-toml: \(error)\n".utf8))
            exit(1)
        }
    }
}
