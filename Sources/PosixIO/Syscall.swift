// PosixIO: the only module that calls Glibc I/O.
//
// Theory of operation: every system call goes through `syscall(_:_:)`, which
// retries EINTR, reports EAGAIN as `.wouldBlock`, throws an `IOError` naming the
// call and errno for environment failures, and traps on EBADF/EFAULT, which can
// only be our own bugs. Types here (descriptors, buffers, addresses) are owned by
// the loop thread and are deliberately not `Sendable`.
import Glibc

/// A failed system call: which call, and why.
public struct IOError: Error, Sendable, CustomStringConvertible, Equatable {
    public var call: String
    public var code: Int32
    public var detail: String?

    public init(call: String, code: Int32, detail: String? = nil) {
        self.call = call
        self.code = code
        self.detail = detail
    }

    public var description: String {
        let reason = String(cString: strerror(code))
        if let detail { return "\(call)(\(detail)): \(reason)" }
        return "\(call): \(reason)"
    }

    /// A tap device whose interface is down (it refuses frames until brought up).
    public var interfaceDown: Bool { code == EIO }

    /// A tap refused one frame as invalid (its virtio-net header, say): that frame alone fails.
    public var frameRefused: Bool { code == EINVAL }

    /// The address is taken (by a live socket).
    public var addressInUse: Bool { code == EADDRINUSE }

    /// The file or directory does not exist.
    public var fileIsMissing: Bool { code == ENOENT }

    /// The file is over the size the reader accepts (`readWholeFile`).
    public var fileTooLarge: Bool { code == EFBIG }

    /// POSIX's words for the failure alone, e.g. "No such file or directory".
    public var reason: String { String(cString: strerror(code)) }

    /// A datagram's receiver no longer exists (its socket closed or its file was removed).
    public var peerIsGone: Bool { code == ECONNREFUSED || code == ENOENT }

    public static let eof = IOError(call: "read", code: 0, detail: "end of stream")
}

/// The outcome of a non-blocking call.
public enum IOResult<T> {
    case done(T)
    case wouldBlock
}

/// Runs one system call with the project's error policy.
@inline(__always)
func syscall<T: FixedWidthInteger>(
    _ name: @autoclosure () -> String, detail: @autoclosure () -> String? = nil,
    _ body: () -> T
) throws(IOError) -> IOResult<T> {
    while true {
        let result = body()
        if result != -1 { return .done(result) }
        let code = errno
        switch code {
        case EINTR: continue
        case EAGAIN: return .wouldBlock
        case EBADF, EFAULT:
            let call = name()
            preconditionFailure("\(call)() failed with \(String(cString: strerror(code))): a descriptor or pointer bug")
        default: throw IOError(call: name(), code: code, detail: detail())
        }
    }
}

/// Like `syscall` for calls that never return EAGAIN in our use (bind, listen, ...).
@inline(__always)
@discardableResult
func syscallBlocking<T: FixedWidthInteger>(
    _ name: @autoclosure () -> String, detail: @autoclosure () -> String? = nil,
    _ body: () -> T
) throws(IOError) -> T {
    switch try syscall(name(), detail: detail(), body) {
    case .done(let value): return value
    case .wouldBlock: throw IOError(call: name(), code: EAGAIN, detail: detail())
    }
}
