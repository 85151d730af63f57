#if canImport(Glibc)
import Glibc
#endif
import CShim
import EROFSReader
import FUSEProtocol
import Logging
import Synchronization
import SystemCalls

/// The serving loop over a /dev/fuse connection: N threads, each on its own channel (a clone
/// of the connection's descriptor, FUSE_DEV_IOC_CLONE), each reading a request, answering it
/// and reading the next. Everything a thread needs is the image and its descriptor, so a
/// supervisor holding the channels can hand them to a replacement process, which first has
/// the dead one's unanswered requests answered (`takeOver`) and then serves on.
public final class FUSEServer: Sendable {
    public struct Settings: Sendable {
        public var threads: Int
        public init(threads: Int) { self.threads = max(1, threads) }
    }

    let operations: FUSEOperations
    let logger: Logger
    let settings: Settings
    /// Readiness: called once INIT has been answered and every thread runs (the mount side
    /// waits for it; INIT may be answered by the first thread while later ones start).
    private struct Readiness {
        var initialized = false
        var threadsStarted = false
        /// What the kernel offered in INIT (empty until then, and in a worker that took over).
        var kernelFlags: FUSEInitFlags = []
        var callback: (@Sendable () -> Void)?

        /// The callback, once both have happened (and only once).
        mutating func take() -> (@Sendable () -> Void)? {
            guard initialized && threadsStarted else { return nil }
            defer { callback = nil }
            return callback
        }
    }
    private let readiness: Mutex<Readiness>
    /// Reads from a file's start, for the pushing thread (nil: prefetch off).
    private let pushes: PushQueue?
    /// `stop()`: every thread returns at its next request boundary.
    private let stopRequested = Atomic<Bool>(false)
    /// The threads in `run`, which `stop()` interrupts in read(2).
    private let running = Mutex<[pthread_t]>([])

    /// Request buffers: the kernel wants room for its largest request (a WRITE of max_write
    /// bytes, which we set to 4 KiB, or a 64 KiB SETXATTR), and at least 8 KiB.
    static let bufferSize = 128 * 1024 + 4096

    public init(
        operations: FUSEOperations, settings: Settings, logger: Logger, onInitialized: (@Sendable () -> Void)? = nil
    ) {
        self.operations = operations
        self.settings = settings
        self.logger = logger
        readiness = Mutex(Readiness(callback: onInitialized))
        pushes = operations.prefetch == nil ? nil : PushQueue()
    }

    /// Serves the connection on `device` (an open /dev/fuse descriptor attached to a mount)
    /// until the kernel ends it (unmount, abort). Returns then; throws when a worker channel
    /// cannot be set up.
    public func serve(device: Int32) throws(SystemError) {
        var channels: [Int32] = [device]
        defer { for channel in channels.dropFirst() { close(channel) } }
        for _ in 1..<settings.threads {
            channels.append(try FUSEServer.cloneChannel(of: device))
        }
        try serve(channels: channels, journal: nil)
    }

    /// Serves `channels` (the connection's descriptor and clones of it, one thread each) until
    /// the kernel ends the connection. With a journal, each thread reads into its channel's
    /// slot (see FUSEJournal). `initialized`: INIT was answered by an earlier worker.
    /// `replaying`: each thread first answers what its channel's journal slot holds (`takeOver`).
    public func serve(
        channels: [Int32], journal: FUSEJournal?, initialized: Bool = false, replaying: Bool = false
    ) throws(SystemError) {
        precondition(!channels.isEmpty && (journal == nil || journal!.channels == channels.count))
        if initialized { readiness.withLock { $0.initialized = true } }
        var threads: [JoinableThread] = []
        for index in channels.indices.dropFirst() {
            threads.append(
                try JoinableThread { [self] in
                    self.run(channel: channels[index], index: index, journal: journal, replaying: replaying)
                })
        }
        // The thread that pushes small files after a read (SiblingPrefetch), on a channel of
        // its own; it stops once the workers have.
        var pusher: JoinableThread?
        if let pushes {
            pusher = try JoinableThread { [self] in
                pushes.serve { place, start, gate in push(place, start: start, gate: gate, on: channels[0]) }
            }
        }
        defer {
            pushes?.stop()
            pusher?.join()
        }
        readiness.withLock {
            $0.threadsStarted = true; return $0.take()
        }?()
        run(channel: channels[0], index: 0, journal: journal, replaying: replaying)
        for thread in threads { thread.join() }
    }

