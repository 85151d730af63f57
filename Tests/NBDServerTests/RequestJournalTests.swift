#if canImport(Glibc)
import Glibc
#endif
import Foundation
import ImageSources
import Logging
import NBDProtocol
@testable import NBDServer
import SystemCalls
import SystemPackage
import Testing

/// A worker killed at a chosen instant, replayed step by step on a real socketpair with the
/// journal's own calls (a real SIGKILL cannot be aimed at an instruction), then a second
/// mapping of the same memfd (the successor) resumes, and the test, playing the kernel, checks
/// that the stream it receives answers every request exactly once with the right bytes.
@Suite struct RequestJournalTests {
    static let length: UInt32 = 4096

    struct Connection {
        let serverEnd: Int32
        let client: KernelSideClient
        let source = MemorySource(count: 1 << 20)

        init() {
            var ends: [Int32] = [-1, -1]
            precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
            serverEnd = ends[0]
            client = KernelSideClient(fd: ends[1])
        }

        func request(_ cookie: UInt64) -> Request {
            Request(type: .read, cookie: cookie, offset: cookie * 8192, length: RequestJournalTests.length)
        }

        func data(for cookie: UInt64) -> [UInt8] {
            Array(source.bytes[Int(cookie * 8192)..<Int(cookie * 8192) + Int(RequestJournalTests.length)])
        }

        /// What the first worker does: reads `read` requests (all the socket has lands in the
        /// journal's buffer) and admits each.
        func readAndAdmit(_ count: Int, reader: MessageReader, journal: RequestJournal) throws -> [Int32] {
            var slots: [Int32] = []
            for _ in 0..<count {
                let header = try #require(try reader.readBytes(Request.size, atBoundary: true, what: "request"))
                slots.append(
                    journal.admit(try Request(decoding: header), at: reader.streamPosition - UInt64(Request.size)))
            }
            return slots
        }

        /// Serves what the successor resumed, on a thread; the test then reads the replies.
        func resume(journal: RequestJournal, recovery: RequestJournal.Recovery) throws -> DispatchSemaphore {
            let done = DispatchSemaphore(value: 0)
            var logger = Logger(label: "test.journal")
            logger.logLevel = .critical
            let server = try KernelModeServer(
                socket: FileDescriptor(rawValue: serverEnd), source: source, logger: logger, journal: journal,
                resuming: recovery)
            _ = try JoinableThread {
                _ = try? server.run()
                done.signal()
            }
            return done
        }

        /// Reads `count` replies, each checked against the source's bytes for its cookie.
        func receiveReplies(_ count: Int) throws -> Set<UInt64> {
            try client.expectReplies(count, image: source.bytes, length: Int(RequestJournalTests.length)) {
                Int($0) * 8192
            }
        }
    }

    @Test func successorCompletesAHalfSentReplyAndAnswersEverythingElseOnce() throws {
        let connection = Connection()
        defer { close(connection.serverEnd) }
        let journal = try RequestJournal.create()
        journal.reset()
        // Five requests and the first 10 bytes of a sixth are on the socket.
        for cookie in 1...5 { connection.client.send(connection.request(UInt64(cookie))) }
        let sixth = connection.request(6).encoded()
        connection.client.send(Array(sixth[..<10]))
        usleep(50_000)

        // The first worker reads three, answers the first, is killed 100 bytes into the
        // second's reply, and never answers the third.
        let reader = MessageReader(socket: connection.serverEnd, stop: nil, journal: journal, resuming: nil)
        let slots = try connection.readAndAdmit(3, reader: reader, journal: journal)
        #expect(slots.allSatisfy { $0 >= 0 })
        let writer = ReplyWriter(socket: connection.serverEnd, journal: journal)
        try connection.data(for: 1).withUnsafeBytes {
            try writer.send(header: SimpleReply(cookie: 1).encoded(), data: $0, answering: [.init(slot: slots[0])])
        }
        let secondReply = SimpleReply(cookie: 2).encoded() + connection.data(for: 2)
        journal.beginSend(answering: [.init(slot: slots[1])], total: secondReply.count)
        let sent = secondReply.withUnsafeBytes { bytes in
            var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: 100)
            return journal.send(on: connection.serverEnd, &vector, count: 1)
        }
        #expect(sent == 100)

