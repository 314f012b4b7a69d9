import CLinux
import Glibc

/// poll(2) event bits, with poll.h's values.
public struct PollEvents: OptionSet, Sendable {
    public let rawValue: Int16
    public init(rawValue: Int16) { self.rawValue = rawValue }
    public static let input = PollEvents(rawValue: Int16(POLLIN))
    public static let priority = PollEvents(rawValue: Int16(POLLPRI))
    public static let output = PollEvents(rawValue: Int16(POLLOUT))
    public static let error = PollEvents(rawValue: Int16(POLLERR))
    public static let hangup = PollEvents(rawValue: Int16(POLLHUP))
    public static let invalid = PollEvents(rawValue: Int16(POLLNVAL))
}

/// The descriptors for one `poll` call. Refilled every iteration; the array keeps its
/// capacity, so refilling allocates nothing once the set has reached its size.
public struct PollSet {
    private var entries: [pollfd] = []

    public init() {}

    public var count: Int { entries.count }

    public mutating func removeAll() { entries.removeAll(keepingCapacity: true) }

    /// Adds a descriptor and returns its index, the key for `events(at:)`.
    @discardableResult
    public mutating func add(_ fd: Int32, _ events: PollEvents) -> Int {
        entries.append(pollfd(fd: fd, events: events.rawValue, revents: 0))
        return entries.count - 1
    }

    public func events(at index: Int) -> PollEvents {
        PollEvents(rawValue: entries[index].revents)
    }

    /// Descriptors with events after the last `wait`.
    public private(set) var readyCount = 0

    /// Waits up to `timeoutMilliseconds` (-1: forever). Returns false when interrupted.
    public mutating func wait(timeoutMilliseconds: Int32) throws(IOError) -> Bool {
        let n = entries.withUnsafeMutableBufferPointer { buffer in
            poll(buffer.baseAddress, nfds_t(buffer.count), timeoutMilliseconds)
        }
        readyCount = max(0, Int(n))
        if n >= 0 { return true }
        if errno == EINTR { return false }
        throw IOError(call: "poll", code: errno)
    }
}

/// An eventfd that any thread may signal to wake the loop.
public final class WakeUp: Sendable {
    /// Immutable after init; writing an eventfd is thread-safe, which is the point of it.
    public let fd: Int32

    public init() throws(IOError) {
        fd = try syscallBlocking("eventfd") { eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC)) }
    }

    deinit { close(fd) }

    public func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    public func drain() {
        var value: UInt64 = 0
        _ = read(fd, &value, 8)
    }
}

/// SIGTERM, SIGINT and SIGHUP delivered as readable events on a descriptor.
///
/// The signals are blocked first, in the thread that calls `init` and so in every
/// thread it starts later: they then reach only this descriptor and the loop handles
/// them like any other input. SIGPIPE is ignored: a vanished peer is an EPIPE error.
public final class SignalSource {
    public let descriptor: Descriptor

    public init(signals: [Int32] = [SIGTERM, SIGINT, SIGHUP]) throws(IOError) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
        let fd = try syscallBlocking("signalfd") { signalfd(-1, &set, Int32(SFD_NONBLOCK) | Int32(SFD_CLOEXEC)) }
        descriptor = Descriptor(owning: fd)
    }

    /// The next pending signal number, or nil.
    public func next() -> Int32? {
        var info = signalfd_siginfo()
        let n = read(descriptor.raw, &info, MemoryLayout<signalfd_siginfo>.size)
        guard n == MemoryLayout<signalfd_siginfo>.size else { return nil }
        return Int32(info.ssi_signo)
    }
}

public func signalName(_ number: Int32) -> String {
    switch number {
    case SIGTERM: "SIGTERM"
    case SIGINT: "SIGINT"
    case SIGHUP: "SIGHUP"
    default: "signal \(number)"
    }
}

/// Signal numbers the loop reacts to, so callers need not import Glibc.
public enum SignalNumber {
    public static let hangup = SIGHUP
    public static let terminate = SIGTERM
    public static let interrupt = SIGINT
}

extension Descriptor {
    /// Whether the peer of this connected stream socket has gone: it closed or shut down
    /// its side (POLLRDHUP, POLLHUP) or the connection failed (POLLERR), even with its last
    /// bytes still unread. Answers at once (poll with a zero timeout). A peer that vanished
    /// without a word (a host that lost power) still looks alive here.
    public var peerHasHungUp: Bool {
        let rdhup: Int16 = 0x2000  // POLLRDHUP (Linux; poll.h shows it only with _GNU_SOURCE)
        var entry = pollfd(fd: raw, events: Int16(POLLIN) | rdhup, revents: 0)
        let n = Glibc.poll(&entry, 1, 0)
        guard n > 0 else { return false }
        return entry.revents & (rdhup | Int16(POLLHUP) | Int16(POLLERR)) != 0
    }
}
