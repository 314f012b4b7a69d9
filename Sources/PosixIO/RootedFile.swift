import Glibc

// RootedFile: a regular file opened read-only beneath a root directory, for the TFTP
// server (`tftp=`), which must never hand a guest anything outside that directory.
//
// Theory of operation. The caller has already refused names with a `..` component. Here
// the joined path goes through realpath(3), so every symlink on the way is followed, and
// the result must be the root's own realpath or lie beneath it: a symlink (absolute or
// relative) that leads out is refused. The resolved path is then opened with O_NOFOLLOW
// (the last component was already resolved; a symlink swapped in since is refused) and
// O_NONBLOCK (opening a FIFO must not stall the loop), and fstat must say it is a regular
// file. The guest cannot create files (the server is read-only), so the gap between
// realpath and open is only the host user's own doing.
//
// The descriptor stays open for the whole transfer and every read is a pread at an offset:
// a file replaced by rename (what `install`, editors and most build tools do) keeps
// serving the old content whole. A file rewritten in place is caught by `hasChanged`,
// which compares fstat's size and mtime with those at open.

public final class RootedFile {
    public enum OpenError: Error, Equatable, Sendable {
        /// Nothing at that path (or the root itself is missing).
        case notFound
        /// Outside the root, not a regular file, or not readable.
        case accessViolation
    }

    private let descriptor: Descriptor
    public let size: UInt64
    private let opened: stat

    /// Opens `relativePath` beneath `root`. The corresponding C calls are `realpath`,
    /// `open` and `fstat`.
    public init(root: String, relativePath: String) throws(OpenError) {
        guard let rootReal = Self.realPath(root) else { throw .notFound }
        let joined = rootReal == "/" ? "/" + relativePath : rootReal + "/" + relativePath
        guard let real = Self.realPath(joined) else {
            throw errno == EACCES || errno == ELOOP ? .accessViolation : .notFound
        }
        let prefix = rootReal == "/" ? "/" : rootReal + "/"
        guard real.hasPrefix(prefix) else { throw .accessViolation }
        let fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { throw errno == ENOENT ? .notFound : .accessViolation }
        let descriptor = Descriptor(owning: fd)
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            descriptor.close()
            throw .accessViolation
        }
        self.descriptor = descriptor
        self.size = UInt64(max(0, info.st_size))
        self.opened = info
    }

    /// Up to `count` bytes at `offset`, fewer only at the end of the file; nil on an I/O
    /// error. The corresponding C call is `pread`.
    public func read(at offset: UInt64, count: Int) -> [UInt8]? {
        guard descriptor.isOpen else { return nil }
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return pread(descriptor.raw, base + done, count - done, off_t(offset) + off_t(done))
            }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { break }
            done += n
        }
        if done < count { bytes.removeSubrange(done...) }
        return bytes
    }

    /// Whether the file was modified in place since it was opened (size or mtime; not
    /// ctime, which a rename over the old name also changes, harmlessly).
    public func hasChanged() -> Bool {
        guard descriptor.isOpen else { return true }
        var now = stat()
        guard fstat(descriptor.raw, &now) == 0 else { return true }
        return now.st_size != opened.st_size
            || now.st_mtim.tv_sec != opened.st_mtim.tv_sec || now.st_mtim.tv_nsec != opened.st_mtim.tv_nsec
    }

    public func close() { descriptor.close() }

    private static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
