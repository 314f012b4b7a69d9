// TFTPServer: read-only TFTP (RFC 1350) on the gateway's port 69, in place of libslirp's,
// whose server answers a repeated ACK with the *next* block and so never recovers from
// one lost DATA block (issue 23), and which knows neither windowsize nor timeout.
//
// Theory of operation. A pure state machine: the daemon hands it each UDP datagram a
// guest sends to the gateway's port 69 (`handle`), with the guest's port ID, MTU and the
// time; it answers with whole Ethernet frames. Time passes only through `now`, and
// `expire` runs the retransmission timers when the loop reaches `nextDeadline`. Files
// come from an injected `TFTPFileSource` (PosixIO's RootedFile in the daemon, fakes in
// tests), so nothing here touches the file system.
//
// - Replies come from port 69, as libslirp's do (clients accept any server port, and
//   then only one port is to be intercepted). A session is keyed by guest, client
//   address and client port; a new RRQ from the same client port restarts it.
// - Blocks are numbered absolutely (UInt64) and sent as the low 16 bits, so numbers wrap
//   from 65535 to 0 as U-Boot, iPXE and tftp-hpa expect, and any file size works.
// - An ACK is mapped to the absolute block it can mean among those sent. It advances the
//   transfer only if it acknowledges a block beyond the last one acknowledged; the next
//   window then starts right after it (RFC 7440: an ACK inside the window means a gap).
//   A repeated ACK of the last acknowledged block never advances: it gets the
//   unacknowledged window again, at most once per `duplicateACKHoldoff`, so a client that
//   answers each stray DATA with an ACK cannot start the Sorcerer's Apprentice storm
//   (RFC 1123 4.2.3.1). ACKs older than that are ignored.
// - With no ACK for the current window within the timeout (1 s, or RFC 2349's `timeout`),
//   the window (or the OACK) is sent again, the wait doubles up to 16 s, and after
//   `maxRetries` the session ends with an ERROR.
// - Memory per session is constant: no data is held; a block sent again is read again
//   (pread) from the descriptor opened at the RRQ, which stays open, so a file replaced
//   by rename keeps being served whole. A file modified in place (`hasChanged`) or cut
//   short ends the transfer with an ERROR rather than a silently mixed file.
// - Options (RFC 2347) are granted in an OACK in the order asked: blksize (RFC 2348, at
//   most what the guest's MTU carries unfragmented), tsize and timeout (RFC 2349),
//   windowsize (RFC 7440, at most `maxWindowSize` and `maxWindowBytes` per window).
//   Unknown options are left out; a known one with a value out of its RFC range gets
//   ERROR 8.
// - Sessions are capped per guest and per network; beyond, the RRQ gets an ERROR.

import FrameSwitch

/// Why a file could not be opened, as TFTP error codes 1 and 2 say it.
public enum TFTPOpenFailure: Error, Sendable, Equatable {
    case notFound
    case accessViolation
}

/// An open, read-only file.
public protocol TFTPFile: AnyObject {
    var size: UInt64 { get }
    /// Up to `count` bytes at `offset`, fewer only at the end of the file; nil on error.
    func read(at offset: UInt64, count: Int) -> [UInt8]?
    /// True once the file was modified since it was opened.
    func hasChanged() -> Bool
    func close()
}

/// The files below `tftp=`. `path` has been checked: relative, non-empty, no `..`.
public protocol TFTPFileSource {
    func open(_ path: String) -> Result<any TFTPFile, TFTPOpenFailure>
}

/// What happened to a request, for the daemon's log.
public enum TFTPEvent: Sendable, Equatable {
    /// The last block was acknowledged.
    case served(guest: UInt32, path: String, bytes: UInt64)
    /// The request got an ERROR (not found, access violation, option refused...).
    case refused(guest: UInt32, request: String, code: UInt16, message: String)
    /// A transfer ended early: timed out, or the file changed or could not be read.
    case abandoned(guest: UInt32, path: String, reason: String)
}

public struct TFTPLimits: Sendable, Equatable {
    public var sessionsPerGuest = 8
    public var sessionsPerNetwork = 64
    /// The largest windowsize granted, and the most bytes one window may carry.
    public var maxWindowSize = 64
    public var maxWindowBytes = 256 * 1024
    /// Nanoseconds: the first wait for an ACK without a `timeout` option, and the cap the
    /// doubling stops at (unless the client's `timeout` is longer).
    public var defaultTimeout: Int64 = 1_000_000_000
    public var maxTimeout: Int64 = 16_000_000_000
    /// Retransmissions of one window (or OACK) before the session is given up.
    public var maxRetries = 5
    /// The least time between two resends caused by duplicate ACKs.
    public var duplicateACKHoldoff: Int64 = 200_000_000

    public init() {}
}