    /// One push, on the pushing thread. A push queued at a listing (`gate`) holds what it reads
    /// until the reader has taken in the listing, then sends as it reads.
    private func push(_ place: SiblingPrefetch.Place, start: PushQueue.Start, gate: PushQueue.Gate?, on channel: Int32)
    {
        // `fuse.prefetch_ahead=on` pushes ahead whatever the load: only `auto` backs off.
        let adaptive = operations.prefetch?.ahead == .auto
        guard start != .late || !adaptive else { return operations.prefetch?.abandon(place) ?? () }
        var begun = monotonicNanoseconds()
        var held: [FUSEResponse] = []
        var open = gate == nil
        func sendHeld() {
            begun = monotonicNanoseconds()
            for notification in held {
                send(notification, on: channel)
                gate?.sent()
            }
            held = []
        }
        operations.prefetchNotifications(from: place, wholeListing: start != .waitedFor) { notification in
            if !open {
                guard gate!.isOpen else { return held.append(notification) }
                open = true
                sendHeld()
            }
            send(notification, on: channel)
            gate?.sent()
        }
        if !open {
            // All read before the reader got past the listing: wait for it (its reads of these
            // files would wait for their own READs), or drop the push if it does not come.
            guard gate!.waitOpen() else { return }
            sendHeld()
        }
        if adaptive && start == .ahead && monotonicNanoseconds() - begun > PushQueue.aheadRunNanoseconds {
            operations.prefetch?.spendCredit()
        }
        // The reader now reads the files pushed: make the listing it asks for next.
        operations.prepareListing(after: place.directory)
    }

    /// Sets the readiness callback (see `init`): called once INIT is answered (or, in a worker
    /// that took over, at once) and every thread runs.
    public func whenReady(_ callback: @escaping @Sendable () -> Void) {
        readiness.withLock { $0.callback = callback }
    }

    /// What the kernel offered in INIT (empty before, or when an earlier worker answered it).
    public var kernelFlags: FUSEInitFlags { readiness.withLock { $0.kernelFlags } }

    /// How a worker taking over a connection gets the dead worker's unanswered requests answered.
    public enum Takeover: Equatable, Sendable {
        /// The kernel queued them again (FUSE_NOTIFY_RESEND).
        case resent
        /// From the journal: this many slots hold a request, which `serve` answers first (each
        /// thread its own slot, before it reads).
        case replayed(Int)
    }

    /// Before serving `channels` a dead worker served: asks the kernel to resend what it had
    /// read and not answered (`preferResend`, and the kernel knows FUSE_NOTIFY_RESEND), else
    /// counts what the journal holds, for `serve(replaying: true)` to answer. Nothing is
    /// answered here: a request that kills its worker must kill a worker that already serves
    /// (and said so), whose death the supervisor's crash-loop guard counts.
    public func takeOver(channels: [Int32], journal: FUSEJournal, preferResend: Bool) -> Takeover {
        if preferResend {
            let notice = FUSEReply.notifyResend()
            let written = notice.withUnsafeBytes { write(channels[0], $0.baseAddress, $0.count) }
            if written == notice.count { return .resent }
            // EINVAL: a kernel before 6.9 does not know the code.
            logger.info("FUSE_NOTIFY_RESEND refused (\(String(cString: strerror(errno)))); replaying the journal")
        }
        return .replayed(channels.indices.filter { journal.recorded($0) != nil }.count)
    }

    /// A new descriptor on the same connection with its own processing queue.
    public static func cloneChannel(of device: Int32) throws(SystemError) -> Int32 {
        let clone = open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard clone >= 0 else { throw .lastErrno("open", path: "/dev/fuse") }
        var source = UInt32(bitPattern: device)
        guard cshim_ioctl_ptr(clone, UInt(fuseDevIocClone), &source) == 0 else {
            let error = SystemError.lastErrno("ioctl FUSE_DEV_IOC_CLONE", path: "/dev/fuse")
            close(clone)
            throw error
        }
        return clone
    }

