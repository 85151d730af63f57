import Crypto
import Dispatch
import ImageSources
import Synchronization
import SystemCalls
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// How the bytes of a remote object are cached and read ahead (`-o remote.*`).
public struct CacheSettings: Sendable, Codable, Equatable {
    /// The block cache directory; nil = memory only (`remote.cache=none`).
    public var directory: String? = "/var/cache/erofs-mount"
    /// Size limit of the cache directory (`remote.cache_size=BYTES`).
    public var limit: UInt64 = 4 << 30
    /// Cache block: the unit of presence and of a cold random read (`remote.block_size`).
    public var blockSize = 64 << 10
    /// Largest readahead window a sequential reader grows to (`remote.readahead=BYTES`).
    public var maxReadahead = 16 << 20
    /// Memory for blocks when there is no disk cache.
    public var memoryLimit = 64 << 20

    public init() {}
}

/// A remote object as a `RandomAccessSource`: blocks come from the block cache, or are fetched
/// with ranged GETs. Any number of threads may read at once:
/// - a block being fetched is fetched once; other readers of it wait for that fetch;
/// - a miss fetches only the blocks the read covers (small random reads stay small);
/// - a reader going sequentially gets a readahead window that doubles up to `maxReadahead`,
///   fetched in the background in several ranges at once, ahead of the reader.
public final class RemoteSource: RandomAccessSource {
    public let size: UInt64
    public var displayName: String { object.displayName }
    public var localFileDescriptor: FileDescriptor? { nil }
    /// Bytes fetched from the server so far (what progress reports).
    public var fetchedBytes: UInt64 { statistics.withLock { $0.fetchedBytes } }
    /// The version read (and pinned): what a daemon opening the object again must find.
    public var version: ObjectVersion { object.version }

    let object: RemoteObject
    let store: any BlockStore
    let blockSize: Int
    let maxReadahead: Int
    /// Buffers for fetched blocks, reused: about a readahead window's worth stays mapped.
    private let buffers: BufferPool
    private let flights = Mutex<[Int: Flight]>([:])
    private let streams = Mutex(StreamTracker())
    /// Fetches that failed in `fileRange`, for the `read` that follows it (once each).
    private let failedForRead = Mutex<[Int: RemoteError]>([:])
    /// Counters for tests and benchmarks.
    let statistics = Mutex(Statistics())
    /// For a content-addressed object: which blocks have passed through (fetched or read from
    /// the cache), to hash the whole object once when every one has, and why reads now fail
    /// when it did not match its digest.
    private let digestCheck: Mutex<DigestCheck?>

    struct Statistics {
        var requests = 0
        var fetchedBytes: UInt64 = 0
        var cacheHits = 0
        /// Blocks handed out as file ranges of the disk cache (`fileRange`).
        var splicedBlocks = 0
    }

    init(object: RemoteObject, store: any BlockStore, firstBytes: [UInt8], maxReadahead: Int) {
        self.object = object
        self.store = store
        self.size = object.size
        self.blockSize = store.blockSize
        self.maxReadahead = max(maxReadahead, store.blockSize)
        buffers = BufferPool(
            size: store.blockSize, keep: max(4, min(self.maxReadahead, 32 << 20) / store.blockSize))
        let blocks = Int((object.size + UInt64(store.blockSize) - 1) / UInt64(store.blockSize))
        digestCheck = Mutex(object.endpoint.contentDigest.map { DigestCheck(digest: $0, blocks: blocks) })
        // The open's probe read block 0: keep it.
        if firstBytes.count == blockLength(0) && !store.contains(block: 0) {
            firstBytes.withUnsafeBytes { store.store(block: 0, bytes: $0) }
        }
    }

