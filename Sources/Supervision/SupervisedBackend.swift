import SystemCalls

/// A userspace backend whose kernel link is served by workers under one `Supervisor`: nbd (a
/// socket the kernel reads requests from, replaced by netlink RECONFIGURE), FUSE (a /dev/fuse
/// descriptor) or ublk (/dev/ublkcN with its io_uring, recovered by START/END_USER_RECOVERY).
///
/// How a backend adopts it:
/// 1. Its worker is our own binary run with `workerArguments(for:)`. It reads descriptor 3 (the
///    status pipe: one `DaemonReport` once it serves) and 4 (the `ControlChannel` to the
///    supervisor), then `sharedDescriptors` as 5, 6, ...
/// 2. A worker started as `.connect` attaches a new link; `.reattach(N)` gives link N, whose
///    previous server is gone, a new kernel link the backend's way (RECONFIGURE, ublk's user
///    recovery); `.standby(N)` opens the source, says `prepared`, and waits for a word:
///    `serveLink(fd)` (serve this live link, handed over by the previous worker at a request
///    boundary), `resume(fd)` (the previous worker died: go on serving its link, answering what
///    it had taken and not answered), or `reconnect` (the link is dead: do what `.reattach` does).
/// 3. If `workersShareTheirLink`, a worker sends `serving(fd)` (a copy of its link: held by the
///    supervisor, it keeps the kernel's link alive when the worker dies) and `replyFile(fd)`
///    (any descriptor whose open file description the next worker needs, or -1) before its
///    report. A descriptor link (/dev/fuse, /dev/ublkcN) is shared the same way as a socket.
/// 4. On SIGUSR2 a supervised worker stops at a request boundary with every reply sent, sends
///    `handOff(fd)` with its live link and exits with `WorkerEnding.handedOff`'s status.
/// 5. The backend tells the supervisor what the kernel and its state say (`linkIsOurs`,
///    `record`, `forget`), and, for the crash-loop guard, which requests a dead worker held
///    (`requestsInFlight`) and how its successor fails one with EIO (`failRequests`).
/// 6. A hot upgrade ends with the supervisor exec'ing the installed binary with
///    `supervisorArguments(resuming:)`, keeping its pid, its children and its descriptors.
/// The supervisor's main is `Supervisor(backend:system:).run(firstMode:)`: it starts the first
/// worker, forwards its report to descriptor 3 and then serves signals; after an exec,
/// `Supervisor(backend:system:resuming:).resume()`.
public protocol SupervisedBackend {
    /// The link as messages name it: "/dev/nbd3".
    func linkName(_ link: UInt32) -> String

    /// The arguments after argv[0] of a worker that gets its link as `mode` says.
    func workerArguments(for mode: WorkerMode) -> [String]

    /// Descriptors every worker gets after the status pipe and the control channel (as 5, 6,
    /// ...); -1 leaves that number closed.
    var sharedDescriptors: [Int32] { get }

    /// Whether workers send `serving` and `replyFile` before their report (see step 3): only
    /// then can a standby resume the live link when a worker dies.
    var workersShareTheirLink: Bool { get }

    /// Whether a link attached by `method` (the word of the worker's report) outlives its
    /// worker, so that a new worker can take it over (nbd: netlink yes, ioctl no).
    func canRecover(attachedBy method: String) -> Bool

    /// Whether the kernel still waits on `link` for a server of ours.
    func linkIsOurs(_ link: UInt32) -> Bool

    /// Whether the kernel has let go of a link we hold a copy of (its other end is closed): a
    /// standby cannot resume it.
    func linkIsDead(_ descriptor: Int32) -> Bool

    /// How a worker's exit (its wait status) reads.
    func ending(ofWorkerWithStatus status: Int32) -> WorkerEnding

    /// Nobody took the first worker's report (the mount helper died): release `link`, which
    /// now has no owner.
    func releaseUnclaimed(link: UInt32, attachedBy method: String)

    /// The link went away without being stopped (an unmount that disconnected it): its state
    /// and log go with it.
    func forget(link: UInt32)

