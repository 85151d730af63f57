import EROFSReader
@testable import FUSEServer
import Logging
import ReaderFuzzSupport
import Testing
import TestSupport

/// SiblingPrefetch's bookkeeping: which reads start a push, which listings are pushed ahead of
/// their reads, and when that stops (FUSEMountTests shows the pages arriving for real).
@Suite struct SiblingPrefetchTests {
    /// Files 1...10 in directory 100, 11...20 in 200, 21...30 in 300, each listed to its end.
    static func listed() -> SiblingPrefetch {
        let prefetch = SiblingPrefetch(budget: 512 * 1024)
        for directory: UInt64 in [100, 200, 300] {
            let first = directory / 10 - 9
            for nid in first..<(first + 10) {
                prefetch.noteListed(nid, in: directory, next: (nid - first + 1) * 12)
            }
            prefetch.noteListedToEnd(directory)
        }
        return prefetch
    }

    /// A push reads at most `maximumBlocksScanned` directory blocks: a directory of thousands
    /// of subdirectories and small files only past them is not read to its end by one push
    /// (each block of a hostile one can cost a 12 MiB decompression, and shutdown waits for
    /// the push). Files within the bound are pushed.
    @Test func aPushScansABoundedNumberOfDirectoryBlocks() throws {
        func pushed(subdirectories: Int) throws -> Int {
            var image = CraftedImage()
            for index in 0..<subdirectories {
                image.add(
                    CraftedImage.Node(.directory([]), permissions: 0o755), named: "d\(100_000 + index)", in: image.root)
            }
            for index in 0..<10 {
                image.add(
                    CraftedImage.Node(.file(.blocks([1, 2, 3])), permissions: 0o644), named: "z\(index)", in: image.root
                )
            }
            let filesystem = try EROFSFilesystem(source: InMemorySource(image.bytes()))
            let blocks = try filesystem.directoryBlockCount(try filesystem.inode(nid: filesystem.rootNid))
            if subdirectories > 1000 { #expect(blocks > SiblingPrefetch.maximumBlocksScanned) }
            let operations = FUSEOperations(filesystem: filesystem, logger: Logger(label: "test"), prefetchAhead: .on)
            var count = 0
            operations.prefetchNotifications(
                from: SiblingPrefetch.Place(directory: filesystem.rootNid, next: 0), wholeListing: true
            ) { _ in count += 1 }
            return count
        }
        #expect(try pushed(subdirectories: 20) == 10)
        #expect(try pushed(subdirectories: 5000) == 0)
    }

    @Test func listingsArePushedAheadOnlyOnceReadsEarnedIt() {
        let prefetch = SiblingPrefetchTests.listed()
        // A walk that only lists: nothing.
        #expect(!prefetch.hasCredit)
        #expect(prefetch.claimListing(200) == nil)
        // A read from the start of a listed file: its directory from the next file on...
        let place = prefetch.claim(after: 1)
        #expect(place == SiblingPrefetch.Place(directory: 100, next: 12))
        // ...not again while that push runs...
        #expect(prefetch.claim(after: 2) == nil)
        prefetch.finish(100, through: .max)
        #expect(prefetch.hasCredit)
        // ...and the next listings from their first entry, once each.
        #expect(prefetch.claimListing(200) == SiblingPrefetch.Place(directory: 200, next: 0))
        #expect(prefetch.claimListing(200) == nil)
        prefetch.finish(200, through: .max)
        #expect(prefetch.claimListing(200) == nil)
        // A directory READDIRPLUS did not list to its end is not pushed ahead.
        #expect(prefetch.claimListing(400) == nil)
    }

    @Test func creditRunsOutWithoutFurtherReads() {
        let prefetch = SiblingPrefetch(budget: 512 * 1024)
        prefetch.noteListed(1, in: 10, next: 12)
        prefetch.noteListedToEnd(10)
        _ = prefetch.claim(after: 1)
        prefetch.finish(10, through: .max)
        var pushed = 0
        for directory in UInt64(1000)..<1100 {
            prefetch.noteListedToEnd(directory)
            if prefetch.claimListing(directory) != nil { pushed += 1 }
            prefetch.finish(directory, through: .max)
        }
        #expect(pushed == SiblingPrefetch.walkCredit)
    }

    @Test func aReaderOvertakingThePushStopsPushingAhead() {
        let prefetch = SiblingPrefetchTests.listed()
        _ = prefetch.claim(after: 1)
        prefetch.finish(100, through: .max)
        #expect(prefetch.claimListing(200) != nil)
        // Reads reach directory 200 while it is pushed: each file read is left out of the push.
        for nid: UInt64 in 11...(11 + UInt64(SiblingPrefetch.overtakesTolerated)) {
            #expect(prefetch.claim(after: nid) == nil)
            #expect(prefetch.wasRead(nid))
        }
        #expect(!prefetch.wasRead(19))
        prefetch.finish(200, through: .max)
        // The pusher was starved: the next listing waits for a read again.
        #expect(prefetch.claimListing(300) == nil)
        // That read's push earns the credit back.
        #expect(prefetch.claim(after: 21) == SiblingPrefetch.Place(directory: 300, next: 12))
    }

    @Test func aFewOvertakesAreTolerated() {
        let prefetch = SiblingPrefetchTests.listed()
        _ = prefetch.claim(after: 1)
        prefetch.finish(100, through: .max)
        #expect(prefetch.claimListing(200) != nil)
        // The first file of a listing is often read before its push reaches it.
        #expect(prefetch.claim(after: 11) == nil)
        prefetch.finish(200, through: .max)
        #expect(prefetch.claimListing(300) != nil)
    }

    /// A push ahead that started late is dropped: the directory is left to its reads (the first
    /// starts a push the worker waits for) and the next listing waits for a read again.
    @Test func aLatePushAheadIsAbandoned() {
        let prefetch = SiblingPrefetchTests.listed()
        _ = prefetch.claim(after: 1)
        prefetch.finish(100, through: .max)
        let place = prefetch.claimListing(200)
        #expect(place == SiblingPrefetch.Place(directory: 200, next: 0))
        prefetch.abandon(place!)
        #expect(prefetch.claimListing(300) == nil)
        #expect(prefetch.claim(after: 11) == SiblingPrefetch.Place(directory: 200, next: 12))
    }

    /// The runnable count IdleCPU reads from /proc/loadavg ("L1 L5 L15 RUNNING/TOTAL LAST").
    @Test func runnableTasksAreReadFromLoadavg() {
        #expect(IdleCPU.runnable(in: ArraySlice(Array("0.18 1.14 1.61 2/345 12345\n".utf8))) == 2)
        #expect(IdleCPU.runnable(in: ArraySlice(Array("6.14 5.86 5.50 14/149 6844\n".utf8))) == 14)
        #expect(IdleCPU.runnable(in: ArraySlice(Array("0.18 1.14\n".utf8))) == nil)
        #expect(IdleCPU.runnable(in: ArraySlice(Array("a b c d e".utf8))) == nil)
    }

    /// The listing a walk asks for next (the directory after the one it is done with, in their
    /// parent's listing) is made once, at the size the kernel asks for, and given once.
    @Test func theNextListingIsMadeOnceAndGivenOnce() {
        let prefetch = SiblingPrefetch(budget: 512 * 1024)
        #expect(prefetch.listingToPrepare(after: 10) == nil)  // no listing seen yet
        prefetch.noteListedDirectories([10, 20, 30], size: 4096, firstListing: true)
        let next = prefetch.listingToPrepare(after: 10)
        #expect(next?.directory == 20 && next?.size == 4096)
        #expect(prefetch.listingToPrepare(after: 10) == nil)  // claimed
        prefetch.storePrepared(.init(directory: 20, size: 4096, payload: [1, 2, 3]))
        #expect(prefetch.preparedDirectories == [20])
        #expect(prefetch.takePrepared(20, size: 4096) == [1, 2, 3])
        #expect(prefetch.takePrepared(20, size: 4096) == nil)
        // Asked with another size, it is not given (and goes).
        prefetch.storePrepared(.init(directory: 20, size: 4096, payload: [1]))
        #expect(prefetch.takePrepared(20, size: 8192) == nil)
        #expect(prefetch.preparedDirectories.isEmpty)
        // A directory the kernel listed already is not made again.
        prefetch.noteListedToEnd(30)
        #expect(prefetch.listingToPrepare(after: 20) == nil)
        // Bounded: the oldest go.
        for directory in UInt64(100)..<110 {
            prefetch.storePrepared(.init(directory: directory, size: 4096, payload: []))
        }
        #expect(prefetch.preparedDirectories == Array(UInt64(110 - SiblingPrefetch.preparedKept)..<110))
        // Off: nothing is remembered.
        let off = SiblingPrefetch(budget: 0)
        off.noteListedDirectories([10, 20], size: 4096, firstListing: true)
        #expect(off.listingToPrepare(after: 10) == nil)
    }

    /// A listing's reply reaching its end is noted for the worker that sent it, once.
    @Test func aListingToItsEndIsTakenOnce() {
        let prefetch = SiblingPrefetch(budget: 512 * 1024)
        #expect(!prefetch.takeJustListed(10))
        prefetch.noteListedToEnd(10)
        #expect(prefetch.takeJustListed(10))
        #expect(!prefetch.takeJustListed(10))
    }
}
