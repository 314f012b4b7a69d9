// The system side of vhost-user (Sources/VhostUser is pure): receiving messages with
// descriptors, mapping the guest's memory, and the queues' eventfds.
import CLinux
import Glibc

/// A message's bytes and the descriptors that came with them.
public struct ReceivedWithDescriptors {
    public var count: Int
    /// Raw descriptors, close-on-exec, now owned by the caller.
    public var descriptors: [Int32]
    /// More descriptors came than were taken; the extra ones are closed already.
    public var truncated: Bool
}

extension Descriptor {
    /// Reads up to `buffer.count` bytes and any descriptors sent with them (SCM_RIGHTS),
    /// at most `maximumDescriptors`. `.done` with count 0 means end of stream.
    ///
    /// The corresponding C call is `recvmsg` with `MSG_CMSG_CLOEXEC`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, maximumDescriptors: Int) throws(IOError) -> IOResult<ReceivedWithDescriptors> {
        precondition(maximumDescriptors <= 16 && buffer.count > 0, "descriptor space for 16, and room for a byte")
        var fds = [Int32](repeating: -1, count: 16)
        var count: Int32 = 0
        var truncated: Int32 = 0
        let result = try syscall("recvmsg") {
            fds.withUnsafeMutableBufferPointer { fdBuffer in
                clinux_recv_with_fds(raw, buffer.baseAddress, buffer.count, fdBuffer.baseAddress, Int32(maximumDescriptors), &count, &truncated)
            }
        }
        guard case .done(let n) = result else { return .wouldBlock }
        return .done(ReceivedWithDescriptors(count: n, descriptors: Array(fds[0..<Int(count)]), truncated: truncated != 0))
    }

    /// Sends all of `bytes` (a small reply), or throws: a peer whose socket cannot take a
    /// few hundred bytes is not reading, and its connection goes.
    public func sendAll(_ bytes: [UInt8]) throws(IOError) {
        var offset = 0
        while offset < bytes.count {
            let result = try syscall("send") {
                bytes.withUnsafeBytes { b in Glibc.send(raw, b.baseAddress.map { $0 + offset }, b.count - offset, Int32(MSG_NOSIGNAL)) }
            }
            guard case .done(let n) = result else { throw IOError(call: "send", code: EAGAIN, detail: "the peer is not reading") }
            offset += n
        }
    }
}

/// Closes a raw descriptor received from a peer (one not wrapped in a `Descriptor`).
public func closeRawDescriptor(_ fd: Int32) {
    _ = Glibc.close(fd)
}

/// A shared, writable mapping of a descriptor (a guest's RAM), unmapped exactly once on deinit.
///
/// The corresponding C calls are `fstat`, `mmap(MAP_SHARED, PROT_READ|PROT_WRITE)` and `munmap`.
public final class SharedMapping {
    public let base: UnsafeMutableRawPointer
    public let length: Int

    /// Maps `length` bytes from offset 0. Touching a mapping beyond its file's end raises
    /// SIGBUS, which would take the daemon down, so the file must be that long now and, if
    /// it is a memfd (QEMU's memory-backend-memfd), sealed against shrinking (its default,
    /// seal=on). Other files (memory-backend-file on tmpfs or hugetlbfs) cannot be sealed;
    /// they are taken as they are, and their owner could still truncate them.
    public init(descriptor fd: Int32, length: Int) throws(IOError) {
        guard length > 0 else { throw IOError(call: "mmap", code: EINVAL, detail: "empty region") }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw IOError(call: "fstat", code: errno) }
        let isFile = (info.st_mode & S_IFMT) == S_IFREG
        guard isFile, Int(info.st_size) >= length else {
            throw IOError(call: "mmap", code: EINVAL, detail: isFile ? "region of \(length) bytes in a file of \(info.st_size)" : "region not backed by a file (mode \(String(info.st_mode, radix: 8)))")
        }
        let seals = clinux_memfd_seals(fd)
        if seals >= 0, seals & CLINUX_F_SEAL_SHRINK == 0 {
            throw IOError(call: "mmap", code: EPERM, detail: "a memfd not sealed against shrinking (use memory-backend-memfd's default seal=on)")
        }
        let address = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let address, address != MAP_FAILED else { throw IOError(call: "mmap", code: errno, detail: "\(length) bytes") }
        base = address
        self.length = length
    }

    deinit { munmap(base, length) }
}

/// Empties an eventfd's counter (a kick seen). False when it was already empty.
@discardableResult
public func drainEventCounter(_ fd: Int32) -> Bool {
    var value: UInt64 = 0
    return Glibc.read(fd, &value, 8) == 8
}

/// Adds one to an eventfd's counter (a call, or a kick to ourselves).
public func signalEventCounter(_ fd: Int32) {
    var one: UInt64 = 1
    _ = Glibc.write(fd, &one, 8)
}
