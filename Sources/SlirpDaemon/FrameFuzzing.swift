import DaemonConfig
import FrameSwitch
import Logging
import NetOptions
import NetServices
import PosixIO

// FrameFuzzing: one network driven by a fuzzer instead of the event loop. It exists for
// Fuzz/Sources/fuzz-frames only: Network is internal to this module, and a fuzzer needs
// its real frame path without endpoints to bind or a poll loop to run.
//
// Theory of operation. The network is built once per process: no endpoints, `restrict=on`
// (libslirp then opens no socket to anywhere and DNS forwards nothing, so arbitrary
// frames cause no traffic off the machine), a loopback DNS upstream that restrict=on
// leaves unused, no state directory (no lease file, no DNS over TCP), one static lease.
// Stand-in guests are socket pairs: the network owns one end as a stream GuestPort
// admitted like an accepted connection, the fuzzer holds the other. `send` writes QEMU's
// length-prefixed stream into the fuzzer's end and lets the network read it as the loop
// does when the socket polls readable (the framer, the switch, the ARP/NDP proxy, DHCP
// and DNS, libslirp), then runs the loop's end of iteration: injectPending, flushPending,
// reapClosed. `received(by:)` reads back what the network wrote, flushing again as a
// writable poll would until nothing is queued. `reset` detaches every guest, resets their
// NAT connections and forgets DHCP leases (and port security's bindings), so that every input starts from the same
// state but for libslirp's own ARP and NDP tables, which carry over. Logging is off, as a line per attached guest would
// dominate the run, unless SLIRPD_FUZZ_LOG is set.
public final class FrameFuzzNetwork {
    public static let guestCount = 3

    /// A stand-in guest's counters, as the API reports them.
    public struct Counters: Equatable, Sendable {
        public var rxFrames = 0, rxBytes = 0, txFrames = 0, txBytes = 0, drops = 0
        public init() {}
    }

    /// What the network wrote to a guest since the last look.
    public struct Received: Sendable {
        /// The stream as written: length-prefixed frames.
        public var bytes: [UInt8]
        /// The network closed the connection (the guest is detached; the next `send` attaches it afresh).
        public var hungUp: Bool
    }

    private struct Guest {
        let port: GuestPort
        /// The guest's end of the socket pair.
        let socket: Descriptor
    }

    private let network: Network
    private var guests: [Guest?] = Array(repeating: nil, count: FrameFuzzNetwork.guestCount)
    private let readBuffer = ByteBuffer(capacity: 1 << 16)

    /// Bootstraps the process's logging, once, before the network makes its logger.
    private static let logging: Void = {
        let verbose = environmentValue("SLIRPD_FUZZ_LOG") != nil
        LoggingSystem.bootstrap { label -> any LogHandler in
            if verbose { return StreamLogHandler.standardError(label: label) }
            return SwiftLogNoOpLogHandler()
        }
    }()

    /// Builds the network (see the theory of operation). Sets up the process's logging:
    /// make one per process. fuzz-nat-stream passes options without restrict=on, so that
    /// libslirp connects to a listener of its own on 127.0.0.1 (10.0.2.2 inside).
    public init(options text: String = "restrict=on,dns-upstream=127.0.0.1:53") throws(DaemonError) {
        _ = Self.logging
        let options: NetworkOptions
        do {
            options = try NetworkOptions.parse(text)
        } catch {
            throw DaemonError(error.message)
        }
        let lease = StaticLease(mac: MACAddress(raw: 0x5254_0000_0009), address: IPv4Address(10, 0, 2, 9), hostname: "fixed")
        let config = NetworkConfig(name: "fuzz", options: options, endpoints: [], mtu: 0, socketMode: 0o600,
                                   staticLeases: [lease])
        network = try Network(config: config, stateDirectory: nil, inherited: InheritedEndpoints([]),
                              relayCommand: Daemon.relayCommand)
    }

    /// Writes `bytes` into guest `index`'s connection, lets the network read them, and
    /// ends the loop iteration. A guest without a connection is attached first; returns
    /// true when it was.
    @discardableResult
    public func send(_ bytes: [UInt8], from index: Int) throws(IOError) -> Bool {
        var attached = false
        if let guest = guests[index], network.ports[guest.port.id] !== guest.port {
            guests[index] = nil  // detached without the caller looking (`received`)
        }
        if guests[index] == nil {
            guests[index] = try attach()
            attached = true
        }
        guard let guest = guests[index] else { return attached }
        var rest = bytes[...]
        // The socket takes what fits; the network reads, then the rest follows, as a
        // guest's writes and the loop's reads alternate.
        while !rest.isEmpty, guest.port.closeReason == nil {
            guard case .done(let n) = try guest.socket.send(Array(rest)) else { break }
            rest = rest.dropFirst(n)
            handle(guest, .input)
        }
        network.injectPending()
        network.flushPending()
        network.reapClosed()
        return attached
    }

    /// One turn of the loop for libslirp's own sockets, without waiting: it reads and
    /// writes what is ready (a connect that completed, data for a host peer), runs its due
    /// timers, then the loop's end of iteration.
    /// One loop turn's events for a guest, at the turn's time, as the daemon's loop has it.
    private func handle(_ guest: Guest, _ events: PollEvents) {
        let now = monotonicNanoseconds()
        network.startTurn(now: now)
        network.handle(.guest(guest.port), events: events, now: now)
    }

