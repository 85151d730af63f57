#if canImport(Glibc)
import Glibc
#endif
import CShim
import ImageSources
import Logging
import NBDProtocol
import SystemCalls
import SystemPackage

/// How a serving loop ended.
public enum ServingEnd: Equatable, Sendable {
    /// The client sent NBD_CMD_DISC (never replied to).
    case disconnectRequested
    /// The client closed the socket, or vanished while a reply was being sent.
    case peerClosed
    /// `stop()` was called: every request read was answered, no byte of a later one was taken.
    case stopped
}

/// The transmission phase of one connection, shared by kernel mode (no handshake) and network
/// mode (after the handshake). One thread reads requests, a small fixed pool of workers serves
/// READs concurrently and replies as each completes (out of order), and a `ReplyWriter` keeps
/// every reply atomic on the socket.
final class TransmissionLoop: @unchecked Sendable {
    struct Configuration: Sendable {
        var workers: Int = 4
        /// READs read but not yet taken by a worker; the reader waits when it is full, so a
        /// client cannot make the server buffer unbounded work.
        var queueCapacity: Int = 128
    }

    private let reader: MessageReader
    private let writer: ReplyWriter
    private let source: any RandomAccessSource
    private let structuredReplies: Bool
    private let configuration: Configuration
    private let logger: Logger

    /// Whether replies may go by sendfile from the source: a local file whose filesystem can
    /// splice, and a writer that may send files (see `ReplyWriter.sendsFiles`). Decided once,
    /// before any thread reads it.
    private let sendsFromSource: Bool

    private let journal: RequestJournal?
    /// What a dead predecessor left on this socket, answered before anything else.
    private let recovery: RequestJournal.Recovery?

    private let queueState = ConditionLock()
    /// A request and its journal slot (-1 when not journaled).
    private typealias Admitted = (request: Request, slot: Int32)
    private var queue: [Admitted] = []
    private var queueHead = 0
    private var closing = false

    init(
        reader: MessageReader, source: any RandomAccessSource, structuredReplies: Bool,
        configuration: Configuration, logger: Logger, recovery: RequestJournal.Recovery? = nil, replyFile: Int32 = -1
    ) {
        self.reader = reader
        self.journal = reader.journal
        self.recovery = recovery
        self.writer = ReplyWriter(socket: reader.socket, journal: reader.journal, replyFile: replyFile, tls: reader.tls)
        self.source = source
        self.structuredReplies = structuredReplies
        self.configuration = configuration
        self.logger = logger
        sendsFromSource = writer.sendsFiles && source.localFileDescriptor?.supportsSendfile == true
    }

    func run() throws(SystemError) -> ServingEnd {
        // sendfile(2) has no MSG_NOSIGNAL: a vanished peer must give EPIPE, not kill the process.
        signal(SIGPIPE, SIG_IGN)
        var workers: [JoinableThread] = []
        defer {
            queueState.withLock {
                closing = true
                queueState.broadcast()
            }
            for worker in workers { worker.join() }
        }
        for _ in 0..<max(1, configuration.workers) {
            workers.append(try JoinableThread { [self] in workerLoop() })
        }
        return try readLoop()
    }

