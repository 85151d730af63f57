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
/// A walk that reads what it lists (`find | xargs cat`, a backup, a checksum pass) gets its next
/// directories pushed as soon as they are listed, ahead of their first read: the pushing thread
/// then works on the other CPU while the reader opens the files, where a push after the first
/// read holds that read's answer for the whole push. Only reads earn this (`walkCredit`
/// listings per read that starts a push), so a walk that only lists (`find`, `ls -lR`) pushes
/// nothing, and one that stops reading pushes at most `walkCredit` directories more.
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

    /// Directory listings pushed ahead of their first read, per read that starts a push.
    static let walkCredit = 16
    /// Reads that reach a directory while it is pushed ahead, past which the pushing thread is
    /// taken to be starved of CPU (a loaded machine): the reader overtakes it and pays a round
    /// trip per file, so the next directories wait for their push again. The first file of a
    /// directory is often read before its push reaches it, even on an idle machine.
    static let overtakesTolerated = 2

    struct State {
        var places: [UInt64: Place] = [:]
        /// Per directory, the cookie up to which its files were pushed (or passed over).
        var pushedThrough: [UInt64: UInt64] = [:]
        /// Directories whose push is queued or running: not claimed again until it ends.
        var pushing: Set<UInt64> = []
        /// Directories READDIRPLUS listed to their end (their files have inodes in the kernel
        /// to push to once the reply is read).
        var listed: Set<UInt64> = []
        /// Files read from their start by a worker: a push running meanwhile skips them.
        var read: Set<UInt64> = []
        /// Listings that may still be pushed before any of their files is read.
        var credit = 0
        /// Directories pushed ahead of their reads, by how many of their files a worker was
        /// asked for meanwhile.
        var overtakes: [UInt64: Int] = [:]
    }
    private let state = Mutex(State())

    /// Whether listings are pushed ahead of their reads (`fuse.prefetch_ahead`).
    public enum Ahead: String, Sendable, CaseIterable {
        /// When a CPU is idle (IdleCPU).
        case auto
        case on
        case off
    }
    public let ahead: Ahead

    public init(budget: Int, ahead: Ahead = .auto) {
        self.budget = max(0, budget)
        self.ahead = ahead
    }

    /// READDIRPLUS listed regular file `nid` in `directory`; `next` is the cookie after it.
    func noteListed(_ nid: UInt64, in directory: UInt64, next: UInt64) {
        guard budget > 0 else { return }
        state.withLock { state in
            if state.places.count >= SiblingPrefetch.capacity { state.forgetPlaces() }
            // A hard link listed again (same directory or another) keeps its first place: a
            // later one would skip the files between.
            if state.places[nid] == nil { state.places[nid] = Place(directory: directory, next: next) }
        }
    }

    /// READDIRPLUS listed `directory` to its end.
    func noteListedToEnd(_ directory: UInt64) {
        guard budget > 0 else { return }
        state.withLock { state in
            if state.listed.count >= SiblingPrefetch.capacity { state.forgetPlaces() }
            state.listed.insert(directory)
        }
    }

    /// Where to push from after a read from the start of `nid` (its directory and the cookie
    /// after the files already pushed), or nil.
    func claim(after nid: UInt64) -> Place? {
        guard budget > 0 else { return nil }
        return state.withLock { state in
            if state.read.count >= SiblingPrefetch.capacity { state.read = [] }
            state.read.insert(nid)
            guard let place = state.places[nid] else { return nil }
            if let count = state.overtakes[place.directory] {
                // Pushed ahead, and the reader got here first.
                state.overtakes[place.directory] = count + 1
                if count + 1 > SiblingPrefetch.overtakesTolerated && ahead == .auto { state.credit = 0 }
                return nil
            }
            guard !state.pushing.contains(place.directory) else { return nil }
            // The reader reads what it listed: push its next listings ahead.
            state.credit = SiblingPrefetch.walkCredit
            let start = max(place.next, state.pushedThrough[place.directory] ?? 0)
            guard start != .max else { return nil }  // the whole directory was pushed
            // Claimed now, so that a read of a neighbour meanwhile does not push it again.
            state.pushing.insert(place.directory)
            return Place(directory: place.directory, next: start)
        }
    }

    /// Where to push from once READDIRPLUS has listed `directory` to its end: its first file,
    /// if reads have earned a push and none of its files was pushed yet; else nil.
    func claimListing(_ directory: UInt64) -> Place? {
        guard budget > 0 else { return nil }
        return state.withLock { state in
            guard state.credit > 0, state.listed.contains(directory), !state.pushing.contains(directory),
                state.pushedThrough[directory] == nil
            else { return nil }
            state.credit -= 1
            state.pushing.insert(directory)
            state.overtakes[directory] = 0
            return Place(directory: directory, next: 0)
        }
    }

    /// A push ahead of reads that started late (PushQueue): it is dropped, as the reader is at
    /// those files already (a read there starts a push the worker waits for, as without a push
    /// ahead), and the next listings wait for a read again.
    func abandon(_ place: Place) {
        state.withLock { state in
            state.pushing.remove(place.directory)
            state.overtakes[place.directory] = nil
            state.credit = 0
        }
    }

    /// A push ahead of reads ran past PushQueue.aheadRunNanoseconds: the next listings wait
    /// for a read again.
    func spendCredit() { state.withLock { $0.credit = 0 } }

    /// Whether reads have earned a push ahead (claimListing may give one).
    var hasCredit: Bool { state.withLock { $0.credit > 0 } }

    /// Whether a worker was asked for `nid` from its start (a push leaves it out).
    func wasRead(_ nid: UInt64) -> Bool { state.withLock { $0.read.contains(nid) } }

    /// Records that the files of `directory` before cookie `end` were considered (.max: all).
    func finish(_ directory: UInt64, through end: UInt64) {
        state.withLock { state in
            state.pushedThrough[directory] = max(end, state.pushedThrough[directory] ?? 0)
            state.pushing.remove(directory)
            state.overtakes[directory] = nil
        }
    }
}

