#if canImport(Glibc)
import Glibc
#endif
@testable import FUSEServer
import Synchronization
import SystemCalls
import Testing

/// The hand-over between a worker and the pushing thread (SiblingPrefetch): the worker waits
/// for its push, but never longer than the bound, whatever the push does (a real push can wait
/// for page locks only a worker's answer releases).
@Suite struct PushQueueTests {
    static func milliseconds(since start: timespec) -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec - start.tv_sec) * 1000 + Double(now.tv_nsec - start.tv_nsec) / 1e6
    }

    static func now() -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now
    }

    @Test func everyPushIsMadeInOrder() throws {
        let queue = PushQueue()
        let pushed = Mutex<[UInt64]>([])
        let pusher = try JoinableThread {
            queue.serve { place, _, _ in pushed.withLock { $0.append(place.directory) } }
        }
        for directory in UInt64(1)...20 {
            queue.pushAndWait(.init(directory: directory, next: 0))
        }
        queue.stop()
        pusher.join()
        #expect(pushed.withLock { $0 } == Array(1...20))
    }

    @Test func aStuckPushHoldsTheWorkerOnlyForTheBound() throws {
        let queue = PushQueue()
        let release = Mutex(false)
        let pusher = try JoinableThread {
            queue.serve { _, _, _ in
                // A push stuck on a page lock: until the test lets it go.
                while !release.withLock({ $0 }) { usleep(1000) }
            }
        }
        let start = PushQueueTests.now()
        queue.pushAndWait(.init(directory: 1, next: 0))
        let waited = PushQueueTests.milliseconds(since: start)
        #expect(waited >= Double(PushQueue.waitNanoseconds) / 1e6 * 0.9, "returned after \(waited) ms")
        #expect(waited < 1000, "a stuck push held the worker \(waited) ms")
        // Further pushes queue behind it and return at the bound too; nothing blocks for good.
        for _ in 0..<3 { queue.pushAndWait(.init(directory: 2, next: 0)) }
        release.withLock { $0 = true }
        queue.stop()
        pusher.join()
        // After stop, a worker does not wait at all.
        let after = PushQueueTests.now()
        queue.pushAndWait(.init(directory: 3, next: 0))
        #expect(PushQueueTests.milliseconds(since: after) < 100)
    }

    /// A push ahead of reads the pushing thread gets to late (busy CPUs, or behind another push)
    /// is reported late, for SiblingPrefetch to drop; one a worker waits for is not.
    @Test func aPushAheadTakenLateIsReportedLate() throws {
        let queue = PushQueue()
        let seen = Mutex<[(UInt64, Bool)]>([])  // directory, late
        let busy = Mutex(true)
        let pusher = try JoinableThread {
            queue.serve { place, start, _ in
                seen.withLock { $0.append((place.directory, start == .late)) }
                // The first push holds the thread past the bound, so the one queued behind it
                // is taken late.
                if place.directory == 1 { while busy.withLock({ $0 }) { usleep(1000) } }
            }
        }
        queue.push(.init(directory: 1, next: 0))
        while seen.withLock({ $0.isEmpty }) { usleep(100) }
        queue.push(.init(directory: 2, next: 0))
        queue.push(.init(directory: 3, next: 0))
        usleep(UInt32(PushQueue.aheadStartNanoseconds / 1000) * 3)
        busy.withLock { $0 = false }
        queue.pushAndWait(.init(directory: 4, next: 0))
        queue.stop()
        pusher.join()
        let pushes = seen.withLock { $0 }
        #expect(pushes.map(\.0) == [1, 2, 3, 4])
        // The first one's start depends on the scheduler (a thread just made, a loaded machine).
        #expect(Array(pushes.map(\.1).dropFirst()) == [true, true, false])
    }

    /// A push queued at its directory's listing reads at once but sends only once the reader has
    /// asked past the listing (the kernel has made the inodes); the worker that says so returns
    /// once the first files are out, or at the bound; a reader that never asks drops the push.
    @Test func aPushAtAListingSendsOnlyOnceTheReaderIsPastIt() throws {
        let queue = PushQueue()
        let seen = Mutex<[String]>([])
        let pusher = try JoinableThread {
            queue.serve { place, _, gate in
                guard let gate else { return seen.withLock { $0.append("ungated \(place.directory)") } }
                seen.withLock { $0.append("open \(gate.isOpen)") }
                guard gate.waitOpen() else { return seen.withLock { $0.append("dropped \(place.directory)") } }
                seen.withLock { $0.append("sending \(place.directory)") }
                // The first files go out after 0.2 ms; the rest of the push takes 20 ms.
                usleep(200)
                for _ in 0..<PushQueue.headStartFiles { gate.sent() }
                usleep(20_000)
            }
        }
        // No push awaits directory 7: the caller may start one itself.
        #expect(!queue.inodesMade(7))
        queue.push(.init(directory: 7, next: 0), awaitingInodes: true)
        while seen.withLock({ $0.isEmpty }) { usleep(100) }
        #expect(seen.withLock { $0 } == ["open false"])
        let start = PushQueueTests.now()
        #expect(queue.inodesMade(7))
        let waited = PushQueueTests.milliseconds(since: start)
        // It waited for the first files, not for the whole push.
        #expect(waited >= 0.15 && waited < 10, "waited \(waited) ms")
        #expect(seen.withLock { $0 } == ["open false", "sending 7"])
        // A listing whose reader never asks past it: the push is dropped at the bound.
        queue.push(.init(directory: 8, next: 0), awaitingInodes: true)
        queue.push(.init(directory: 9, next: 0))
        let bound = PushQueueTests.now()
        while !seen.withLock({ $0.contains("ungated 9") }) { usleep(100) }
        #expect(PushQueueTests.milliseconds(since: bound) >= Double(PushQueue.waitNanoseconds) / 1e6 * 0.9)
        #expect(seen.withLock { $0.suffix(3) } == ["open false", "dropped 8", "ungated 9"])
        // Once its push ended, a directory awaits nothing.
        #expect(!queue.inodesMade(8))
        queue.stop()
        pusher.join()
    }
}