    /// One worker: read, answer, repeat, until the connection is gone (ENODEV).
    func run(channel: Int32, index: Int, journal: FUSEJournal?, replaying: Bool = false) {
        let owned = journal == nil
        let buffer =
            journal?.slot(index)
            ?? UnsafeMutableRawBufferPointer.allocate(byteCount: FUSEServer.bufferSize, alignment: 8)
        defer { if owned { buffer.deallocate() } }
        // This thread's pipe for spliced replies (nil: none could be made).
        var pipe = SplicePipe()
        let me = pthread_self()
        running.withLock { $0.append(me) }
        // Out of the list under its lock: `stop()` never signals a thread that has returned.
        defer { running.withLock { $0.removeAll { pthread_equal($0, me) != 0 } } }
        if replaying, let journal, let recorded = journal.recorded(index) {
            answer(recorded, on: channel, journal: journal, pipe: &pipe)
        }
        while true {
            if stopRequested.load(ordering: .sequentiallyConsistent) {
                journal?.clear(index)  // answered: nothing for a successor
                return
            }
            // The slot is empty until the kernel fills it: what a death leaves there was read.
            journal?.clear(index)
            let count = read(channel, buffer.baseAddress, buffer.count)
            if count < 0 {
                switch errno {
                case EINTR, EAGAIN:
                    continue
                case ENOENT:
                    // The request was interrupted before we read it.
                    continue
                case ENODEV:
                    return  // unmounted or aborted: the connection is over
                default:
                    logger.error("read /dev/fuse: \(String(cString: strerror(errno)))")
                    return
                }
            }
            answer(UnsafeRawBufferPointer(rebasing: buffer[..<count]), on: channel, journal: journal, pipe: &pipe)
            journal?.clear(index)  // answered
        }
    }

    /// Stops serving at a request boundary (a hand-over): each thread finishes the request it
    /// is answering and returns; `serve` then returns. A thread blocked in read(2) is woken by
    /// SIGURG (a no-op handler without SA_RESTART: the read fails with EINTR), sent until every
    /// thread is out, as one may block just after it looked at the flag.
    public func stop() {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        sigaction(SIGURG, &action, nil)
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        while running.withLock({ threads in
            for thread in threads { pthread_kill(thread, SIGURG) }
            return !threads.isEmpty
        }) {
            usleep(1000)
        }
    }

    /// Decodes and answers one request read from `channel`.
    private func answer(
        _ bytes: UnsafeRawBufferPointer, on channel: Int32, journal: FUSEJournal?, pipe: inout SplicePipe?
    ) {
        if let journal, bytes.count >= FUSEWireSize.inHeader {
            let unique = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            if journal.mustFail(unique) {
                logger.error("request \(unique) killed the workers before this one: answered EIO")
                send(.message(FUSEReply.error(unique: unique, errno: EIO)), on: channel)
                return
            }
        }
        let request: FUSERequest
        do {
            request = try FUSERequest(decoding: bytes)
        } catch {
            logger.error("\(error)")
            if let unique = error.unique {
                send(.message(FUSEReply.error(unique: unique, errno: EIO)), on: channel)
            }
            return
        }
        #if DEBUG
        TestFaults.crashIfAsked(request, nodes: operations.nodes)
        #endif
        // A big read of a flat file: its pages go from the image file to the kernel through
        // the pipe, not through our memory. Should that fail, the pipe goes and the copy
        // path below answers.
        if pipe != nil, let read = operations.splicedRead(request) {
            switch pipe!.send(
                header: read.header, from: read.descriptor, at: read.offset, count: read.length, to: channel)
            {
            case .sent, .gone:
                return
            case .refused:
                break
            case .failed:
                pipe = SplicePipe()  // an empty one
            }
        }
        // A reader asking past a listing has made the inodes of its files: a push read at the
        // listing goes out now, while this worker answers (SiblingPrefetch).
        var pastListing: UInt64?
        if let pushes, let directory = operations.askedPastListing(request), !pushes.inodesMade(directory) {
            pastListing = directory
        }
        let response = operations.respond(to: request)
        if let pushes {
            // The files after one read from its start go to the page cache before its answer
            // (SiblingPrefetch, PushQueue).
            if let place = operations.prefetchPlace(for: request) { pushes.pushAndWait(place) }
            // A directory listed to its end, in a walk that reads what it lists: its small files
            // are read while the reader takes in the listing, and go to the page cache once it
            // asks past it, while it opens them. Queued before the listing is answered, so that
            // the reader cannot ask past it first. A listing past which the reader asked with no
            // push read at it starts one now.
            if let place = operations.listedToEnd(request) {
                pushes.push(place, awaitingInodes: true)
            } else if let pastListing, let place = operations.claimListingAhead(pastListing) {
                pushes.push(place)
            }
        }
        send(response, on: channel)
        if case .initialize(let offer) = request.operation {
            readiness.withLock {
                $0.kernelFlags = offer.flags
                $0.initialized = true; return $0.take()
            }?()
        }
    }

