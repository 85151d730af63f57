#if canImport(Glibc)
import Glibc
#endif
import Foundation
import ImageSources
import Logging
import NBDProtocol
import NBDServer
import SystemCalls
import SystemPackage
import Testing
import TestSupport

/// Bytes in memory, served through the copying path (no local descriptor). Reads of offsets in
/// `slowOffsets` sleep first, to force out-of-order completion.
final class MemorySource: RandomAccessSource, @unchecked Sendable {
    let bytes: [UInt8]
    let slowOffsets: Set<UInt64>
    let delay: useconds_t
    var size: UInt64 { UInt64(bytes.count) }
    var displayName: String { "memory" }
    var localFileDescriptor: FileDescriptor? { nil }

    init(count: Int, slowOffsets: Set<UInt64> = [], delay: useconds_t = 300_000) {
        let random = FileHandle(forReadingAtPath: "/dev/urandom")
        bytes = [UInt8](random?.readData(ofLength: count) ?? Data(count: count))
        self.slowOffsets = slowOffsets
        self.delay = delay
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        if slowOffsets.contains(offset) { usleep(delay) }
        guard offset < size else { return 0 }
        let count = min(buffer.count, bytes.count - Int(offset))
        bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: count) }
        return count
    }
}

/// The kernel's side of the socketpair, played by the test: raw requests out, simple replies in.
final class KernelSideClient: @unchecked Sendable {
    private(set) var fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { vanish() }

    /// Closes this end, as a dying peer's exit does (its unread data is dropped).
    func vanish() {
        if fd >= 0 { close(fd) }
        fd = -1
    }

    func send(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let got = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            precondition(got > 0, "send failed: \(errno)")
            sent += got
        }
    }

    func send(_ request: Request) { send(request.encoded()) }

    /// Exactly `count` bytes, or nil when the server closed first.
    func receive(_ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let got = bytes.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + filled, count - filled, 0) }
            if got <= 0 { return nil }
            filled += got
        }
        return bytes
    }

    func receiveReply() throws -> SimpleReply? {
        guard let header = receive(SimpleReply.size) else { return nil }
        return try SimpleReply(decoding: header)
    }

    /// `count` successful READ replies of `length` bytes, each checked against `image` at
    /// `offsetOf(cookie)` and none twice; returns their cookies.
    func expectReplies(_ count: Int, image: [UInt8], length: Int, offsetOf: (UInt64) -> Int) throws -> Set<UInt64> {
        var seen: Set<UInt64> = []
        for _ in 0..<count {
            let reply = try #require(try receiveReply(), "a reply did not arrive")
            #expect(reply.error == .none)
            #expect(seen.insert(reply.cookie).inserted, "cookie \(reply.cookie) answered twice")
            let offset = offsetOf(reply.cookie)
            let data = try #require(receive(length))
            #expect(data[...] == image[offset..<(offset + length)])
        }
        return seen
    }
}

/// A kernel-mode server on one end of a socketpair, run on its own thread.
final class KernelModeHarness: @unchecked Sendable {
    let server: KernelModeServer
    let client: KernelSideClient
    let serverEnd: Int32
    private let finished = DispatchSemaphore(value: 0)
    private var result: Result<ServingEnd, SystemError>?

    init(source: any RandomAccessSource, workers: Int = 4) throws {
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        serverEnd = ends[0]
        client = KernelSideClient(fd: ends[1])
        var logger = Logger(label: "test.nbd")
        logger.logLevel = ProcessInfo.processInfo.environment["NBD_TEST_LOG"] != nil ? .trace : .critical
        server = try KernelModeServer(
            socket: FileDescriptor(rawValue: ends[0]), source: source, logger: logger, workers: workers)
        _ = try JoinableThread { [self] in
            let outcome = Result { () throws(SystemError) -> ServingEnd in try server.run() }
            result = outcome
            finished.signal()
        }
    }

    deinit { close(serverEnd) }

    /// After a stop: a request sent now stays whole on the socket for whoever takes it over.
    func expectLaterRequestLeftOnSocket(cookie: UInt64) throws {
        let next = Request(type: .read, cookie: cookie, offset: 0, length: 512)
        client.send(next)
        var buffer = [UInt8](repeating: 0, count: Request.size)
        let got = buffer.withUnsafeMutableBytes { recv(serverEnd, $0.baseAddress, Request.size, Int32(MSG_WAITALL)) }
        #expect(got == Request.size)
        #expect(try Request(decoding: buffer) == next)
    }

