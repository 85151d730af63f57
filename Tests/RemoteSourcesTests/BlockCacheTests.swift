import Foundation
@testable import RemoteSources
import Testing

/// The disk block cache on its own: sharing, torn blocks, eviction.
@Suite struct BlockCacheTests {
    static let blockSize = 4096

    func block(_ seed: UInt8, _ count: Int = blockSize) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0) &+ seed }
    }

    func open(
        _ directory: String, identity: String = "object", size: UInt64 = 10 * 4096 + 100, limit: UInt64 = 1 << 30,
        boot: UInt64 = DiskBlockStore.currentBoot
    ) throws -> DiskBlockStore {
        try DiskBlockStore(
            identity: identity, objectSize: size, blockSize: Self.blockSize,
            budget: CacheBudget(directory: directory, limit: limit), boot: boot)
    }

    /// Another boot than this one, for a store that plays the machine after a crash.
    static let nextBoot = DiskBlockStore.currentBoot &+ 1

    @Test func aSecondOpenerReusesBlocksAndTheShortLastBlock() throws {
        let directory = try scratchDirectory("cache-share")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try open(directory)
        block(7).withUnsafeBytes { first.store(block: 3, bytes: $0) }
        block(9, 100).withUnsafeBytes { first.store(block: 10, bytes: $0) }
        let second = try open(directory)
        var bytes = [UInt8](repeating: 0, count: 100)
        #expect(bytes.withUnsafeMutableBytes { second.read(block: 3, offset: 50, into: $0) })
        #expect(bytes == Array(block(7)[50..<150]))
        #expect(bytes.withUnsafeMutableBytes { second.read(block: 10, offset: 0, into: $0) })
        #expect(bytes == block(9, 100))
        #expect(!bytes.withUnsafeMutableBytes { second.read(block: 4, offset: 0, into: $0) })
        // Another version of the object is another cache entry.
        let other = try open(directory, identity: "object v2")
        #expect(!other.contains(block: 3))
    }

    /// A block whose bytes did not all reach the disk (a power loss after the map write) fails
    /// its CRC after the reboot and is not believed.
    @Test func aTornBlockIsNotBelieved() throws {
        let directory = try scratchDirectory("cache-torn")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = try open(directory)
        block(1).withUnsafeBytes { writer.store(block: 2, bytes: $0) }
        let dataPath = directory + "/\(writer.key).data"
        let handle = try #require(FileHandle(forUpdatingAtPath: dataPath))
        try handle.seek(toOffset: UInt64(2 * Self.blockSize + 1000))
        try handle.write(contentsOf: [UInt8](repeating: 0, count: 512))
        try handle.close()
        let reader = try open(directory, boot: Self.nextBoot)
        var bytes = [UInt8](repeating: 0, count: 16)
        #expect(!bytes.withUnsafeMutableBytes { reader.read(block: 2, offset: 0, into: $0) })
        // Nor when the read takes the whole block (checked in the reader's own buffer).
        var whole = [UInt8](repeating: 0, count: Self.blockSize)
        #expect(!whole.withUnsafeMutableBytes { reader.read(block: 2, offset: 0, into: $0) })
        // Stored again, it reads back.
        block(1).withUnsafeBytes { reader.store(block: 2, bytes: $0) }
        #expect(bytes.withUnsafeMutableBytes { reader.read(block: 2, offset: 0, into: $0) })
    }

    /// Within one boot an entry describes whole bytes (they are written first, and the page
    /// cache is one for every process): a block of this boot is used without a check. One from
    /// an earlier boot is checked once, and its entry then names this boot. (Shown by bytes
    /// changed behind the cache's back, which only the check would notice.)
    @Test func blocksOfThisBootAreUsedUncheckedAndOthersCheckedOnce() throws {
        let directory = try scratchDirectory("cache-boot")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let earlierBoot = Self.nextBoot &+ 1
        let writer = try open(directory, boot: earlierBoot)
        block(3).withUnsafeBytes { writer.store(block: 1, bytes: $0) }
        block(4).withUnsafeBytes { writer.store(block: 5, bytes: $0) }
        func damage(_ block: Int) throws {
            let handle = try #require(FileHandle(forUpdatingAtPath: directory + "/\(writer.key).data"))
            try handle.seek(toOffset: UInt64(block * Self.blockSize + 10))
            try handle.write(contentsOf: [0xEE])
            try handle.close()
        }
        var bytes = [UInt8](repeating: 0, count: 16)
        // This boot, block 1 from the earlier one: checked (passes), its entry now this boot's.
        let checker = try open(directory, boot: Self.nextBoot)
        #expect(bytes.withUnsafeMutableBytes { checker.read(block: 1, offset: 0, into: $0) })
        #expect(bytes == Array(block(3)[0..<16]))
        try damage(1)
        try damage(5)
        let later = try open(directory, boot: Self.nextBoot)
        // Block 1: this boot's entry, used as it is (the damage is not looked for).
        #expect(bytes.withUnsafeMutableBytes { later.read(block: 1, offset: 0, into: $0) })
        #expect(bytes[10] == 0xEE)
        // Block 5: still the earlier boot's, checked, and the damage found.
        #expect(!bytes.withUnsafeMutableBytes { later.read(block: 5, offset: 0, into: $0) })
        #expect(!later.check(blocks: [5]))
        // The check covers splices too.
        #expect(later.checkedDescriptor(for: 5...5) == nil)
        #expect(later.checkedDescriptor(for: 1...1) != nil)
    }

    /// Past the limit, unused objects go, least recently opened first; an object in use (its
    /// map locked by a live store) stays.
    @Test func evictionSkipsObjectsInUse() throws {
        let directory = try scratchDirectory("cache-evict")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let size: UInt64 = 64 * 4096
        var kept: DiskBlockStore? = try open(directory, identity: "in use", size: size)
        do {
            let old = try open(directory, identity: "old", size: size)
            for index in 0..<64 { block(UInt8(index)).withUnsafeBytes { old.store(block: index, bytes: $0) } }
        }
        for index in 0..<64 { block(UInt8(index)).withUnsafeBytes { kept!.store(block: index, bytes: $0) } }
        let files = try FileManager.default.contentsOfDirectory(atPath: directory)
        #expect(files.filter { $0.hasSuffix(".map") }.count == 2)
        // A file not named as ours is someone else's, even with our suffix: never deleted.
        let foreign = [UInt8](repeating: 1, count: 1 << 20)
        #expect(FileManager.default.createFile(atPath: directory + "/site.map", contents: Data(foreign)))
        #expect(FileManager.default.createFile(atPath: directory + "/site.data", contents: Data(foreign)))
        let budget = CacheBudget(directory: directory, limit: 300 << 10)
        #expect(budget.evict(keeping: "none"))
        let after = try FileManager.default.contentsOfDirectory(atPath: directory)
        #expect(after.filter { $0.hasSuffix(".map") }.sorted() == ["\(kept!.key).map", "site.map"])
        #expect(after.contains("site.data"))
        try FileManager.default.removeItem(atPath: directory + "/site.map")
        try FileManager.default.removeItem(atPath: directory + "/site.data")
        // Over the limit with only objects in use: eviction says so.
        #expect(!CacheBudget(directory: directory, limit: 4096).evict(keeping: "none"))
        kept = nil
        #expect(CacheBudget(directory: directory, limit: 4096).evict(keeping: "none"))
    }

    /// Root writes, truncates and later trusts the cache's files: a symlink planted in place of
    /// one is not followed, and a directory another user owns is not used at all, so nothing
    /// outside the cache is written (found by an attack on `remote.cache=/tmp/DIR`, where the
    /// symlinked map was truncated and overwritten).
    @Test func plantedSymlinksAndForeignDirectoriesAreRefused() throws {
        let directory = try scratchDirectory("cache-planted")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let key = try open(directory + "/ours").key
        let victim = directory + "/victim"
        try Data("precious".utf8).write(to: URL(fileURLWithPath: victim))
        for name in ["\(key).map", "\(key).data"] {
            try FileManager.default.removeItem(atPath: "\(directory)/ours/\(name)")
            #expect(symlink(victim, "\(directory)/ours/\(name)") == 0)
            #expect { try open(directory + "/ours") } throws: {
                ($0 as? RemoteError)?.kind == .cache && "\($0)".contains("a symlink, not a file of ours")
            }
            try FileManager.default.removeItem(atPath: "\(directory)/ours/\(name)")
            _ = try open(directory + "/ours")
        }
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious")
        guard geteuid() == 0 else { return }
        // Another user's directory, with their symlink where our map would be.
        let theirs = directory + "/theirs"
        #expect(mkdir(theirs, 0o755) == 0 && chown(theirs, 65534, 65534) == 0)
        #expect(symlink(victim, "\(theirs)/\(key).map") == 0)
        #expect { try open(theirs) } throws: { "\($0)".contains("owned by uid 65534") }
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious")
        // Eviction does not reach into it either.
        #expect(CacheBudget(directory: theirs, limit: 0).evict(keeping: "none"))
        #expect(FileManager.default.fileExists(atPath: "\(theirs)/\(key).map"))
    }

    /// A data file cut short clears the entries past the cut with a hole, not with zeros
    /// written: the map of a big object stays sparse (a 64 GiB object's map is 256 MiB).
    @Test func aCutOfABigObjectKeepsItsMapSparse() throws {
        let directory = try scratchDirectory("cache-cut-big")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let size: UInt64 = 1 << 36
        let key: String
        do {
            let store = try open(directory, size: size)
            key = store.key
            for index in [0, 1, 1 << 23] {
                block(UInt8(index & 0xff)).withUnsafeBytes { store.store(block: index, bytes: $0) }
            }
        }
        #expect(truncate("\(directory)/\(key).data", 4096) == 0)
        let reopened = try open(directory, size: size)
        #expect(reopened.contains(block: 0))
        #expect(!reopened.contains(block: 1) && !reopened.contains(block: 1 << 23))
        var status = stat()
        #expect(stat("\(directory)/\(key).map", &status) == 0)
        #expect(status.st_size > 256 << 20)
        #expect(status.st_blocks * 512 < 1 << 20, "\(status.st_blocks * 512) bytes allocated")
    }

    /// An old cache (its map says another format: CRC-32 of zlib, not CRC-32C) is reset, not
    /// read with the wrong check.
    @Test func aCacheOfAnotherFormatIsReset() throws {
        let directory = try scratchDirectory("cache-format")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let old = try open(directory)
            block(5).withUnsafeBytes { old.store(block: 1, bytes: $0) }
            let handle = try #require(FileHandle(forUpdatingAtPath: directory + "/\(old.key).map"))
            try handle.write(contentsOf: Array("EROFSRC1".utf8))
            try handle.close()
        }
        let reopened = try open(directory)
        var bytes = [UInt8](repeating: 0, count: 16)
        #expect(!reopened.contains(block: 1))
        #expect(!bytes.withUnsafeMutableBytes { reopened.read(block: 1, offset: 0, into: $0) })
    }

    /// The block check is CRC-32C: the standard check value, and the same as a bit-at-a-time
    /// CRC-32C at every length and alignment around the hardware path's 3 x 4 KiB lanes.
    @Test func blockChecksumIsCRC32C() {
        #expect(Array("123456789".utf8).withUnsafeBytes { DiskBlockStore.checksum($0) } == 0xE306_9283)
        func reference(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            var crc: UInt32 = ~0
            for byte in bytes {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
            }
            return ~crc
        }
        var generator = SystemRandomNumberGenerator()
        let data = (0..<(5 * 12288 + 100)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for length in [0, 1, 7, 8, 9, 4095, 12287, 12288, 12289, 3 * 12288 + 13, 5 * 12288 + 99] {
            for start in 0..<2 {
                let slice = data[start..<(start + length)]
                #expect(slice.withUnsafeBytes { DiskBlockStore.checksum($0) } == reference(slice), "length \(length)")
            }
        }
    }

    /// Many uses of one block (the use list is compacted on the way) keep it; the blocks not
    /// used since go first; the store never holds more than its capacity.
    @Test func memoryStoreKeepsTheRecentlyUsedThroughManyUses() {
        let store = MemoryBlockStore(blockSize: 4096, capacity: 8 * 4096)
        for index in 0..<8 { block(UInt8(index)).withUnsafeBytes { store.store(block: index, bytes: $0) } }
        var bytes = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<1000 { #expect(bytes.withUnsafeMutableBytes { store.read(block: 0, offset: 0, into: $0) }) }
        for index in 8..<15 { block(UInt8(index)).withUnsafeBytes { store.store(block: index, bytes: $0) } }
        #expect(bytes.withUnsafeMutableBytes { store.read(block: 0, offset: 0, into: $0) })
        #expect(bytes == block(0))
        #expect((1..<8).allSatisfy { !store.contains(block: $0) })
        #expect((8..<15).allSatisfy { store.contains(block: $0) })
    }

    /// A buffer let go returns to its pool and is handed out again (no new allocation, no new
    /// page faults); past `keep` idle buffers the rest are freed.
    @Test func bufferPoolReusesAndBoundsIdleBuffers() {
        let pool = BufferPool(size: 4096, keep: 1)
        var first: BlockBuffer? = pool.take()
        var second: BlockBuffer? = pool.take()
        let address = first!.storage.baseAddress
        first = nil
        second = nil
        _ = second
        let again = pool.take()
        #expect(again.storage.baseAddress == address)
        #expect(again.storage.count == 4096)
    }

    @Test func memoryStoreDropsTheLeastRecentlyUsed() {
        let store = MemoryBlockStore(blockSize: 4096, capacity: 3 * 4096)
        for index in 0..<3 { block(UInt8(index)).withUnsafeBytes { store.store(block: index, bytes: $0) } }
        var bytes = [UInt8](repeating: 0, count: 1)
        #expect(bytes.withUnsafeMutableBytes { store.read(block: 0, offset: 0, into: $0) })
        block(3).withUnsafeBytes { store.store(block: 3, bytes: $0) }
        #expect(store.contains(block: 0) && !store.contains(block: 1) && store.contains(block: 3))
    }
}
