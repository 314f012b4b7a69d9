// SlirpDaemon: the event loop and the networks it drives.
//
// Theory of operation: one thread, the caller of `Daemon.run`, owns every libslirp
// instance, socket and timer. Each iteration it (1) fills one poll set with the
// signal descriptor, each network's listeners, datagram sockets and guest
// connections, then libslirp's own sockets; (2) sleeps until the nearest timer;
// (3) drains every readable guest socket until EAGAIN, switching frames as they
// come; (4) lets libslirp handle its sockets; (5) fires due timers; (6) flushes the
// guests' output queues and removes closed guests. Nothing here is Sendable: other
// threads (the control API, later) will post work to the loop instead of touching it.
import DaemonConfig
import Logging
import SlirpAPI
import NetOptions
import PosixIO
import SlirpKit

public struct DaemonError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public final class Daemon {
    let log = Logger(label: "slirpd")
    private let signals: SignalSource
    let mailbox: Mailbox
    var networks: [Network] = []
    /// Reads the config file again (SIGHUP); nil when networks came from the command line.
    let reloadSource: (() throws(DaemonError) -> [NetworkConfig])?
    /// Lease files and DNS sockets go here (see Network.stateDirectory).
    let stateDirectory: String?
    /// Each network's lock on its files in the state directory (`lockStateDirectory`).
    var stateLocks: [String: Descriptor] = [:]
    /// Sockets from systemd, used by the networks whose endpoints they are.
    let inherited: InheritedEndpoints
    /// READY=1, STATUS= and the watchdog for systemd (nothing without NOTIFY_SOCKET).
    let notifier: ServiceNotifier
    private var nextWatchdog: Int64 = 0
    private var reportedGuests = -1
    private var statusSentAt: Int64 = 0
    private var eventSinks: [Int: AsyncStream<Event>.Continuation] = [:]
    private var nextSinkID = 0
    private var pollSet = PollSet()
    private var busyPoll: BusyPoll
    private var sources: [Source] = []
    private var networkSources: [Network.Source] = []
    private var running = true
    private var failure: String?
    private var nextHousekeeping: Int64 = 0
    /// The most guests attached since memory was last given back (Memory.swift in PosixIO).
    private var guestsHighWater = 0
    /// When to give memory back after a wave of departures: a second after the last one.
    private var releaseMemoryAt: Int64?
    private var guestsLastSeen = 0
    /// Whether the pending release is the follow-up of one that ran.
    private var releaseFollowUp = false

    private enum Source {
        case signals
        case mailbox
        case network(Network, Network.Source)
    }

    /// How often learned MACs are checked for aging.
    private static let housekeepingInterval: Int64 = 10_000_000_000

    /// Binds every endpoint of every network, or throws and leaves nothing behind.
    /// Signals are blocked here, before any other thread exists, so they reach only the loop.
    /// `configs` must already include the inherited sockets (`InheritedEndpoints.apply`).
    public init(networks configs: [NetworkConfig], stateDirectory: String? = nil,
                inherited: InheritedEndpoints = InheritedEndpoints([]),
                reloadSource: (() throws(DaemonError) -> [NetworkConfig])? = nil,
                busyPollMicroseconds: Int = 0) throws(DaemonError) {
        self.reloadSource = reloadSource
        busyPoll = BusyPoll(maximumMicroseconds: busyPollMicroseconds)
        self.stateDirectory = stateDirectory
        self.inherited = inherited
        // Read (and cleared from the environment) before any other thread exists.
        notifier = ServiceNotifier()
        // Before any other thread allocates: grown guest queues are then mappings of their own.
        pinAllocatorThresholds()
        // Every NAT flow of every guest is a descriptor; each guest's share is capped
        // (FlowBudget), and the total is bounded by the hard limit the units set.
        do {
            let limit = try raiseDescriptorLimit()
            let change = limit.before == limit.after ? "is" : "raised from \(limit.before) to"
            log.info("descriptor limit \(change) \(limit.after) (hard limit \(limit.hard))")
        } catch {
            log.warning("cannot raise the descriptor limit: \(error)")
        }
        do {
            signals = try SignalSource()
            mailbox = try Mailbox()
        } catch {
            throw DaemonError("cannot set up the event loop: \(error)")
        }
        do {
            for config in configs { try startNetwork(config) }
        } catch {
            for n in networks { n.shutdown() }
            throw error
        }
    }