    /// How `run()` ended, or nil if it did not end within `seconds`.
    func end(within seconds: Double = 10) -> Result<ServingEnd, SystemError>? {
        guard finished.wait(timeout: .now() + seconds) == .success else { return nil }
        finished.signal()  // let later calls see it too
        return result
    }
}

func corpusImagePath(_ name: String = "plain") throws -> String {
    let corpus = try #require(Corpus.locate(), "conformance corpus not found (set EROFS_CORPUS)")
    return "\(corpus.directory)/\(name).erofs"
}

@Suite struct KernelModeTests {
    @Test func pipelinedReadsFromAFileAreAllAnsweredWithTheRightBytes() throws {
        let path = try corpusImagePath()
        let source = try FileSource(path: path)
        let image = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let harness = try KernelModeHarness(source: source)
        var generator = SystemRandomNumberGenerator()
        var expected: [UInt64: (offset: Int, length: Int)] = [:]
        var burst: [UInt8] = []
        for cookie in UInt64(1)...200 {
            let length = [1, 512, 4096, 65536, 131072].randomElement(using: &generator)!
            let offset = Int.random(in: 0...(image.count - length), using: &generator)
            expected[cookie] = (offset, length)
            burst += Request(type: .read, cookie: cookie, offset: UInt64(offset), length: UInt32(length)).encoded()
        }
        // All 200 in one write, as the kernel pipelines them; from another thread, since the
        // server stops reading when its queue and the socket's buffer are full.
        let client = harness.client
        let requests = burst
        let sender = try JoinableThread { client.send(requests) }
        defer { sender.join() }
        for _ in 0..<200 {
            let reply = try #require(try harness.client.receiveReply())
            #expect(reply.error == .none)
            let removed = expected.removeValue(forKey: reply.cookie)
            let request = try #require(removed, "unexpected or repeated cookie \(reply.cookie)")
            let data = try #require(harness.client.receive(request.length))
            #expect(data[...] == image[request.offset..<(request.offset + request.length)])
        }
        #expect(expected.isEmpty)
        harness.client.send(Request(type: .disconnect, cookie: 999, offset: 0, length: 0))
        #expect(try harness.end()?.get() == .disconnectRequested)
        // DISC is never replied to (kernel mode leaves the socket open: the caller owns it).
        var byte: UInt8 = 0
        #expect(recv(harness.client.fd, &byte, 1, Int32(MSG_DONTWAIT)) == -1 && errno == EAGAIN)
    }

    @Test func aSlowReadDoesNotHoldBackLaterOnes() throws {
        let source = MemorySource(count: 1 << 20, slowOffsets: [0])
        let harness = try KernelModeHarness(source: source)
        harness.client.send(
            Request(type: .read, cookie: 1, offset: 0, length: 4096).encoded()
                + Request(type: .read, cookie: 2, offset: 8192, length: 4096).encoded())
        var order: [UInt64] = []
        for _ in 0..<2 {
            let reply = try #require(try harness.client.receiveReply())
            let data = try #require(harness.client.receive(4096))
            let offset = reply.cookie == 1 ? 0 : 8192
            #expect(data[...] == source.bytes[offset..<(offset + 4096)])
            order.append(reply.cookie)
        }
        #expect(order == [2, 1])
        harness.client.send(Request(type: .disconnect, cookie: 3, offset: 0, length: 0))
        #expect(try harness.end()?.get() == .disconnectRequested)
    }