    public func pollNAT() {
        network.startTurn(now: monotonicNanoseconds())
        var set = PollSet()
        var timeout: UInt32 = 0
        network.stack.addPollDescriptors(to: &set, timeout: &timeout)
        let ok: Bool
        do {
            ok = try set.wait(timeoutMilliseconds: 0)
        } catch {
            ok = false
        }
        network.stack.processPoll(&set, pollFailed: !ok)
        network.stack.runDueTimers(now: monotonicNanoseconds())
        network.injectPending()
        network.flushPending()
        network.reapClosed()
    }

    /// Reads what the network wrote to guest `index` until nothing more comes.
    public func received(by index: Int) -> Received {
        guard let guest = guests[index] else { return Received(bytes: [], hungUp: false) }
        var bytes: [UInt8] = []
        var hungUp = false
        // Bounded: a queue that a writable socket does not drain is for the caller to see.
        var flushes = 0
        reading: while true {
            readBuffer.removeAll()
            let result: IOResult<Int>
            do {
                result = try guest.socket.read(into: readBuffer)
            } catch {
                hungUp = true
                break reading
            }
            switch result {
            case .done(0):
                hungUp = true
                break reading
            case .done:
                bytes.append(contentsOf: readBuffer.readable)
            case .wouldBlock:
                guard network.ports[guest.port.id] === guest.port, !guest.port.queued.isEmpty, flushes < 64 else { break reading }
                flushes += 1
                handle(guest, .output)
                network.reapClosed()
            }
        }
        if hungUp { guests[index] = nil }
        return Received(bytes: bytes, hungUp: hungUp)
    }

    /// Guest `index`'s counters, while it has a connection.
    public func counters(of index: Int) -> Counters? {
        guard let port = guests[index]?.port else { return nil }
        var counters = Counters()
        (counters.rxFrames, counters.rxBytes, counters.txFrames, counters.txBytes, counters.drops) =
            (port.rxFrames, port.rxBytes, port.txFrames, port.txBytes, port.drops)
        return counters
    }

    /// How many guests the network has attached.
    public var attachedGuests: Int { network.guestCount }

    /// Detaches every guest and forgets every DHCP lease.
    public func reset() {
        for case let guest? in guests {
            guest.port.close("the fuzz input ended")
            network.scheduleClose(guest.port)
        }
        network.reapClosed()
        // Their NAT connections are reset at once, not after the grace: the next input starts clean.
        network.resetDepartedConnections(now: .max)
        network.injectPending()
        guests = Array(repeating: nil, count: Self.guestCount)
        if let old = network.dhcp {
            network.dhcp = DHCPServer(config: network.dhcpConfig(), serverMAC: old.serverMAC, leases: [])
        }
        network.leases = [:]
        // Port security forgets the leases' reservations too (bindings went with the ports).
        network.framePath.security = PortSecurity(addresses: network.framePath.security.addresses, limits: network.framePath.security.limits)
        network.refreshSecurityAddresses()
        network.rebuildZone()
    }

    private func attach() throws(IOError) -> Guest {
        let (ours, theirs) = try socketPair(kind: .stream)
        let port = GuestPort(id: network.allocatePortID(), transport: .stream, peer: "fuzz guest", endpointName: "fuzz",
                             kind: .stream(received: GuestPort.receiveBuffer()), socket: ours,
                             now: monotonicNanoseconds())
        network.admit(port, on: "fuzz")
        return Guest(port: port, socket: theirs)
    }
}

/// A TCP listener on 127.0.0.1 for fuzz-nat-stream: the host peer of a guest's NAT
/// connection, reading what libslirp writes to it with urgent data in line.
public final class FuzzLoopbackListener {
    private let socket: Descriptor
    public let port: UInt16
    private var connection: Descriptor?
    private let buffer = ByteBuffer(capacity: 1 << 16)

    public init() throws(IOError) {
        socket = try listenTCP(host: "127.0.0.1", port: 0)
        guard case .inet(_, let port) = try socket.boundAddress() else {
            socket.close()
            throw IOError(call: "listen", code: 22, detail: "not an inet socket")  // EINVAL
        }
        self.port = port
    }

    /// Takes a waiting connection, urgent data in line (SO_OOBINLINE); true when there is one.
    public func accept() -> Bool {
        guard connection == nil else { return true }
        guard case .done(let (accepted, _))? = try? socket.accept() else { return false }
        accepted.setOutOfBandInline()
        connection = accepted
        return true
    }

    /// Everything the connection holds now; nil once it has ended.
    public func read() -> [UInt8]? {
        guard let connection else { return [] }
        var bytes: [UInt8] = []
        while true {
            buffer.removeAll()
            guard let result = try? connection.read(into: buffer) else { return nil }
            switch result {
            case .done(0): return bytes.isEmpty ? nil : bytes
            case .done: bytes.append(contentsOf: buffer.readable)
            case .wouldBlock: return bytes
            }
        }
    }

    /// Ends the connection with a reset, so nothing lingers in TIME_WAIT.
    public func dropConnection() {
        connection?.closeWithReset()
        connection = nil
    }
}