    func blockLength(_ block: Int) -> Int {
        Int(min(UInt64(blockSize), size - UInt64(block) * UInt64(blockSize)))
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        guard offset < size, buffer.count > 0 else { return 0 }
        if let failure = digestCheck.withLock({ $0?.failure }) { throw failure.systemError }
        let wanted = Int(min(UInt64(buffer.count), size - offset))
        let lastBlock = Int((offset + UInt64(wanted) - 1) / UInt64(blockSize))
        noteRead(at: offset, count: wanted)
        var done = 0
        while done < wanted {
            let position = offset + UInt64(done)
            let block = Int(position / UInt64(blockSize))
            let inBlock = Int(position % UInt64(blockSize))
            let count = min(wanted - done, blockLength(block) - inBlock)
            let destination = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + count)])
            if store.read(block: block, offset: inBlock, into: destination) {
                statistics.withLock { $0.cacheHits += 1 }
                passed(block: block)
                done += count
                continue
            }
            if let failure = failedForRead.withLock({ $0.removeValue(forKey: block) }) { throw failure.systemError }
            let fetched: BlockBuffer
            do {
                fetched = try obtain(block: block, through: lastBlock)
            } catch {
                throw error.systemError
            }
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: fetched.bytes[inBlock..<(inBlock + count)]))
            done += count
        }
        return wanted
    }

    /// Where the bytes lie in the disk cache's data file (its offsets are the object's), once
    /// every block they touch is there and has passed its CRC check in this process: blocks
    /// missing are fetched first (into the data file, as `read` would fetch them) and blocks
    /// not checked yet are checked now. FUSE splices such replies from the cache file's page
    /// cache instead of copying the bytes through a buffer of ours. nil without a disk cache
    /// (or with a full one), and on any failure, which `read` then meets again and reports.
    ///
    /// Spliced bytes are not checked again, as the bytes `read` takes from a checked block are
    /// not: the CRC guards against blocks torn by a crash, not against a writer, who could
    /// rewrite the CRC with the bytes; the cache's files are the daemon's own, 0600 in a 0700
    /// directory. A data file cut short behind our back is noticed here (its size is checked
    /// first, and every block's check is then forgotten), and a cut between that and the
    /// splice makes the splice fall short, which FUSE answers by `read`.
    public func fileRange(at offset: UInt64, count: Int) -> FileRange? {
        guard count > 0, offset < size, UInt64(count) <= size - offset, let disk = store as? DiskBlockStore,
            digestCheck.withLock({ $0?.failure }) == nil
        else { return nil }
        let blocks = Int(offset / UInt64(blockSize))...Int((offset + UInt64(count) - 1) / UInt64(blockSize))
        let missing = blocks.filter { !disk.contains(block: $0) }
        guard missing.isEmpty || disk.storesOnDisk else { return nil }
        // Noted before anything is fetched or checked, so that the readahead (fetches or
        // checks of the blocks ahead) starts now.
        noteRead(at: offset, count: count)
        for block in missing where !disk.contains(block: block) {
            do {
                _ = try obtain(block: block, through: blocks.upperBound)
            } catch {
                // The caller falls back to `read`, which reports this failure instead of
                // going through the retries a second time.
                failedForRead.withLock { failed in
                    if failed.count >= 64 { failed.removeAll() }
                    failed[block] = error
                }
                return nil
            }
        }
        guard let descriptor = disk.checkedDescriptor(for: blocks) else { return nil }
        statistics.withLock { $0.splicedBlocks += blocks.count }
        for block in blocks { passed(block: block) }
        return FileRange(descriptor: FileDescriptor(rawValue: descriptor), offset: offset)
    }

    /// Starts fetching the missing blocks of these bytes in the background: a listing's inodes
    /// (EROFSFilesystem.readAheadInodes) lie in blocks all over the object, fetched then in
    /// parallel instead of one round trip after another.
    public func readAhead(at offset: UInt64, count: Int) {
        guard let span = span(at: offset, count: count) else { return }
        readAhead(
            from: Int(span.lowerBound / UInt64(blockSize)), to: Int((span.upperBound - 1) / UInt64(blockSize)) + 1)
    }

    /// Tells the sequential-reader tracker about a read and starts the readahead it asks for.
    private func noteRead(at offset: UInt64, count: Int) {
        let ahead = streams.withLock {
            $0.note(offset: offset, count: count, blockSize: blockSize, maxWindow: maxReadahead)
        }
        if let ahead {
            readAhead(from: ahead.lowerBound, to: min(ahead.upperBound, (Int(size) + blockSize - 1) / blockSize))
        }
    }

    /// Block `block`'s bytes: waits for its fetch when one is in flight, else fetches it and
    /// the following missing blocks up to `lastBlock` in one request.
    private func obtain(block: Int, through lastBlock: Int) throws(RemoteError) -> BlockBuffer {
        var run = [block]
        for next in (block + 1)..<(lastBlock + 1) where !store.contains(block: next) {
            guard next == run.last! + 1 else { break }
            run.append(next)
        }
        let claim = flights.withLock { table -> (waitFor: Flight?, mine: [Flight]) in
            if let inFlight = table[block] { return (inFlight, []) }
            var mine: [Flight] = []
            for index in run {
                guard table[index] == nil else { break }
                let flight = Flight()
                table[index] = flight
                mine.append(flight)
            }
            return (nil, mine)
        }
        if let waitFor = claim.waitFor { return try waitFor.wait().get() }
        fetch(firstBlock: block, claim.mine)
        return try claim.mine[0].wait().get()
    }

    /// Starts background fetches of the missing blocks in `first..<end`, in ranges of up to half
    /// the largest window: two in flight, each large. A server's cost per request is not
    /// small (docker-registry reads 4 MiB ahead for each one), and at 10 Gbit/s 2 MiB takes
    /// less time on the wire than a request's round trip.
    private func readAhead(from first: Int, to end: Int) {
        guard first < end else { return }
        let perRequest = max(1, maxReadahead / 2 / blockSize)
        // Checks in jobs of 2 MiB: many at once on the fetch threads, each done soon.
        if let disk = store as? DiskBlockStore {
            checkAhead(disk, from: first, to: end, perJob: max(1, (2 << 20) / blockSize))
        }
        var runs: [(Int, [Flight])] = []
        let candidates = (first..<end).filter { !store.contains(block: $0) }
        flights.withLock { table in
            var current: (Int, [Flight])?
            for block in candidates {
                guard table[block] == nil else { continue }
                let flight = Flight()
                table[block] = flight
                if let run = current, run.0 + run.1.count == block, run.1.count < perRequest {
                    current!.1.append(flight)
                } else {
                    if let run = current { runs.append(run) }
                    current = (block, [flight])
                }
            }
            if let run = current { runs.append(run) }
        }
        for (firstBlock, run) in runs {
            FetchWorkers.shared.submit { self.fetch(firstBlock: firstBlock, run) }
        }
    }

    /// Checks, in the background, the blocks of `first..<end` already in the disk cache but not
    /// checked in this process yet, so that a sequential reader of a filled cache (a new mount
    /// of a cached object) finds them checked instead of checking each as it comes.
    private func checkAhead(_ disk: DiskBlockStore, from first: Int, to end: Int, perJob: Int) {
        let unchecked = disk.claimChecks(first..<end)
        var start = 0
        while start < unchecked.count {
            let job = Array(unchecked[start..<min(unchecked.count, start + perJob)])
            FetchWorkers.shared.submit { disk.check(blocks: job) }
            start += perJob
        }
    }

    /// Fetches blocks `firstBlock ..< firstBlock + run.count` in one ranged GET straight into
    /// block buffers, completing each block's flight (and storing it) as soon as its last byte
    /// arrives. The buffer itself goes to the store and to the flight's readers: no copy.
    private func fetch(firstBlock: Int, _ run: [Flight]) {
        let start = UInt64(firstBlock) * UInt64(blockSize)
        let end = min(size, UInt64(firstBlock + run.count) * UInt64(blockSize))
        let blocks = run.indices.map { _ in buffers.take() }
        let parts = blocks.indices.map { blocks[$0].prepare(count: blockLength(firstBlock + $0)) }
        var completed = 0
        let finish = { (upTo: Int) in
            while completed < run.count && upTo >= min(Int(end - start), (completed + 1) * self.blockSize) {
                let block = firstBlock + completed
                self.store.store(block: block, buffer: blocks[completed])
                self.passed(block: block)
                self.flights.withLock { $0[block] = nil }
                run[completed].finish(.success(blocks[completed]))
                completed += 1
            }
        }
        statistics.withLock {
            $0.requests += 1
            $0.fetchedBytes += end - start
        }
        do {
            try object.read(into: parts, at: start, progress: finish)
        } catch {
            for index in completed..<run.count {
                flights.withLock { $0[firstBlock + index] = nil }
                run[index].finish(.failure(error))
            }
        }
    }
}

