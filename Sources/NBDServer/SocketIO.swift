#if canImport(Glibc)
import Glibc
#endif
import NBDProtocol
import SystemCalls
import SystemPackage

/// Reads NBD messages from a socket through a buffer, so a pipelined burst of requests costs
/// one read(2). Every wait also watches a `StopSignal`: a stop that arrives between messages
/// ends reading cleanly, without taking bytes of a later message off the socket.
final class MessageReader {
    enum Result: Equatable {
        case message
        /// The peer closed the connection between messages.
        case endOfStream
        /// Stop was requested between messages.
        case stopped
    }

    let socket: Int32
    let stop: StopSignal?
    /// Where received bytes live when the connection is journaled (kernel mode under a
    /// supervisor): the journal's two shared buffers, so a successor can parse what we read.
    let journal: RequestJournal?
    private var buffer: UnsafeMutableRawBufferPointer
    private var journalBuffer = 0
    private var start = 0
    private var end = 0
    /// The stream position of `buffer`'s first byte.
    private var bufferPosition: UInt64 = 0
    /// Set after STARTTLS: bytes then come through the TLS session.
    var tls: TLSSession?
    /// While set (CLOCK_MONOTONIC microseconds), waiting for bytes past it fails with ETIMEDOUT:
    /// the time limit of a network client's handshake.
    var deadline: UInt64?
    /// How long a message already begun may take to arrive in full once stop was requested.
    private let completionTimeoutMilliseconds: Int32 = 5000

    init(socket: Int32, stop: StopSignal?, capacity: Int = 256 << 10) {
        self.socket = socket
        self.stop = stop
        journal = nil
        buffer = .allocate(byteCount: capacity, alignment: 16)
    }

    /// A reader whose buffer is the journal's; `resuming` continues from what a dead worker left.
    init(socket: Int32, stop: StopSignal?, journal: RequestJournal, resuming recovery: RequestJournal.Recovery?) {
        self.socket = socket
        self.stop = stop
        self.journal = journal
        if let recovery {
            journalBuffer = recovery.buffer
            (start, end, bufferPosition) = (recovery.start, recovery.end, recovery.position)
        }
        buffer = journal.receiveBuffer(journalBuffer)
    }

    deinit { if journal == nil { buffer.deallocate() } }

    var hasBufferedBytes: Bool { start < end }

    /// Bytes read from the socket and not yet consumed: when fewer than a request header, the
    /// next read may block.
    var bufferedByteCount: Int { end - start }

    /// The stream position of the next byte to consume.
    var streamPosition: UInt64 { bufferPosition + UInt64(start) }

    /// Fills `destination` with the next `destination.count` bytes. `atBoundary` says that no
    /// byte of this message has been read yet, so EOF or stop here are clean.
    func read(into destination: UnsafeMutableRawBufferPointer, atBoundary: Bool, what: String) throws(SystemError)
        -> Result
    {
        guard destination.count <= buffer.count else {
            return try readPiecewise(into: destination, atBoundary: atBoundary, what: what)
        }
        // The whole message is gathered in the buffer before any of it is consumed: a journal
        // then never has half a message outside the shared buffer.
        while end - start < destination.count {
            let clean = atBoundary && start == end
            let outcome = try fill(cleanStopAllowed: clean, what: what)
            if outcome != .message {
                if clean { return outcome }
                throw SystemError("read \(what)", detail: "connection ended in the middle of the message")
            }
        }
        if let target = destination.baseAddress, let source = buffer.baseAddress {
            target.copyMemory(from: source + start, byteCount: destination.count)
        }
        start += destination.count
        return .message
    }

    /// A message bigger than the buffer (a network client's oversized option) is copied out as
    /// it arrives.
    private func readPiecewise(into destination: UnsafeMutableRawBufferPointer, atBoundary: Bool, what: String)
        throws(SystemError) -> Result
    {
        journal?.poison()
        var filled = 0
        while filled < destination.count {
            if start == end {
                let outcome = try fill(cleanStopAllowed: atBoundary && filled == 0, what: what)
                if outcome != .message {
                    if atBoundary && filled == 0 { return outcome }
                    throw SystemError("read \(what)", detail: "connection ended in the middle of the message")
                }
            }
            let count = min(end - start, destination.count - filled)
            if let target = destination.baseAddress, let source = buffer.baseAddress {
                (target + filled).copyMemory(from: source + start, byteCount: count)
            }
            start += count
            filled += count
        }
        return .message
    }

