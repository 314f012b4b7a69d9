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

/// The descriptors for one wait of the loop, refilled every turn.
///
/// Theory of operation. Two kinds of entry share one index space, the key for
/// `events(at:)`:
/// - `add`: a raw descriptor, asked about by poll(2) on every wait. libslirp's sockets
///   come this way (libslirp closes them itself, unseen), and raw eventfds.
/// - `watch`: one of slirpd's own `Descriptor`s (guest sockets, listeners, the signalfd),
///   kept registered in an epoll instance across turns (EpollRegistry). A turn costs an
///   epoll_ctl only for what changed, so idle guests and listeners cost the kernel nothing
///   per wait, where poll(2) walked every one of them on every wait and busy-poll spin
///   (with 1,000 idle guests attached, slirpd used 3.3 ms of CPU a second, now 0.8).
/// A wait is one poll(2) over the added descriptors and the epoll descriptor (readable
/// when a watched one is ready), then epoll_wait(0) if that was; with nothing added, a
/// plain epoll_wait. The arrays keep their capacity: a set at its size allocates nothing.
public struct PollSet {
    /// poll(2)'s array. Slot 0 is the epoll instance's descriptor, or -1, which poll ignores.
    private var polled = [pollfd(fd: -1, events: Int16(POLLIN), revents: 0)]
    /// The entry of each polled slot (slot 0's is unused).
    private var polledEntry = [0]
    private var watched: [Descriptor] = []
    private var watchedEvents: [UInt32] = []
    private var watchedEntry: [Int] = []
    /// What the last wait returned, by entry.
    private var revents: [Int16] = []
    private var registry: EpollRegistry?
    /// Whether the watched descriptors changed since the registry last saw them; a
    /// busy-poll spin waits on the same set many times and registers nothing new.
    private var watchedChanged = true

    public init() {}

    public var count: Int { revents.count }

    /// The descriptors poll(2) walks on each wait; watched ones cost nothing until ready.
    public var polledCount: Int { polled.count - 1 + (watched.isEmpty ? 0 : 1) }

    public mutating func removeAll() {
        polled.removeSubrange(1...)
        polledEntry.removeSubrange(1...)
        watched.removeAll(keepingCapacity: true)
        watchedEvents.removeAll(keepingCapacity: true)
        watchedEntry.removeAll(keepingCapacity: true)
        revents.removeAll(keepingCapacity: true)
        readyCount = 0
        watchedChanged = true
    }

    /// Adds a raw descriptor for poll(2) and returns its index, the key for `events(at:)`.
    @discardableResult
    public mutating func add(_ fd: Int32, _ events: PollEvents) -> Int {
        polled.append(pollfd(fd: fd, events: events.rawValue, revents: 0))
        polledEntry.append(revents.count)
        revents.append(0)
        return revents.count - 1
    }

    /// Adds one of slirpd's own descriptors, kept in the epoll instance across turns, and
    /// returns its index. Events are poll(2)'s, with the same meaning.
    @discardableResult
    public mutating func watch(_ descriptor: Descriptor, _ events: PollEvents) -> Int {
        watched.append(descriptor)
        watchedEvents.append(UInt32(UInt16(bitPattern: events.rawValue)))
        watchedEntry.append(revents.count)
        revents.append(0)
        watchedChanged = true
        return revents.count - 1
    }

    public func events(at index: Int) -> PollEvents {
        PollEvents(rawValue: revents[index])
    }

    /// Descriptors with events after the last `wait`.
    public private(set) var readyCount = 0

