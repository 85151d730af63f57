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
    /// Directory blocks one push reads at most: a hostile directory of blocks that each cost
    /// a 12 MiB decompression, and no file in them, held shutdown for as long as its scan.
    static let maximumBlocksScanned: UInt64 = 16
    /// Bytes a push ahead of reads (a whole listing) takes at most: a directory of small files
    /// often holds more than `budget`, and a reader past a push's end asks for each file.
    static let listingBudget = 2 << 20
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
        /// Directories whose last listing was just answered, for the worker that answered it
        /// (`takeJustListed`).
        var justListed: Set<UInt64> = []
        /// Files read from their start by a worker: a push running meanwhile skips them.
        var read: Set<UInt64> = []
        /// Listings that may still be pushed before any of their files is read.
        var credit = 0
        /// Directories pushed ahead of their reads, by how many of their files a worker was
        /// asked for meanwhile.
        var overtakes: [UInt64: Int] = [:]
        /// Per directory READDIRPLUS showed, the directory after it in the same listing: where a
        /// walk goes once it is done with it (`listingToPrepare`).
        var nextDirectory: [UInt64: UInt64] = [:]
        /// The size of the kernel's first READDIRPLUS of a directory (fixed per connection).
        var listingSize = 0
        /// First listings made ahead of their READDIRPLUS (`prepared`), oldest first.
        var prepared: [PreparedListing] = []
    }

    /// A directory's first READDIRPLUS reply, made before the kernel asked for it.
    struct PreparedListing {
        var directory: UInt64
        var size: Int
        var payload: [UInt8]
    }
    /// Prepared listings kept at most: a walk takes the one it is about to ask for.
    static let preparedKept = 2
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
            if state.justListed.count >= SiblingPrefetch.capacity { state.justListed = [] }
            state.justListed.insert(directory)
        }
    }

    /// A READDIRPLUS asking `size` bytes (`firstListing`: at offset 0) listed these
    /// subdirectories, in this order.
    func noteListedDirectories(_ directories: [UInt64], size: Int, firstListing: Bool) {
        guard budget > 0 else { return }
        state.withLock { state in
            if firstListing { state.listingSize = size }
            if state.nextDirectory.count >= SiblingPrefetch.capacity { state.nextDirectory = [:] }
            for (directory, next) in zip(directories, directories.dropFirst()) { state.nextDirectory[directory] = next }
        }
    }

    /// The directory a walk lists after `directory` (the next in their parent's listing), with
    /// the size of READDIRPLUS to make, if it was not listed or prepared yet; claimed.
    func listingToPrepare(after directory: UInt64) -> (directory: UInt64, size: Int)? {
        guard budget > 0 else { return nil }
        return state.withLock { state in
            guard state.listingSize > 0, let next = state.nextDirectory.removeValue(forKey: directory),
                !state.listed.contains(next), !state.prepared.contains(where: { $0.directory == next })
            else { return nil }
            return (next, state.listingSize)
        }
    }

    func storePrepared(_ listing: PreparedListing) {
        state.withLock { state in
            state.prepared.append(listing)
            if state.prepared.count > SiblingPrefetch.preparedKept { state.prepared.removeFirst() }
        }
    }

    /// The reply made ahead for a READDIRPLUS of `directory` at offset 0 asking `size` bytes.
    func takePrepared(_ directory: UInt64, size: Int) -> [UInt8]? {
        guard budget > 0 else { return nil }
        return state.withLock { state in
            guard let index = state.prepared.firstIndex(where: { $0.directory == directory }) else { return nil }
            let listing = state.prepared.remove(at: index)
            return listing.size == size ? listing.payload : nil
        }
    }

    /// The directories whose first listing is made, oldest first (tests).
    var preparedDirectories: [UInt64] { state.withLock { $0.prepared.map(\.directory) } }

    /// Whether the listing just answered for `directory` reached its end (once per listing).
    func takeJustListed(_ directory: UInt64) -> Bool {
        guard budget > 0 else { return false }
        return state.withLock { $0.justListed.remove(directory) != nil }
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
        prepared = []
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

    /// The directory READDIRPLUS listed to its end whose entries after the last `request`
    /// asks for (a READDIR or READDIRPLUS past its end): the reader has taken in the listing,
    /// so the kernel has made the inodes of its files, and a push of them may go out.
    public func askedPastListing(_ request: FUSERequest) -> UInt64? {
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
        _ = prefetch.takeJustListed(nid)  // an empty READDIRPLUS past the end notes it too
        return nid
    }

    /// Where to push from, ahead of reads, once the READDIRPLUS `request` was answered with
    /// the end of its directory's listing: its files are read and decoded at once, while the
    /// reader takes in the listing, and sent once it asks past it (`askedPastListing`; a push
    /// sent before reaches the kernel before the reader has made the inodes, and is refused:
    /// tried, most pushes lost, a READ for each file). nil if reads have not earned it.
    public func listedToEnd(_ request: FUSERequest) -> SiblingPrefetch.Place? {
        guard let prefetch, case .readdirplus = request.operation, let nid = nodes.nid(of: request.header.nodeID),
            prefetch.takeJustListed(nid)
        else { return nil }
        return claimListingAhead(nid)
    }

    /// Where to push `directory` from, ahead of reads, if reads have earned it and the mode
    /// (`fuse.prefetch_ahead`) allows it now.
    public func claimListingAhead(_ directory: UInt64) -> SiblingPrefetch.Place? {
        guard let prefetch else { return nil }
        switch prefetch.ahead {
        case .off: return nil
        // Credit first: a walk that only lists never reads /proc/loadavg.
        case .auto: guard prefetch.hasCredit, IdleCPU.isAvailable() else { return nil }
        case .on: break
        }
        return prefetch.claimListing(directory)
    }

    /// The FUSE_NOTIFY_STORE messages with the small files of a directory from `place` on,
    /// within the budget, each handed to `body` as soon as it is read (a reader may be right
    /// behind); records how far it got.
    public func prefetchNotifications(
        from place: SiblingPrefetch.Place, wholeListing: Bool = false, _ body: (FUSEResponse) -> Void
    ) {
        guard let prefetch else { return }
        let budget = wholeListing ? max(prefetch.budget, SiblingPrefetch.listingBudget) : prefetch.budget
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
        let scanEnd = min(blocks, cookie.block + SiblingPrefetch.maximumBlocksScanned)
        scan: while cookie.block < scanEnd {
            guard let entries = try? filesystem.directoryBlock(directory, index: cookie.block) else { break }
            for index in cookie.entry..<max(cookie.entry, entries.count) {
                let entry = entries[index]
                // A file a worker was asked for meanwhile is in the page cache, or on its way.
                guard entry.fileType == 1, !prefetch.wasRead(entry.nid),
                    let file = try? filesystem.inode(nid: entry.nid), file.kind == .file,
                    file.size > 0, file.size <= SiblingPrefetch.largestFile
                else { continue }
                guard bytes + Int(file.size) <= budget, files < SiblingPrefetch.maximumFiles else {
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
/// (/proc/loadavg's fourth field, "RUNNING/TOTAL") are no more than the CPUs. Two of them are
/// ours: the worker asking, which is about to wait for the next request, and the reader it
/// has just answered; with nothing else runnable, the worker's CPU is the pusher's. A push
/// ahead only pays on a CPU nobody else wants: on a busy machine it takes CPU time from the
/// reader it should run beside (a cold walk+read at load 6 here: 351 ms on main, 515 ms pushing
/// ahead regardless), and the reader is better served by the push it waits for, which runs
/// while it sleeps.
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
        return running <= cpus
    }

    /// RUNNING of "L1 L5 L15 RUNNING/TOTAL LAST" (nil if it is not there).
    static func runnable(in text: ArraySlice<UInt8>) -> Int? {
        let fields = text.split(separator: UInt8(ascii: " "))
        guard fields.count >= 4, let slash = fields[3].firstIndex(of: UInt8(ascii: "/")) else { return nil }
        return Int(String(decoding: fields[3][..<slash], as: UTF8.self))
    }
}
