import Foundation
import ImageSources
@testable import RemoteSources
import SystemCalls
import Testing
import TestSupport

/// Bytes of a remote object handed out as a range of the disk cache's data file (what FUSE
/// splices): only for blocks there and checked; a corrupted or cut cache is refetched, never
/// handed out.
@Suite(.serialized) struct CacheFileRangeTests {
    let directory: String
    let server: TestServer
    let object: [UInt8]
    var url: String { "http://127.0.0.1:\(server.port)/object.bin" }

    init() throws {
        directory = try scratchDirectory("cache-range")
        object = randomBytes(1 << 20)
        try Data(object).write(to: URL(fileURLWithPath: directory + "/object.bin"))
        server = try TestServer.rangeServer(root: directory)
    }

    func open(_ cache: String) throws -> RemoteSource {
        try openRemote(url, [("remote.cache", cache), ("remote.block_size", "64K")])
    }

    /// The bytes `range` points at, read from its descriptor.
    func bytes(at range: FileRange, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes {
            pread(range.descriptor.rawValue, $0.baseAddress, count, off_t(range.offset))
        }
        #expect(got == count)
        return bytes
    }

    func dataFile(_ cache: String) throws -> String {
        let name = try #require(
            try FileManager.default.contentsOfDirectory(atPath: cache).first { $0.hasSuffix(".data") })
        return cache + "/" + name
    }

    @Test func blocksAreFetchedIntoTheCacheFileAndHandedOutFromIt() throws {
        let cache = try scratchDirectory("cache-range-dir")
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let source = try open(cache)
        // Cold: fetched into the data file first, then pointed at.
        let range = try #require(source.fileRange(at: 100_000, count: 300_000))
        #expect(range.offset == 100_000)
        #expect(try bytes(at: range, count: 300_000) == Array(object[100_000..<400_000]))
        let requests = try server.rangeRequests()
        #expect(try readRemote(source, 100_000, 300_000) == Array(object[100_000..<400_000]))
        #expect(source.fileRange(at: 100_000, count: 300_000) == range)
        #expect(try server.rangeRequests() == requests)
        // Memory only: never a file range.
        let memory = try openRemote(url)
        _ = try readRemote(memory, 0, 200_000)
        #expect(memory.fileRange(at: 0, count: 200_000) == nil)
    }

    /// A block whose bytes changed in the data file since they were stored (torn by a power
    /// loss) fails its check after the reboot: no file range; the read fetches it again, after
    /// which it is one.
    @Test func aCorruptedBlockIsRefetchedNotHandedOut() throws {
        let cache = try scratchDirectory("cache-range-corrupt")
        defer { try? FileManager.default.removeItem(atPath: cache) }
        do {
            let writer = try open(cache)
            _ = try readRemote(writer, 0, object.count)
        }
        let handle = try #require(FileHandle(forUpdatingAtPath: try dataFile(cache)))
        try handle.seek(toOffset: 5 * 65536 + 123)
        try handle.write(contentsOf: [0xff ^ object[5 * 65536 + 123]])
        try handle.close()
        try markCacheEntriesFromAnEarlierBoot(try dataFile(cache).dropLast(".data".count) + ".map")
        let reader = try open(cache)
        // Block 5 is damaged; blocks 0-4 are fine.
        #expect(reader.fileRange(at: 4 * 65536, count: 2 * 65536) == nil)
        #expect(reader.fileRange(at: 0, count: 5 * 65536) != nil)
        let before = try server.rangeRequests()
        #expect(try readRemote(reader, 4 * 65536, 2 * 65536) == Array(object[(4 * 65536)..<(6 * 65536)]))
        #expect(try server.rangeRequests() > before)
        let range = try #require(reader.fileRange(at: 4 * 65536, count: 2 * 65536))
        #expect(try bytes(at: range, count: 2 * 65536) == Array(object[(4 * 65536)..<(6 * 65536)]))
    }

    /// A fetch that fails for a file range is reported by the read that follows (FUSE falls
    /// back to it) without going through the retries again.
    @Test func aFailedFetchIsReportedOnceNotRetriedTwice() throws {
        let cache = try scratchDirectory("cache-range-fail")
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let source = try openRemote(
            url, [("remote.cache", cache), ("remote.block_size", "64K"), ("http.retries", "1"), ("http.timeout", "1")])
        try server.control("POST", "/__fault?mode=status503&count=100")
        let before = try server.rangeRequests()
        #expect(source.fileRange(at: 200_000, count: 100_000) == nil)
        let tried = try server.rangeRequests()
        #expect(tried > before)
        #expect(throws: SystemError.self) { _ = try readRemote(source, 200_000, 100_000) }
        #expect(try server.rangeRequests() == tried)
        try server.control("DELETE", "/__fault")
        #expect(try readRemote(source, 200_000, 100_000) == Array(object[200_000..<300_000]))
    }

    /// A data file cut short behind a live source's back: the blocks it checked before may be
    /// holes, so it hands out no range until each is checked again, and reads refetch.
    @Test func aCutDataFileIsNoticed() throws {
        let cache = try scratchDirectory("cache-range-cut")
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let source = try open(cache)
        _ = try readRemote(source, 0, object.count)
        #expect(source.fileRange(at: 0, count: object.count) != nil)
        #expect(truncate(try dataFile(cache), 3 * 65536) == 0)
        #expect(source.fileRange(at: 0, count: object.count) == nil)
        #expect(try readRemote(source, 0, object.count) == object)
        let range = try #require(source.fileRange(at: 0, count: object.count))
        #expect(try bytes(at: range, count: object.count) == object)
    }
}

