import CZlib
import Crypto
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where fetched blocks of one object are kept. Blocks are `blockSize` bytes (the last one
/// shorter); a store may drop any block at any time except while a `read` copies it.
protocol BlockStore: Sendable {
    var blockSize: Int { get }
    /// Copies `destination.count` bytes from `offset` inside block `block` and returns true,
    /// or returns false when the block is not (or no longer, or not verifiably) present.
    func read(block: Int, offset: Int, into destination: UnsafeMutableRawBufferPointer) -> Bool
    /// Whether the block is present, without verifying it (a hint for planning fetches).
    func contains(block: Int) -> Bool
    /// Keeps a whole block.
    func store(block: Int, bytes: UnsafeRawBufferPointer)
}

/// Blocks in memory, least recently used dropped past `capacity` bytes: `remote.cache=none`,
/// and the overflow of a disk cache that is full.
final class MemoryBlockStore: BlockStore {
    let blockSize: Int
    let capacity: Int
    private struct State {
        var blocks: [Int: (bytes: [UInt8], used: UInt64)] = [:]
        var bytes = 0
        var clock: UInt64 = 0
    }
    private let state = Mutex(State())

    init(blockSize: Int, capacity: Int) {
        self.blockSize = blockSize
        self.capacity = capacity
    }

    func read(block: Int, offset: Int, into destination: UnsafeMutableRawBufferPointer) -> Bool {
        state.withLock { state in
            guard var entry = state.blocks[block], offset + destination.count <= entry.bytes.count else { return false }
            entry.bytes.withUnsafeBytes {
                destination.copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + destination.count)]))
            }
            state.clock += 1
            entry.used = state.clock
            state.blocks[block] = entry
            return true
        }
    }

    func contains(block: Int) -> Bool { state.withLock { $0.blocks[block] != nil } }

    func store(block: Int, bytes: UnsafeRawBufferPointer) {
        state.withLock { state in
            state.clock += 1
            if let old = state.blocks.updateValue((Array(bytes), state.clock), forKey: block) {
                state.bytes -= old.bytes.count
            }
            state.bytes += bytes.count
            // A scan per eviction: capacity / blockSize entries at most (1024 by default).
            while state.bytes > capacity, let victim = state.blocks.min(by: { $0.value.used < $1.value.used }) {
                state.bytes -= victim.value.bytes.count
                state.blocks[victim.key] = nil
            }
        }
    }
}

/// The on-disk block cache of one object version: `DIR/KEY.data`, a sparse file as large as the
/// object holding the blocks at their offsets, and `DIR/KEY.map`, a header plus one 8-byte entry
/// per block (CRC-32 of the block, its length; length 0 = absent). KEY hashes the object's
/// identity (URL without credentials, ETag or Last-Modified, size).
///
/// - Sharing: every user holds a shared flock on the map; eviction takes it exclusively
///   (non-blocking) before deleting, so a block in use is never removed. Two processes storing
///   the same block write the same bytes (the object is pinned by its identity).
/// - Crashes: a block's bytes are written before its entry, and the entry carries the bytes'
///   CRC, which each process checks the first time it uses a block; a block torn by a crash or
///   a power loss fails the check and is fetched again. Nothing is fsynced.
final class DiskBlockStore: BlockStore, @unchecked Sendable {
    let blockSize: Int
    let objectSize: UInt64
    let blockCount: Int
    /// Owned: closed on deinit. Immutable after init; pread/pwrite are thread-safe.
    private let dataDescriptor: Int32
    private let mapDescriptor: Int32
    private let budget: CacheBudget
    let key: String
    /// Blocks whose CRC this process has checked (or written): read without a check.
    private let verified: Mutex<[UInt64]>
    /// Blocks that could not go to disk because the cache is full.
    private let overflow: MemoryBlockStore

    static let headerSize = 64
    static let magic = Array("EROFSRC1".utf8)

