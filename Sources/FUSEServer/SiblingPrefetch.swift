#if canImport(Glibc)
import Glibc
#endif
import EROFSReader
import FUSEProtocol
import Synchronization
import SystemCalls

/// Directory readahead for small files: when a file is read from its start, the small regular
/// files after it in its directory are pushed into their page caches (FUSE_NOTIFY_STORE), up
/// to a byte budget, so that a walk reading every file costs about one READ round trip per
/// budget's worth of files instead of one per file. The round trips, not the reader, are what
/// a cold walk spends its time on (two context switches each; BENCHMARKS.md).
///
/// Only what READDIRPLUS showed is known: a file's directory and its place there. The state is
/// a cache (bounded, cleared when full): losing it costs speed, never correctness, and a later
/// worker starts without it. A push the kernel cannot take (the inode already forgotten) is
/// refused with ENOENT and dropped. Pushes are made by one thread of their own (PushQueue),
/// never by a worker.
public final class SiblingPrefetch: Sendable {
    /// Bytes pushed after one read, at most; 0 turns the prefetch off.
    public let budget: Int
    /// Files larger than this are left to the kernel's readahead of their own.
    public static let largestFile: UInt64 = 64 * 1024
    static let maximumFiles = 128
    /// Files whose place is remembered, at most (~40 bytes each).
    static let capacity = 1 << 16

    public struct Place: Equatable, Sendable {
        public var directory: UInt64
        /// The readdir cookie of the entry after the file's own.
        public var next: UInt64
    }

    struct State {
        var places: [UInt64: Place] = [:]
        /// Per directory, the cookie up to which its files were pushed (or passed over).
        var pushedThrough: [UInt64: UInt64] = [:]
    }
    private let state = Mutex(State())

    public init(budget: Int) { self.budget = max(0, budget) }

    /// READDIRPLUS listed regular file `nid` in `directory`; `next` is the cookie after it.
    func noteListed(_ nid: UInt64, in directory: UInt64, next: UInt64) {
        guard budget > 0 else { return }
        state.withLock { state in
            if state.places.count >= SiblingPrefetch.capacity { state = State() }
            // A hard link listed again (same directory or another) keeps its first place: a
            // later one would skip the files between.
            if state.places[nid] == nil { state.places[nid] = Place(directory: directory, next: next) }
        }
    }

    /// Where to push from after a read from the start of `nid` (its directory and the cookie
    /// after the files already pushed), or nil.
    func claim(after nid: UInt64) -> Place? {
        guard budget > 0 else { return nil }
        return state.withLock { state in
            guard let place = state.places[nid] else { return nil }
            let start = max(place.next, state.pushedThrough[place.directory] ?? 0)
            guard start != .max else { return nil }  // the whole directory was pushed
            // Claimed now, so that a read of a neighbour meanwhile does not push it again.
            state.pushedThrough[place.directory] = start
            return Place(directory: place.directory, next: start)
        }
    }

    /// Records that the files of `directory` before cookie `end` were considered (.max: all).
    func finish(_ directory: UInt64, through end: UInt64) {
        state.withLock { state in
            state.pushedThrough[directory] = max(end, state.pushedThrough[directory] ?? 0)
        }
    }
}

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
    }
    // pthread primitives (not Mutex): the worker's wait has a deadline.
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var jobs: [Job] = []
    private var issued: UInt64 = 0
    private var completed: UInt64 = 0
    private var stopped = false
    /// Jobs not yet taken, at most: beyond, a push is dropped (the reader is ahead anyway).
    static let limit = 64
    /// How long a worker holds its answer for the push: long enough for a directory's small
    /// files, short enough that a push stuck behind other reads costs little.
    static let waitNanoseconds = 5_000_000

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

    /// Queues a push and waits (up to `waitNanoseconds`) for it to be done. Never blocks longer.
    func pushAndWait(_ place: SiblingPrefetch.Place) {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let nanoseconds = Int(deadline.tv_nsec) + PushQueue.waitNanoseconds
        deadline.tv_sec += nanoseconds / 1_000_000_000
        deadline.tv_nsec = nanoseconds % 1_000_000_000
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        guard !stopped, jobs.count < PushQueue.limit else { return }
        issued += 1
        let ticket = issued
        jobs.append(Job(place: place, ticket: ticket))
        pthread_cond_broadcast(changed)
        while completed < ticket && !stopped {
            if pthread_cond_timedwait(changed, lock, &deadline) == ETIMEDOUT { return }
        }
    }

    func stop() {
        locked {
            stopped = true
            pthread_cond_broadcast(changed)
        }
    }

    /// The pushing thread: runs `push` for each job until stopped.
    func serve(_ push: (SiblingPrefetch.Place) -> Void) {
        while true {
            pthread_mutex_lock(lock)
            while jobs.isEmpty && !stopped { pthread_cond_wait(changed, lock) }
            if stopped {
                pthread_mutex_unlock(lock)
                return
            }
            let job = jobs.removeFirst()
            pthread_mutex_unlock(lock)
            push(job.place)
            locked {
                completed = job.ticket
                pthread_cond_broadcast(changed)
            }
        }
    }
}

extension FUSEOperations {
    /// Where pushing starts after a read of `request`, if it is a read from the start of a
    /// file READDIRPLUS showed whose directory has small files left to push.
    public func prefetchPlace(for request: FUSERequest) -> SiblingPrefetch.Place? {
        guard let prefetch, case .read(let read) = request.operation, read.offset == 0,
            let nid = nodes.nid(of: request.header.nodeID)
        else { return nil }
        return prefetch.claim(after: nid)
    }

    /// The FUSE_NOTIFY_STORE messages with the small files of a directory from `place` on,
    /// within the budget; records how far it got.
    public func prefetchNotifications(from place: SiblingPrefetch.Place) -> [FUSEResponse] {
        guard let prefetch, let directory = try? filesystem.inode(nid: place.directory), directory.kind == .directory
        else { return [] }
        var messages: [FUSEResponse] = []
        var bytes = 0
        var cookie = DirectoryCookie(offset: place.next, blockSize: blockSize)
        let blocks = (try? filesystem.directoryBlockCount(directory)) ?? 0
        scan: while cookie.block < blocks {
            guard let entries = try? filesystem.directoryBlock(directory, index: cookie.block) else { break }
            for index in cookie.entry..<max(cookie.entry, entries.count) {
                let entry = entries[index]
                guard entry.fileType == 1, let file = try? filesystem.inode(nid: entry.nid), file.kind == .file,
                    file.size > 0, file.size <= SiblingPrefetch.largestFile
                else { continue }
                guard bytes + Int(file.size) <= prefetch.budget, messages.count < SiblingPrefetch.maximumFiles else {
                    cookie.entry = index
                    break scan
                }
                // A file that cannot be read is skipped: its own READ reports the error.
                guard let data = try? filesystem.read(file, at: 0, count: Int(file.size)), data.count == file.size
                else { continue }
                bytes += data.count
                messages.append(
                    .data(
                        header: FUSEReply.notifyStoreHeader(
                            nodeID: nodes.nodeID(of: entry.nid), offset: 0, length: data.count),
                        payload: data))
            }
            cookie = DirectoryCookie(block: cookie.block + 1, entry: 0)
        }
        prefetch.finish(place.directory, through: cookie.block >= blocks ? .max : cookie.offset(blockSize: blockSize))
        return messages
    }
}