public struct TFTPServer {
    public static let port: UInt16 = 69
    /// RFC 2348's range, and libslirp's longest file name.
    public static let blockSizeRange = 8...65464
    public static let maxFilenameLength = 512

    public struct Counters: Sendable, Equatable {
        public var sessionsStarted = 0
        public var sessionsCompleted = 0
        public var sessionsTimedOut = 0
        /// DATA payload bytes sent, retransmissions included.
        public var bytesSent = 0
        /// DATA blocks and OACKs sent again (timeout, duplicate ACK or a gap in a window).
        public var retransmissions = 0
        /// ERROR packets sent.
        public var errorsSent = 0

        public init() {}
    }

    public struct Outgoing {
        public var guest: UInt32
        public var frame: [UInt8]
    }

    struct Key: Hashable {
        var guest: UInt32
        var address: [UInt8]
        var port: UInt16
    }

    struct Session {
        var path: String
        var template: UDPDatagram
        var file: any TFTPFile
        var blockSize: Int
        var windowSize: Int
        var baseTimeout: Int64
        /// The size at open; tsize said so, and the blocks follow it.
        var size: UInt64
        /// The last block, always shorter than `blockSize` (possibly empty).
        var lastBlock: UInt64
        var acked: UInt64 = 0
        var sentHighest: UInt64 = 0
        /// The OACK, while it awaits ACK 0.
        var oack: [UInt8]?
        var deadline: Int64 = 0
        var retries = 0
        var windowSentAt: Int64 = 0
    }

    public let serverMAC: MACAddress
    public let limits: TFTPLimits
    private let files: any TFTPFileSource
    private var sessions: [Key: Session] = [:]
    private var ipID: UInt16 = 0
    public private(set) var counters = Counters()
    /// Events not yet taken, at most `maxEvents` (the oldest are kept).
    private var events: [TFTPEvent] = []
    public static let maxEvents = 64
    /// Set by `error(_:_:to:)`, the refusal of the request being handled.
    private var refusal: (code: UInt16, message: String)?

    public init(serverMAC: MACAddress, files: any TFTPFileSource, limits: TFTPLimits = TFTPLimits()) {
        self.serverMAC = serverMAC
        self.files = files
        self.limits = limits
    }

    public var sessionCount: Int { sessions.count }

    /// The events since the last call, oldest first.
    public mutating func takeEvents() -> [TFTPEvent] {
        defer { events.removeAll(keepingCapacity: true) }
        return events
    }

    private mutating func record(_ event: TFTPEvent) {
        if events.count < Self.maxEvents { events.append(event) }
    }

    /// When `expire` next has work to do.
    public var nextDeadline: Int64? { sessions.values.lazy.map(\.deadline).min() }

    // MARK: Datagrams in

    /// One datagram to port 69 from the guest on port `guest`, whose MTU is `mtu`.
    /// Returns the frames to send that guest.
    public mutating func handle(_ datagram: UDPDatagram, guest: UInt32, mtu: Int, now: Int64) -> [[UInt8]] {
        let p = datagram.payload
        guard p.count >= 2 else { return [] }
        let key = Key(guest: guest, address: Self.addressBytes(datagram.addresses), port: datagram.sourcePort)
        let opcode = UInt16(p[0]) << 8 | UInt16(p[1])
        switch opcode {
        case 1:
            refusal = nil
            let out = readRequest(datagram, key: key, mtu: mtu, now: now)
            if let refusal {
                let name = Self.strings(p.dropFirst(2)).first.map { String(decoding: $0.prefix(128), as: UTF8.self) } ?? ""
                record(.refused(guest: guest, request: name, code: refusal.code, message: refusal.message))
            }
            return out
        case 2:
            return [error(2, "Access violation: this server is read-only", to: datagram)]
        case 4:
            guard p.count >= 4, sessions[key] != nil else { return [] }
            return acknowledged(UInt16(p[2]) << 8 | UInt16(p[3]), key: key, now: now)
        case 5:
            end(key)  // the client gave up (or refused our OACK)
            return []
        default:
            return []  // DATA or OACK to a read-only server: nonsense; no session is touched
        }
    }

    /// Runs the timers due at `now`: windows sent again, sessions given up.
    public mutating func expire(now: Int64) -> [Outgoing] {
        var out: [Outgoing] = []
        for key in sessions.keys where (sessions[key]?.deadline ?? .max) <= now {
            guard var s = sessions[key] else { continue }
            if s.retries >= limits.maxRetries {
                out.append(Outgoing(guest: key.guest, frame: error(0, "Timed out waiting for an ACK", template: s.template)))
                counters.sessionsTimedOut += 1
                record(.abandoned(guest: key.guest, path: s.path, reason: "no ACK after \(limits.maxRetries) retransmissions"))
                end(key)
                continue
            }
            s.retries += 1
            if let oack = s.oack {
                counters.retransmissions += 1
                out.append(Outgoing(guest: key.guest, frame: frame(oack, template: s.template)))
                s.deadline = now + wait(s)
                sessions[key] = s
            } else {
                sessions[key] = s
                out += sendWindow(key: key, now: now).map { Outgoing(guest: key.guest, frame: $0) }
            }
        }
        return out
    }