    /// Reads `count` bytes into a new array; nil when the stream ended or stop came at a boundary.
    func readBytes(_ count: Int, atBoundary: Bool, what: String) throws(SystemError) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        let outcome = try bytes.withUnsafeMutableBytes { destination in
            Swift.Result { () throws(SystemError) -> Result in
                try read(into: destination, atBoundary: atBoundary, what: what)
            }
        }.get()
        return outcome == .message ? bytes : nil
    }

    /// Consumes and drops `count` bytes (a refused WRITE's payload), keeping the stream in step.
    func discard(_ count: Int, what: String) throws(SystemError) {
        journal?.poison()
        var left = count
        while left > 0 {
            if start == end {
                guard try fill(cleanStopAllowed: false, what: what) == .message else {
                    throw SystemError("read \(what)", detail: "connection ended in the middle of the payload")
                }
            }
            let taken = min(left, end - start)
            start += taken
            left -= taken
        }
    }

    /// Waits for the socket and reads what it has after the bytes not yet consumed, which are
    /// kept (moved to the front of the buffer, or into the journal's other buffer).
    private func fill(cleanStopAllowed: Bool, what: String) throws(SystemError) -> Result {
        var stopSeen = stop?.isRaised ?? false
        // Try the socket without sleeping first while requests come that soon (PollPolicy).
        // The clock is read sparingly: under emulation without a usable TSC every read is a
        // system call. A request that is there at the first try needs none, and the spin
        // checks its deadline every few tries.
        var spinStarted: UInt64?
        if pollPolicy.spins, !stopSeen {
            var deadline = UInt64.max
            var lastClock: UInt64 = 0
            for tries in 0... {
                let got = receive()
                if got > 0 {
                    end += got
                    pollPolicy.record(waited: lastClock - (spinStarted ?? lastClock))
                    return .message
                }
                if got == 0 { return .endOfStream }
                guard errno == EAGAIN || errno == EINTR else { break }
                if tries % 8 == 0 {
                    lastClock = monotonicMicroseconds()
                    if spinStarted == nil {
                        spinStarted = lastClock
                        deadline = lastClock + pollPolicy.window
                    } else if lastClock >= deadline {
                        break
                    }
                }
                // Let a task woken on this CPU (the nbd receiver completing our reply, say)
                // run now rather than after the spin: 7% faster small reads on 6.1.
                sched_yield()
            }
        }
        let waitStarted = spinStarted ?? (pollPolicy.window > 0 ? monotonicMicroseconds() : 0)
        defer { if pollPolicy.window > 0 { pollPolicy.record(waited: monotonicMicroseconds() - waitStarted) } }
        while true {
            if stopSeen && cleanStopAllowed { return .stopped }
            // TLS may hold decrypted bytes that the socket no longer shows as readable.
            if let tls, tls.hasPendingBytes {
                let got = receive()
                if got > 0 {
                    end += got
                    return .message
                }
                if got == 0 { return .endOfStream }
            }
            let events = tls?.readWantsWrite == true ? Int16(POLLIN | POLLOUT) : Int16(POLLIN)
            var fds = [pollfd(fd: socket, events: events, revents: 0)]
            if let stop, !stopSeen { fds.append(pollfd(fd: stop.descriptor, events: Int16(POLLIN), revents: 0)) }
            var timeout: Int32 = stopSeen ? completionTimeoutMilliseconds : -1
            if let deadline {
                let now = monotonicMicroseconds()
                guard now < deadline else {
                    throw SystemError("read \(what)", errno: .timedOut, detail: "the handshake time limit passed")
                }
                let left = Int32(clamping: (deadline - now + 999) / 1000)
                timeout = timeout < 0 ? left : min(timeout, left)
            }
            let ready = try retryingOnInterrupt("poll", path: what) { poll(&fds, nfds_t(fds.count), timeout) }
            if ready == 0 {
                guard stopSeen else { continue }  // the deadline, checked above
                throw SystemError("read \(what)", detail: "peer did not finish the message after stop was requested")
            }
            if fds.count > 1 && fds[1].revents != 0 {
                stopSeen = true
                if fds[0].revents == 0 { continue }
            }
            guard fds[0].revents != 0 else { continue }
            let got = receive()
            if got > 0 {
                end += got
                return .message
            }
            if got == 0 { return .endOfStream }
            let code = errno
            if code == EINTR || code == EAGAIN { continue }
            if code == ECONNRESET { return .endOfStream }
            throw SystemError("read \(what)", errno: Errno(rawValue: code))
        }
    }

    /// Whether and how long `fill` tries the socket without sleeping before it waits in poll(2).
    var pollPolicy = PollPolicy(window: 0)

    /// One read after the kept bytes `start..<end`, which end up at the buffer's front.
    private func receive() -> Int {
        let kept = end - start
        let keptPosition = streamPosition
        if let journal {
            let (got, next) = journal.receive(
                from: socket, keeping: UnsafeRawBufferPointer(rebasing: buffer[start..<end]), at: keptPosition)
            journalBuffer = next
            buffer = journal.receiveBuffer(next)
            (start, end, bufferPosition) = (0, kept, keptPosition)
            return got
        }
        if start > 0, kept > 0, let base = buffer.baseAddress { memmove(base, base + start, kept) }
        (start, end, bufferPosition) = (0, kept, keptPosition)
        if let tls { return tls.receive(into: buffer.baseAddress! + kept, count: buffer.count - kept) }
        return recv(socket, buffer.baseAddress! + kept, buffer.count - kept, Int32(MSG_DONTWAIT))
    }
}

