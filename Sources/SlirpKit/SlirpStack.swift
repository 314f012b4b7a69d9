// SlirpKit: one libslirp instance as a Swift object. The only module that imports CSlirp.
//
// Theory of operation: libslirp is a callback-driven TCP/IP stack with process-wide
// globals, so every call into it, for every instance, comes from the one loop thread.
// The loop feeds guest frames in with `input`, lends it the poll set each iteration
// (`addPollDescriptors` / `processPoll`), and fires its timers (`runDueTimers`).
// libslirp hands frames out through `send_packet`, synchronously, from inside those
// calls; `onOutput` must therefore only copy or enqueue, never call back into the stack.
import CSlirp
import Glibc
import NetOptions
import PosixIO

/// A failure to create or configure a stack, worded for the user.
public struct SlirpError: Error, Sendable, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public final class SlirpStack {
    /// Called with each frame libslirp emits. The bytes are valid only during the call.
    public var onOutput: (UnsafeRawBufferPointer) -> Void = { _ in }
    /// Called when libslirp reports guest misbehaviour.
    public var onGuestError: (String) -> Void = { _ in }

    private var slirp: OpaquePointer?
    private let callbacks: UnsafeMutablePointer<SlirpCb>
    private var strings: [UnsafeMutablePointer<CChar>] = []
    private var searchList: UnsafeMutablePointer<UnsafePointer<CChar>?>?
    private var timers: [Int: StackTimer] = [:]
    private var dueTimers: [Int] = []
    private var nextTimerToken = 1
    private var guestForwards: Set<GuestForwardKey> = []

    /// The version of the linked libslirp, e.g. "4.7.0".
    public static var libraryVersion: String { String(cString: slirp_version_string()) }