/// A remote image mounted through FUSE a second time reads from the filled block cache by
/// splicing the cache file (the serving process reads no data with read/pread: the cache was
/// filled in this boot, so nothing needs checking), and after a reboot a block torn in the
/// cache is fetched again, never served.
@Suite(.requiresRoot, .requires(.program("mkfs.erofs")), .serialized) struct CacheSpliceMountTests {
    static var mountErofs: String { builtProductsDirectory() + "/mount.erofs" }

    /// Bytes the serving workers of the mount using `cache` read with read(2)/pread(2) (rchar:
    /// spliced bytes are not counted).
    func readBytes(cache: String) throws -> Int {
        let marker = cache.replacingOccurrences(of: "/", with: "\\/")
        var total = 0
        for pid in RemoteMountTests.daemonProcesses(mentioning: marker) {
            let io = (try? String(contentsOfFile: "/proc/\(pid)/io", encoding: .utf8)) ?? ""
            for line in io.split(separator: "\n") where line.hasPrefix("rchar:") {
                total += Int(line.split(separator: " ").last!) ?? 0
            }
        }
        return total
    }

    /// Drops the mounted file's pages so that the next read goes to the daemon.
    func dropPages(_ path: String) {
        let descriptor = Glibc.open(path, O_RDONLY)
        posix_fadvise(descriptor, 0, 0, POSIX_FADV_DONTNEED)
        close(descriptor)
    }

    @Test func secondMountSplicesFromTheCacheAndRefetchesACorruptedBlock() throws {
        let root = try scratchDirectory("splice-root")
        let tree = try scratchDirectory("splice-tree")
        let cache = try scratchDirectory("splice-cache")
        let mountPoint = try scratchDirectory("splice-mnt")
        defer {
            _ = try? runProgram(Self.mountErofs, ["-u", mountPoint])
            for path in [root, tree, cache, mountPoint] { try? FileManager.default.removeItem(atPath: path) }
        }
        let content = randomBytes(3 << 20)
        try Data(content).write(to: URL(fileURLWithPath: tree + "/file.bin"))
        let made = try runProgram("/usr/bin/env", ["mkfs.erofs", "--quiet", root + "/image.erofs", tree])
        try #require(made.status == 0, "\(made.standardError)")
        let server = try TestServer.rangeServer(root: root)
        let url = "http://127.0.0.1:\(server.port)/image.erofs"
        let file = mountPoint + "/file.bin"
        func mount() throws {
            let result = try runProgram(
                Self.mountErofs, ["-t", "erofs.fuse", url, mountPoint, "-o", "remote.cache=\(cache)"])
            try #require(result.status == 0, "\(result.standardError)")
        }
        func unmount() throws {
            let result = try runProgram(Self.mountErofs, ["-u", mountPoint])
            try #require(result.status == 0, "\(result.standardError)")
        }

        try mount()
        #expect(FileManager.default.contents(atPath: file) == Data(content))
        // The readahead past the file's end runs on after the read: let it land in the cache.
        _ = try server.rangeRequestsOnceQuiet()
        try unmount()
        // Each process that opens the object (the mount's probe, the worker, its standby) asks
        // once for its first bytes, which hold the superblock; the standby does so after the
        // mount returned.
        let firstMount = try server.rangeLog()
        let openRange = try #require(firstMount.first)
        let opens = firstMount.filter { $0 == openRange }.count

        // Second mount, a new process in the same boot: every read is spliced from the cache
        // file, no block is read to be checked, and the server sees only the opens.
        try mount()
        #expect(FileManager.default.contents(atPath: file) == Data(content))
        let checked = try readBytes(cache: cache)
        #expect(checked < content.count / 4, "the daemon read \(checked) bytes for a first read of the cached file")
        dropPages(file)
        #expect(FileManager.default.contents(atPath: file) == Data(content))
        let spliced = try readBytes(cache: cache) - checked
        #expect(spliced < content.count / 4, "the daemon read \(spliced) bytes for a read of the cached file")
        _ = try server.rangeRequestsOnceQuiet(atLeast: firstMount.count + opens)
        #expect(try server.rangeLog().dropFirst(firstMount.count) == Array(repeating: openRange, count: opens)[...])
        try unmount()

        // A byte of the file changed in the cache's data file (its CRC in the map not), and
        // every map entry made an earlier boot's (what a power loss leaves, the bytes torn):
        // checked, fetched again, the right bytes served.
        let data = try #require(
            try FileManager.default.contentsOfDirectory(atPath: cache).first { $0.hasSuffix(".data") })
        try markCacheEntriesFromAnEarlierBoot(cache + "/" + data.dropLast(".data".count) + ".map")
        let handle = try #require(FileHandle(forUpdatingAtPath: cache + "/" + data))
        let offset = UInt64(
            try #require(
                try Data(contentsOf: URL(fileURLWithPath: root + "/image.erofs"))
                    .firstRange(of: Data(content[(1 << 20)..<((1 << 20) + 64)]))?.lowerBound))
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: [~content[1 << 20]])
        try handle.close()
        let beforeCorrupt = try server.rangeLog().count
        try mount()
        #expect(FileManager.default.contents(atPath: file) == Data(content))
        dropPages(file)
        #expect(FileManager.default.contents(atPath: file) == Data(content))
        _ = try server.rangeRequestsOnceQuiet(atLeast: beforeCorrupt + opens)
        let refetched = try server.rangeLog().dropFirst(beforeCorrupt).contains { header in
            let bounds = header.dropFirst("bytes=".count).split(separator: "-").compactMap { UInt64($0) }
            return bounds.count == 2 && (bounds[0]...bounds[1]).contains(offset)
        }
        #expect(refetched, "no request fetched the damaged byte at \(offset) again")
        try unmount()
    }
}

/// Sets the boot of every entry of a block cache map (64-byte header, 16-byte entries: CRC-32C,
/// length, boot) to 0, which no boot is: the map as a power loss in an earlier boot left it.
func markCacheEntriesFromAnEarlierBoot(_ mapPath: String) throws {
    var map = try Array(Data(contentsOf: URL(fileURLWithPath: mapPath)))
    var at = 64
    while at + 16 <= map.count {
        map.replaceSubrange((at + 8)..<(at + 16), with: [UInt8](repeating: 0, count: 8))
        at += 16
    }
    try Data(map).write(to: URL(fileURLWithPath: mapPath))
}
