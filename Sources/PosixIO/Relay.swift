import Glibc

/// Copies bytes both ways between descriptor `local` and a new TCP connection to
/// `host:port` until both directions have closed.
///
/// This runs in a child process that libslirp spawns for each guest connection to a
/// `guestfwd=...-tcp:HOST:PORT` rule (its stdin/stdout are that connection), so it is
/// ordinary blocking code: the daemon's loop never waits on it.
public func relay(local: Int32, host: String, port: UInt16) throws(IOError) {
    let remote = try connectTCP(host: host, port: port)
    var open = (toRemote: true, toLocal: true)
    var buffer = [UInt8](repeating: 0, count: 64 * 1024)
    while open.toRemote || open.toLocal {
        var fds = [
            pollfd(fd: open.toRemote ? local : -1, events: Int16(POLLIN), revents: 0),
            pollfd(fd: open.toLocal ? remote.raw : -1, events: Int16(POLLIN), revents: 0),
        ]
        guard poll(&fds, 2, -1) >= 0 else {
            if errno == EINTR { continue }
            throw IOError(call: "poll", code: errno)
        }
        if fds[0].revents != 0 {
            open.toRemote = try pump(from: local, to: remote.raw, &buffer)
            if !open.toRemote { shutdown(remote.raw, Int32(SHUT_WR)) }
        }
        if fds[1].revents != 0 {
            open.toLocal = try pump(from: remote.raw, to: local == 0 ? 1 : local, &buffer)
            if !open.toLocal { shutdown(local == 0 ? 1 : local, Int32(SHUT_WR)) }
        }
    }
}

/// Moves one read's worth of bytes; false at end of stream or a reset.
private func pump(from source: Int32, to sink: Int32, _ buffer: inout [UInt8]) throws(IOError) -> Bool {
    let n = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
    if n < 0 && errno == EINTR { return true }
    guard n > 0 else { return false }
    var sent = 0
    while sent < n {
        let m = buffer.withUnsafeBytes { send(sink, $0.baseAddress.map { $0 + sent }, n - sent, Int32(MSG_NOSIGNAL)) }
        if m < 0 {
            if errno == EINTR { continue }
            return false
        }
        sent += m
    }
    return true
}
