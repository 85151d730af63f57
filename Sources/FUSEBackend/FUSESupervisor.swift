#if canImport(Glibc)
import Glibc
#endif
import FUSEProtocol
import FUSEServer
import Supervision
import SystemCalls

/// The supervisor of one FUSE mount, run as `mount.erofs --supervise-fuse ...` with the mount's
/// /dev/fuse descriptor as descriptor 4 and the mount command's status pipe as 3: the shared
/// `Supervisor` (its comment says what it does) over `FUSESupervisedBackend`. What is FUSE's:
/// the supervisor holds every channel of the connection (the descriptor and one clone per
/// serving thread) and the request journal, and gives them to every worker. While a channel's
/// file is open the kernel keeps what was read on it and not answered (closing a channel's
/// last descriptor fails those requests, closing every one ends the mount), so a dead worker's
/// requests wait for the next one, which has the kernel resend them (FUSE_NOTIFY_RESEND, 6.9+)
/// or answers them from the journal (FUSEServer.takeOver).
/// What it cannot survive is its own death: the worker then serves on, but nothing replaces it
/// when it dies (`--list` shows RECOVERY "none").
public enum FUSESupervisor {
    public static let flag = "--supervise-fuse"
    static let deviceDescriptor: Int32 = 4

    public static func main(_ arguments: [String]) -> Int32 {
        _ = chdir("/")
        guard let settings = FUSEDaemon.Settings(arguments: arguments, flag: flag), settings.mode == .connect,
            let connection = settings.connection
        else {
            DaemonReport.failed("internal error: bad supervisor arguments \(arguments)").send(
                to: FUSEDaemon.statusDescriptor)
            return FUSEDaemon.Exit.badArguments.rawValue
        }
        signal(SIGPIPE, SIG_IGN)
        let system = ProcessSystem()
        var channels = [deviceDescriptor]
        let journal: FUSEJournal
        do {
            for _ in 1..<settings.threads { channels.append(try FUSEServer.cloneChannel(of: deviceDescriptor)) }
            journal = try FUSEJournal.create(channels: settings.threads)
        } catch {
            DaemonReport.failed("\(error)").send(to: FUSEDaemon.statusDescriptor)
            return FUSEDaemon.Exit.failed.rawValue
        }
        let backend = FUSESupervisedBackend(
            settings: settings, connection: connection, channels: channels, journal: journal)
        return Supervisor(backend: backend, system: system).run(firstMode: .connect)
    }
}

/// What the shared supervisor needs to know of FUSE (`SupervisedBackend`). The link is the
/// connection, named by the minor of the mount's device number (FUSE mounts have major 0).
public struct FUSESupervisedBackend: SupervisedBackend {
    let settings: FUSEDaemon.Settings
    let connection: (major: UInt32, minor: UInt32)
    /// The connection's channels, held for the mount's life.
    let channels: [Int32]
    let journal: FUSEJournal
    let store = FUSEStateStore()

    public func linkName(_ link: UInt32) -> String { "FUSE \(connection.major):\(link) (\(settings.source))" }

    public func workerArguments(for mode: WorkerMode) -> [String] {
        var worker = settings
        worker.mode = mode
        return worker.arguments()
    }

    /// The journal as descriptor 5, the channels from 6 on.
    public var sharedDescriptors: [Int32] { [journal.descriptor] + channels }

    /// Workers send channel 0 as their link (the supervisor holds every channel anyway, but the
    /// copy lets a standby be told to resume) and no reply file.
    public var workersShareTheirLink: Bool { true }

    public func canRecover(attachedBy method: String) -> Bool { true }

    /// The mount waits for the first worker's INIT, not for a standby: it starts after (mount
    /// time measured in BENCHMARKS.md). A kill in the few ms between costs a fresh worker's
    /// start instead of a standby's takeover.
    public var startsFirstStandbyWithFirstWorker: Bool { false }

    /// The connection lives while the kernel has not ended it: /dev/fuse polls POLLERR once it
    /// has (unmount, abort).
    public func linkIsOurs(_ link: UInt32) -> Bool { !linkIsDead(channels[0]) }

    public func linkIsDead(_ descriptor: Int32) -> Bool {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 0) >= 0 else { return false }
        return poller.revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0
    }

    public func ending(ofWorkerWithStatus status: Int32) -> WorkerEnding {
        guard status & 0x7f == 0 else { return .died }
        switch (status >> 8) & 0xff {
        case FUSEDaemon.Exit.connectionEnded.rawValue: return .linkEnded
        case FUSEDaemon.Exit.handedOff.rawValue: return .handedOff
        default: return .died
        }
    }

    /// Whoever mounted died before learning of the daemon: the mount side detaches its mount,
    /// and the connection ends with our descriptors.
    public func releaseUnclaimed(link: UInt32, attachedBy method: String) {}

    public func forget(link: UInt32) { store.removeStates(ofProcess: getpid()) }

    public func record(_ event: SupervisorEvent, link: UInt32, serving: DaemonProcess?) throws(SystemError) {
        try store.update(major: connection.major, minor: connection.minor) { $0.apply(event, serving: serving) }
    }

    /// The journal's slots: what each channel's thread had read and not answered. A request the
    /// kernel resent carries the resend bit in its unique: the key leaves it out.
    public func requestsInFlight() -> [InFlightRequest] {
        journal.unanswered().map { header in
            InFlightRequest(
                key: String(header.unique & ~fuseUniqueResend),
                summary: "request \(header.unique & ~fuseUniqueResend) (\(header.opcode), node \(header.nodeID))")
        }
    }

    /// The next workers answer them with EIO (the journal's list, which every worker checks).
    public func failRequests(_ requests: [InFlightRequest]) -> Bool {
        journal.failFromNowOn(requests.compactMap { UInt64($0.key) })
    }
}