    /// Creates an instance for `options`. `mtu` 0 keeps libslirp's default of 1500.
    /// The corresponding C call is `slirp_new`, with a version 4 `SlirpConfig`.
    ///
    /// With `ownServices` the caller answers DHCP, DNS and TFTP itself: libslirp's are off
    /// (`disable_dhcp`, `disable_dns`, no `tftp_path`), and libslirp is told its DNS address is
    /// `parkedDNSAddress(for:)`, which no guest is ever told about. That frees the real DNS
    /// address to be a guest forward (for DNS over TCP), which libslirp refuses for its
    /// own DNS address.
    public init(options: NetworkOptions, mtu: Int, ownServices: Bool = false) throws(SlirpError) {
        callbacks = UnsafeMutablePointer<SlirpCb>.allocate(capacity: 1)
        callbacks.initialize(to: Self.makeCallbacks())
        var config = SlirpConfig()
        config.version = 4
        config.restricted = options.restricted ? 1 : 0
        config.in_enabled = options.ipv4
        config.vnetwork = inAddr(options.network.address)
        config.vnetmask = in_addr(s_addr: options.network.mask.bigEndian)
        config.vhost = inAddr(options.host)
        config.vdhcp_start = inAddr(options.dhcpStart)
        config.vnameserver = inAddr(ownServices ? Self.parkedDNSAddress(for: options) : options.dns)
        config.disable_dhcp = ownServices
        config.disable_dns = ownServices
        config.in6_enabled = options.ipv6
        config.vprefix_addr6 = in6Addr(options.ipv6Prefix)
        config.vprefix_len = UInt8(clamping: options.ipv6PrefixLength)
        config.vhost6 = in6Addr(options.ipv6Host)
        config.vnameserver6 = in6Addr(options.ipv6DNS)
        config.vhostname = own(options.hostname)
        config.tftp_server_name = own(options.tftpServerName)
        // The caller's own TFTP server (TFTPServer) serves tftp=; libslirp's would answer
        // a repeated ACK with the next block and never recover a lost one.
        config.tftp_path = ownServices ? nil : own(options.tftpRoot)
        config.bootfile = own(options.bootfile)
        config.vdomainname = own(options.domainName)
        if !options.dnsSearch.isEmpty {
            let list = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: options.dnsSearch.count + 1)
            for (i, name) in options.dnsSearch.enumerated() { list[i] = own(name) }
            list[options.dnsSearch.count] = nil
            searchList = list
            config.vdnssearch = list
        }
        config.if_mtu = mtu
        config.if_mru = mtu
        config.disable_host_loopback = !options.hostLoopback
        config.enable_emu = false
        // Unmanaged is used in this file only. `self` outlives the Slirp*: `close()`
        // (also run by deinit) calls slirp_cleanup before anything here is freed, and
        // callbacks run only inside our own calls into libslirp.
        let opaque = Unmanaged.passUnretained(self).toOpaque()
        guard let created = slirp_new(&config, callbacks, opaque) else {
            releaseMemory()
            throw SlirpError("libslirp refused the configuration (slirp_new returned NULL)")
        }
        slirp = created
    }

    /// Where libslirp's own DNS address goes when the caller runs DNS: the network's own
    /// address, which guests never use, or the real one on a /31 or /32 that has none.
    public static func parkedDNSAddress(for options: NetworkOptions) -> IPv4Address {
        let network = options.network.address
        guard options.network.prefixLength <= 30, network != options.host, network != options.dns else { return options.dns }
        return network
    }

    deinit {
        close()
        releaseMemory()
    }

    /// Shuts the instance down: its NAT sockets close and no callback fires after this.
    public func close() {
        if let slirp { slirp_cleanup(slirp) }
        slirp = nil
        timers.removeAll()
    }

    private func releaseMemory() {
        for s in strings { free(s) }
        strings.removeAll()
        searchList?.deallocate()
        searchList = nil
        callbacks.deinitialize(count: 1)
        callbacks.deallocate()
    }

    private func own(_ text: String?) -> UnsafePointer<CChar>? {
        guard let text, let copy = strdup(text) else { return nil }
        strings.append(copy)
        return UnsafePointer(copy)
    }

    // MARK: Data path

    /// Hands one Ethernet frame from a guest to the stack. Replies may be emitted through
    /// `onOutput` before this returns. The corresponding C call is `slirp_input`.
    public func input(_ frame: UnsafeRawBufferPointer) {
        guard let slirp, let base = frame.baseAddress else { return }
        slirp_input(slirp, base.assumingMemoryBound(to: UInt8.self), Int32(frame.count))
    }

    /// Adds the stack's sockets to `set` and lowers `timeout` (ms) to what its TCP timers need.
    /// The corresponding C call is `slirp_pollfds_fill`.
    public func addPollDescriptors(to set: inout PollSet, timeout: inout UInt32) {
        guard let slirp else { return }
        withUnsafeMutablePointer(to: &set) { setPointer in
            slirp_pollfds_fill(slirp, &timeout, { fd, events, opaque in
                guard let set = opaque?.assumingMemoryBound(to: PollSet.self) else { return -1 }
                return Int32(set.pointee.add(fd, PollEvents(slirpFlags: events)))
            }, setPointer)
        }
    }

    /// Lets the stack act on the events `poll` returned. Pass `pollFailed` only when poll
    /// itself failed: libslirp then skips socket events. The C call is `slirp_pollfds_poll`.
    public func processPoll(_ set: inout PollSet, pollFailed: Bool) {
        guard let slirp else { return }
        withUnsafeMutablePointer(to: &set) { setPointer in
            slirp_pollfds_poll(slirp, pollFailed ? 1 : 0, { index, opaque in
                guard let set = opaque?.assumingMemoryBound(to: PollSet.self), index >= 0 else { return 0 }
                return set.pointee.events(at: Int(index)).slirpFlags
            }, setPointer)
        }
    }

    // MARK: Timers

    /// The earliest timer deadline in nanoseconds on the monotonic clock, if any is armed.
    public var nextTimerDeadline: Int64? {
        var earliest: Int64?
        for timer in timers.values {
            if let d = timer.deadline, d < (earliest ?? .max) { earliest = d }
        }
        return earliest
    }

    /// Fires every timer whose deadline has passed. A timer's handler may re-arm or free
    /// timers, so the due ones are collected first (into a reused array: no allocation).
    public func runDueTimers(now: Int64) {
        guard let slirp else { return }
        dueTimers.removeAll(keepingCapacity: true)
        for (token, timer) in timers where (timer.deadline ?? .max) <= now { dueTimers.append(token) }
        for token in dueTimers {
            guard let timer = timers[token] else { continue }
            timers[token]?.deadline = nil
            switch timer.action {
            case .handle(let id, let cbOpaque): slirp_handle_timer(slirp, id, cbOpaque)
            case .callback(let cb, let cbOpaque): cb?(cbOpaque)
            }
        }
    }

    // MARK: Forwards

    /// Listens on the host and forwards to the guest. The C call is `slirp_add_hostfwd`.
    public func addHostForward(_ rule: HostForward) throws(SlirpError) {
        guard let slirp else { throw SlirpError("network is closed") }
        let rc = slirp_add_hostfwd(slirp, rule.proto == .udp ? 1 : 0, inAddr(rule.hostAddress), Int32(rule.hostPort),
                                   inAddr(rule.guestAddress), Int32(rule.guestPort))
        guard rc == 0 else {
            let reason = String(cString: strerror(errno))
            throw SlirpError("Could not set up host forwarding rule '\(rule.rule)' (\(reason))")
        }
    }

    /// The C call is `slirp_remove_hostfwd`.
    public func removeHostForward(_ rule: HostForward) throws(SlirpError) {
        guard let slirp else { throw SlirpError("network is closed") }
        guard slirp_remove_hostfwd(slirp, rule.proto == .udp ? 1 : 0, inAddr(rule.hostAddress), Int32(rule.hostPort)) == 0 else {
            throw SlirpError("host forwarding rule for '\(rule.rule)' not found")
        }
    }

    /// Listens on an IPv6 host address and forwards to a guest's IPv6 address (libslirp 4.7
    /// does not translate between families). IPv6 only: the IPv4 side of the port stays
    /// free for an IPv4 forward.
    /// The C call is `slirp_add_hostxfwd`.
    public func addHostForward(_ rule: HostForward, ipv6Host: IPv6Address, ipv6Guest: IPv6Address) throws(SlirpError) {
        guard let slirp else { throw SlirpError("network is closed") }
        var host = sockaddr_in6(ipv6Host, port: rule.hostPort)
        var guest = sockaddr_in6(ipv6Guest, port: rule.guestPort)
        let flags = (rule.proto == .udp ? Int32(SLIRP_HOSTFWD_UDP) : 0) | Int32(SLIRP_HOSTFWD_V6ONLY)
        let rc = withUnsafePointer(to: &host) { h in
            withUnsafePointer(to: &guest) { g in
                h.withMemoryRebound(to: sockaddr.self, capacity: 1) { hs in
                    g.withMemoryRebound(to: sockaddr.self, capacity: 1) { gs in
                        slirp_add_hostxfwd(slirp, hs, socklen_t(MemoryLayout<sockaddr_in6>.size),
                                           gs, socklen_t(MemoryLayout<sockaddr_in6>.size), flags)
                    }
                }
            }
        }
        guard rc == 0 else {
            throw SlirpError("Could not set up host forwarding rule '\(rule.rule)' (\(String(cString: strerror(errno))))")
        }
    }

    /// The C call is `slirp_remove_hostxfwd`.
    public func removeHostForward(_ rule: HostForward, ipv6Host: IPv6Address) throws(SlirpError) {
        guard let slirp else { throw SlirpError("network is closed") }
        var host = sockaddr_in6(ipv6Host, port: rule.hostPort)
        let flags = (rule.proto == .udp ? Int32(SLIRP_HOSTFWD_UDP) : 0) | Int32(SLIRP_HOSTFWD_V6ONLY)
        let rc = withUnsafePointer(to: &host) { h in
            h.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                slirp_remove_hostxfwd(slirp, $0, socklen_t(MemoryLayout<sockaddr_in6>.size), flags)
            }
        }
        guard rc == 0 else { throw SlirpError("host forwarding rule for '\(rule.rule)' not found") }
    }

    /// A guest connection to `address:port` runs `command` (split on spaces by libslirp)
    /// with the connection as its stdin and stdout. The C call is `slirp_add_exec`.
    public func addGuestExec(address: IPv4Address, port: UInt16, command: String, rule: String) throws(SlirpError) {
        try addGuestForward(address: address, port: port, rule: rule) { slirp, addr in
            slirp_add_exec(slirp, command, addr, Int32(port))
        }
    }

    /// A guest connection to `address:port` is connected to the Unix socket at `path`.
    /// The C call is `slirp_add_unix`.
    public func addGuestUnix(address: IPv4Address, port: UInt16, path: String, rule: String) throws(SlirpError) {
        try addGuestForward(address: address, port: port, rule: rule) { slirp, addr in
            slirp_add_unix(slirp, path, addr, Int32(port))
        }
    }

    /// Removes a guest forward added by `addGuestExec` or `addGuestUnix`.
    /// The C call is `slirp_remove_guestfwd`.
    public func removeGuestForward(address: IPv4Address, port: UInt16) {
        guard let slirp, guestForwards.remove(GuestForwardKey(address: address, port: port)) != nil else { return }
        _ = slirp_remove_guestfwd(slirp, inAddr(address), Int32(port))
    }

    private func addGuestForward(address: IPv4Address, port: UInt16, rule: String,
                                 _ add: (OpaquePointer, UnsafeMutablePointer<in_addr>) -> Int32) throws(SlirpError) {
        guard let slirp else { throw SlirpError("network is closed") }
        // libslirp 4.7 compares guest forwards with mixed byte order and so accepts duplicates.
        let key = GuestForwardKey(address: address, port: port)
        guard !guestForwards.contains(key) else {
            throw SlirpError("Invalid guest forwarding rule '\(rule)' (\(address):\(port) is already forwarded)")
        }
        var addr = inAddr(address)
        guard add(slirp, &addr) == 0 else {
            throw SlirpError("Conflicting/invalid host:port in guest forwarding rule '\(rule)'")
        }
        guestForwards.insert(key)
    }

    // MARK: Introspection

    /// The NAT's connections, as QEMU's `info usernet` prints them. The C call is `slirp_connection_info`.
    public func connectionInfo() -> String {
        guard let slirp, let text = slirp_connection_info(slirp) else { return "" }
        defer { free(text) }
        return String(cString: text)
    }

    // MARK: Callbacks

    fileprivate static func stack(_ opaque: UnsafeMutableRawPointer?) -> SlirpStack? {
        guard let opaque else { return nil }
        return Unmanaged<SlirpStack>.fromOpaque(opaque).takeUnretainedValue()
    }

    fileprivate func newTimer(_ action: StackTimer.Action) -> UnsafeMutableRawPointer? {
        let token = nextTimerToken
        nextTimerToken += 1
        timers[token] = StackTimer(action: action, deadline: nil)
        return UnsafeMutableRawPointer(bitPattern: token)
    }

    fileprivate func freeTimer(_ handle: UnsafeMutableRawPointer?) {
        timers[Int(bitPattern: handle)] = nil
    }

    fileprivate func modTimer(_ handle: UnsafeMutableRawPointer?, milliseconds: Int64) {
        timers[Int(bitPattern: handle)]?.deadline = milliseconds * 1_000_000
    }

    private static func makeCallbacks() -> SlirpCb {
        var cb = SlirpCb()
        cb.send_packet = { buf, len, opaque in
            guard let stack = SlirpStack.stack(opaque) else { return -1 }
            stack.onOutput(UnsafeRawBufferPointer(start: buf, count: len))
            return len
        }
        cb.guest_error = { msg, opaque in
            guard let stack = SlirpStack.stack(opaque), let msg else { return }
            stack.onGuestError(String(cString: msg))
        }
        cb.clock_get_ns = { _ in monotonicNanoseconds() }
        cb.timer_new = { callback, cbOpaque, opaque in
            SlirpStack.stack(opaque)?.newTimer(.callback(callback, cbOpaque))
        }
        cb.timer_new_opaque = { id, cbOpaque, opaque in
            SlirpStack.stack(opaque)?.newTimer(.handle(id, cbOpaque))
        }
        cb.timer_free = { timer, opaque in SlirpStack.stack(opaque)?.freeTimer(timer) }
        cb.timer_mod = { timer, expire, opaque in SlirpStack.stack(opaque)?.modTimer(timer, milliseconds: expire) }
        // Advisory only (FACTS.md): the poll set is rebuilt from slirp_pollfds_fill anyway.
        cb.register_poll_fd = { _, _ in }
        cb.unregister_poll_fd = { _, _ in }
        // We are the loop thread, and the next iteration's fill asks for POLLOUT itself.
        cb.notify = { _ in }
        return cb
    }
}

