import ImageSources
import Logging
import NBDProtocol
import SystemCalls
import SystemPackage

/// Serves the kernel's nbd driver over one end of a socketpair. There is no handshake in this
/// mode (the size and flags went to the kernel through netlink or ioctl); the kernel pipelines
/// requests and accepts replies in any order.
///
/// `run()` returns when the kernel sends NBD_CMD_DISC, when the socket closes, or after `stop()`
/// once every request already read has been answered; a stop never takes bytes of a later
/// request off the socket, so another process can take the socket over (hot upgrade). The
/// socket stays open: the caller owns it.
public final class KernelModeServer: Sendable {
    public let socket: FileDescriptor
    public let source: any RandomAccessSource
    private let logger: Logger
    private let workers: Int
    private let stopSignal: StopSignal
    private let journal: RequestJournal?
    private let recovery: RequestJournal.Recovery?
    private let replyFile: Int32
    private let pollMicroseconds: UInt32

    /// With a `journal`, everything taken off the socket is recorded there so that a successor
    /// can go on serving the same socket if this process dies; `resuming` is what a dead
    /// predecessor left (`journal.recover(...)`), nil to start afresh. `replyFile`, an open
    /// file description of the image shared with the successor, lets big replies go by
    /// sendfile (its position records their progress); without one they are copied.
    /// `pollMicroseconds`: how long to poll the socket without sleeping for the next request
    /// (see `MessageReader`).
    public init(
        socket: FileDescriptor, source: any RandomAccessSource, logger: Logger, workers: Int = 4,
        journal: RequestJournal? = nil, resuming recovery: RequestJournal.Recovery? = nil, replyFile: Int32 = -1,
        pollMicroseconds: UInt32 = 0
    ) throws(SystemError) {
        self.socket = socket
        self.source = source
        self.logger = logger
        self.workers = workers
        self.journal = journal
        self.recovery = recovery
        self.replyFile = replyFile
        self.pollMicroseconds = pollMicroseconds
        stopSignal = try StopSignal()
        if let journal, recovery == nil { journal.reset() }
    }

    public func run() throws(SystemError) -> ServingEnd {
        let reader =
            if let journal {
                MessageReader(socket: socket.rawValue, stop: stopSignal, journal: journal, resuming: recovery)
            } else {
                MessageReader(socket: socket.rawValue, stop: stopSignal)
            }
        reader.pollPolicy = PollPolicy(window: UInt64(pollMicroseconds))
        let loop = TransmissionLoop(
            reader: reader, source: source, structuredReplies: false,
            configuration: .init(workers: workers), logger: logger, recovery: recovery, replyFile: replyFile)
        return try loop.run()
    }

    /// Asks `run()` to finish the requests it has read and return. Safe from any thread, and
    /// more than once.
    public func stop() { stopSignal.raise() }
}