    /// Forgets a guest that left.
    public mutating func removeGuest(_ guest: UInt32) {
        for key in sessions.keys where key.guest == guest { end(key) }
    }

    // MARK: RRQ

    private mutating func readRequest(_ datagram: UDPDatagram, key: Key, mtu: Int, now: Int64) -> [[UInt8]] {
        end(key)  // a new RRQ from the same port restarts the transfer
        let fields = Self.strings(datagram.payload.dropFirst(2))
        guard fields.count >= 2, let path = Self.checkedPath(fields[0]) else {
            return [error(2, "Access violation", to: datagram)]
        }
        guard String(decoding: fields[1], as: UTF8.self).lowercased() == "octet" else {
            return [error(4, "Unsupported transfer mode", to: datagram)]  // libslirp's words
        }
        guard sessions.count < limits.sessionsPerNetwork,
              sessions.keys.lazy.filter({ $0.guest == key.guest }).count < limits.sessionsPerGuest else {
            return [error(0, "Too many transfers; try again later", to: datagram)]
        }
        let isV6: Bool = if case .v6 = datagram.addresses { true } else { false }
        let largestBlock = max(Self.blockSizeRange.lowerBound, mtu - (isV6 ? 40 : 20) - 8 - 4)
        var blockSize = 512
        var windowSize = 1
        var timeout = limits.defaultTimeout
        var granted: [(String, String)] = []
        var i = 2
        while i + 1 < fields.count {
            let name = String(decoding: fields[i], as: UTF8.self).lowercased()
            let text = String(decoding: fields[i + 1], as: UTF8.self)
            i += 2
            guard granted.allSatisfy({ $0.0 != name }) else { continue }
            let value = text.utf8.count <= 12 ? Int(text) : nil
            switch name {
            case "blksize":
                guard let v = value, Self.blockSizeRange.contains(v) else {
                    return [error(8, "Option refused: blksize \(text) (8 to 65464)", to: datagram)]
                }
                blockSize = min(v, largestBlock)
                granted.append((name, "\(blockSize)"))
            case "windowsize":
                guard let v = value, (1...65535).contains(v) else {
                    return [error(8, "Option refused: windowsize \(text) (1 to 65535)", to: datagram)]
                }
                windowSize = v  // capped below, once blksize is known
                granted.append((name, ""))
            case "timeout":
                guard let v = value, (1...255).contains(v) else {
                    return [error(8, "Option refused: timeout \(text) (1 to 255)", to: datagram)]
                }
                timeout = Int64(v) * 1_000_000_000
                granted.append((name, "\(v)"))
            case "tsize":
                guard value != nil else { continue }
                granted.append((name, ""))
            default:
                continue  // unknown options are left out of the OACK (RFC 2347)
            }
        }
        let file: any TFTPFile
        switch files.open(path) {
        case .success(let f): file = f
        case .failure(.notFound): return [error(1, "File not found", to: datagram)]
        case .failure(.accessViolation): return [error(2, "Access violation", to: datagram)]
        }
        windowSize = max(1, min(windowSize, limits.maxWindowSize, limits.maxWindowBytes / blockSize))
        granted = granted.map { name, value in
            switch name {
            case "windowsize": (name, "\(windowSize)")
            case "tsize": (name, "\(file.size)")
            default: (name, value)
            }
        }
        var session = Session(
            path: path, template: datagram.reply([], from: datagram.destinationMAC.isGroup ? serverMAC : datagram.destinationMAC),
            file: file, blockSize: blockSize, windowSize: windowSize, baseTimeout: timeout, size: file.size,
            lastBlock: file.size / UInt64(blockSize) + 1)
        counters.sessionsStarted += 1
        if granted.isEmpty {
            sessions[key] = session
            return sendWindow(key: key, now: now)
        }
        var oack: [UInt8] = [0, 6]
        for (name, value) in granted { oack += Array(name.utf8) + [0] + Array(value.utf8) + [0] }
        session.oack = oack
        session.deadline = now + timeout
        sessions[key] = session
        return [frame(oack, template: session.template)]
    }

    // MARK: ACK

