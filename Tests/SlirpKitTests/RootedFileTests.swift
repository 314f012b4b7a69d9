import Glibc
import PosixIO
import Testing

/// PosixIO's RootedFile, the TFTP server's only way to the disk, on a real directory.
@Suite("RootedFile")
struct RootedFileTests {
    /// A fresh directory tree: root/{a.bin, sub/b.txt, in -> sub/b.txt, out-abs -> /etc/passwd,
    /// out-rel -> ../secret, dir}, and a file beside the root.
    static func tree() throws -> (base: String, root: String) {
        var template = Array("/tmp/rootedfile-XXXXXX".utf8CString)
        let base = try #require(mkdtemp(&template).map { String(cString: $0) })
        let root = base + "/root"
        #expect(mkdir(root, 0o755) == 0)
        #expect(mkdir(root + "/sub", 0o755) == 0)
        #expect(mkdir(root + "/dir", 0o755) == 0)
        write(root + "/a.bin", Array(0..<200).map { UInt8($0) })
        write(root + "/sub/b.txt", Array("hello".utf8))
        write(base + "/secret", Array("secret".utf8))
        #expect(symlink("sub/b.txt", root + "/in") == 0)
        #expect(symlink("/etc/passwd", root + "/out-abs") == 0)
        #expect(symlink("../secret", root + "/out-rel") == 0)
        return (base, root)
    }

    static func write(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    static func outcome(_ root: String, _ path: String) -> String {
        do throws(RootedFile.OpenError) {
            let f = try RootedFile(root: root, relativePath: path)
            defer { f.close() }
            return "ok \(f.size)"
        } catch {
            return "\(error)"
        }
    }

    @Test("files inside open; symlinks out, directories and missing files are refused")
    func escapes() throws {
        let (base, root) = try Self.tree()
        defer { _ = system("rm -rf '\(base)'") }
        #expect(Self.outcome(root, "a.bin") == "ok 200")
        #expect(Self.outcome(root, "sub/b.txt") == "ok 5")
        #expect(Self.outcome(root, "in") == "ok 5")
        #expect(Self.outcome(root, "out-abs") == "accessViolation")
        #expect(Self.outcome(root, "out-rel") == "accessViolation")
        #expect(Self.outcome(root, "../secret") == "accessViolation")  // RootedFile checks too
        #expect(Self.outcome(root, "dir") == "accessViolation")
        #expect(Self.outcome(root, "missing") == "notFound")
        #expect(Self.outcome(base + "/no-root", "a.bin") == "notFound")
    }

    @Test("reads at offsets; a rename over the file keeps the old content; an in-place write is noticed")
    func consistency() throws {
        let (base, root) = try Self.tree()
        defer { _ = system("rm -rf '\(base)'") }
        let f = try RootedFile(root: root, relativePath: "a.bin")
        #expect(f.read(at: 190, count: 20) == Array(190..<200).map { UInt8($0) })
        #expect(f.read(at: 300, count: 5) == [])
        Self.write(root + "/new.bin", [UInt8](repeating: 7, count: 50))
        #expect(rename(root + "/new.bin", root + "/a.bin") == 0)
        #expect(!f.hasChanged())
        #expect(f.read(at: 0, count: 3) == [0, 1, 2])
        f.close()
        let g = try RootedFile(root: root, relativePath: "sub/b.txt")
        Self.write(root + "/sub/b.txt", Array("HELLO, longer".utf8))
        #expect(g.hasChanged())
        g.close()
    }
}
