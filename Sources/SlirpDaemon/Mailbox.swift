import PosixIO
import SlirpAPI
import Synchronization

/// Work that other threads hand to the loop thread.
///
/// A job is a closure that the loop runs between poll iterations with the daemon as
/// its argument: only the loop ever touches daemon state, and posting threads see
/// nothing but the Sendable value the job hands back. Posting wakes the loop through
/// an eventfd, so a job waits at most one iteration's work, never a poll timeout.
final class Mailbox: Sendable {
    typealias Job = @Sendable (Daemon) -> Void

    private let jobs = Mutex<[Job]>([])
    let wake: WakeUp

    init() throws(IOError) {
        wake = try WakeUp()
    }

    func post(_ job: @escaping Job) {
        jobs.withLock { $0.append(job) }
        wake.signal()
    }

    /// Takes every posted job, oldest first.
    func take() -> [Job] {
        jobs.withLock { queued in
            defer { queued.removeAll() }
            return queued
        }
    }

    /// Runs `body` on the loop thread and returns its result to the awaiting caller.
    func ask<T: Sendable>(_ body: @escaping @Sendable (Daemon) throws(APIError) -> T) async throws(APIError) -> T {
        let result: Result<T, APIError> = await withCheckedContinuation { continuation in
            post { daemon in
                continuation.resume(returning: Result { () throws(APIError) in try body(daemon) })
            }
        }
        return try result.get()
    }
}
