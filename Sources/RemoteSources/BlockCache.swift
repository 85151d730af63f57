import CShim
import Crypto
import Synchronization
import SystemCalls
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Where fetched blocks of one object are kept. Blocks are `blockSize` bytes (the last one
/// shorter); a store may drop any block at any time (a reader holding its `BlockBuffer` keeps
/// the bytes alive).
protocol BlockStore: Sendable {
    var blockSize: Int { get }
    /// Copies `destination.count` bytes from `offset` inside block `block` and returns true,
    /// or returns false when the block is not (or no longer, or not verifiably) present.
    func read(block: Int, offset: Int, into destination: UnsafeMutableRawBufferPointer) -> Bool
    /// Whether the block is present, without verifying it (a hint for planning fetches).
    func contains(block: Int) -> Bool
    /// Keeps a whole block: a memory store keeps `buffer` itself, a disk store writes it.
    func store(block: Int, buffer: BlockBuffer)
}

extension BlockStore {
    /// Keeps a copy of `bytes` as block `block`.
    func store(block: Int, bytes: UnsafeRawBufferPointer) {
        let buffer = BlockBuffer(capacity: bytes.count)
        buffer.fill(from: bytes)
        store(block: block, buffer: buffer)
    }
}

/// One block's bytes in memory, shared without copying by the fetch that filled it, the
/// memory store, the flight readers wait on and those readers; it goes back to its pool when
/// the last of them lets go. Written only by its fetch, before it is shared.
final class BlockBuffer: @unchecked Sendable {
    let storage: UnsafeMutableRawBufferPointer
    private(set) var count = 0
    private let pool: BufferPool?

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: storage[0..<count]) }

    init(capacity: Int) {
        storage = .allocate(byteCount: capacity, alignment: 64)
        pool = nil
    }

    fileprivate init(storage: UnsafeMutableRawBufferPointer, pool: BufferPool) {
        self.storage = storage
        self.pool = pool
    }

    /// The first `count` bytes of the storage, to be filled (by a fetch) before sharing.
    func prepare(count: Int) -> UnsafeMutableRawBufferPointer {
        precondition(count <= storage.count)
        self.count = count
        return UnsafeMutableRawBufferPointer(rebasing: storage[0..<count])
    }

    func fill(from bytes: UnsafeRawBufferPointer) {
        prepare(count: bytes.count).copyMemory(from: bytes)
    }

    deinit {
        if let pool { pool.recycle(storage) } else { storage.deallocate() }
    }
}

/// Block-sized allocations kept for reuse: a fresh allocation of a block costs a page fault per
/// 4 KiB page (and large ones an mmap and munmap) each time; a reused one is already mapped.
final class BufferPool: Sendable {
    let size: Int
    /// How many idle buffers are kept; more are freed.
    let keep: Int
    /// Addresses of idle allocations (as integers: pointers are not Sendable).
    private let idle = Mutex<[UInt]>([])

    init(size: Int, keep: Int) {
        self.size = size
        self.keep = keep
    }

    deinit {
        for address in idle.withLock({ $0 }) { UnsafeMutableRawPointer(bitPattern: address)!.deallocate() }
    }

    func take() -> BlockBuffer {
        let pointer =
            idle.withLock { $0.popLast() }.flatMap { UnsafeMutableRawPointer(bitPattern: $0) }
            ?? .allocate(byteCount: size, alignment: 64)
        return BlockBuffer(storage: UnsafeMutableRawBufferPointer(start: pointer, count: size), pool: self)
    }

    fileprivate func recycle(_ storage: UnsafeMutableRawBufferPointer) {
        let kept = idle.withLock { idle -> Bool in
            guard idle.count < keep else { return false }
            idle.append(UInt(bitPattern: storage.baseAddress!))
            return true
        }
        if !kept { storage.deallocate() }
    }
}

