import Glibc
import PosixIO
import Testing

/// PollSet's watched descriptors live in an epoll instance across turns; each test
/// refills the set as the loop does and checks what poll(2) would have answered.
@Suite struct PollSetTests {
    private func send(_ d: Descriptor, _ byte: UInt8 = 1) {
        var b = byte
        #expect(Glibc.write(d.raw, &b, 1) == 1)
    }

    private func drain(_ d: Descriptor) {
        var buffer = [UInt8](repeating: 0, count: 64)
        _ = Glibc.read(d.raw, &buffer, buffer.count)
    }

    /// One turn: `entries` are (descriptor, events, watched?); returns each entry's events.
    private func turn(_ set: inout PollSet, _ entries: [(Descriptor, PollEvents, Bool)], timeout: Int32 = 0) throws -> [PollEvents] {
        set.removeAll()
        let indices = entries.map { $0.2 ? set.watch($0.0, $0.1) : set.add($0.0.raw, $0.1) }
        #expect(try set.wait(timeoutMilliseconds: timeout))
        return indices.map { set.events(at: $0) }
    }

    @Test func watchedAndAddedDescriptorsReportLikePoll() throws {
        let (a, b) = try socketPair(kind: .stream)
        let (c, d) = try socketPair(kind: .stream)
        var set = PollSet()
        var events = try turn(&set, [(a, .input, true), (c, .input, false)])
        #expect(events == [[], []])
        #expect(set.readyCount == 0)
        send(b)
        events = try turn(&set, [(a, .input, true), (c, .input, false)])
        #expect(events == [.input, []])
        send(d)
        // Level-triggered, as poll: still readable while unread.
        events = try turn(&set, [(a, .input, true), (c, .input, false)])
        #expect(events == [.input, .input])
        #expect(set.readyCount == 2)
        // Output asked for later is a change of events (EPOLL_CTL_MOD).
        drain(a)
        events = try turn(&set, [(a, [.input, .output], true)])
        #expect(events == [.output])
        #expect(set.polledCount == 1)
    }

    @Test func aDescriptorNoLongerWatchedNoLongerWakesTheLoop() throws {
        let (a, b) = try socketPair(kind: .stream)
        let (c, d) = try socketPair(kind: .stream)
        var set = PollSet()
        _ = try turn(&set, [(a, .input, true), (c, .input, true)])
        send(b)
        // `a` is readable but left out this turn (a paused listener): the wait must time out.
        let start = monotonicNanoseconds()
        let events = try turn(&set, [(c, .input, true)], timeout: 50)
        #expect(events == [[]])
        #expect(monotonicNanoseconds() - start >= 40_000_000)
        // Watched again: reported at once.
        #expect(try turn(&set, [(a, .input, true), (c, .input, true)], timeout: 1000) == [.input, []])
        _ = d
    }

    /// A copy of `d` at the lowest free number from 900 up, which nothing else in the test
    /// process uses: closing it and making another gives the same number.
    private func high(_ d: Descriptor) -> Descriptor {
        let copy = Descriptor(owning: fcntl(d.raw, F_DUPFD_CLOEXEC, 900))
        d.close()
        return copy
    }

    @Test func aReusedNumberIsRegisteredAfresh() throws {
        var set = PollSet()
        let (a, b) = try socketPair(kind: .stream)
        let first = high(a)
        _ = try turn(&set, [(first, .input, true)])
        let number = first.raw
        first.close()
        // A new descriptor on the freed number, asking for the same events.
        let (c, d) = try socketPair(kind: .stream)
        let second = high(c)
        #expect(second.raw == number)
        send(d)
        #expect(try turn(&set, [(second, .input, true)], timeout: 1000) == [.input])
        b.close()
    }

    @Test func aClosedDescriptorLeavesTheInstanceEvenWhenItsFileLivesOn() throws {
        let (a, b) = try socketPair(kind: .stream)
        let (c, d) = try socketPair(kind: .stream)
        // Another holder of the same open file (as QEMU holds a vhost-user eventfd).
        let other = Descriptor(owning: dup(a.raw))
        var set = PollSet()
        _ = try turn(&set, [(a, .input, true), (c, .input, true)])
        a.close()
        send(b)
        let start = monotonicNanoseconds()
        #expect(try turn(&set, [(c, .input, true)], timeout: 50) == [[]])
        #expect(monotonicNanoseconds() - start >= 40_000_000)
        other.close()
        _ = d
    }

    @Test func waitingAgainOnTheSameSetAnswersLikeTheFirstWait() throws {
        let (a, b) = try socketPair(kind: .stream)
        // A number that is not open (a descriptor closed behind its wrapper's back).
        let stale = Descriptor(owning: 999)
        var set = PollSet()
        #expect(try turn(&set, [(a, .input, true), (stale, .input, true)]) == [[], .invalid])
        // A busy-poll spin: the same set, waited on again.
        send(b)
        #expect(try set.wait(timeoutMilliseconds: 1000))
        #expect(set.events(at: 0) == .input)
        #expect(set.events(at: 1) == .invalid)
        drain(a)
        #expect(try set.wait(timeoutMilliseconds: 0))
        #expect(set.events(at: 0).isEmpty)
        #expect(set.readyCount == 1)
        _ = stale.raw
    }

    @Test func aDescriptorWatchedTwiceGetsEachEntryItsOwnEvents() throws {
        let (a, b) = try socketPair(kind: .stream)
        send(b)
        var set = PollSet()
        let events = try turn(&set, [(a, .input, true), (a, .output, true)])
        #expect(events == [.input, .output])
    }

    @Test func aClosedDescriptorIsIgnoredAndAHangUpIsReported() throws {
        let (a, b) = try socketPair(kind: .stream)
        let (c, d) = try socketPair(kind: .stream)
        var set = PollSet()
        d.close()
        c.close()
        // As poll(2) ignores a descriptor of -1: no event, so nothing wakes the loop for it.
        let events = try turn(&set, [(c, .input, true), (a, .input, true)])
        #expect(events == [[], []])
        #expect(set.readyCount == 0)
        b.close()
        #expect(try turn(&set, [(a, .input, true)], timeout: 1000)[0].contains(.hangup))
    }

    @Test func aWatchedDescriptorWakesABlockingWait() throws {
        let (a, b) = try socketPair(kind: .stream)
        var set = PollSet()
        _ = try turn(&set, [(a, .input, true)])
        // A thread of its own (not a task: the test pool may be busy) writes after 30 ms.
        let peer = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        peer.pointee = b.raw
        var writer = pthread_t()
        #expect(pthread_create(&writer, nil, { argument in
            usleep(30_000)
            var one: UInt8 = 1
            _ = Glibc.write(argument!.assumingMemoryBound(to: Int32.self).pointee, &one, 1)
            return nil
        }, peer) == 0)
        let start = monotonicNanoseconds()
        // Blocks in epoll_wait (nothing added), woken by the write.
        #expect(try turn(&set, [(a, .input, true)], timeout: 5000) == [.input])
        #expect(monotonicNanoseconds() - start < 4_000_000_000)
        pthread_join(writer, nil)
        peer.deallocate()
        b.close()
    }
}