    /// Waits up to `timeoutMilliseconds` (-1: forever). Returns false when interrupted.
    public mutating func wait(timeoutMilliseconds: Int32) throws(IOError) -> Bool {
        for index in revents.indices { revents[index] = 0 }
        readyCount = 0
        if !watched.isEmpty, registry == nil {
            registry = EpollRegistry()
            watchedChanged = true
        }
        var registered = false
        if !watched.isEmpty, let registry {
            if watchedChanged || registry.isStale {
                registered = registry.sync(watched, watchedEvents, watchedEntry, &revents)
            } else {
                registry.resync(&revents)
                registered = true
            }
        }
        if registered, let registry {
            watchedChanged = false
            polled[0].fd = registry.fd
        } else {
            // Nothing watched, or no epoll instance to be had (out of descriptors): any
            // watched descriptor is polled.
            registry = nil
            watchedChanged = true
            polled[0].fd = -1
            guard watched.isEmpty else { return try pollEverything(timeoutMilliseconds) }
        }
        let n: Int32
        var call = "poll"
        if polled.count == 1, let registry {
            call = "epoll_wait"
            n = registry.wait(timeoutMilliseconds, &revents)
        } else {
            n = polled.withUnsafeMutableBufferPointer { buffer in
                poll(buffer.baseAddress, nfds_t(buffer.count), timeoutMilliseconds)
            }
            if n > 0 {
                for slot in 1..<polled.count { revents[polledEntry[slot]] = polled[slot].revents }
                if polled[0].revents != 0, let registry, registry.wait(0, &revents) < 0 { return try failed("epoll_wait") }
            }
        }
        if n < 0 { return try failed(call) }
        readyCount = revents.reduce(0) { $0 + ($1 != 0 ? 1 : 0) }
        return true
    }

    private func failed(_ call: String) throws(IOError) -> Bool {
        if errno == EINTR { return false }
        throw IOError(call: call, code: errno)
    }

    /// The wait without epoll: the watched descriptors join the polled ones for this call.
    private mutating func pollEverything(_ timeoutMilliseconds: Int32) throws(IOError) -> Bool {
        var all = Array(polled.dropFirst())
        for (k, descriptor) in watched.enumerated() {
            all.append(pollfd(fd: descriptor.raw, events: Int16(truncatingIfNeeded: watchedEvents[k]), revents: 0))
        }
        let n = all.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), timeoutMilliseconds) }
        if n < 0 { return try failed("poll") }
        for slot in 1..<polled.count { revents[polledEntry[slot]] = all[slot - 1].revents }
        for k in watched.indices { revents[watchedEntry[k]] = all[polled.count - 1 + k].revents }
        readyCount = revents.reduce(0) { $0 + ($1 != 0 ? 1 : 0) }
        return true
    }
}

/// The epoll instance behind `PollSet.watch`: which descriptors are registered, for which
/// events, and which entry each one's events go to in the current turn.
///
/// Each `sync` compares the turn's watched descriptors with what is registered: a new one
/// is added, changed events modified, one no longer watched removed. A descriptor's own
/// record (Descriptor.epollInstance) says whether it is registered, not its number, which
/// a closed descriptor hands on to the next one opened. An event for a number nobody
/// watched this turn (a registration that outlived its descriptor, which should not
/// happen) makes the next sync start a fresh instance rather than wake the loop forever.
final class EpollRegistry {
    private(set) var fd: Int32
    /// Registered after the last sync (strong references: a descriptor dropped by its owner
    /// is closed at the next sync, before the loop sleeps again).
    private var registered: [Descriptor] = []
    private var current: [Descriptor] = []
    /// By descriptor number: the turn it was last watched in, its entry and what it asked for.
    private var stamp: [UInt32] = []
    private var entry: [Int] = []
    private var asked: [UInt32] = []
    /// A descriptor watched twice in one turn: one registration, events for both entries.
    private var duplicates: [(number: Int32, entry: Int, events: UInt32)] = []
    private var turn: UInt32 = 0
    private var ready: [clinux_epoll_event] = []
    private(set) var isStale = false
    /// The answers `sync` gave without epoll (a descriptor closed behind its back, a regular
    /// file), given again by `resync` on each further wait over the same set.
    private var immediate: [(entry: Int, events: Int16)] = []

    private static let always = UInt32(POLLERR | POLLHUP)

    init?() {
        fd = epoll_create1(Int32(CLINUX_EPOLL_CLOEXEC))
        guard fd >= 0 else { return nil }
    }

    deinit {
        forgetAll()
        if fd >= 0 { close(fd) }
    }

    private func forgetAll() {
        for descriptor in registered where descriptor.epollInstance == fd { descriptor.epollInstance = -1 }
        registered.removeAll()
    }

    static func remove(_ number: Int32, from instance: Int32) {
        _ = epoll_ctl(instance, Int32(CLINUX_EPOLL_CTL_DEL), number, nil)
    }

    private func control(_ operation: Int32, _ number: Int32, _ events: UInt32) -> Bool {
        var event = clinux_epoll_event()
        event.events = events
        event.fd = number
        return epoll_ctl(fd, operation, number, &event) == 0
    }