/// Blocks in memory, least recently used dropped past `capacity` bytes: `remote.cache=none`,
/// and the overflow of a disk cache that is full. The lock covers the table only: bytes are
/// copied out of a block's buffer after it is released.
final class MemoryBlockStore: BlockStore {
    let blockSize: Int
    let capacity: Int
    private struct State {
        var blocks: [Int: (buffer: BlockBuffer, used: UInt64)] = [:]
        var bytes = 0
        var clock: UInt64 = 0
        /// Uses in order, oldest first from `head`: an entry whose stamp is no longer its
        /// block's is stale and skipped (an LRU list without per-use unlinking).
        var uses: [(block: Int, stamp: UInt64)] = []
        var head = 0

        mutating func touch(_ block: Int) {
            clock += 1
            blocks[block]?.used = clock
            uses.append((block, clock))
            if uses.count - head > 4 * blocks.count + 64 {
                uses = uses[head...].filter { blocks[$0.block]?.used == $0.stamp }
                head = 0
            }
        }

        mutating func dropOldest() {
            while head < uses.count {
                let (block, stamp) = uses[head]
                head += 1
                if let entry = blocks[block], entry.used == stamp {
                    bytes -= entry.buffer.count
                    blocks[block] = nil
                    return
                }
            }
        }
    }
    private let state = Mutex(State())

    init(blockSize: Int, capacity: Int) {
        self.blockSize = blockSize
        self.capacity = capacity
    }

    func read(block: Int, offset: Int, into destination: UnsafeMutableRawBufferPointer) -> Bool {
        let buffer = state.withLock { state -> BlockBuffer? in
            guard let entry = state.blocks[block] else { return nil }
            state.touch(block)
            return entry.buffer
        }
        guard let buffer, offset + destination.count <= buffer.count else { return false }
        destination.copyMemory(
            from: UnsafeRawBufferPointer(rebasing: buffer.bytes[offset..<(offset + destination.count)]))
        return true
    }

    func contains(block: Int) -> Bool { state.withLock { $0.blocks[block] != nil } }

    func store(block: Int, buffer: BlockBuffer) {
        state.withLock { state in
            if let old = state.blocks.updateValue((buffer, 0), forKey: block) {
                state.bytes -= old.buffer.count
            }
            state.bytes += buffer.count
            state.touch(block)
            while state.bytes > capacity, !state.blocks.isEmpty {
                let before = state.blocks.count
                state.dropOldest()
                if state.blocks.count == before { break }
            }
        }
    }
}

/// The on-disk block cache of one object version: `DIR/KEY.data`, a sparse file as large as the
/// object holding the blocks at their offsets, and `DIR/KEY.map`, a header plus one 16-byte
/// entry per block (CRC-32C of the block, its length, length 0 = absent; the boot it was written
/// or last checked in). KEY hashes the object's identity (URL without credentials, ETag or
/// Last-Modified, size).
///
/// - Sharing: every user holds a shared flock on the map; eviction takes it exclusively
///   (non-blocking) before deleting, so a block in use is never removed. Two processes storing
///   the same block write the same bytes (the object is pinned by its identity).
/// - Crashes: a block's bytes are written before its entry, so within one boot an entry always
///   describes bytes that are all there: a process killed mid-write leaves no entry, and the
///   page cache is one for every process. Only a crash of the machine (a power loss) can leave
///   an entry whose bytes never reached the disk; that is a new boot. So a block whose entry
///   names this boot is used as it is, and one from another boot is checked against its CRC
///   first (and its entry then names this boot); a torn block fails the check and is fetched
///   again. Nothing is fsynced.
final class DiskBlockStore: BlockStore, @unchecked Sendable {
    let blockSize: Int
    let objectSize: UInt64
    let blockCount: Int
    /// Owned: closed on deinit. Immutable after init; pread/pwrite are thread-safe.
    private let dataDescriptor: Int32
    private let mapDescriptor: Int32
    private let budget: CacheBudget
    let key: String
    /// Blocks whose CRC this process has checked (or written), or whose entry names this boot:
    /// read without a check.
    private let verified: Mutex<BlockSet>
    /// Whether fetched blocks go to the data file (not to memory: the cache is not full).
    var storesOnDisk: Bool { !budget.isFull }