    /// Binds a network's endpoints and adds it to the loop.
    @discardableResult
    func startNetwork(_ config: NetworkConfig) throws(DaemonError) -> Network {
        try lockStateDirectory(for: config.name)
        let net = try Network(config: config, stateDirectory: stateDirectory, inherited: inherited, relayCommand: Daemon.relayCommand)
        net.onEvent = { [unowned self] event in self.publish(event) }
        networks.append(net)
        return net
    }

    /// One owner per network's state files: an exclusive `flock` on `<state dir>/NAME.lock`,
    /// held until the network is removed or the process ends (however it ends), so a second
    /// daemon on the same directory and network name stops at once, naming the holder,
    /// instead of sharing (and overwriting) the first one's leases and run-time changes.
    /// A network restarted by a reload keeps the lock it has.
    func lockStateDirectory(for name: String) throws(DaemonError) {
        guard let stateDirectory, stateLocks[name] == nil else { return }
        let path = "\(stateDirectory)/\(name).lock"
        let lock: FileLock
        do {
            lock = try lockExclusively(path)
        } catch {
            throw DaemonError("network \(name): cannot lock \(path): \(error)")
        }
        switch lock {
        case .held(let descriptor):
            stateLocks[name] = descriptor
        case .heldByOther(let pid):
            throw DaemonError("network \(name): state directory \(stateDirectory) is in use by another slirpd (PID \(pid.map { "\($0)" } ?? "unknown"), holding \(path)); give each daemon its own --state-dir or network name")
        }
    }

    /// The command libslirp runs for each guest connection to a `guestfwd=...-tcp:HOST:PORT` rule.
    /// /proc/self/exe, read in the forked child, is this very image, even after the file on
    /// disk was replaced (its path then reads "... (deleted)"). libslirp splits the command
    /// on spaces, and a host never contains one.
    static func relayCommand(host: String, port: UInt16) -> String {
        "/proc/self/exe --guestfwd-relay \(host):\(port)"
    }

    /// Lines describing how to attach QEMU to each of a network's endpoints.
    func attachLines(_ net: Network) -> [String] {
        net.config.endpoints.flatMap { QEMUFlags.instructions(network: net.config.name, endpoint: $0, mtu: net.config.mtu) }
    }

    /// Runs until SIGTERM or SIGINT, then closes every guest, socket and socket file.
    public func run() throws(DaemonError) {
        defer { shutdown() }
        for net in networks {
            let o = net.config.options
            log.info("network \(net.config.name): \(o.network.address)/\(o.network.prefixLength), gateway \(o.host), DNS \(o.dns), DHCP from \(o.dhcpStart)\(o.dhcpEnd.map { " to \($0)" } ?? "")\(net.config.mtu > 0 ? ", MTU \(net.config.mtu)" : "") (libslirp \(SlirpStack.libraryVersion))")
        }
        for line in networks.flatMap(attachLines) { log.notice("\(line)") }
        if !inherited.isEmpty { log.info("\(inherited.summary)") }
        if let problem = notifier.problem { log.warning("\(problem)") }
        notify("READY=1")
        if let interval = notifier.watchdogInterval {
            log.info("systemd watchdog: pinging every \(interval / 1_000_000) ms")
        }
        while running {
            try iterate()
        }
        if let failure { throw DaemonError(failure) }
    }

    /// Stops the loop from any thread; with `error`, `run` then throws it.
    public static func stop(_ control: DaemonControl, error: String?) {
        control.mailbox.post { daemon in
            if let error {
                daemon.log.error("\(error); shutting down")
                daemon.failure = error
            }
            daemon.running = false
        }
    }

