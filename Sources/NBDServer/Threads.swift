#if canImport(Glibc)
import Glibc
#endif
import SystemCalls
import SystemPackage

/// A mutex with one condition variable, on pthreads: the serving loop uses plain threads with
/// blocking syscalls, so it waits on conditions rather than on async tasks.
final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        // Timed waits measure against the monotonic clock: a wall-clock step must not stretch them.
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits for a broadcast; call only inside `withLock`.
    func wait() { pthread_cond_wait(condition, mutex) }

    /// Waits for a broadcast or until `microseconds` pass; call only inside `withLock`.
    func wait(microseconds: UInt64) {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let nanoseconds = UInt64(deadline.tv_nsec) + (microseconds % 1_000_000) * 1000
        deadline.tv_sec += Int(microseconds / 1_000_000) + Int(nanoseconds / 1_000_000_000)
        deadline.tv_nsec = Int(nanoseconds % 1_000_000_000)
        pthread_cond_timedwait(condition, mutex, &deadline)
    }

    func broadcast() { pthread_cond_broadcast(condition) }
}

/// A started pthread that can be joined (the serving loops use threads with blocking syscalls).
public struct JoinableThread: @unchecked Sendable {
    private let thread: pthread_t

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    public init(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<Body>.fromOpaque(raw).takeRetainedValue().run()
            return nil
        }, context)
        guard result == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            throw SystemError("pthread_create", errno: Errno(rawValue: result))
        }
        self.thread = thread
    }

    public func join() { pthread_join(thread, nil) }
}

/// A level-triggered "stop now" flag that blocked `poll` calls can watch: a pipe written once
/// and never drained, so every poller sees it readable.
public final class StopSignal: @unchecked Sendable {
    /// The read end, for poll.
    let descriptor: Int32
    private let writeEnd: Int32
    private let state = ConditionLock()
    private var raised = false

    public init() throws(SystemError) {
        var ends: [Int32] = [-1, -1]
        try retryingOnInterrupt("pipe") { pipe(&ends) }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        descriptor = ends[0]
        writeEnd = ends[1]
    }

    deinit {
        close(descriptor)
        close(writeEnd)
    }

    public func raise() {
        let first = state.withLock { () -> Bool in
            defer { raised = true }
            return !raised
        }
        guard first else { return }
        var one: UInt8 = 1
        _ = write(writeEnd, &one, 1)
    }

    public var isRaised: Bool { state.withLock { raised } }
}
