#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// Hands a push from the worker that answers a read to the one thread that pushes. A worker
/// never pushes itself: a push (NOTIFY_STORE) waits for the page locks of reads in flight,
/// which only a worker's answer releases; with every worker pushing, none is left to answer (a
/// cold walk hung so, both threads in NOTIFY_STORE). The worker does wait, briefly, for the
/// push before it answers: while the reader waits for that answer it locks no page of the next
/// files, so the push is not raced by the reads it is meant to spare; past the wait the worker
/// answers anyway and the push goes on behind it.
final class PushQueue: @unchecked Sendable {
    private struct Job {
        var place: SiblingPrefetch.Place
        var ticket: UInt64
        /// When a push ahead of reads was queued (CLOCK_MONOTONIC, ns); nil: a worker waits.
        var queuedAhead: Int?
        /// Queued at the listing: sent only once the reader has asked past it (`Gate`).
        var awaitsInodes = false
    }
    // pthread primitives (not Mutex): the worker's wait has a deadline.
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var jobs: [Job] = []
    private var issued: UInt64 = 0
    private var completed: UInt64 = 0
    private var stopped = false
    /// Directories of pushes queued at their listing, and those of them whose reader has since
    /// asked past the listing (the kernel has made their files' inodes).
    private var awaitingInodes: Set<UInt64> = []
    /// ... and how many of its files each has sent since.
    private var inodesReady: [UInt64: Int] = [:]
    /// Jobs not yet taken, at most: beyond, a push is dropped (the reader is ahead anyway).
    static let limit = 64
    /// How long a worker holds its answer for the push: long enough for a directory's small
    /// files, short enough that a push stuck behind other reads costs little.
    static let waitNanoseconds = 5_000_000
    /// A push ahead of reads that the pushing thread starts later than this after it was queued
    /// is late: the reader is at those files already, on a machine whose CPUs are taken.
    static let aheadStartNanoseconds = 1_000_000
    /// A push ahead of reads that takes longer than this (a directory's 512 KiB take ~0.3 ms
    /// on an idle machine) was preempted: its thread holds page locks the reader then waits for.
    static let aheadRunNanoseconds = 2_000_000

    /// How a push came to its thread.
    enum Start {
        /// A worker waits for it (or waited, up to the bound).
        case waitedFor
        /// Ahead of reads, in time.
        case ahead
        /// Ahead of reads, taken past `aheadStartNanoseconds`.
        case late
    }

    init() {
        pthread_mutex_init(lock, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(changed, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(lock)
        lock.deallocate()
        changed.deallocate()
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }

    /// With the lock held: waits until `done()`, the queue stops, or `nanoseconds` pass.
    private func waitLocked(nanoseconds: Int, until done: () -> Bool) {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let total = Int(deadline.tv_nsec) + nanoseconds
        deadline.tv_sec += total / 1_000_000_000
        deadline.tv_nsec = total % 1_000_000_000
        while !done() && !stopped {
            if pthread_cond_timedwait(changed, lock, &deadline) == ETIMEDOUT { return }
        }
    }

    /// Queues a push and waits (up to `waitNanoseconds`) for it to be done. Never blocks longer.
    func pushAndWait(_ place: SiblingPrefetch.Place) {
        locked {
            guard !stopped, jobs.count < PushQueue.limit else { return }
            issued += 1
            let ticket = issued
            jobs.append(Job(place: place, ticket: ticket))
            pthread_cond_broadcast(changed)
            waitLocked(nanoseconds: PushQueue.waitNanoseconds) { completed >= ticket }
        }
    }

    /// Queues a push and returns at once (a push ahead of reads: nobody waits for it).
    /// `awaitingInodes`: queued at the directory's listing, before the kernel has made the
    /// inodes of its files; the push reads its files at once and sends them once `inodesMade`.
    func push(_ place: SiblingPrefetch.Place, awaitingInodes: Bool = false) {
        locked {
            guard !stopped, jobs.count < PushQueue.limit else { return }
            issued += 1
            jobs.append(
                Job(place: place, ticket: issued, queuedAhead: monotonicNanoseconds(), awaitsInodes: awaitingInodes))
            if awaitingInodes { self.awaitingInodes.insert(place.directory) }
            pthread_cond_broadcast(changed)
        }
    }

    /// Files a push queued at its listing sends before the reader is told the listing ended
    /// (`inodesMade`), and how long the reader is kept waiting for them at most.
    static let headStartFiles = 2
    static let headStartNanoseconds = 500_000

    /// The reader asked past the listing of `directory`: a push queued at that listing may send.
    /// Returns once it has sent its first `headStartFiles` (or ended, or after
    /// `headStartNanoseconds`): the reader, answered, opens the first files at once, and
    /// would otherwise be there before the push and ask for each of them. False if no push is
    /// queued or running (the caller may start one).
    func inodesMade(_ directory: UInt64) -> Bool {
        locked {
            guard awaitingInodes.contains(directory) else { return false }
            if inodesReady[directory] == nil { inodesReady[directory] = 0 }
            pthread_cond_broadcast(changed)
            waitLocked(nanoseconds: PushQueue.headStartNanoseconds) {
                !awaitingInodes.contains(directory) || inodesReady[directory, default: 0] >= PushQueue.headStartFiles
            }
            return true
        }
    }

    /// What a push queued at its directory's listing asks before it sends.
    struct Gate {
        let directory: UInt64
        let queue: PushQueue

        /// Whether the kernel has made the inodes (the reader asked past the listing).
        var isOpen: Bool { queue.locked { queue.inodesReady[directory] != nil } }

        /// One more file sent since the gate opened (for `inodesMade`'s wait).
        func sent() {
            queue.locked {
                queue.inodesReady[directory, default: 0] += 1
                pthread_cond_broadcast(queue.changed)
            }
        }

        /// Waits for that, up to `waitNanoseconds`; false if it did not come (a reader that
        /// stopped listing, or a queue stopped).
        func waitOpen() -> Bool {
            queue.locked {
                queue.waitLocked(nanoseconds: PushQueue.waitNanoseconds) { queue.inodesReady[directory] != nil }
                return queue.inodesReady[directory] != nil && !queue.stopped
            }
        }
    }

    func stop() {
        locked {
            stopped = true
            pthread_cond_broadcast(changed)
        }
    }

    /// The pushing thread: runs `push` for each job until stopped; `gate` is there for a push
    /// queued at its listing.
    func serve(_ push: (_ place: SiblingPrefetch.Place, _ start: Start, _ gate: Gate?) -> Void) {
        while true {
            pthread_mutex_lock(lock)
            while jobs.isEmpty && !stopped { pthread_cond_wait(changed, lock) }
            if stopped {
                pthread_mutex_unlock(lock)
                return
            }
            let job = jobs.removeFirst()
            pthread_mutex_unlock(lock)
            let start: Start =
                switch job.queuedAhead {
                case nil: .waitedFor
                case let queued? where monotonicNanoseconds() - queued > PushQueue.aheadStartNanoseconds: .late
                case _?: .ahead
                }
            push(job.place, start, job.awaitsInodes ? Gate(directory: job.place.directory, queue: self) : nil)
            locked {
                if job.awaitsInodes {
                    awaitingInodes.remove(job.place.directory)
                    inodesReady[job.place.directory] = nil
                }
                completed = job.ticket
                pthread_cond_broadcast(changed)
            }
        }
    }
}