    @Test func refusedCommandsGetOneReplyEachAndTheStreamStaysInStep() throws {
        let source = MemorySource(count: 65536)
        let harness = try KernelModeHarness(source: source)
        let client = harness.client
        // A WRITE with its payload (the payload's bytes look like a request, to catch a server
        // that does not consume it), TRIM, WRITE_ZEROES, FLUSH, an unknown command, reads past
        // the end and of length 0, and an offset that overflows.
        let fakeRequest = Request(type: .read, cookie: 666, offset: 0, length: 16).encoded()
        client.send(
            Request(type: .write, cookie: 1, offset: 0, length: 512).encoded()
                + fakeRequest + [UInt8](repeating: 0xAB, count: 512 - fakeRequest.count))
        client.send(Request(type: .trim, cookie: 2, offset: 0, length: 4096))
        client.send(Request(type: .writeZeroes, cookie: 3, offset: 0, length: 4096))
        client.send(Request(type: .flush, cookie: 4, offset: 0, length: 0))
        client.send(Request(type: CommandType(rawValue: 77), cookie: 5, offset: 0, length: 0))
        client.send(Request(type: .read, cookie: 6, offset: 65536 - 100, length: 101))
        client.send(Request(type: .read, cookie: 7, offset: 0, length: 0))
        client.send(Request(type: .read, cookie: 8, offset: .max - 10, length: 4096))
        let expected: [UInt64: NBDErrorCode] = [
            1: .notPermitted, 2: .notPermitted, 3: .notPermitted, 4: .none, 5: .invalid, 6: .invalid, 7: .invalid,
            8: .invalid,
        ]
        for cookie in UInt64(1)...8 {
            let reply = try #require(try client.receiveReply())
            #expect(reply.cookie == cookie)  // errors are answered inline, in order
            #expect(reply.error == expected[cookie])
        }
        // Still in step: a valid read works.
        client.send(Request(type: .read, cookie: 9, offset: 65536 - 100, length: 100))
        let reply = try #require(try client.receiveReply())
        #expect(reply.cookie == 9 && reply.error == .none)
        #expect(try #require(client.receive(100))[...] == source.bytes[(65536 - 100)...])
        client.send(Request(type: .disconnect, cookie: 10, offset: 0, length: 0))
        #expect(try harness.end()?.get() == .disconnectRequested)
    }

    /// Replies far bigger than the socket buffer go out in pieces and must arrive intact.
    @Test func largeReadsThroughTheCopyingPathArriveIntact() throws {
        let source = MemorySource(count: 12 << 20)
        let harness = try KernelModeHarness(source: source)
        harness.client.send(
            Request(type: .read, cookie: 1, offset: 1 << 20, length: 4 << 20).encoded()
                + Request(type: .read, cookie: 2, offset: 7, length: 8 << 20).encoded())
        for _ in 0..<2 {
            let reply = try #require(try harness.client.receiveReply())
            let (offset, length) = reply.cookie == 1 ? (1 << 20, 4 << 20) : (7, 8 << 20)
            let data = try #require(harness.client.receive(length))
            #expect(data[...] == source.bytes[offset..<(offset + length)])
        }
        harness.client.send(Request(type: .disconnect, cookie: 3, offset: 0, length: 0))
        #expect(try harness.end()?.get() == .disconnectRequested)
    }

    @Test func badMagicClosesTheConnection() throws {
        let harness = try KernelModeHarness(source: MemorySource(count: 4096))
        var bytes = Request(type: .read, cookie: 1, offset: 0, length: 512).encoded()
        bytes[3] ^= 0xFF
        harness.client.send(bytes)
        let end = try #require(harness.end())
        #expect(throws: SystemError.self) { try end.get() }
    }

    @Test func absurdLengthClosesTheConnection() throws {
        let harness = try KernelModeHarness(source: MemorySource(count: 4096))
        harness.client.send(Request(type: .write, cookie: 1, offset: 0, length: 64 << 20))
        let end = try #require(harness.end())
        #expect(throws: SystemError.self) { try end.get() }
    }

    @Test func peerVanishingMidReplyEndsTheLoop() throws {
        let source = MemorySource(count: 32 << 20)
        let harness = try KernelModeHarness(source: source)
        // Many big reads, then read a little of the first reply and vanish.
        for cookie in UInt64(1)...8 {
            harness.client.send(Request(type: .read, cookie: cookie, offset: 0, length: 16 << 20))
        }
        _ = harness.client.receive(1000)
        harness.client.vanish()
        #expect(try harness.end()?.get() == .peerClosed)
    }

    @Test func peerClosingBetweenRequestsEndsTheLoop() throws {
        let harness = try KernelModeHarness(source: MemorySource(count: 4096))
        shutdown(harness.client.fd, Int32(SHUT_WR))
        #expect(try harness.end()?.get() == .peerClosed)
    }

    @Test func stopFinishesInFlightRepliesAndLeavesLaterRequestsOnTheSocket() throws {
        let source = MemorySource(count: 1 << 20, slowOffsets: [4096], delay: 200_000)
        let harness = try KernelModeHarness(source: source)
        harness.client.send(Request(type: .read, cookie: 1, offset: 4096, length: 4096))
        usleep(50_000)  // the slow read is in flight
        harness.server.stop()
        let reply = try #require(try harness.client.receiveReply())
        #expect(reply.cookie == 1 && reply.error == .none)
        #expect(try #require(harness.client.receive(4096))[...] == source.bytes[4096..<8192])
        #expect(try harness.end()?.get() == .stopped)
        // The next request is left for whoever takes the socket over.
        try harness.expectLaterRequestLeftOnSocket(cookie: 2)
    }
}