extension RemoteSource {
    /// Notes that `block` was read or fetched; the first time every block has, hashes the
    /// whole object from the store in the background and compares it with its digest (when a
    /// block has been dropped from a memory store meanwhile, the check is skipped).
    func passed(block: Int) {
        let complete = digestCheck.withLock { $0?.mark(block) ?? false }
        guard complete else { return }
        FetchWorkers.shared.submit { self.verifyDigest() }
    }

    /// Hashes the object from the store; a mismatch fails every later read.
    func verifyDigest() {
        guard let (blocks, digest) = digestCheck.withLock({ $0.map { ($0.blocks, $0.digest) } }) else { return }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: blockSize)
        for block in 0..<blocks {
            let length = blockLength(block)
            let present = buffer.withUnsafeMutableBytes {
                store.read(block: block, offset: 0, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<length]))
            }
            guard present else { return }
            hasher.update(data: buffer[0..<length])
        }
        let actual = "sha256:" + hex(hasher.finalize())
        digestCheck.withLock { check in
            check?.verified = actual == digest
            if actual != digest {
                check?.failure = RemoteError(
                    .changed, displayName,
                    "the blob's bytes hash to \(actual), not its digest \(digest): refusing to read it further")
            }
        }
    }

    /// Whether the whole object was hashed and matched (tests).
    var digestVerified: Bool { digestCheck.withLock { $0?.verified ?? false } }
}