/// The one writer of a connection's replies. Each reply (header and payload) goes out under
/// one lock, so concurrent workers never interleave bytes of two replies. With a journal, each
/// send names the requests it answers, and the kernel counts its bytes into the journal.
final class ReplyWriter: @unchecked Sendable {
    typealias Answer = RequestJournal.Answer

    let socket: Int32
    let journal: RequestJournal?
    /// With a journal: an open file description of the image used only here, at its own
    /// position, for sendfile (-1: none, big replies are copied instead).
    let replyFile: Int32
    /// After STARTTLS: every reply is encrypted through it.
    let tls: TLSSession?
    private let lock = ConditionLock()
    private var failure: SystemError?

    init(socket: Int32, journal: RequestJournal? = nil, replyFile: Int32 = -1, tls: TLSSession? = nil) {
        self.socket = socket
        self.journal = journal
        self.replyFile = journal == nil ? -1 : replyFile
        self.tls = tls
    }

    /// Whether `sendFile` may be used: not through TLS (the bytes must pass through userspace
    /// to be encrypted); without a journal, or with one only through a reply file.
    var sendsFiles: Bool { tls == nil && (journal == nil || replyFile >= 0) }

    /// IOV_MAX on Linux: the most vectors one sendmsg(2) takes.
    static let maximumVectors = 1024

    /// The first write error; after it, nothing more is sent.
    var failed: SystemError? { lock.withLock { failure } }

    func send(_ bytes: [UInt8], answering answers: [Answer] = []) throws(SystemError) {
        let error = bytes.withUnsafeBytes { bytes in
            var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
            return withUnsafeMutablePointer(to: &vector) {
                deliver(UnsafeMutableBufferPointer(start: $0, count: 1), answering: answers)
            }
        }
        if let error { throw error }
    }

    /// Header, then `length` bytes of `file` from `offset` through sendfile(2): the data goes from
    /// the page cache to the socket without a copy through userspace. Journaled, the header's
    /// bytes are counted by the kernel in the journal and the data goes from the reply file at
    /// its own position, which sendfile advances by exactly what it sent.
    func sendFile(header: [UInt8], file: Int32, offset: UInt64, length: Int, answering answers: [Answer] = [])
        throws(SystemError)
    {
        try lock.withLock { () throws(SystemError) in
            if let failure { throw failure }
            guard let journal else {
                try record(header.withUnsafeBytes { writeAll($0, more: true) })
                var position = off_t(bitPattern: UInt(offset))
                try record(sendFileData(from: file, position: &position, length: length))
                return
            }
            precondition(replyFile >= 0, "sendfile on a journaled connection without a reply file")
            journal.beginSend(answering: answers, total: header.count + length, fileStart: offset, fileLength: length)
            guard lseek(replyFile, off_t(bitPattern: UInt(offset)), SEEK_SET) >= 0 else {
                try record(.lastErrno("lseek", path: "the reply file"))
                return
            }
            journal.filePositioned()
            try record(
                header.withUnsafeBytes { header in
                    var vector = iovec(
                        iov_base: UnsafeMutableRawPointer(mutating: header.baseAddress), iov_len: header.count)
                    return withUnsafeMutablePointer(to: &vector) {
                        sendAll(UnsafeMutableBufferPointer(start: $0, count: 1), flags: Int32(MSG_MORE))
                    }
                })
            try record(sendFileData(from: replyFile, position: nil, length: length))
            journal.endSend()
        }
    }

    /// sendfile(2) until `length` bytes went out, from `position` or (nil) the file's own.
    private func sendFileData(from file: Int32, position: UnsafeMutablePointer<off_t>?, length: Int) -> SystemError? {
        var left = length
        while left > 0 {
            let sent = Glibc.sendfile(socket, file, position, left)
            if sent < 0 {
                if errno == EINTR { continue }
                return Self.sendFailure("sendfile")
            }
            if sent == 0 {
                // The file shrank under us; the reply already promised the bytes.
                return SystemError("sendfile", detail: "image ended \(left) bytes short of a reply")
            }
            left -= sent
        }
        return nil
    }