    /// Blocks handed to a background check (`claimChecks`).
    private let claimed: Mutex<BlockSet>
    /// Blocks that could not go to disk because the cache is full.
    private let overflow: MemoryBlockStore

    static let headerSize = 64
    static let entrySize = 16
    static let magic = Array("EROFSRC3".utf8)

    /// This boot, as map entries name it: the first 64 bits of the kernel's boot id; 0 when it
    /// cannot be read, which no entry is trusted for.
    static let currentBoot: UInt64 = {
        let descriptor = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return 0 }
        defer { close(descriptor) }
        var text = [UInt8](repeating: 0, count: 64)
        let count = Glibc.read(descriptor, &text, text.count)
        guard count > 0 else { return 0 }
        let digits = String(decoding: text[0..<count], as: UTF8.self).filter(\.isHexDigit)
        return UInt64(digits.prefix(16), radix: 16) ?? 0
    }()
    /// The boot this store's entries are written and trusted for (a test names another one to
    /// play the next boot).
    let boot: UInt64

    /// Opens (creating when needed) the cache of `identity` under `budget.directory`, or
    /// throws `.cache` when the directory or files cannot be used.
    init(
        identity: String, objectSize: UInt64, blockSize: Int, budget: CacheBudget, boot: UInt64 = currentBoot
    ) throws(RemoteError) {
        self.boot = boot
        self.blockSize = blockSize
        self.objectSize = objectSize
        self.budget = budget
        blockCount = Int((objectSize + UInt64(blockSize) - 1) / UInt64(blockSize))
        let digest = Array(SHA256.hash(data: Array(identity.utf8)))
        key = digest.prefix(16).map { String($0, radix: 16).leftPadded(2) }.joined()
        verified = Mutex(BlockSet(count: blockCount))
        claimed = Mutex(BlockSet(count: blockCount))
        overflow = MemoryBlockStore(blockSize: blockSize, capacity: 64 << 20)
        let directory = try budget.openDirectory()
        var header = [UInt8](repeating: 0, count: Self.headerSize)
        header.replaceSubrange(0..<8, with: Self.magic)
        withUnsafeBytes(of: UInt32(blockSize).littleEndian) { header.replaceSubrange(8..<12, with: $0) }
        withUnsafeBytes(of: objectSize.littleEndian) { header.replaceSubrange(16..<24, with: $0) }
        header.replaceSubrange(32..<64, with: digest)
        let mapLength = off_t(Self.headerSize + Self.entrySize * blockCount)
        let mapPath = "\(directory.path)/\(key).map"
        func failure(_ what: String, _ path: String) -> RemoteError {
            RemoteError(.cache, path, "\(what): \(String(cString: strerror(errno)))")
        }
        // Opened in the checked directory, never through a symlink: root truncates and
        // overwrites these files.
        func openFile(_ name: String) throws(RemoteError) -> Int32 {
            let opened: FileDescriptor?
            do { opened = try directory.openFile(name, O_RDWR | O_CREAT) } catch {
                throw RemoteError(.cache, "\(directory.path)/\(name)", error.reason)
            }
            // With O_CREAT a file is made or an error thrown.
            guard let opened else { throw RemoteError(.cache, "\(directory.path)/\(name)", "cannot create it") }
            return opened.rawValue
        }
        // Open and lock the map; a map deleted by an evictor between our open and our lock
        // has no links left: open again.
        var map: Int32 = -1
        for _ in 0..<5 {
            map = try openFile("\(key).map")
            while flock(map, LOCK_SH) != 0 && errno == EINTR {}
            var status = stat()
            if fstat(map, &status) == 0 && status.st_nlink > 0 { break }
            close(map)
            map = -1
        }
        guard map >= 0 else { throw RemoteError(.cache, mapPath, "the cache entry keeps being evicted") }
        var existing = [UInt8](repeating: 0, count: Self.headerSize)
        let got = pread(map, &existing, Self.headerSize, 0)
        var status = stat()
        fstat(map, &status)
        // A map made now holds no entry: nothing to forget or to take as checked below.
        let mapIsNew = got != Self.headerSize || existing != header || status.st_size != mapLength
        if mapIsNew {
            // New, or made with another block size: reset it, but only if no one else uses it.
            let fresh = got <= 0
            if !fresh && flock(map, LOCK_EX | LOCK_NB) != 0 {
                close(map)
                throw RemoteError(.cache, mapPath, "in use by another process with another block size or cache format")
            }
            if !fresh { ftruncate(map, 0) }
            guard ftruncate(map, mapLength) == 0, pwrite(map, header, header.count, 0) == header.count else {
                close(map)
                throw failure("cannot write the cache map", mapPath)
            }
            flock(map, LOCK_SH)
        }
        let data: Int32
        do { data = try openFile("\(key).data") } catch {
            close(map)
            throw error
        }
        let dataSize = fstat(data, &status) == 0 ? UInt64(max(0, status.st_size)) : 0
        mapDescriptor = map
        dataDescriptor = data
        if dataSize != objectSize {
            // Cut: blocks past the cut are holes whatever their entries say.
            if !mapIsNew && dataSize < objectSize { forgetBlocks(past: dataSize) }
            // A size the filesystem cannot hold (EFBIG) would look cut at every open.
            guard ftruncate(data, off_t(objectSize)) == 0 else {
                throw failure("cannot size the cache data", "\(directory.path)/\(key).data")
            }
        }
        // Recently used objects are evicted last.
        futimens(map, nil)
        if !mapIsNew { markCurrentBlocksVerified() }
    }

    /// Takes every block whose entry names this boot as checked, reading the map in one pass
    /// (instead of an entry at a time as reads come).
    private func markCurrentBlocksVerified() {
        guard boot != 0 else { return }
        let perChunk = 4096
        var raw = [UInt8](repeating: 0, count: perChunk * Self.entrySize)
        var first = 0
        while first < blockCount {
            let count = min(perChunk, blockCount - first)
            let wanted = count * Self.entrySize
            let got = raw.withUnsafeMutableBytes {
                preadFully(
                    mapDescriptor, UnsafeMutableRawBufferPointer(rebasing: $0[0..<wanted]), at: entryOffset(first))
            }
            guard got else { return }
            verified.withLock { verified in
                raw.withUnsafeBytes { entries in
                    for index in 0..<count where isCurrent(Self.entry(in: entries, at: index), first + index) {
                        _ = verified.insert(first + index)
                    }
                }
            }
            first += count
        }
    }

    deinit {
        close(dataDescriptor)
        close(mapDescriptor)
    }

    func length(of block: Int) -> Int {
        Int(min(UInt64(blockSize), objectSize - UInt64(block) * UInt64(blockSize)))
    }

    typealias Entry = (crc: UInt32, length: Int, boot: UInt64)

    /// Block `block`'s map entry: CRC-32C, length (0: absent), boot.
    private func entry(_ block: Int) -> Entry {
        withUnsafeTemporaryAllocation(byteCount: Self.entrySize, alignment: 8) { raw in
            guard pread(mapDescriptor, raw.baseAddress, Self.entrySize, entryOffset(block)) == Self.entrySize else {
                return (0, 0, 0)
            }
            return Self.entry(in: UnsafeRawBufferPointer(raw), at: 0)
        }
    }

    /// Entry `index` of map bytes `entries` (little-endian: CRC u32, length u32, boot u64).
    private static func entry(in entries: UnsafeRawBufferPointer, at index: Int) -> Entry {
        let at = index * entrySize
        return (
            UInt32(littleEndian: entries.loadUnaligned(fromByteOffset: at, as: UInt32.self)),
            Int(UInt32(littleEndian: entries.loadUnaligned(fromByteOffset: at + 4, as: UInt32.self))),
            UInt64(littleEndian: entries.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self))
        )
    }

    private func entryOffset(_ block: Int) -> off_t { off_t(Self.headerSize + Self.entrySize * block) }

    /// Writes block `block`'s entry, naming this boot: its bytes are all in the data file.
    private func writeEntry(_ block: Int, crc: UInt32) {
        var raw = (crc.littleEndian, UInt32(length(of: block)).littleEndian, boot.littleEndian)
        _ = withUnsafeBytes(of: &raw) { pwrite(mapDescriptor, $0.baseAddress, Self.entrySize, entryOffset(block)) }
    }

    /// Whether an entry says its block is whole and was written or checked in this boot.
    private func isCurrent(_ entry: Entry, _ block: Int) -> Bool {
        entry.length == length(of: block) && boot != 0 && entry.boot == boot
    }

    /// Marks block `block` checked when `entry` names this boot (another process of this boot
    /// may have written it since this store opened); whether it did.
    private func trustIfCurrent(_ entry: Entry, _ block: Int) -> Bool {
        guard isCurrent(entry, block) else { return false }
        markVerified(block)
        return true
    }

    private func isVerified(_ block: Int) -> Bool {
        verified.withLock { $0.contains(block) }
    }

    private func markVerified(_ block: Int) {
        verified.withLock { _ = $0.insert(block) }
    }

    func contains(block: Int) -> Bool {
        isVerified(block) || entry(block).length == length(of: block) || overflow.contains(block: block)
    }

    func read(block: Int, offset: Int, into destination: UnsafeMutableRawBufferPointer) -> Bool {
        if isVerified(block) {
            let position = off_t(block) * off_t(blockSize) + off_t(offset)
            if preadFully(dataDescriptor, destination, at: position) { return true }
            // Past the end: the file was cut.
            _ = noticedCut()
            return false
        }
        let length = length(of: block)
        let found = entry(block)
        guard found.length == length else {
            return overflow.read(block: block, offset: offset, into: destination)
        }
        if trustIfCurrent(found, block) { return read(block: block, offset: offset, into: destination) }
        // First use of a block from another boot: check the whole block against its CRC, read
        // straight into the destination when it takes the whole block (a failed check leaves
        // it to be overwritten by the fetch that follows).
        if offset == 0 && destination.count == length { return check(block, reading: destination) }
        let whole = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 64)
        defer { whole.deallocate() }
        guard check(block, reading: whole) else { return false }
        destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: whole[offset..<(offset + destination.count)]))
        return true
    }

    /// Reads block `block` from the data file into `scratch` (at least its length) and checks
    /// it against its map entry; marks it checked when it passes.
    private func check(_ block: Int, reading scratch: UnsafeMutableRawBufferPointer) -> Bool {
        let found = entry(block)
        let length = length(of: block)
        let bytes = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<length])
        guard found.length == length, preadFully(dataDescriptor, bytes, at: off_t(block) * off_t(blockSize)),
            Self.checksum(bytes) == found.crc
        else { return false }
        if found.boot != boot { writeEntry(block, crc: found.crc) }
        markVerified(block)
        return true
    }

    /// The data file's descriptor when every block of `blocks` is in it and checked (those not
    /// checked yet in this process are checked now), for splicing their bytes; nil otherwise.
    /// A data file shorter than the object was cut behind our back: blocks checked before the
    /// cut may be holes now, so every check is forgotten (and `read` checks again).
    func checkedDescriptor(for blocks: ClosedRange<Int>) -> Int32? {
        guard !noticedCut() else { return nil }
        return check(blocks: blocks) ? dataDescriptor : nil
    }

    /// Checks each block of `blocks` not checked yet; false at the first that fails.
    @discardableResult
    func check(blocks: some Sequence<Int>) -> Bool {
        var scratch: UnsafeMutableRawBufferPointer?
        defer { scratch?.deallocate() }
        for block in blocks where !isVerified(block) {
            if trustIfCurrent(entry(block), block) { continue }
            let buffer = scratch ?? .allocate(byteCount: blockSize, alignment: 64)
            scratch = buffer
            guard check(block, reading: buffer) else { return false }
        }
        return true
    }

    /// The blocks of `blocks` on disk from another boot, not checked yet and not claimed by an
    /// earlier call: each is handed to one background check only. Blocks of this boot are
    /// marked checked on the way.
    func claimChecks(_ blocks: Range<Int>) -> [Int] {
        let candidates = blocks.filter { block in
            guard !isVerified(block) else { return false }
            let found = entry(block)
            return !trustIfCurrent(found, block) && found.length == length(of: block)
        }
        return claimed.withLock { claimed in candidates.filter { claimed.insert($0) } }
    }

    /// Whether the data file is shorter than the object: cut behind our back. Blocks checked
    /// before the cut may be holes now, or after a write past the cut, zeros: every check is
    /// forgotten (and made again on the next use) and the file is given its size back.
    private func noticedCut() -> Bool {
        var status = stat()
        guard fstat(dataDescriptor, &status) != 0 || UInt64(status.st_size) < objectSize else { return false }
        verified.withLock { $0.removeAll() }
        claimed.withLock { $0.removeAll() }
        forgetBlocks(past: UInt64(max(0, status.st_size)))
        ftruncate(dataDescriptor, off_t(objectSize))
        return true
    }

    /// Clears the entries of the blocks not wholly within the first `size` bytes of the data
    /// file (a cut took them): their entries, of this boot or not, describe bytes now gone.
    private func forgetBlocks(past size: UInt64) {
        let first = Int(size / UInt64(blockSize))
        guard first < blockCount else { return }
        let (start, end) = (entryOffset(first), entryOffset(blockCount))
        // A hole: the map of a huge object stays sparse, whatever the cut.
        if cshim_punch_hole(mapDescriptor, Int64(start), Int64(end - start)) == 0 { return }
        // No hole punching here: clear only the chunks that hold an entry, so that what is
        // written never exceeds what was there.
        let chunk = 4096 * Self.entrySize
        var bytes = [UInt8](repeating: 0, count: chunk)
        var offset = start
        while offset < end {
            let count = Int(min(off_t(chunk), end - offset))
            let got = bytes.withUnsafeMutableBytes { pread(mapDescriptor, $0.baseAddress, count, offset) }
            if got > 0 && bytes[..<got].contains(where: { $0 != 0 }) {
                let zeros = [UInt8](repeating: 0, count: got)
                _ = zeros.withUnsafeBytes { pwrite(mapDescriptor, $0.baseAddress, got, offset) }
            }
            offset += off_t(count)
        }
    }

    func store(block: Int, buffer: BlockBuffer) {
        let bytes = buffer.bytes
        precondition(bytes.count == length(of: block))
        // Before writing past a cut, which would make the blocks before it read as zeros.
        _ = noticedCut()
        guard budget.admit(bytes.count, using: key) else {
            overflow.store(block: block, buffer: buffer)
            return
        }
        var written = 0
        while written < bytes.count {
            let result = pwrite(
                dataDescriptor, bytes.baseAddress! + written, bytes.count - written,
                off_t(block) * off_t(blockSize) + off_t(written))
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else {
                // Disk full or failing: keep it in memory, the read still succeeds.
                overflow.store(block: block, buffer: buffer)
                return
            }
            written += result
        }
        writeEntry(block, crc: Self.checksum(bytes))
        markVerified(block)
    }

    /// A block's check value: CRC-32C (hardware on x86-64: a 1 MiB block costs about 0.1 ms,
    /// zlib's CRC-32 about 1 ms).
    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        ~cshim_crc32c(~0, bytes.baseAddress, bytes.count)
    }

    static func checksum(_ bytes: UnsafeMutableRawBufferPointer) -> UInt32 {
        checksum(UnsafeRawBufferPointer(bytes))
    }
}