private struct StackTimer {
    enum Action {
        case handle(SlirpTimerId, UnsafeMutableRawPointer?)
        case callback(SlirpTimerCb?, UnsafeMutableRawPointer?)
    }
    var action: Action
    /// Nanoseconds on the monotonic clock; nil while disarmed.
    var deadline: Int64?
}

private struct GuestForwardKey: Hashable {
    var address: IPv4Address
    var port: UInt16
}

extension sockaddr_in6 {
    init(_ address: IPv6Address, port: UInt16) {
        self.init()
        sin6_family = sa_family_t(AF_INET6)
        sin6_port = port.bigEndian
        sin6_addr = in6Addr(address)
    }
}

private func inAddr(_ address: IPv4Address) -> in_addr {
    in_addr(s_addr: address.value.bigEndian)
}

private func in6Addr(_ address: IPv6Address) -> in6_addr {
    var result = in6_addr()
    withUnsafeMutableBytes(of: &result) { raw in
        for (i, b) in address.bytes.prefix(16).enumerated() { raw[i] = b }
    }
    return result
}

extension PollEvents {
    /// Translates libslirp's SLIRP_POLL_* bits to poll(2)'s.
    init(slirpFlags flags: Int32) {
        var events: PollEvents = []
        if flags & Int32(SLIRP_POLL_IN) != 0 { events.insert(.input) }
        if flags & Int32(SLIRP_POLL_OUT) != 0 { events.insert(.output) }
        if flags & Int32(SLIRP_POLL_PRI) != 0 { events.insert(.priority) }
        if flags & Int32(SLIRP_POLL_ERR) != 0 { events.insert(.error) }
        if flags & Int32(SLIRP_POLL_HUP) != 0 { events.insert(.hangup) }
        self = events
    }

    var slirpFlags: Int32 {
        var flags: Int32 = 0
        if contains(.input) { flags |= Int32(SLIRP_POLL_IN) }
        if contains(.output) { flags |= Int32(SLIRP_POLL_OUT) }
        if contains(.priority) { flags |= Int32(SLIRP_POLL_PRI) }
        if contains(.error) || contains(.invalid) { flags |= Int32(SLIRP_POLL_ERR) }
        if contains(.hangup) { flags |= Int32(SLIRP_POLL_HUP) }
        return flags
    }
}