    /// Records `event` and the serving worker in the link's state (if it is still ours).
    func record(_ event: SupervisorEvent, link: UInt32, serving: DaemonProcess?) throws(SystemError)

    /// The requests the dead worker had taken off its link and not answered, as far as the
    /// backend knows (a journal); [] when it cannot tell.
    func requestsInFlight() -> [InFlightRequest]

    /// Makes the next worker answer `requests` with EIO instead of serving them (they crashed
    /// the workers before it). False when the backend cannot.
    func failRequests(_ requests: [InFlightRequest]) -> Bool

    /// The arguments after argv[0] with which the installed binary goes on supervising from
    /// `handover` (a hot upgrade replaces the supervisor too); nil when it cannot. The backend's
    /// main passes the parsed handover to `Supervisor(backend:system:resuming:)`.
    func supervisorArguments(resuming handover: SupervisorHandover) -> [String]?

    /// Whether the first standby starts with the first worker (ready for a crash right after
    /// the attach) rather than once the first worker has reported (the attach returns sooner:
    /// on a small machine the two starts compete for the CPUs).
    var startsFirstStandbyWithFirstWorker: Bool { get }
}

/// How a worker gets its kernel link. The words are part of the command line of workers that
/// an older supervisor starts during a hot upgrade: they never change.
public enum WorkerMode: Sendable, Equatable {
    /// Attach a new link (a new mount).
    case connect
    /// Give link N, whose server is gone, a new kernel link (`--reattach`, or a recovery
    /// without standby).
    case reattach(UInt32)
    /// Open the source, say `prepared`, and wait for the supervisor's word for link N (nil: a
    /// standby started with the first worker, told the link by a `device` word).
    case standby(UInt32?)

    public var argument: String {
        switch self {
        case .connect: "connect"
        case .reattach(let index): "reattach:\(index)"
        case .standby(let index?): "standby:\(index)"
        case .standby(nil): "standby"
        }
    }

    public init?(argument: String) {
        if argument == "connect" { self = .connect; return }
        if argument == "standby" { self = .standby(nil); return }
        let parts = argument.split(separator: ":")
        guard parts.count == 2, let index = UInt32(parts[1]) else { return nil }
        switch parts[0] {
        case "reattach": self = .reattach(index)
        case "standby": self = .standby(index)
        default: return nil
        }
    }
}

/// What a worker's exit means to the supervisor.
public enum WorkerEnding: Sendable, Equatable {
    /// The kernel ended the link (unmount, `-u`): nothing left to serve.
    case linkEnded
    /// The link died under the worker: the copy the supervisor holds is of no use, the device
    /// needs a new link.
    case linkDropped
    /// Stopped by SIGUSR2 after handing its link over.
    case handedOff
    /// Anything else: a crash, a kill, a failure. The link still waits for a server.
    case died
}

/// What the supervisor records in a link's state.
public enum SupervisorEvent: Sendable, Equatable {
    /// A new worker serves again after a death, `milliseconds` after it was seen.
    case recovered(milliseconds: Int)
    /// A hot upgrade moved the link to a worker of the installed binary; not counted yet (the
    /// supervisor may exec the installed binary next): the state names the serving worker.
    case upgradeHandedOver
    /// A hot upgrade is complete: the link's worker, and its supervisor where it execs itself,
    /// run the installed binary.
    case upgraded
}

/// A request a worker had taken and not answered, as the backend names it: `key` identifies
/// it across workers (the same request replayed to a successor has the same key), `summary`
/// says what it is for the log.
public struct InFlightRequest: Sendable, Hashable {
    public var key: String
    public var summary: String

    public init(key: String, summary: String) {
        self.key = key
        self.summary = summary
    }
}

extension SupervisedBackend {
    /// A backend without a journal cannot tell: the crash-loop guard sees nothing.
    public func requestsInFlight() -> [InFlightRequest] { [] }
    public func failRequests(_ requests: [InFlightRequest]) -> Bool { false }
    /// A backend that says nothing keeps its supervisor across upgrades (only its workers move).
    public func supervisorArguments(resuming handover: SupervisorHandover) -> [String]? { nil }
    public var startsFirstStandbyWithFirstWorker: Bool { true }
}
