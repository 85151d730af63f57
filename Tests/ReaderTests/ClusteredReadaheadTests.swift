import Foundation
import Synchronization
import TestSupport
import Testing

@testable import ImageSources

#if canImport(Glibc)
import Glibc
#endif

/// A local image's reads that miss the page cache near an earlier miss read their
/// neighbourhood ahead (a cold walk costs a few large disk reads); a lone miss does not.
@Suite struct ClusteredReadaheadTests {
    typealias Advice = [Int64]  // [descriptor, offset, length]

    final class Recorder: Sendable {
        let advice = Mutex<[Advice]>([])
        var readahead: ClusteredReadahead {
            ClusteredReadahead { descriptor, offset, length in
                self.advice.withLock { $0.append([Int64(descriptor), offset, length]) }
            }
        }
        var recorded: [Advice] { advice.withLock { $0 } }
    }

    @Test func nearMissesReadTheirChunkAndTheNextAheadLoneOnesDoNot() {
        let recorder = Recorder()
        let readahead = recorder.readahead
        let mebibyte: UInt64 = 1 << 20
        let size = 200 * mebibyte
        readahead.missed(descriptor: 7, at: 0, size: size)
        #expect(recorder.recorded.isEmpty, "a first miss reads ahead")
        readahead.missed(descriptor: 7, at: mebibyte, size: size)
        #expect(recorder.recorded == [[7, 0, 4 << 20]])
        readahead.missed(descriptor: 7, at: 100 * mebibyte, size: size)
        #expect(recorder.recorded.count == 1, "a miss far from the others reads ahead")
        readahead.missed(descriptor: 7, at: 105 * mebibyte, size: size)  // two chunks on
        #expect(recorder.recorded.last == [7, 104 << 20, 4 << 20])
        // Near the end: no further than the image.
        readahead.missed(descriptor: 7, at: size - 1, size: size)
        readahead.missed(descriptor: 7, at: size - 3 * mebibyte, size: size)
        #expect(recorder.recorded.last == [7, 196 << 20, 4 << 20])
        readahead.missed(descriptor: 7, at: size - 1, size: size)
        #expect(recorder.recorded.last == [7, 198 << 20, 2 << 20])
        // Only the last few misses count: after four others, the first is forgotten.
        for far in [20, 40, 60, 80] as [UInt64] { readahead.missed(descriptor: 7, at: far * mebibyte, size: size) }
        let before = recorder.recorded.count
        readahead.missed(descriptor: 7, at: 2 * mebibyte, size: size)
        #expect(recorder.recorded.count == before)
    }

    /// Once near misses asked for a window, a read the page cache serves in its last chunk asks
    /// for the next two chunks, once, and so on along the image: a walk stays ahead of the disk.
    /// Reads elsewhere, or before any window, ask for nothing.
    @Test func servedReadsInAWindowsLastChunkAskForTheNextAhead() {
        let recorder = Recorder()
        let readahead = recorder.readahead
        let mebibyte: UInt64 = 1 << 20
        let size = 20 * mebibyte
        readahead.served(descriptor: 7, at: mebibyte, size: size)
        #expect(recorder.recorded.isEmpty, "a served read asked ahead with no window")
        readahead.missed(descriptor: 7, at: 0, size: size)
        readahead.missed(descriptor: 7, at: mebibyte, size: size)
        #expect(recorder.recorded == [[7, 0, 4 << 20]])
        readahead.served(descriptor: 7, at: mebibyte, size: size)  // the window's first chunk
        #expect(recorder.recorded.count == 1)
        readahead.served(descriptor: 7, at: 3 * mebibyte, size: size)  // its last chunk
        readahead.served(descriptor: 7, at: 3 * mebibyte + 5, size: size)  // again: once
        #expect(recorder.recorded == [[7, 0, 4 << 20], [7, 4 << 20, 4 << 20]])
        readahead.served(descriptor: 7, at: 7 * mebibyte, size: size)
        readahead.served(descriptor: 7, at: 15 * mebibyte, size: size)  // beyond the window: nothing
        #expect(recorder.recorded.last == [7, 8 << 20, 4 << 20] && recorder.recorded.count == 3)
        // No further than the image.
        for at in [11, 15, 19] as [UInt64] { readahead.served(descriptor: 7, at: at * mebibyte, size: size) }
        #expect(recorder.recorded.suffix(2) == [[7, 12 << 20, 4 << 20], [7, 16 << 20, 4 << 20]])
        readahead.served(descriptor: 7, at: size - 1, size: size)
        #expect(recorder.recorded.count == 5)
    }

    /// FileSource notices misses itself: a read the page cache cannot serve (RWF_NOWAIT says
    /// EAGAIN) is one, a read of cached pages is not.
    @Test func fileSourceReportsItsPageCacheMisses() throws {
        // Beside the build (on the disk that holds the checkout; /tmp may be a tmpfs, whose
        // pages cannot be evicted: the require below says so).
        let path = builtProductsDirectory() + "/clustered-readahead-\(getpid())"
        defer { unlink(path) }
        let bytes = [UInt8]((0..<(8 << 20)).lazy.map { UInt8(truncatingIfNeeded: $0 >> 9) })
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let descriptor = open(path, O_RDONLY)
        defer { close(descriptor) }
        fsync(descriptor)  // only clean pages can be dropped
        posix_fadvise(descriptor, 0, 0, POSIX_FADV_DONTNEED)
        try #require(!firstPageIsCached(descriptor), "\(path) stays in the page cache: not on a disk")

        let recorder = Recorder()
        let source = try FileSource(descriptor: .open(path: path, .readOnly), path: path, readahead: recorder.readahead)
        #expect(try source.read(count: 4096, at: 0) == Array(bytes[0..<4096]))
        #expect(try source.read(count: 4096, at: 0) == Array(bytes[0..<4096]))  // cached now
        #expect(try source.read(count: 4096, at: 1 << 20) == Array(bytes[(1 << 20)..<((1 << 20) + 4096)]))
        let advice = recorder.recorded
        #expect(advice.count == 1 && advice.first?[1...] == [0, 4 << 20], "\(advice)")
    }

    /// Whether the first page of `descriptor` is in the page cache (mincore of a mapping).
    func firstPageIsCached(_ descriptor: Int32) -> Bool {
        guard let mapping = mmap(nil, 4096, PROT_READ, MAP_SHARED, descriptor, 0), mapping != MAP_FAILED else {
            return false
        }
        defer { munmap(mapping, 4096) }
        var vector: UInt8 = 0
        return mincore(mapping, 4096, &vector) == 0 && vector & 1 == 1
    }
}