    /// Opens (creating when needed) the cache of `identity` under `budget.directory`, or
    /// throws `.cache` when the directory or files cannot be used.
    init(identity: String, objectSize: UInt64, blockSize: Int, budget: CacheBudget) throws(RemoteError) {
        self.blockSize = blockSize
        self.objectSize = objectSize
        self.budget = budget
        blockCount = Int((objectSize + UInt64(blockSize) - 1) / UInt64(blockSize))
        let digest = Array(SHA256.hash(data: Array(identity.utf8)))
        key = digest.prefix(16).map { String($0, radix: 16).leftPadded(2) }.joined()
        verified = Mutex([UInt64](repeating: 0, count: (blockCount + 63) / 64))
        overflow = MemoryBlockStore(blockSize: blockSize, capacity: 64 << 20)
        let directory = budget.directory
        try budget.createDirectory()
        var header = [UInt8](repeating: 0, count: Self.headerSize)
        header.replaceSubrange(0..<8, with: Self.magic)
        withUnsafeBytes(of: UInt32(blockSize).littleEndian) { header.replaceSubrange(8..<12, with: $0) }
        withUnsafeBytes(of: objectSize.littleEndian) { header.replaceSubrange(16..<24, with: $0) }
        header.replaceSubrange(32..<64, with: digest)
        let mapLength = off_t(Self.headerSize + 8 * blockCount)
        let mapPath = "\(directory)/\(key).map"
        let dataPath = "\(directory)/\(key).data"
        func failure(_ what: String, _ path: String) -> RemoteError {
            RemoteError(.cache, path, "\(what): \(String(cString: strerror(errno)))")
        }
        // Open and lock the map; a map deleted by an evictor between our open and our lock
        // has no links left: open again.
        var map: Int32 = -1
        for _ in 0..<5 {
            map = open(mapPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard map >= 0 else { throw failure("cannot open the cache map", mapPath) }
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
        if got != Self.headerSize || existing != header || status.st_size != mapLength {
            // New, or made with another block size: reset it, but only if no one else uses it.
            let fresh = got <= 0
            if !fresh && flock(map, LOCK_EX | LOCK_NB) != 0 {
                close(map)
                throw RemoteError(.cache, mapPath, "in use by another process with another block size")
            }
            if !fresh { ftruncate(map, 0) }
            guard ftruncate(map, mapLength) == 0, pwrite(map, header, header.count, 0) == header.count else {
                close(map)
                throw failure("cannot write the cache map", mapPath)
            }
            flock(map, LOCK_SH)
        }
        let data = open(dataPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard data >= 0 else {
            close(map)
            throw failure("cannot open the cache data", dataPath)
        }
        if fstat(data, &status) == 0 && status.st_size != off_t(objectSize) {
            ftruncate(data, off_t(objectSize))
        }
        // Recently used objects are evicted last.
        futimens(map, nil)
        mapDescriptor = map
        dataDescriptor = data
    }

    deinit {
        close(dataDescriptor)
        close(mapDescriptor)
    }

    func length(of block: Int) -> Int {
        Int(min(UInt64(blockSize), objectSize - UInt64(block) * UInt64(blockSize)))
    }

    private func entry(_ block: Int) -> (crc: UInt32, length: Int) {
        var raw: (UInt32, UInt32) = (0, 0)
        let got = withUnsafeMutableBytes(of: &raw) {
            pread(mapDescriptor, $0.baseAddress, 8, off_t(Self.headerSize + 8 * block))
        }
        guard got == 8 else { return (0, 0) }
        return (UInt32(littleEndian: raw.0), Int(UInt32(littleEndian: raw.1)))
    }

    private func isVerified(_ block: Int) -> Bool {
        verified.withLock { $0[block / 64] & (1 << UInt64(block % 64)) != 0 }
    }

    private func markVerified(_ block: Int) {
        verified.withLock { $0[block / 64] |= 1 << UInt64(block % 64) }
    }

    func contains(block: Int) -> Bool {
        isVerified(block) || entry(block).length == length(of: block) || overflow.contains(block: block)
    }

    func read(block: Int, offset: Int, into destination: UnsafeMutableRawBufferPointer) -> Bool {
        let blockOffset = off_t(block) * off_t(blockSize)
        if isVerified(block) {
            return preadFully(dataDescriptor, destination, at: blockOffset + off_t(offset))
        }
        let (crc, stored) = entry(block)
        let length = length(of: block)
        guard stored == length else { return overflow.read(block: block, offset: offset, into: destination) }
        // First use in this process: check the whole block against its CRC.
        var bytes = [UInt8](repeating: 0, count: length)
        let good = bytes.withUnsafeMutableBytes { buffer in
            preadFully(dataDescriptor, buffer, at: blockOffset) && crc32(0, buffer.baseAddress, UInt32(length)) == crc
        }
        guard good else { return false }
        markVerified(block)
        bytes.withUnsafeBytes {
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + destination.count)]))
        }
        return true
    }

    func store(block: Int, bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == length(of: block))
        guard budget.admit(bytes.count, using: key) else {
            overflow.store(block: block, bytes: bytes)
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
                overflow.store(block: block, bytes: bytes)
                return
            }
            written += result
        }
        let crc = UInt32(crc32(0, bytes.baseAddress, UInt32(bytes.count)))
        var raw = (crc.littleEndian, UInt32(bytes.count).littleEndian)
        _ = withUnsafeBytes(of: &raw) { pwrite(mapDescriptor, $0.baseAddress, 8, off_t(Self.headerSize + 8 * block)) }
        markVerified(block)
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

    func createDirectory() throws(RemoteError) {
        var path = ""
        for component in directory.split(separator: "/") {
            path += "/" + component
            if mkdir(path, 0o700) != 0 && errno != EEXIST {
                throw RemoteError(
                    .cache, directory, "cannot create the cache directory: \(String(cString: strerror(errno)))")
            }
        }
    }

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
        guard let handle = opendir(directory) else { return true }
        defer { closedir(handle) }
        var objects: [(key: String, used: Int, bytes: UInt64)] = []
        var total: UInt64 = 0
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard name.hasSuffix(".map") else { continue }
            let objectKey = String(name.dropLast(4))
            var map = stat()
            var data = stat()
            guard stat("\(directory)/\(name)", &map) == 0 else { continue }
            let bytes = stat("\(directory)/\(objectKey).data", &data) == 0 ? UInt64(data.st_blocks) * 512 : 0
            total += bytes
            objects.append((objectKey, map.st_mtim.tv_sec, bytes))
        }
        for object in objects.sorted(by: { $0.used < $1.used }) where total > limit && object.key != key {
            let mapPath = "\(directory)/\(object.key).map"
            let descriptor = open(mapPath, O_RDWR | O_CLOEXEC)
            guard descriptor >= 0 else { continue }
            defer { close(descriptor) }
            // In use by some process: skip it.
            guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else { continue }
            unlink("\(directory)/\(object.key).data")
            unlink(mapPath)
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