/// A cache directory's size limit (`remote.cache_size`): when the data files' allocated bytes
/// pass it, the least recently opened objects that no process is using are deleted. An object
/// in use is never cut; when it alone fills the cache, its further blocks stay in memory.
final class CacheBudget: Sendable {
    let directory: String
    let limit: UInt64
    /// Bytes stored since the last check of the directory's total.
    private let sinceCheck = Mutex<(bytes: Int, full: Bool)>((0, false))
    static let checkInterval = 32 << 20

    init(directory: String, limit: UInt64) {
        self.directory = directory
        self.limit = limit
    }

    /// The directory, created when needed and checked (`PrivateDirectory`): a directory
    /// another user made or can change could hold, in place of our files, symlinks to files
    /// root would then overwrite.
    func openDirectory() throws(RemoteError) -> PrivateDirectory {
        let opened: PrivateDirectory?
        do { opened = try PrivateDirectory.open(directory, creating: true, purpose: "use cache directory") } catch {
            throw RemoteError(.cache, error.path ?? directory, "cache directory refused: \(error.reason)")
        }
        // Created when missing: there is one, or an error was thrown.
        guard let opened else { throw RemoteError(.cache, directory, "cannot create the cache directory") }
        return opened
    }

    /// Whether the cache was found full (past the limit with only objects in use): blocks
    /// stay in memory from then on.
    var isFull: Bool { sinceCheck.withLock { $0.full } }