    /// Brings the registrations in line with this turn's watched descriptors; false when
    /// there is no usable instance. A descriptor epoll refuses gets poll(2)'s answer at
    /// once: POLLNVAL when its number is not open, always ready when it is a regular file
    /// (EPERM). A closed `Descriptor` (number -1) is ignored, as poll ignores -1.
    func sync(_ watched: [Descriptor], _ events: [UInt32], _ entries: [Int], _ revents: inout [Int16]) -> Bool {
        if isStale {
            isStale = false
            forgetAll()
            close(fd)
            fd = epoll_create1(Int32(CLINUX_EPOLL_CLOEXEC))
        }
        guard fd >= 0 else { return false }
        turn &+= 1
        if turn == 0 {
            for index in stamp.indices { stamp[index] = 0 }
            turn = 1
        }
        duplicates.removeAll(keepingCapacity: true)
        current.removeAll(keepingCapacity: true)
        immediate.removeAll(keepingCapacity: true)
        for k in watched.indices {
            let descriptor = watched[k]
            let number = descriptor.raw
            // Closed already: ignored, as poll(2) ignores a negative descriptor.
            guard number >= 0 else { continue }
            if Int(number) >= stamp.count {
                let size = Int(number) + 64
                stamp += repeatElement(0, count: size - stamp.count)
                entry += repeatElement(0, count: size - entry.count)
                asked += repeatElement(0, count: size - asked.count)
            }
            var want = events[k]
            if stamp[Int(number)] == turn {
                duplicates.append((number, entries[k], want))
                want |= asked[Int(number)] | descriptor.epollEvents
            } else {
                stamp[Int(number)] = turn
                entry[Int(number)] = entries[k]
                asked[Int(number)] = want
                current.append(descriptor)
            }
            if descriptor.epollInstance != fd {
                guard control(Int32(CLINUX_EPOLL_CTL_ADD), number, want) || (errno == EEXIST && control(Int32(CLINUX_EPOLL_CTL_MOD), number, want)) else {
                    let refused = errno
                    immediate.append((entries[k], refused == EPERM ? Int16(truncatingIfNeeded: want & UInt32(POLLIN | POLLOUT)) : Int16(POLLNVAL)))
                    continue
                }
                descriptor.epollInstance = fd
                descriptor.epollEvents = want
            } else if descriptor.epollEvents != want {
                guard control(Int32(CLINUX_EPOLL_CTL_MOD), number, want) || control(Int32(CLINUX_EPOLL_CTL_ADD), number, want) else {
                    immediate.append((entries[k], Int16(POLLNVAL)))
                    continue
                }
                descriptor.epollEvents = want
            }
        }
        // Registered last turn and not watched in this one: a paused listener, a guest
        // with nothing to send, a port being closed.
        for descriptor in registered where descriptor.epollInstance == fd {
            let number = descriptor.raw
            guard number < 0 || stamp[Int(number)] != turn else { continue }
            Self.remove(number, from: fd)
            descriptor.epollInstance = -1
        }
        swap(&registered, &current)
        current.removeAll(keepingCapacity: true)
        resync(&revents)
        return true
    }

    /// A further wait over the set the last `sync` saw: its answers given without epoll.
    func resync(_ revents: inout [Int16]) {
        for (entry, events) in immediate { revents[entry] = events }
    }

    /// epoll_wait; the events go to the entries of this turn's watched descriptors.
    func wait(_ timeoutMilliseconds: Int32, _ revents: inout [Int16]) -> Int32 {
        let capacity = max(registered.count, 1)
        if ready.count < capacity { ready = Array(repeating: clinux_epoll_event(), count: capacity) }
        let n = ready.withUnsafeMutableBufferPointer { epoll_wait(fd, $0.baseAddress, Int32(capacity), timeoutMilliseconds) }
        guard n > 0 else { return n }
        for i in 0..<Int(n) {
            let events = ready[i].events
            let number = ready[i].fd
            guard number >= 0, Int(number) < stamp.count, stamp[Int(number)] == turn else {
                isStale = true
                continue
            }
            let index = Int(number)
            revents[entry[index]] = Int16(truncatingIfNeeded: events & (asked[index] | Self.always))
            for duplicate in duplicates where duplicate.number == number {
                revents[duplicate.entry] = Int16(truncatingIfNeeded: events & (duplicate.events | Self.always))
            }
        }
        return n
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