    private func readLoop() throws(SystemError) -> ServingEnd {
        var inlineScratch = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Int(Self.inlineCopyLimit), alignment: 4096)
        defer { inlineScratch.deallocate() }
        let header = UnsafeMutableRawBufferPointer.allocate(byteCount: Request.size, alignment: 8)
        defer { header.deallocate() }
        let batch = ReplyBatch(dataCapacity: Self.batchDataCapacity)
        // Every request read gets its reply, however reading ends (stop, disconnect, bad input).
        defer { sendBatch(batch) }
        if let recovery { try resume(recovery, batch: batch, scratch: &inlineScratch) }
        while true {
            if writer.failed != nil { return .peerClosed }
            // The next read may block: no reply may wait behind it.
            if reader.bufferedByteCount < Request.size { sendBatch(batch) }
            guard try reader.read(into: header, atBoundary: true, what: "NBD request") == .message else {
                return reader.stop?.isRaised == true && writer.failed == nil ? .stopped : .peerClosed
            }
            let request: Request
            do { request = try Request(decoding: UnsafeRawBufferPointer(header)) } catch {
                throw SystemError("NBD request", detail: "\(error); closing the connection")
            }
            if request.type == .disconnect { return .disconnectRequested }
            let position = reader.streamPosition - UInt64(Request.size)
            let slot = journal?.admit(request, at: position) ?? -1
            if try !dispatch(request, slot: slot, batch: batch, scratch: &inlineScratch) { return .disconnectRequested }
        }
    }

    /// Serves what a dead predecessor left: the rest of the send it was killed in, then the
    /// requests it read and never answered. The bytes it read and did not parse are already the
    /// reader's.
    private func resume(
        _ recovery: RequestJournal.Recovery, batch: ReplyBatch, scratch: inout UnsafeMutableRawBufferPointer
    ) throws(SystemError) {
        if let unfinished = recovery.unfinishedSend {
            var bytes: [UInt8] = []
            for entry in unfinished.answers {
                let error = NBDErrorCode(rawValue: entry.error)
                bytes += SimpleReply(cookie: entry.request.cookie, error: error).encoded()
                guard error == .none, entry.request.type == .read else { continue }
                let start = bytes.count
                bytes += [UInt8](repeating: 0, count: Int(entry.request.length))
                let got = try bytes.withUnsafeMutableBytes { all in
                    Swift.Result { () throws(SystemError) -> Int in
                        try source.read(
                            into: UnsafeMutableRawBufferPointer(rebasing: all[start...]), at: entry.request.offset)
                    }
                }.get()
                guard got == Int(entry.request.length) else {
                    throw SystemError(
                        "complete a reply of the previous worker", detail: "short read from \(source.displayName)")
                }
            }
            guard bytes.count == unfinished.total else {
                throw SystemError(
                    "complete a reply of the previous worker",
                    detail: "rebuilt \(bytes.count) bytes where it was sending \(unfinished.total)")
            }
            try writer.finish(bytes, sent: unfinished.sent)
        }
        for entry in recovery.unanswered {
            guard !entry.failOnResume else {
                // The supervisor saw it kill the workers before: serving it again would kill
                // this one too, and the device would hang in a crash loop. The filesystem gets
                // an I/O error.
                logger.error(
                    "NBD \(entry.request.type) of \(entry.request.length) bytes at \(entry.request.offset) killed the workers that held it; answering it with EIO"
                )
                try reply(to: entry.request, slot: entry.slot, error: .ioError, "its workers died")
                continue
            }
            _ = try dispatch(entry.request, slot: entry.slot, batch: batch, scratch: &scratch)
        }
    }

    /// Answers one request, at once or through a worker. False for NBD_CMD_DISC.
    private func dispatch(
        _ request: Request, slot: Int32, batch: ReplyBatch, scratch inlineScratch: inout UnsafeMutableRawBufferPointer
    ) throws(SystemError) -> Bool {
        if request.length > NBDLimits.maximumRequestLength
            && (request.type == .read || request.type.carriesPayload)
        {
            throw SystemError(
                "NBD \(request.type) request",
                detail: "length \(request.length) exceeds \(NBDLimits.maximumRequestLength); closing the connection")
        }
        switch request.type {
        case .read:
            #if DEBUG
            TestFaults.crashIfAsked(request)
            #endif
            let (end, overflow) = request.offset.addingReportingOverflow(UInt64(request.length))
            guard request.length > 0, !overflow, end <= source.size else {
                try reply(
                    to: request, slot: slot, error: .invalid,
                    "read of \(request.length) bytes at \(request.offset) is outside the export (\(source.size) bytes)")
                return true
            }
            guard let descriptor = source.localFileDescriptor else {
                enqueue((request, slot))
                return true
            }
            // Hand-offs to a worker cost more than serving a cached block, so this thread
            // serves what cannot block: a lone request (QD1), for which there is nothing else
            // to do, at once and without a copy; and within a burst, small reads the page
            // cache holds (copied into the batch, sent together). Everything else goes to the
            // workers.
            let alone = !reader.hasBufferedBytes && queueIsEmpty
            if !alone && request.length <= Self.inlineCopyLimit && nonBlockingReadsWork {
                if batch.space(for: Int(request.length)) == nil { sendBatch(batch) }
                if addCachedRead(request, slot: slot, descriptor: descriptor.rawValue, to: batch) { return true }
            }
            sendBatch(batch)
            if alone {
                do { try serveRead(request, slot: slot, scratch: &inlineScratch, zeroCopy: true) } catch {
                    reportWriteFailure(error)
                }
            } else {
                enqueue((request, slot))
            }
        case .write, .trim, .writeZeroes:
            if request.type.carriesPayload {
                sendBatch(batch)  // the payload may not be all here yet
                try reader.discard(Int(request.length), what: "NBD write payload")
            }
            try reply(to: request, slot: slot, error: .notPermitted, "the export is read-only")
        case .flush:
            try replySuccess(to: request, slot: slot)
        case .disconnect:
            return false
        default:
            try reply(to: request, slot: slot, error: .invalid, "\(request.type) is not supported")
        }
        return true
    }

    /// The largest READ the reader copies from the page cache itself; larger ones go by sendfile.
    static let inlineCopyLimit: UInt32 = 64 << 10
    /// The data one batch of replies holds at most: about what a socket buffer takes, so a
    /// batch of big replies does not hold back reading the next requests for long.
    static let batchDataCapacity = 256 << 10

    /// Copies `request`'s data from the page cache into `batch` without blocking on the disk;
    /// false (nothing added) when the data is not all cached or the batch has no room.
    private func addCachedRead(_ request: Request, slot: Int32, descriptor: Int32, to batch: ReplyBatch) -> Bool {
        let length = Int(request.length)
        guard let space = batch.space(for: length) else { return false }
        let got = cshim_pread_nowait(descriptor, space.baseAddress, length, off_t(bitPattern: UInt(request.offset)))
        guard got == length else {
            // Filesystems without RWF_NOWAIT (9p, some FUSE) refuse every such read: stop asking.
            if got < 0 && errno == EOPNOTSUPP { nonBlockingReadsWork = false }
            return false
        }
        let header =
            structuredReplies
            ? StructuredReplyChunkHeader.offsetData(
                cookie: request.cookie, offset: request.offset, dataLength: request.length)
            : SimpleReply(cookie: request.cookie).encoded()
        batch.append(header: header, length: length, answering: slot)
        return true
    }

    /// False once the source's filesystem refused RWF_NOWAIT: READs then skip the batch and go
    /// through `serveRead` (inline when alone, else to the workers).
    private var nonBlockingReadsWork = true

    private func sendBatch(_ batch: ReplyBatch) {
        guard !batch.isEmpty else { return }
        do { try batch.send(through: writer) } catch { reportWriteFailure(error) }
    }

    private var queueIsEmpty: Bool { queueState.withLock { queueHead == queue.count } }

    private func enqueue(_ request: Admitted) {
        queueState.withLock {
            while queue.count - queueHead >= configuration.queueCapacity && writer.failed == nil {
                queueState.wait()
            }
            if queueHead > 0 && queueHead == queue.count {
                queue.removeAll(keepingCapacity: true)
                queueHead = 0
            }
            queue.append(request)
            queueState.broadcast()
        }
    }

    private func nextRequest() -> Admitted? {
        queueState.withLock {
            while queueHead == queue.count && !closing { queueState.wait() }
            guard queueHead < queue.count else { return nil }
            defer { queueHead += 1 }
            queueState.broadcast()  // room for the reader
            return queue[queueHead]
        }
    }

    private func workerLoop() {
        var scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 0, alignment: 4096)
        defer { scratch.deallocate() }
        while let (request, slot) = nextRequest() {
            guard writer.failed == nil else { continue }  // drain without sending
            do {
                try serveRead(request, slot: slot, scratch: &scratch)
            } catch {
                reportWriteFailure(error)
            }
        }
    }

    /// `zeroCopy`: send even a small read by sendfile (the reader thread's lone request).
    private func serveRead(
        _ request: Request, slot: Int32, scratch: inout UnsafeMutableRawBufferPointer, zeroCopy: Bool = false
    ) throws(SystemError) {
        let length = Int(request.length)
        let header =
            structuredReplies
            ? StructuredReplyChunkHeader.offsetData(
                cookie: request.cookie, offset: request.offset, dataLength: request.length)
            : SimpleReply(cookie: request.cookie).encoded()
        // sendfile moves the page cache's pages to the socket without copying them through
        // userspace: big reads, and a lone request, go that way. A worker copies a small read
        // first and sends it with its header in one sendmsg: the writer's lock is then never
        // held across a read from the disk, so workers overlap their disk reads.
        if let descriptor = source.localFileDescriptor, request.length > Self.inlineCopyLimit || zeroCopy,
            sendsFromSource
        {
            try writer.sendFile(
                header: header, file: descriptor.rawValue, offset: request.offset, length: length,
                answering: Self.answers(slot))
            return
        }
        if scratch.count < length {
            scratch.deallocate()
            scratch = .allocate(byteCount: length, alignment: 4096)
        }
        let data = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<length])
        let got: Int
        do { got = try source.read(into: data, at: request.offset) } catch {
            try reply(to: request, slot: slot, error: .ioError, "\(error)")
            return
        }
        guard got == length else {
            try reply(
                to: request, slot: slot, error: .ioError,
                "short read from \(source.displayName): \(got) of \(length) bytes")
            return
        }
        try writer.send(header: header, data: UnsafeRawBufferPointer(data), answering: Self.answers(slot))
    }

    private func replySuccess(to request: Request, slot: Int32) throws(SystemError) {
        try send(
            structuredReplies
                ? StructuredReplyChunkHeader.done(cookie: request.cookie)
                : SimpleReply(cookie: request.cookie).encoded(),
            answering: Self.answers(slot))
    }

    private func reply(to request: Request, slot: Int32, error: NBDErrorCode, _ message: String) throws(SystemError) {
        logger.debug("NBD \(request.type) refused", metadata: ["error": "\(error.rawValue)", "reason": "\(message)"])
        try send(
            structuredReplies
                ? StructuredReplyChunkHeader.error(cookie: request.cookie, error: error, message: message)
                : SimpleReply(cookie: request.cookie, error: error).encoded(),
            answering: Self.answers(slot, error: error))
    }

    /// Sends a reply from the reader thread; a failed write ends reading as "peer closed".
    private func send(_ bytes: [UInt8], answering answers: [ReplyWriter.Answer]) throws(SystemError) {
        do { try writer.send(bytes, answering: answers) } catch { reportWriteFailure(error) }
    }

    /// The journal record of a reply to the request in `slot` (none when not journaled). A
    /// successor rebuilds an unfinished reply from the request and this error.
    private static func answers(_ slot: Int32, error: NBDErrorCode = .none) -> [ReplyWriter.Answer] {
        slot >= 0 ? [.init(slot: slot, error: error.rawValue)] : []
    }

    private func reportWriteFailure(_ error: SystemError) {
        logger.debug("NBD reply not delivered", metadata: ["error": "\(error)"])
        // Wake the reader (blocked in poll/read, or waiting for queue room) so the loop ends.
        shutdown(reader.socket, Int32(SHUT_RDWR))
        queueState.withLock { queueState.broadcast() }
    }
}