    /// Whether `bytes` more may be written by the object `key`; runs eviction every
    /// `checkInterval` bytes.
    func admit(_ bytes: Int, using key: String) -> Bool {
        let check = sinceCheck.withLock { state -> Bool? in
            if state.full { return nil }
            state.bytes += bytes
            guard state.bytes >= Self.checkInterval else { return false }
            state.bytes = 0
            return true
        }
        guard let check else { return false }
        if check && !evict(keeping: key) {
            sinceCheck.withLock { $0.full = true }
            return false
        }
        return true
    }

    /// Deletes unused objects, least recently opened first, until the total is under the
    /// limit; false when it cannot get there.
    @discardableResult
    func evict(keeping key: String) -> Bool {
        guard let directory = try? openDirectory(), let names = try? directory.names() else { return true }
        var objects: [(key: String, used: Int, bytes: UInt64)] = []
        var total: UInt64 = 0
        for name in names where name.hasSuffix(".map") {
            let objectKey = String(name.dropLast(4))
            // Only our own names: the directory may be one the user named, with files of others.
            guard objectKey.utf8.count == 32, objectKey.utf8.allSatisfy({ isxdigit(Int32($0)) != 0 }) else {
                continue
            }
            guard let map = directory.status(of: name) else { continue }
            let bytes = directory.status(of: "\(objectKey).data").map { UInt64($0.st_blocks) * 512 } ?? 0
            total += bytes
            objects.append((objectKey, map.st_mtim.tv_sec, bytes))
        }
        for object in objects.sorted(by: { $0.used < $1.used }) where total > limit && object.key != key {
            guard let map = try? directory.openFile("\(object.key).map", O_RDWR) else { continue }
            defer { try? map.close() }
            // In use by some process: skip it.
            guard flock(map.rawValue, LOCK_EX | LOCK_NB) == 0 else { continue }
            try? directory.remove("\(object.key).data")
            try? directory.remove("\(object.key).map")
            total -= object.bytes
        }
        return total <= limit
    }
}