    /// Header and data from memory, gathered into one sendmsg(2) where the socket takes it all.
    func send(header: [UInt8], data: UnsafeRawBufferPointer, answering answers: [Answer] = []) throws(SystemError) {
        let error = header.withUnsafeBytes { header in
            var vectors = (
                iovec(iov_base: UnsafeMutableRawPointer(mutating: header.baseAddress), iov_len: header.count),
                iovec(iov_base: UnsafeMutableRawPointer(mutating: data.baseAddress), iov_len: data.count)
            )
            return withUnsafeMutableBytes(of: &vectors) { deliver($0.bindMemory(to: iovec.self), answering: answers) }
        }
        if let error { throw error }
    }

    /// Several complete replies at once, in order: one sendmsg(2) where the socket takes it all,
    /// so a burst of cached READs costs one syscall and one wake-up of the peer. `vectors` is
    /// consumed (advanced past what was sent).
    func send(gathering vectors: UnsafeMutableBufferPointer<iovec>, answering answers: [Answer] = [])
        throws(SystemError)
    {
        if let error = deliver(vectors, answering: answers) { throw error }
    }

    /// The rest of a send a dead worker began: `bytes` are its replies rebuilt, of which the
    /// first `sent` already reached the socket.
    func finish(_ bytes: [UInt8], sent: Int) throws(SystemError) {
        guard let journal else { return }
        let error: SystemError? = lock.withLock {
            journal.resumeSend(sent: sent)
            let error = bytes.withUnsafeBytes { bytes in
                var vector = iovec(
                    iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress! + sent), iov_len: bytes.count - sent)
                return withUnsafeMutablePointer(to: &vector) {
                    sendAll(UnsafeMutableBufferPointer(start: $0, count: 1))
                }
            }
            if let error { failure = error } else { journal.endSend() }
            return error
        }
        if let error { throw error }
    }

    private func deliver(_ vectors: UnsafeMutableBufferPointer<iovec>, answering answers: [Answer]) -> SystemError? {
        lock.withLock {
            if let failure { return failure }
            journal?.beginSend(answering: answers, total: vectors.reduce(0) { $0 + $1.iov_len })
            let error = sendAll(vectors)
            if let error { failure = error } else { journal?.endSend() }
            return error
        }
    }

    /// Remembers the first failure so later replies are not attempted on a broken stream.
    private func record(_ error: SystemError?) throws(SystemError) {
        guard let error else { return }
        failure = error
        throw error
    }

    /// sendmsg(2) until every vector went out; a partial send (socket buffer full) resumes in
    /// the middle of the vector where it stopped.
    private func sendAll(_ vectors: UnsafeMutableBufferPointer<iovec>, flags: Int32 = 0) -> SystemError? {
        if let tls { return tls.send(UnsafeBufferPointer(vectors)) }
        var first = 0
        while first < vectors.count {
            if vectors[first].iov_len == 0 { first += 1; continue }
            let count = min(vectors.count - first, Self.maximumVectors)
            var sent: Int
            if let journal {
                sent = journal.send(on: socket, vectors.baseAddress! + first, count: count, flags: flags)
            } else {
                var message = msghdr()
                message.msg_iov = vectors.baseAddress.map { $0 + first }
                message.msg_iovlen = count
                sent = sendmsg(socket, &message, Int32(MSG_NOSIGNAL) | flags)
            }
            if sent < 0 {
                if errno == EINTR { continue }
                return Self.sendFailure("send reply")
            }
            while sent > 0 {
                let taken = min(sent, vectors[first].iov_len)
                vectors[first].iov_base = vectors[first].iov_base.map { $0 + taken }
                vectors[first].iov_len -= taken
                sent -= taken
                if vectors[first].iov_len == 0 { first += 1 }
            }
        }
        return nil
    }

    /// The error of a failed send; EAGAIN on a blocking socket means its SO_SNDTIMEO passed.
    private static func sendFailure(_ operation: String) -> SystemError {
        let code = errno
        guard code != EAGAIN else { return sendTimedOut(operation) }
        return SystemError(operation, errno: Errno(rawValue: code))
    }

    static func sendTimedOut(_ operation: String) -> SystemError {
        SystemError(operation, errno: .timedOut, detail: "the client read no reply within the send timeout")
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer, more: Bool) -> SystemError? {
        guard let base = bytes.baseAddress else { return nil }
        var sent = 0
        let flags = Int32(MSG_NOSIGNAL) | (more ? Int32(MSG_MORE) : 0)
        while sent < bytes.count {
            let got = Glibc.send(socket, base + sent, bytes.count - sent, flags)
            if got < 0 {
                if errno == EINTR { continue }
                return Self.sendFailure("send reply")
            }
            sent += got
        }
        return nil
    }
}
