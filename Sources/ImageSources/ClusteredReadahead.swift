#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Turns the page-cache misses of reads that stay near each other (a walk through a tree that
/// mkfs.erofs laid out in one stretch) into a few large disk reads instead of one small read
/// each. The kernel's readahead grows only for a descriptor read in order; a FUSE daemon's
/// reads jump between metadata and data and come from several threads, so without this each
/// miss reaches the disk on its own (BENCHMARKS.md, "Cold walk: clustered readahead").
///
/// A miss within `nearness` chunks of one of the last few misses asks the kernel for its chunk
/// and the next (POSIX_FADV_WILLNEED) before the read blocks. A first miss in a region, or a
/// random reader's misses spread over a large image, read no more than they ask for.
final class ClusteredReadahead: Sendable {
    static let chunkSize: Int64 = 2 << 20
    static let nearness: Int64 = 2
    static let remembered = 4

    private let recentMisses = Mutex<[Int64]>([])
    /// Where what was last asked for ends (bytes; 0: nothing asked yet). A read of cached bytes
    /// in its last chunk asks for the next two: a walk then keeps ahead of the disk instead of
    /// waiting at the start of every window (the kernel's asynchronous readahead, for readers
    /// the kernel cannot see as one stream).
    private let aheadEnd = Atomic<Int64>(0)
    /// Asks the kernel to read `length` bytes at `offset` of a descriptor (tests record it).
    let advise: @Sendable (_ descriptor: Int32, _ offset: Int64, _ length: Int64) -> Void

    init(
        advise: @escaping @Sendable (Int32, Int64, Int64) -> Void = { descriptor, offset, length in
            _ = posix_fadvise(descriptor, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
        }
    ) {
        self.advise = advise
    }

    /// Notes a miss at `offset` of `descriptor` (one of `size` bytes) and reads its
    /// neighbourhood ahead when it is near an earlier one.
    func missed(descriptor: Int32, at offset: UInt64, size: UInt64) {
        let chunk = Int64(offset) / Self.chunkSize
        let isNear = recentMisses.withLock { misses in
            let isNear = misses.contains { abs($0 - chunk) <= Self.nearness }
            misses.removeAll { $0 == chunk }
            misses.append(chunk)
            if misses.count > Self.remembered { misses.removeFirst() }
            return isNear
        }
        guard isNear else { return }
        let start = chunk * Self.chunkSize
        let length = min(2 * Self.chunkSize, Int64(size) - start)
        guard length > 0 else { return }
        advise(descriptor, start, length)
        aheadEnd.store(start + length, ordering: .relaxed)
    }

    /// Notes a read at `offset` that the page cache served: in the last chunk of what was asked
    /// for, the next two chunks are asked for (once: threads racing here ask once).
    func served(descriptor: Int32, at offset: UInt64, size: UInt64) {
        let end = aheadEnd.load(ordering: .relaxed)
        guard end > 0, Int64(offset) < end, Int64(offset) >= end - Self.chunkSize, end < Int64(size) else { return }
        let length = min(2 * Self.chunkSize, Int64(size) - end)
        guard aheadEnd.compareExchange(expected: end, desired: end + length, ordering: .relaxed).exchanged else {
            return
        }
        advise(descriptor, end, length)
    }
}
