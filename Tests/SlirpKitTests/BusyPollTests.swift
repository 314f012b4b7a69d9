import PosixIO
import Testing

/// When the loop spins before sleeping: only after an interactive turn whose wait was
/// short, never while backed off after a preemption, never with a large poll set.
@Suite struct BusyPollTests {
    static let us: Int64 = 1000

    /// A poller that just saw a 20 us wait and a turn of one small frame.
    func warmed(_ maximum: Int = 50) -> BusyPoll {
        var p = BusyPoll(maximumMicroseconds: maximum)
        p.record(caught: false, waited: 20 * Self.us, preempted: false, now: 0)
        p.turnMoved(bytes: 66)
        return p
    }

    @Test func spinsAfterAShortWaitAndASmallTurn() {
        #expect(BusyPoll(maximumMicroseconds: 50).spin(now: 0, descriptors: 4) == 0, "nothing seen yet")
        #expect(warmed().spin(now: 0, descriptors: 4) == 50 * Self.us)
    }

    @Test func zeroTurnsItOff() {
        #expect(warmed(0).spin(now: 0, descriptors: 4) == 0)
    }

    @Test func bulkTurnsDoNotSpin() {
        var p = warmed()
        p.turnMoved(bytes: 64 * 1024)
        #expect(p.spin(now: 0, descriptors: 4) == 0)
        p.turnMoved(bytes: BusyPoll.interactiveBytes)
        #expect(p.spin(now: 0, descriptors: 4) == 50 * Self.us)
        p.turnMoved(bytes: 0)
        #expect(p.spin(now: 0, descriptors: 4) == 0, "a turn that moved nothing (a timer) is not an exchange")
    }

    @Test func aLongWaitStopsSpinningAndACaughtEventKeepsIt() {
        var p = warmed()
        p.record(caught: false, waited: 51 * Self.us, preempted: false, now: 100 * Self.us)
        #expect(p.spin(now: 100 * Self.us, descriptors: 4) == 0)
        p.record(caught: true, waited: 5 * Self.us, preempted: false, now: 200 * Self.us)
        #expect(p.spin(now: 200 * Self.us, descriptors: 4) == 50 * Self.us)
    }

    @Test func aPreemptionBacksOff() {
        var p = warmed()
        p.record(caught: true, waited: 30 * Self.us, preempted: true, now: 1_000 * Self.us)
        #expect(p.spin(now: 1_000 * Self.us, descriptors: 4) == 0)
        #expect(p.spin(now: 1_000 * Self.us + BusyPoll.backoff - 1, descriptors: 4) == 0)
        #expect(p.spin(now: 1_000 * Self.us + BusyPoll.backoff, descriptors: 4) == 50 * Self.us)
    }

    @Test func largePollSetsDoNotSpin() {
        #expect(warmed().spin(now: 0, descriptors: BusyPoll.largestPollSet + 1) == 0)
        #expect(warmed().spin(now: 0, descriptors: BusyPoll.largestPollSet) == 50 * Self.us)
    }
}