    private mutating func acknowledged(_ number: UInt16, key: Key, now: Int64) -> [[UInt8]] {
        guard var s = sessions[key] else { return [] }
        if s.oack != nil {
            guard number == 0 else { return [] }
            s.oack = nil
            s.retries = 0
            sessions[key] = s
            return sendWindow(key: key, now: now)
        }
        // The absolute block this number can mean: the latest sent one with these low bits.
        let back = UInt64(UInt16(truncatingIfNeeded: s.sentHighest) &- number)
        guard back <= s.sentHighest - s.acked else { return [] }  // older than the last ACK: ignored
        let block = s.sentHighest - back
        if block == s.acked {
            // A repeated ACK: the client still lacks block acked+1. Send the window again,
            // but not more often than the holdoff.
            guard now - s.windowSentAt >= limits.duplicateACKHoldoff else { return [] }
            return sendWindow(key: key, now: now)
        }
        s.acked = block
        s.retries = 0
        sessions[key] = s
        if block >= s.lastBlock {
            counters.sessionsCompleted += 1
            record(.served(guest: key.guest, path: s.path, bytes: s.size))
            end(key)
            return []
        }
        return sendWindow(key: key, now: now)
    }

    /// Sends blocks acked+1 onward, one window's worth, and arms the timer.
    private mutating func sendWindow(key: Key, now: Int64) -> [[UInt8]] {
        guard var s = sessions[key] else { return [] }
        if s.file.hasChanged() {
            let failure = error(0, "File changed during the transfer; ask again", template: s.template)
            record(.abandoned(guest: key.guest, path: s.path, reason: "the file changed on disk"))
            end(key)
            return [failure]
        }
        var frames: [[UInt8]] = []
        let first = s.acked + 1
        let last = min(s.acked + UInt64(s.windowSize), s.lastBlock)
        for block in first...last {
            let offset = (block - 1) * UInt64(s.blockSize)
            let expected = block == s.lastBlock ? Int(s.size - offset) : s.blockSize
            guard let data = s.file.read(at: offset, count: expected), data.count == expected else {
                let failure = error(0, "File changed or unreadable during the transfer", template: s.template)
                record(.abandoned(guest: key.guest, path: s.path, reason: "the file was cut short or could not be read"))
                end(key)
                return frames + [failure]
            }
            if block <= s.sentHighest { counters.retransmissions += 1 }
            counters.bytesSent += data.count
            frames.append(frame([0, 3] + be16(UInt16(truncatingIfNeeded: block)) + data, template: s.template))
        }
        s.sentHighest = max(s.sentHighest, last)
        s.windowSentAt = now
        s.deadline = now + wait(s)
        sessions[key] = s
        return frames
    }

    private func wait(_ s: Session) -> Int64 {
        let cap = max(s.baseTimeout, limits.maxTimeout)
        var w = s.baseTimeout
        for _ in 0..<s.retries where w < cap { w *= 2 }
        return min(w, cap)
    }

    private mutating func end(_ key: Key) {
        sessions.removeValue(forKey: key)?.file.close()
    }

    // MARK: Packets

    private mutating func frame(_ payload: [UInt8], template: UDPDatagram) -> [UInt8] {
        var d = template
        d.payload = payload
        let id = ipID
        ipID &+= 1
        return d.frame(ipID: id)
    }

    private mutating func error(_ code: UInt16, _ message: String, template: UDPDatagram) -> [UInt8] {
        counters.errorsSent += 1
        return frame([0, 5] + be16(code) + Array(message.utf8) + [0], template: template)
    }

    private mutating func error(_ code: UInt16, _ message: String, to request: UDPDatagram) -> [UInt8] {
        refusal = (code, message)
        return error(code, message, template: request.reply([], from: request.destinationMAC.isGroup ? serverMAC : request.destinationMAC))
    }

    /// The NUL-terminated strings of an RRQ, in order; an unterminated tail is dropped.
    static func strings(_ bytes: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var out: [ArraySlice<UInt8>] = []
        var start = bytes.startIndex
        for i in bytes.indices where bytes[i] == 0 {
            out.append(bytes[start..<i])
            start = i + 1
        }
        return out
    }

    /// The requested name as a path below the root, or nil if it must be refused: empty,
    /// too long, or with a `..` component. A leading `/` means the root, as in libslirp
    /// and in tftpd's `-s`; empty and `.` components are dropped.
    static func checkedPath(_ name: ArraySlice<UInt8>) -> String? {
        guard !name.isEmpty, name.count <= maxFilenameLength else { return nil }
        var parts: [Substring] = []
        let text = String(decoding: name, as: UTF8.self)
        guard !text.contains("\u{FFFD}") else { return nil }  // not UTF-8
        for part in text.split(separator: "/", omittingEmptySubsequences: true) {
            if part == ".." { return nil }
            if part != "." { parts.append(part) }
        }
        guard !parts.isEmpty, !text.hasSuffix("/") else { return nil }
        return parts.joined(separator: "/")
    }

    static func addressBytes(_ a: UDPDatagram.Addresses) -> [UInt8] {
        switch a {
        case .v4(let source, _): be32(source)
        case .v6(let source, _): source
        }
    }
}