    private func send(_ response: FUSEResponse, on channel: Int32) {
        let result: Int
        switch response {
        case .none:
            return
        case .message(let bytes):
            result = bytes.withUnsafeBytes { write(channel, $0.baseAddress, $0.count) }
        case .data(let header, let payload):
            result = header.withUnsafeBytes { head in
                payload.withUnsafeBytes { body in
                    var vectors = [
                        iovec(iov_base: UnsafeMutableRawPointer(mutating: head.baseAddress), iov_len: head.count),
                        iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count),
                    ]
                    return writev(channel, &vectors, body.count == 0 ? 1 : 2)
                }
            }
        }
        // ENOENT: the request was interrupted and the kernel dropped it; nobody waits.
        if result < 0 && errno != ENOENT && errno != ENODEV {
            // A reply the kernel refuses may come from what an image holds, asked for by any
            // user as often as they like: rate-limited, as the operations' own errors are.
            let cause = String(cString: strerror(errno))
            operations.errorLog.log("write /dev/fuse: \(cause)")
        }
    }
}

/// One serving thread's pipe for spliced READ replies: the reply header is written into it, the
/// data spliced in from the image file's page cache, and the whole reply spliced to /dev/fuse
/// in one call (a FUSE reply is one write). The kernel copies the pages once, into the mount's
/// page cache; a read answered by copy crosses our memory twice more (pread, writev). Owns
/// both ends.
final class SplicePipe {
    enum Outcome {
        /// The reply went out.
        case sent
        /// The kernel no longer waits for it (interrupted: ENOENT; unmounted: ENODEV). It took
        /// the reply out of the pipe all the same.
        case gone
        /// Too big for the pipe: nothing was done, answer by copy.
        case refused
        /// Nothing went out and the pipe may hold a part: drop it, answer by copy.
        case failed
    }

    private let readEnd: Int32
    private let writeEnd: Int32
    /// Pipe buffers (pages) it holds.
    private let slots: Int

    /// 1 MiB, pipe-max-size's default, which needs no privilege: the header's page and a
    /// 512 KiB read's 129 pages at most (a start inside a page) fit (FUSEOperations.maxPages).
    static let size: Int32 = 1 << 20

    init?() {
        var ends: [Int32] = [-1, -1]
        // Refused beyond pipe-max-size without CAP_SYS_RESOURCE: the default then holds
        // small replies and bigger ones are answered by copy.
        let capacity = cshim_splice_pipe(&ends, SplicePipe.size)
        guard capacity > 0 else { return nil }
        readEnd = ends[0]
        writeEnd = ends[1]
        slots = Int(capacity) / 4096
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    func send(header: [UInt8], from file: Int32, at offset: UInt64, count: Int, to channel: Int32) -> Outcome {
        guard 1 + (Int(offset % 4096) + count + 4095) / 4096 <= slots else { return .refused }
        guard header.withUnsafeBytes({ write(writeEnd, $0.baseAddress, $0.count) }) == header.count else {
            return .failed
        }
        var position = Int64(offset)
        var left = count
        while left > 0 {
            let moved = cshim_splice(file, &position, writeEnd, left)
            if moved < 0 && errno == EINTR { continue }
            guard moved > 0 else { return .failed }
            left -= moved
        }
        let total = header.count + count
        let sent = cshim_splice(readEnd, nil, channel, total)
        if sent == total { return .sent }
        return sent < 0 && (errno == ENOENT || errno == ENODEV) ? .gone : .failed
    }
}