    private func iterate() throws(DaemonError) {
        let now = monotonicNanoseconds()
        pollSet.removeAll()
        sources.removeAll(keepingCapacity: true)
        pollSet.watch(signals.descriptor, .input)
        sources.append(.signals)
        pollSet.add(mailbox.wake.fd, .input)
        sources.append(.mailbox)
        for net in networks {
            networkSources.removeAll(keepingCapacity: true)
            net.addPollDescriptors(to: &pollSet, sources: &networkSources, now: now)
            for s in networkSources { sources.append(.network(net, s)) }
        }
        let ownCount = pollSet.count
        var timeout: UInt32 = 1000
        for net in networks { net.stack.addPollDescriptors(to: &pollSet, timeout: &timeout) }
        var deadline = nextHousekeeping
        if notifier.watchdogInterval != nil { deadline = min(deadline, nextWatchdog) }
        if let releaseMemoryAt { deadline = min(deadline, releaseMemoryAt) }
        if notifier.isActive, reportedGuests != guestTotal { deadline = min(deadline, statusSentAt + Daemon.statusInterval) }
        for net in networks {
            if let d = net.stack.nextTimerDeadline { deadline = min(deadline, d) }
            if let d = net.nextListenerResume, d > now { deadline = min(deadline, d) }
            if let d = net.nextServiceDeadline { deadline = min(deadline, d) }
        }
        let untilTimer = max(0, (deadline - now + 999_999) / 1_000_000)
        let waitMs = Int32(min(Int64(timeout), untilTimer))

        let ok: Bool
        do {
            ok = try spinThenWait(waitMs, now: now)
        } catch {
            throw DaemonError("the event loop failed: \(error)")
        }
        let after = monotonicNanoseconds()
        for net in networks { net.startTurn(now: after) }
        if ok {
            for index in 0..<ownCount {
                let events = pollSet.events(at: index)
                guard !events.isEmpty else { continue }
                switch sources[index] {
                case .signals: handleSignals()
                case .mailbox: mailbox.wake.drain()
                case .network(let net, let source): net.handle(source, events: events, now: after)
                }
            }
        }
        for net in networks { net.stack.processPoll(&pollSet, pollFailed: !ok) }
        for net in networks {
            net.stack.runDueTimers(now: after)
            net.runTimers(now: after)
        }
        if after >= nextHousekeeping {
            for net in networks { net.housekeeping(now: after) }
            nextHousekeeping = after + Daemon.housekeepingInterval
        }
        runPostedJobs()
        for net in networks {
            net.injectPending()
            net.flushPending()
            net.reapClosed()
        }
        busyPoll.turnMoved(bytes: networks.reduce(0) { $0 + $1.takeTurnBytes() })
        noteDepartures(now: after)
        tellServiceManager(now: after)
    }

    /// Spins on poll(0) while BusyPoll says it pays, then blocks for the rest of
    /// `waitMs`; tells BusyPoll what it saw.
    private func spinThenWait(_ waitMs: Int32, now: Int64) throws(IOError) -> Bool {
        guard busyPoll.maximum > 0 else { return try pollSet.wait(timeoutMilliseconds: waitMs) }
        let spin = waitMs > 0 ? busyPoll.spin(now: now, descriptors: pollSet.polledCount) : 0
        let switches = spin > 0 ? involuntaryContextSwitches() : 0
        var ok = true
        var caught = false
        if spin > 0 {
            repeat {
                ok = try pollSet.wait(timeoutMilliseconds: 0)
                caught = !ok || pollSet.readyCount > 0
            } while !caught && monotonicNanoseconds() - now < spin
        }
        if !caught {
            let left = waitMs - Int32(min(Int64(waitMs), (monotonicNanoseconds() - now) / 1_000_000))
            ok = try pollSet.wait(timeoutMilliseconds: left)
        }
        let after = monotonicNanoseconds()
        busyPoll.record(caught: caught, waited: after - now, preempted: spin > 0 && involuntaryContextSwitches() != switches, now: after)
        return ok
    }

    // MARK: systemd

    /// STATUS= at most this often, so guest churn cannot flood the manager.
    private static let statusInterval: Int64 = 1_000_000_000

