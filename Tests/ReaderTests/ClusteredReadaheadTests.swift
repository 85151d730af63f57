import Foundation
import ImageSources
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A local image's reads that miss the page cache near an earlier miss read their
/// neighbourhood ahead (a cold walk costs a few large disk reads); a lone miss does not.
@Suite struct ClusteredReadaheadTests {
    /// Whether the page at `offset` of `path` is in the page cache (mincore of a mapping).
    func resident(_ path: String, at offset: Int) -> Bool {
        let descriptor = open(path, O_RDONLY)
        defer { close(descriptor) }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard let mapping = mmap(nil, page, PROT_READ, MAP_SHARED, descriptor, off_t(offset)),
            mapping != MAP_FAILED
        else { return false }
        defer { munmap(mapping, page) }
        var vector: UInt8 = 0
        return mincore(mapping, page, &vector) == 0 && vector & 1 == 1
    }

    func evict(_ path: String) {
        let descriptor = open(path, O_RDONLY)
        posix_fadvise(descriptor, 0, 0, POSIX_FADV_DONTNEED)
        close(descriptor)
    }

    @Test func nearMissesReadTheirChunkAheadALoneMissDoesNot() throws {
        // On the disk: /tmp here and in CI (a tmpfs file cannot be evicted: the require says so).
        let path = NSTemporaryDirectory() + "clustered-readahead-\(getpid())"
        defer { unlink(path) }
        let bytes = (0..<(8 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let written = open(path, O_RDONLY)
        fsync(written)  // only clean pages can be dropped
        close(written)
        let source = try FileSource(path: path)
        evict(path)
        try #require(!resident(path, at: 0), "\(path) stays in the page cache: not on a disk")
        let far = (3 << 20) + 8192

        #expect(try source.read(count: 4096, at: 0) == Array(bytes[0..<4096]))
        #expect(!resident(path, at: far), "a lone miss read ahead 3 MiB")

        #expect(try source.read(count: 4096, at: 1 << 20) == Array(bytes[(1 << 20)..<((1 << 20) + 4096)]))
        #expect(resident(path, at: far), "a miss near the first did not read its chunk ahead")
        #expect(try source.read(count: 4096, at: UInt64(far)) == Array(bytes[far..<(far + 4096)]))
    }
}