func preadFully(_ descriptor: Int32, _ buffer: UnsafeMutableRawBufferPointer, at offset: off_t) -> Bool {
    var done = 0
    while done < buffer.count {
        let got = pread(descriptor, buffer.baseAddress! + done, buffer.count - done, offset + off_t(done))
        if got < 0 && errno == EINTR { continue }
        guard got > 0 else { return false }
        done += got
    }
    return true
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// A set of the block numbers 0..<count, one bit each: a cache of a 1 TiB object in 64 KiB
/// blocks needs 2 MiB for it, where a Set<Int> grows to hundreds of MiB.
struct BlockSet {
    private var words: [UInt64]

    init(count: Int) { words = [UInt64](repeating: 0, count: (count + 63) / 64) }

    func contains(_ block: Int) -> Bool { words[block / 64] & Self.bit(block) != 0 }

    /// Adds `block`; whether it was not in the set before.
    mutating func insert(_ block: Int) -> Bool {
        let bit = Self.bit(block)
        defer { words[block / 64] |= bit }
        return words[block / 64] & bit == 0
    }

    mutating func removeAll() { words.withUnsafeMutableBufferPointer { $0.update(repeating: 0) } }

    private static func bit(_ block: Int) -> UInt64 { 1 << UInt64(block % 64) }
}