extension SiblingPrefetch.State {
    /// Full: what is remembered of listings goes (pushes running keep their claim).
    mutating func forgetPlaces() {
        places = [:]
        pushedThrough = [:]
        listed = []
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
        /// When a push ahead of reads was queued (CLOCK_MONOTONIC, ns); nil: a worker waits.
        var queuedAhead: Int?
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

    /// Queues a push and returns at once (a push ahead of reads: nobody waits for it).
    func push(_ place: SiblingPrefetch.Place) {
        locked {
            guard !stopped, jobs.count < PushQueue.limit else { return }
            issued += 1
            jobs.append(Job(place: place, ticket: issued, queuedAhead: monotonicNanoseconds()))
            pthread_cond_broadcast(changed)
        }
    }

    func stop() {
        locked {
            stopped = true
            pthread_cond_broadcast(changed)
        }
    }

    /// The pushing thread: runs `push` for each job until stopped.
    func serve(_ push: (_ place: SiblingPrefetch.Place, _ start: Start) -> Void) {
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
            push(job.place, start)
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

    /// Where pushing starts once a directory READDIRPLUS listed to its end is asked for the
    /// entries after its last one (a READDIR or READDIRPLUS past its end: the reader has taken
    /// in the listing, so the kernel has made the inodes of its files), if reads of listed
    /// files have earned it (SiblingPrefetch.claimListing). Not on the last listing's reply
    /// itself: a push sent then reaches the kernel before the reader has made the inodes, and
    /// is refused (tried: most pushes lost, a READ for each file).
    public func listingPrefetchPlace(for request: FUSERequest) -> SiblingPrefetch.Place? {
        guard let prefetch else { return nil }
        let offset: UInt64
        switch request.operation {
        case .readdir(let read), .readdirplus(let read): offset = read.offset
        default: return nil
        }
        guard offset > 0, let nid = nodes.nid(of: request.header.nodeID),
            let directory = try? filesystem.inode(nid: nid), directory.kind == .directory,
            let blocks = try? filesystem.directoryBlockCount(directory),
            DirectoryCookie(offset: offset, blockSize: blockSize).block >= blocks
        else { return nil }
        switch prefetch.ahead {
        case .off: return nil
        // Credit first: a walk that only lists never reads /proc/loadavg.
        case .auto: guard prefetch.hasCredit, IdleCPU.isAvailable() else { return nil }
        case .on: break
        }
        return prefetch.claimListing(nid)
    }

    /// The FUSE_NOTIFY_STORE messages with the small files of a directory from `place` on,
    /// within the budget, each handed to `body` as soon as it is read (a reader may be right
    /// behind); records how far it got.
    public func prefetchNotifications(from place: SiblingPrefetch.Place, _ body: (FUSEResponse) -> Void) {
        guard let prefetch else { return }
        var cookie = DirectoryCookie(offset: place.next, blockSize: blockSize)
        var blocks: UInt64 = 0
        defer {
            prefetch.finish(
                place.directory, through: cookie.block >= blocks ? .max : cookie.offset(blockSize: blockSize))
        }
        guard let directory = try? filesystem.inode(nid: place.directory), directory.kind == .directory,
            let count = try? filesystem.directoryBlockCount(directory)
        else { return }
        blocks = count
        var bytes = 0
        var files = 0
        scan: while cookie.block < blocks {
            guard let entries = try? filesystem.directoryBlock(directory, index: cookie.block) else { break }
            for index in cookie.entry..<max(cookie.entry, entries.count) {
                let entry = entries[index]
                // A file a worker was asked for meanwhile is in the page cache, or on its way.
                guard entry.fileType == 1, !prefetch.wasRead(entry.nid),
                    let file = try? filesystem.inode(nid: entry.nid), file.kind == .file,
                    file.size > 0, file.size <= SiblingPrefetch.largestFile
                else { continue }
                guard bytes + Int(file.size) <= prefetch.budget, files < SiblingPrefetch.maximumFiles else {
                    cookie.entry = index
                    break scan
                }
                // A file that cannot be read is skipped: its own READ reports the error.
                guard let data = try? filesystem.read(file, at: 0, count: Int(file.size)), data.count == file.size
                else { continue }
                bytes += data.count
                files += 1
                body(
                    .data(
                        header: FUSEReply.notifyStoreHeader(
                            nodeID: nodes.nodeID(of: entry.nid), offset: 0, length: data.count),
                        payload: data))
            }
            cookie = DirectoryCookie(block: cookie.block + 1, entry: 0)
        }
    }
}

/// Whether a CPU is free for a push ahead of reads: the tasks running or runnable right now
/// (/proc/loadavg's fourth field, "RUNNING/TOTAL", which counts the worker asking) leave one
/// of this process's CPUs idle. A push ahead only pays on a CPU nobody else wants: on a busy
/// machine it takes CPU time from the reader it should run beside (a cold walk+read at load 6
/// here: 351 ms on main, 515 ms pushing ahead regardless), and the reader is better served by
/// the push it waits for, which runs while it sleeps.
enum IdleCPU {
    static let cpus = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))

    static func isAvailable() -> Bool {
        guard cpus > 1 else { return false }
        var buffer = [UInt8](repeating: 0, count: 128)
        let fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0, let running = runnable(in: buffer[..<count]) else { return false }
        return running < cpus
    }

    /// RUNNING of "L1 L5 L15 RUNNING/TOTAL LAST" (nil if it is not there).
    static func runnable(in text: ArraySlice<UInt8>) -> Int? {
        let fields = text.split(separator: UInt8(ascii: " "))
        guard fields.count >= 4, let slash = fields[3].firstIndex(of: UInt8(ascii: "/")) else { return nil }
        return Int(String(decoding: fields[3][..<slash], as: UTF8.self))
    }
}
