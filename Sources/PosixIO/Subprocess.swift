// Running a helper program to completion: input on its stdin, its stdout collected.
//
// Theory of operation. posix_spawn starts the program with two pipes for stdin and
// stdout (stderr is ours, so its complaints reach the daemon's log), a cleared signal
// mask and default dispositions (the daemon blocks its signals for signalfd and ignores
// SIGPIPE; a child must not inherit either). One poll loop then feeds stdin and drains
// stdout together, so neither side can block the other on a full pipe, until stdout
// ends; a child past its deadline or its output limit is killed. The caller's thread
// waits throughout: this is for short jobs (parsing a config file), not for services.
import CLinux
import Glibc

/// What a finished helper left: its exit status (128 + N when killed by signal N) and stdout.
public struct SubprocessResult: Sendable {
    public var status: Int32
    public var output: [UInt8]
}

/// Runs `path` with `arguments`, writes `input` to its stdin, and returns its stdout
/// once it exits. Throws when it cannot start, outlives `timeoutMilliseconds`, or writes
/// more than `outputLimit` bytes (it is killed then).
public func runSubprocess(
    _ path: String, arguments: [String] = [], input: [UInt8], outputLimit: Int, timeoutMilliseconds: Int
) throws(IOError) -> SubprocessResult {
    var toChild: [Int32] = [-1, -1], fromChild: [Int32] = [-1, -1]
    try syscallBlocking("pipe2") { pipe2(&toChild, O_CLOEXEC) }
    let stdinRead = Descriptor(owning: toChild[0]), stdinWrite = Descriptor(owning: toChild[1])
    try syscallBlocking("pipe2") { pipe2(&fromChild, O_CLOEXEC) }
    let stdoutRead = Descriptor(owning: fromChild[0]), stdoutWrite = Descriptor(owning: fromChild[1])

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    // dup2 clears close-on-exec on the copies; every other descriptor of ours stays shut.
    posix_spawn_file_actions_adddup2(&actions, stdinRead.raw, 0)
    posix_spawn_file_actions_adddup2(&actions, stdoutWrite.raw, 1)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t(), all = sigset_t()
    sigemptyset(&none)
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    let argv = ([path] + arguments).map { strdup($0) }
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let spawned = (argv + [nil]).withUnsafeBufferPointer { args in
        posix_spawn(&pid, path, &actions, &attributes, UnsafeMutablePointer(mutating: args.baseAddress!), environ)
    }
    guard spawned == 0 else { throw IOError(call: "posix_spawn", code: spawned, detail: path) }
    stdinRead.close()
    stdoutWrite.close()

    var output: [UInt8] = []
    var failure: IOError?
    do {
        output = try exchange(input, write: stdinWrite, read: stdoutRead, limit: outputLimit,
                              deadline: monotonicNanoseconds() + Int64(timeoutMilliseconds) * 1_000_000, path: path)
    } catch {
        failure = error
        kill(pid, SIGKILL)
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    if let failure { throw failure }
    // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import as macros.
    let code = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    return SubprocessResult(status: code, output: output)
}

/// Feeds `input` and collects output until the child closes its stdout.
private func exchange(_ input: [UInt8], write: Descriptor, read: Descriptor, limit: Int,
                      deadline: Int64, path: String) throws(IOError) -> [UInt8] {
    _ = fcntl(write.raw, F_SETFL, fcntl(write.raw, F_GETFL) | O_NONBLOCK)
    var written = 0
    if input.isEmpty { write.close() }
    var output: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let left = deadline - monotonicNanoseconds()
        guard left > 0 else { throw IOError(call: "wait", code: ETIMEDOUT, detail: path) }
        var fds = [pollfd(fd: read.raw, events: Int16(POLLIN), revents: 0)]
        if write.isOpen { fds.append(pollfd(fd: write.raw, events: Int16(POLLOUT), revents: 0)) }
        _ = try syscall("poll") { poll(&fds, nfds_t(fds.count), Int32(min(left / 1_000_000 + 1, 60_000))) }
        if write.isOpen, fds[1].revents != 0 {
            let result = input.withUnsafeBytes { bytes in
                Glibc.write(write.raw, bytes.baseAddress! + written, bytes.count - written)
            }
            if result > 0 {
                written += result
                if written == input.count { write.close() }
            } else if result == -1 && errno != EAGAIN && errno != EINTR {
                // The child quit reading (EPIPE): its answer, or its exit, tells why.
                write.close()
            }
        }
        if fds[0].revents != 0 {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(read.raw, $0.baseAddress, $0.count) }
            if n == 0 { return output }
            if n > 0 {
                output += chunk[0..<n]
                guard output.count <= limit else { throw IOError(call: "read", code: EFBIG, detail: path) }
            } else if errno != EINTR && errno != EAGAIN {
                throw IOError(call: "read", code: errno, detail: path)
            }
        }
    }
}