        // The successor maps the same memory.
        let successor = try RequestJournal(descriptor: dup(journal.descriptor))
        let recovery = try successor.recover(replyFilePosition: nil)
        #expect(recovery.unanswered.map(\.request.cookie) == [3])
        let unfinished = try #require(recovery.unfinishedSend)
        #expect(unfinished.answers.map(\.request.cookie) == [2])
        #expect(unfinished.sent == 100 && unfinished.total == secondReply.count)
        #expect(recovery.end - recovery.start == 2 * Request.size + 10, "two requests and a piece of one left unparsed")

        // The kernel's side: the first reply, then the stream goes on whole.
        #expect(try connection.receiveReplies(1) == [1])
        let done = try connection.resume(journal: successor, recovery: recovery)
        connection.client.send(Array(sixth[10...]))
        #expect(try connection.receiveReplies(5) == [2, 3, 4, 5, 6])

        connection.client.send(Request(type: .disconnect, cookie: 99, offset: 0, length: 0))
        #expect(done.wait(timeout: .now() + 10) == .success)
    }

    @Test func aReplyThatWentOutWholeIsNotRepeated() throws {
        let connection = Connection()
        defer { close(connection.serverEnd) }
        let journal = try RequestJournal.create()
        journal.reset()
        connection.client.send(connection.request(1))
        connection.client.send(connection.request(2))
        usleep(50_000)
        let reader = MessageReader(socket: connection.serverEnd, stop: nil, journal: journal, resuming: nil)
        let slots = try connection.readAndAdmit(2, reader: reader, journal: journal)
        // Killed after the kernel counted the whole send, before the journal marked it done.
        let reply = SimpleReply(cookie: 1).encoded() + connection.data(for: 1)
        journal.beginSend(answering: [.init(slot: slots[0])], total: reply.count)
        let sent = reply.withUnsafeBytes { bytes in
            var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
            return journal.send(on: connection.serverEnd, &vector, count: 1)
        }
        #expect(sent == reply.count)

        let successor = try RequestJournal(descriptor: dup(journal.descriptor))
        let recovery = try successor.recover(replyFilePosition: nil)
        #expect(recovery.unfinishedSend == nil)
        #expect(recovery.unanswered.map(\.request.cookie) == [2])
        let done = try connection.resume(journal: successor, recovery: recovery)
        #expect(try connection.receiveReplies(2) == [1, 2])
        connection.client.send(Request(type: .disconnect, cookie: 99, offset: 0, length: 0))
        #expect(done.wait(timeout: .now() + 10) == .success)
    }

    /// A big reply goes by sendfile from the reply file: the file's position, moved by the
    /// kernel, says how much of it went out.
    @Test func successorCompletesAReplyCutInItsSendfilePart() throws {
        let connection = Connection()
        defer { close(connection.serverEnd) }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(
            "journal-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        ).path
        #expect(FileManager.default.createFile(atPath: path, contents: Data(connection.source.bytes)))
        defer { unlink(path) }
        let replyFile = open(path, O_RDONLY | O_CLOEXEC)
        #expect(replyFile >= 0)
        defer { close(replyFile) }
        let journal = try RequestJournal.create()
        journal.reset()
        connection.client.send(connection.request(1))
        usleep(50_000)
        let reader = MessageReader(socket: connection.serverEnd, stop: nil, journal: journal, resuming: nil)
        let slots = try connection.readAndAdmit(1, reader: reader, journal: journal)

        // As ReplyWriter.sendFile does it, killed after 1000 bytes of the file part.
        let request = connection.request(1)
        let header = SimpleReply(cookie: 1).encoded()
        journal.beginSend(
            answering: [.init(slot: slots[0])], total: header.count + Int(request.length), fileStart: request.offset,
            fileLength: Int(request.length))
        #expect(lseek(replyFile, off_t(request.offset), SEEK_SET) == off_t(request.offset))
        journal.filePositioned()
        let headerSent = header.withUnsafeBytes { bytes in
            var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
            return journal.send(on: connection.serverEnd, &vector, count: 1)
        }
        #expect(headerSent == header.count)
        #expect(sendfile(connection.serverEnd, replyFile, nil, 1000) == 1000)

        let successor = try RequestJournal(descriptor: dup(journal.descriptor))
        let position = UInt64(lseek(replyFile, 0, SEEK_CUR))
        let recovery = try successor.recover(replyFilePosition: position)
        let unfinished = try #require(recovery.unfinishedSend)
        #expect(unfinished.sent == header.count + 1000)
        #expect(recovery.unanswered.isEmpty)
        // A position that cannot be right is not trusted.
        #expect {
            try RequestJournal(descriptor: dup(journal.descriptor)).recover(replyFilePosition: 7)
        } throws: { ($0 as? SystemError)?.kind == .corrupt }

        let done = try connection.resume(journal: successor, recovery: recovery)
        #expect(try connection.receiveReplies(1) == [1])
        connection.client.send(Request(type: .disconnect, cookie: 99, offset: 0, length: 0))
        #expect(done.wait(timeout: .now() + 10) == .success)
    }

    /// A journaled server on a local image sends a lone READ (a small one too, that nothing
    /// else waits behind) and a big one by sendfile from the reply file, without a copy through
    /// userspace, and leaves a journal with nothing owed.
    @Test(arguments: [UInt32(4096), UInt32(256 << 10)])
    func journaledServerSendsLoneAndBigRepliesFromTheReplyFile(length wanted: UInt32) throws {
        let path = try corpusImagePath()
        let source = try FileSource(path: path)
        let replyFile = open(path, O_RDONLY | O_CLOEXEC)
        defer { close(replyFile) }
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]) }
        let client = KernelSideClient(fd: ends[1])
        let journal = try RequestJournal.create()
        var logger = Logger(label: "test.journal")
        logger.logLevel = .critical
        let server = try KernelModeServer(
            socket: FileDescriptor(rawValue: ends[0]), source: source, logger: logger, journal: journal,
            replyFile: replyFile)
        let done = DispatchSemaphore(value: 0)
        _ = try JoinableThread {
            _ = try? server.run()
            done.signal()
        }
        let length = min(wanted, UInt32(source.size))
        client.send(Request(type: .read, cookie: 5, offset: 0, length: length))
        let reply = try #require(try client.receiveReply())
        #expect(reply.cookie == 5 && reply.error == .none)
        var expected = [UInt8](repeating: 0, count: Int(length))
        _ = try expected.withUnsafeMutableBytes { try source.read(into: $0, at: 0) }
        #expect(client.receive(Int(length)) == expected)
        #expect(lseek(replyFile, 0, SEEK_CUR) == off_t(length), "sent from the reply file at its own position")
        client.send(Request(type: .disconnect, cookie: 6, offset: 0, length: 0))
        #expect(done.wait(timeout: .now() + 10) == .success)
        let after = try journal.recover(replyFilePosition: UInt64(lseek(replyFile, 0, SEEK_CUR)))
        #expect(after.unanswered.isEmpty && after.unfinishedSend == nil)
        // Only the DISC is left unparsed: a successor would read it and end too.
        #expect(after.end - after.start == Request.size)
    }

    /// Deaths are counted in one place, the supervisor's crash-loop guard (`CrashLoopGuard`);
    /// the journal only carries its verdict. A request held by three workers that died is
    /// served by the fourth unless the supervisor marked it (next test), and a count an older
    /// build left in the mark's field is not a mark.
    @Test func theJournalCountsNoDeathsOnlyTheSupervisorFailsARequest() throws {
        let connection = Connection()
        defer { close(connection.serverEnd) }
        let journal = try RequestJournal.create()
        journal.reset()
        /// A worker that reads the request `cookie` off the socket (and then dies).
        func read(_ cookie: UInt64, by worker: RequestJournal, resuming recovery: RequestJournal.Recovery?) throws {
            connection.client.send(connection.request(cookie))
            usleep(50_000)
            let reader = MessageReader(socket: connection.serverEnd, stop: nil, journal: worker, resuming: recovery)
            _ = try connection.readAndAdmit(1, reader: reader, journal: worker)
        }
        /// The next worker's view of the journal after the last one died.
        func takeOver() throws -> (RequestJournal, RequestJournal.Recovery) {
            let successor = try RequestJournal(descriptor: dup(journal.descriptor))
            return (successor, try successor.recover(replyFilePosition: nil))
        }

        // The first worker dies serving request 1; the second takes it over, reads request 2
        // as well, and dies on request 1 too; so does the third.
        try read(1, by: journal, resuming: nil)
        let (second, secondRecovery) = try takeOver()
        #expect(secondRecovery.unanswered.map(\.failOnResume) == [false])
        try read(2, by: second, resuming: secondRecovery)
        let (_, thirdRecovery) = try takeOver()
        #expect(thirdRecovery.unanswered.map(\.request.cookie) == [1, 2])
        #expect(thirdRecovery.unanswered.map(\.failOnResume) == [false, false])
        // What a build that counted takeovers left in the field: 3 deaths, no verdict.
        for slot in thirdRecovery.unanswered.map(\.slot) {
            journal.store32(
                RequestJournal.slotsOffset + Int(slot) * RequestJournal.slotSize + RequestJournal.failMarkInSlot, 3)
        }

        // The fourth serves both: nothing told it otherwise.
        let (fourth, recovery) = try takeOver()
        #expect(recovery.unanswered.map(\.failOnResume) == [false, false])
        let done = try connection.resume(journal: fourth, recovery: recovery)
        #expect(try connection.receiveReplies(2) == [1, 2])
        connection.client.send(Request(type: .disconnect, cookie: 99, offset: 0, length: 0))
        #expect(done.wait(timeout: .now() + 10) == .success)
    }

    /// The supervisor's crash-loop guard, nbd's half: between a death and the next worker it
    /// sees what the dead worker held, and the request it marks is answered with EIO by the
    /// successor, which serves the rest.
    @Test func aRequestTheSupervisorFailsIsAnsweredWithEIO() throws {
        let connection = Connection()
        defer { close(connection.serverEnd) }
        let journal = try RequestJournal.create()
        #expect(journal.unansweredRequests().isEmpty, "never started: nothing to see")
        journal.reset()
        connection.client.send(connection.request(1))
        connection.client.send(connection.request(2))
        usleep(50_000)
        let reader = MessageReader(socket: connection.serverEnd, stop: nil, journal: journal, resuming: nil)
        _ = try connection.readAndAdmit(2, reader: reader, journal: journal)
        // The worker died holding both.
        #expect(journal.unansweredRequests().map(\.cookie).sorted() == [1, 2])
        #expect(journal.failOnResume { $0.cookie == 1 } == 1)
        #expect(journal.failOnResume { $0.cookie == 7 } == 0)

        let successor = try RequestJournal(descriptor: dup(journal.descriptor))
        let recovery = try successor.recover(replyFilePosition: nil)
        let done = try connection.resume(journal: successor, recovery: recovery)
        let refused = try #require(try connection.client.receiveReply())
        #expect(refused.cookie == 1 && refused.error == .ioError)
        #expect(try connection.receiveReplies(1) == [2])
        connection.client.send(Request(type: .disconnect, cookie: 99, offset: 0, length: 0))
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(successor.unansweredRequests().isEmpty)
    }

    @Test func aJournalThatGaveUpOrNeverStartedIsNotTrusted() throws {
        let journal = try RequestJournal.create()
        #expect(throws: SystemError.self) { try journal.recover(replyFilePosition: nil) }  // never reset: no magic
        journal.reset()
        let clean = try journal.recover(replyFilePosition: nil)
        #expect(clean.unanswered.isEmpty && clean.unfinishedSend == nil && clean.start == clean.end)
        journal.poison()
        let error = #expect(throws: SystemError.self) { try journal.recover(replyFilePosition: nil) }
        #expect("\(error.map { $0 } as Any)".contains("gave up"))
    }
}
