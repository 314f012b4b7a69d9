// The daemon's TOML reader: the helper executable slirpd-toml, next to slirpd.
//
// Theory of operation. Every load and reload of the config file hands its text to a
// fresh slirpd-toml and decodes the tree it answers in JSON (TOMLNode.swift says why the
// parser is not in this process). Syntax errors come back with toml++'s words and line,
// so messages are the same as in process. The helper runs on the calling thread (at start,
// or the loop's reload) and is given 10 s; a config file is at most 1 MiB.
import DaemonConfig
import FoundationEssentials
import PosixIO

enum TOMLHelper {
    /// `slirpd-toml` in the directory of the running slirpd.
    static var path: String {
        let own = executablePath() ?? "/usr/local/bin/slirpd"
        let directory = own.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return "\(directory)/slirpd-toml"
    }

    static func read(_ text: String) throws(TOMLSyntaxError) -> [String: TOMLNode] {
        let helper = path
        let result: SubprocessResult
        do {
            result = try runSubprocess(helper, input: Array(text.utf8), outputLimit: 64 << 20, timeoutMilliseconds: 10_000)
        } catch {
            throw TOMLSyntaxError(line: nil, message: "cannot run the TOML parser \(helper): \(error)")
        }
        guard result.status == 0 else {
            throw TOMLSyntaxError(line: nil, message: "the TOML parser \(helper) failed (exit status \(result.status))")
        }
        let answer: TOMLReadResult
        do {
            answer = try JSONDecoder().decode(TOMLReadResult.self, from: Data(result.output))
        } catch {
            throw TOMLSyntaxError(line: nil, message: "the TOML parser \(helper) failed (\(error))")
        }
        switch answer {
        case .document(let root): return root
        case .failure(let error): throw error
        }
    }
}
