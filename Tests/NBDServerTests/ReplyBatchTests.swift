#if canImport(Glibc)
import Glibc
#endif
import Foundation
import ImageSources
import NBDProtocol
import NBDServer
import SystemCalls
import Testing

/// The reader thread gathers replies to cached READs and sends them together: these check that
/// no reply waits behind a read that may block, that stop and a vanishing peer still behave.
@Suite struct ReplyBatchTests {
    /// A corpus image, read once so the page cache holds it (the batched path needs cached data).
    private func cachedImage() throws -> (FileSource, [UInt8]) {
        let path = try corpusImagePath()
        return (try FileSource(path: path), try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))))
    }

    /// A bug that held replies back would hang the test: give up after 10 s instead.
    private func limitWaits(of client: KernelSideClient) {
        var limit = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(client.fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    }

    @Test func repliesDoNotWaitBehindAHalfReceivedRequest() throws {
        let (source, image) = try cachedImage()
        let harness = try KernelModeHarness(source: source)
        limitWaits(of: harness.client)
        let offsetOf = { (cookie: UInt64) in Int(cookie) * 4096 % (image.count - 4096) }
        var burst: [UInt8] = []
        for cookie in UInt64(1)...40 {
            burst += Request(type: .read, cookie: cookie, offset: UInt64(offsetOf(cookie)), length: 4096).encoded()
        }
        let last = Request(type: .read, cookie: 41, offset: UInt64(offsetOf(41)), length: 4096).encoded()
        // Forty whole requests and the first 10 bytes of the next: the forty are answered
        // while the server waits for the rest of the 41st.
        harness.client.send(burst + last[..<10])
        #expect(try harness.client.expectReplies(40, image: image, length: 4096, offsetOf: offsetOf) == Set(1...40))
        harness.client.send(Array(last[10...]))
        #expect(try harness.client.expectReplies(1, image: image, length: 4096, offsetOf: offsetOf) == [41])
        harness.server.stop()
        #expect(try harness.end()?.get() == .stopped)
    }

    @Test func stopAfterABurstAnswersEveryRequestRead() throws {
        let (source, image) = try cachedImage()
        let harness = try KernelModeHarness(source: source)
        limitWaits(of: harness.client)
        let offsetOf = { (cookie: UInt64) in Int(cookie) * 1000 % (image.count - 8192) }
        var burst: [UInt8] = []
        for cookie in UInt64(1)...60 {
            burst += Request(type: .read, cookie: cookie, offset: UInt64(offsetOf(cookie)), length: 8192).encoded()
        }
        harness.client.send(burst)
        // One reply arrived: the server has read the burst (one write, one read). Stop now.
        var seen = try harness.client.expectReplies(1, image: image, length: 8192, offsetOf: offsetOf)
        harness.server.stop()
        seen.formUnion(try harness.client.expectReplies(59, image: image, length: 8192, offsetOf: offsetOf))
        #expect(seen == Set(1...60))
        #expect(try harness.end()?.get() == .stopped)
        // Nothing more was sent, and a later request stays on the socket.
        var byte: UInt8 = 0
        #expect(recv(harness.client.fd, &byte, 1, Int32(MSG_DONTWAIT)) == -1 && errno == EAGAIN)
        try harness.expectLaterRequestLeftOnSocket(cookie: 99)
    }

    @Test func peerVanishingWithBatchedRepliesUnreadEndsTheLoop() throws {
        let (source, image) = try cachedImage()
        let harness = try KernelModeHarness(source: source)
        var burst: [UInt8] = []
        for cookie in UInt64(1)...300 {
            burst += Request(
                type: .read, cookie: cookie, offset: UInt64(Int(cookie) * 512 % (image.count - 65536)), length: 65536
            ).encoded()
        }
        harness.client.send(burst)  // 300 x 64 KiB of replies: far more than the socket holds
        _ = harness.client.receive(1000)
        harness.client.vanish()
        #expect(try harness.end()?.get() == .peerClosed)
    }
}