    private var guestTotal: Int { networks.reduce(0) { $0 + $1.guestCount } }

    /// Guests fewer than the high-water mark by this many make a wave worth a trim.
    static let departureWave = 64

    /// After a wave of departures, once it has been quiet for a second, hands the heap's
    /// free pages back: a trim walks the whole heap, so it runs once per wave, not per guest.
    private func noteDepartures(now: Int64) {
        let total = guestTotal
        defer { guestsLastSeen = total }
        if total > guestsHighWater { guestsHighWater = total }
        // Armed by a wave; every later departure puts the trim off until the wave is over.
        if guestsHighWater - total >= Daemon.departureWave || (releaseMemoryAt != nil && total < guestsLastSeen) {
            releaseMemoryAt = now + 1_000_000_000
            releaseFollowUp = false
            guestsHighWater = total
        }
        guard let at = releaseMemoryAt, now >= at else { return }
        // Once more when the departed guests' NAT connections are gone too (Network.returnGrace).
        releaseMemoryAt = releaseFollowUp ? nil : now + Network.returnGrace + 5_000_000_000
        releaseFollowUp.toggle()
        let before = residentAnonymousBytes()
        for net in networks { net.shrinkBuffers() }
        releaseFreeMemory()
        if let before, let after = residentAnonymousBytes() {
            log.info("many guests left: gave free memory back (RssAnon \(before >> 10) KiB -> \(after >> 10) KiB, \(total) guests attached)")
        }
    }

    /// What `systemctl status` shows: guests per network.
    private var statusText: String {
        let total = guestTotal
        let each = networks.map { "\($0.config.name) \($0.guestCount)" }.joined(separator: ", ")
        return "\(total) guest\(total == 1 ? "" : "s") on \(networks.count) network\(networks.count == 1 ? "" : "s")\(each.isEmpty ? "" : ": \(each)")"
    }

    /// Sends `state` with the current STATUS= line.
    func notify(_ state: String) {
        guard notifier.isActive else { return }
        reportedGuests = guestTotal
        statusSentAt = monotonicNanoseconds()
        if let error = notifier.send("\(state)\nSTATUS=\(statusText)") { log.warning("systemd notification failed: \(error)") }
    }

    /// The watchdog ping when due, and STATUS= when the guest count changed.
    private func tellServiceManager(now: Int64) {
        if let interval = notifier.watchdogInterval, now >= nextWatchdog {
            notifier.send("WATCHDOG=1")
            nextWatchdog = now + interval
        }
        if notifier.isActive, reportedGuests != guestTotal, now - statusSentAt >= Daemon.statusInterval {
            reportedGuests = guestTotal
            statusSentAt = now
            notifier.send("STATUS=\(statusText)")
        }
    }

    private func runPostedJobs() {
        for job in mailbox.take() { job(self) }
    }

    /// The API's handle on this daemon: safe to use from any thread.
    public var control: DaemonControl { DaemonControl(mailbox: mailbox) }

    // MARK: Events

    private func publish(_ event: Event) {
        for sink in eventSinks.values { sink.yield(event) }
    }

    /// A stream of events from now on. A slow reader loses the oldest events past 1024.
    func subscribeEvents() -> AsyncStream<Event> {
        let id = nextSinkID
        nextSinkID += 1
        let (stream, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingNewest(1024))
        continuation.onTermination = { [mailbox] _ in mailbox.post { daemon in daemon.eventSinks[id] = nil } }
        eventSinks[id] = continuation
        return stream
    }

    private func handleSignals() {
        while let number = signals.next() {
            switch number {
            case SignalNumber.hangup:
                reload()
            default:
                log.notice("\(signalName(number)): shutting down")
                running = false
            }
        }
    }

    private func shutdown() {
        notifier.send("STOPPING=1")
        for net in networks {
            net.shutdown()
            log.info("network \(net.config.name) stopped")
        }
        networks.removeAll()
        for sink in eventSinks.values { sink.finish() }
        eventSinks.removeAll()
        // Requests already posted get an answer (there are no networks left) rather than none.
        runPostedJobs()
    }
}
