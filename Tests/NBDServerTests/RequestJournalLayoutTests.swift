@testable import NBDServer
import Testing

/// The journal's shared memory is a hand-laid structure read by a successor process: its fields
/// are checked here the way erofs-utils checks its on-disk structures at build time.
@Suite struct RequestJournalLayoutTests {
    static let regions = RequestJournal.regions.sorted { $0.range.lowerBound < $1.range.lowerBound }

    @Test func regionsDoNotOverlap() {
        for (previous, next) in zip(Self.regions, Self.regions.dropFirst()) {
            #expect(
                previous.range.upperBound <= next.range.lowerBound,
                "\(previous.name) \(previous.range) overlaps \(next.name) \(next.range)")
        }
    }

    @Test func regionsFillTheMappingAndNoMore() throws {
        let first = try #require(Self.regions.first)
        let last = try #require(Self.regions.last)
        #expect(first.range.lowerBound == 0)
        // The receive buffers end the mapping: nothing lies beyond, nothing is cut off.
        #expect(last.name == "receive buffers")
        #expect(last.range.upperBound == RequestJournal.size)
        // Every slot and both records of each kind are described.
        #expect(Self.regions.count(where: { $0.name.hasSuffix(" state") }) == RequestJournal.slotCount)
        #expect(Self.regions.count(where: { $0.name.hasSuffix(" transfer") }) == 4)
    }

    /// Fields are read and written with 32- and 64-bit acquire/release atomics, and the
    /// transfer records hold a `struct mmsghdr` (pointers): each must be naturally aligned.
    @Test func atomicFieldsAndTransferRecordsAreAligned() {
        for region in Self.regions where region.range.count == 4 || region.range.count == 8 {
            #expect(region.range.lowerBound % region.range.count == 0, "\(region.name) at \(region.range.lowerBound)")
        }
        for region in Self.regions where region.name.hasSuffix(" transfer") {
            #expect(region.range.lowerBound % 8 == 0, "\(region.name) at \(region.range.lowerBound)")
        }
        #expect(RequestJournal.slotSize % 8 == 0)
        #expect(RequestJournal.recordSize % 8 == 0)
    }

    /// The mapping is a whole number of pages, as mmap maps it.
    @Test func mappingIsWholePages() {
        #expect(RequestJournal.size % 4096 == 0)
    }
}