/// Which blocks of a content-addressed object have been seen, one bit each.
struct DigestCheck {
    let digest: String
    let blocks: Int
    var seen: [UInt64]
    var count = 0
    var verified = false
    var failure: RemoteError?

    init(digest: String, blocks: Int) {
        self.digest = digest
        self.blocks = blocks
        seen = [UInt64](repeating: 0, count: (blocks + 63) / 64)
    }

    /// Marks `block`; true exactly once: when the last unseen block is marked.
    mutating func mark(_ block: Int) -> Bool {
        let bit = UInt64(1) << UInt64(block % 64)
        guard seen[block / 64] & bit == 0 else { return false }
        seen[block / 64] |= bit
        count += 1
        return count == blocks
    }
}

/// The threads that run readahead fetches. Not Dispatch's global queues: their threads may be
/// the very readers (an extraction's workers, a server's handlers) that wait for these fetches,
/// and a pool whose threads all wait for jobs queued behind them deadlocks. A fetch never waits
/// for anything but the network, so a fixed pool of its own always drains.
final class FetchWorkers: Sendable {
    static let shared = FetchWorkers(threads: 4)
    private let jobs = Mutex<[@Sendable () -> Void]>([])
    private let pending = DispatchSemaphore(value: 0)

    private init(threads: Int) {
        for _ in 0..<threads {
            let box = Unmanaged.passRetained(self).toOpaque()
            var thread = pthread_t()
            pthread_create(
                &thread, nil,
                { context in
                    let workers = Unmanaged<FetchWorkers>.fromOpaque(context!).takeRetainedValue()
                    workers.run()
                }, box)
            pthread_detach(thread)
        }
    }

    func submit(_ job: @escaping @Sendable () -> Void) {
        jobs.withLock { $0.append(job) }
        pending.signal()
    }

    private func run() -> Never {
        while true {
            pending.wait()
            let job = jobs.withLock { $0.removeFirst() }
            job()
        }
    }
}

/// One block being fetched; readers of it wait on it. The result is written once, before the
/// group is left, and read only after waiting on the group.
private final class Flight: @unchecked Sendable {
    private let group = DispatchGroup()
    private var result: Result<BlockBuffer, RemoteError>?

    init() { group.enter() }

    func finish(_ outcome: Result<BlockBuffer, RemoteError>) {
        result = outcome
        group.leave()
    }

    func wait() -> Result<BlockBuffer, RemoteError> {
        group.wait()
        return result!
    }
}

/// Recognises sequential readers: up to 8 streams, each with the offset where its next read
/// should start, its readahead window and how far ahead it has been fetched.
struct StreamTracker {
    struct Stream {
        var next: UInt64
        var window: Int
        var fetchedTo: Int
        var used: UInt64
    }
    var streams: [Stream] = []
    var clock: UInt64 = 0

    /// Records a read; returns the blocks to read ahead when the read continues a stream and
    /// the stream's readahead needs topping up (half of its window consumed).
    mutating func note(offset: UInt64, count: Int, blockSize: Int, maxWindow: Int) -> Range<Int>? {
        clock += 1
        let end = offset + UInt64(count)
        let endBlock = Int((end + UInt64(blockSize) - 1) / UInt64(blockSize))
        // A read that starts within a block of where a stream stopped continues it (a reader
        // may skip a little, e.g. a compressed cluster boundary).
        if let index = streams.firstIndex(where: {
            offset + UInt64(blockSize) >= $0.next && offset <= $0.next + UInt64(blockSize)
        }) {
            var stream = streams[index]
            stream.next = end
            stream.used = clock
            stream.window = min(maxWindow, max(4 * blockSize, stream.window * 2))
            let windowBlocks = stream.window / blockSize
            var result: Range<Int>?
            if stream.fetchedTo < endBlock + windowBlocks / 2 {
                let from = max(stream.fetchedTo, endBlock)
                result = from..<(endBlock + windowBlocks)
                stream.fetchedTo = endBlock + windowBlocks
            }
            streams[index] = stream
            return result
        }
        if streams.count >= 8, let oldest = streams.indices.min(by: { streams[$0].used < streams[$1].used }) {
            streams.remove(at: oldest)
        }
        streams.append(Stream(next: end, window: 0, fetchedTo: endBlock, used: clock))
        return nil
    }
}
