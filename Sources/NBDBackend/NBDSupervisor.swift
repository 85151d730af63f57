#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import NBDKernel
import NBDServer
import NBDProtocol
import RemoteSources
import Supervision
import SystemCalls

/// The supervisor of one netlink-attached nbd device, run as `mount.erofs --supervise-nbd-device
/// ...`: the shared `Supervisor` (its comment says what it does) over `NBDSupervisedBackend`.
/// What is nbd's: the link is the worker's end of a socketpair whose other end the kernel holds;
/// the journal, shared memory in which the worker records what it took off the socket and has
/// not answered, lets a standby resume it; when the journal cannot be trusted the standby gives
/// the device a new socket with RECONFIGURE, and the kernel resends what the dead worker had
/// read when the request timer next fires (`requeueMilliseconds`, rounded up by the block layer
/// to about a second).
public enum NBDSupervisor {
    public static let flag = "--supervise-nbd-device"
    static let imageDescriptor: Int32 = 4

    public static func arguments(for settings: NBDDaemon.Settings) -> [String] {
        [flag] + settings.arguments.dropFirst()
    }

    public static func main(_ arguments: [String]) -> Int32 {
        // After the exec of a hot upgrade: the settings, then the handover.
        guard let (settingsArguments, handover) = SupervisorHandover.split(arguments) else {
            ProcessSystem().log("erofs-nbd-supervisor[\(getpid())]: internal error: bad handover \(arguments)")
            return NBDDaemon.Exit.badArguments.rawValue
        }
        guard let settings = NBDDaemon.Settings(arguments: [NBDDaemon.flag] + settingsArguments.dropFirst()),
            arguments.first == flag, !settings.forceIoctl
        else {
            DaemonReport.failed("internal error: bad supervisor arguments \(arguments)").send(
                to: NBDDaemon.statusDescriptor)
            return NBDDaemon.Exit.badArguments.rawValue
        }
        signal(SIGPIPE, SIG_IGN)
        let system = ProcessSystem()
        if let handover {
            // The descriptors every worker shares are the previous binary's: the journal (its
            // layout is checked by each worker that maps it) and the image.
            let shared = handover.shared + [-1, -1]
            var journal: RequestJournal?
            if shared[0] >= 0 {
                do { journal = try RequestJournal(descriptor: shared[0]) } catch {
                    system.log("erofs-nbd-supervisor[\(getpid())]: the request journal is not this build's: \(error)")
                }
            }
            let backend = NBDSupervisedBackend(settings: settings, journal: journal, image: shared[1])
            return Supervisor(
                backend: backend, system: system, resuming: handover, workerExecutable: system.installedExecutable()
            ).resume()
        }
        let journal: RequestJournal?
        do { journal = try RequestJournal.create() } catch {
            system.log(
                "erofs-nbd-supervisor[\(getpid())]: no request journal, a crash will cost a new socket: \(error)")
            journal = nil
        }
        // The image (descriptor 4, from whoever started us), handed to every worker; -1 from an
        // older launcher: the workers then open the path.
        let image = fcntl(imageDescriptor, F_GETFD) >= 0 ? imageDescriptor : -1
        let backend = NBDSupervisedBackend(settings: settings, journal: journal, image: image)
        return Supervisor(backend: backend, system: system).run(firstMode: settings.mode)
    }
}

/// What the shared supervisor needs to know of nbd (`SupervisedBackend`).
public struct NBDSupervisedBackend: SupervisedBackend {
    let settings: NBDDaemon.Settings
    /// Shared with every worker (descriptor 5): what the serving one has read and not answered.
    let journal: RequestJournal?
    let image: Int32
    let store: StateStore

    public init(settings: NBDDaemon.Settings, journal: RequestJournal?, image: Int32, store: StateStore = StateStore())
    {
        self.settings = settings
        self.journal = journal
        self.image = image
        self.store = store
    }

    public func linkName(_ link: UInt32) -> String { "/dev/nbd\(link)" }

    public func workerArguments(for mode: WorkerMode) -> [String] {
        var worker = settings
        worker.mode = mode
        return worker.arguments
    }

    /// Descriptor 5 the journal, 6 the image (`NBDDaemon`'s numbers).
    public var sharedDescriptors: [Int32] { [journal?.descriptor ?? -1, image] }

    /// Workers without a journal send no copy of their socket (nothing could resume it).
    public var workersShareTheirLink: Bool { journal != nil }

    /// Only a netlink device can take a new socket; an ioctl one dies with its worker.
    public func canRecover(attachedBy method: String) -> Bool { method == DeviceState.AttachMethod.netlink.rawValue }

    /// The kernel still shows our identifier (or, before 5.14, still has a capacity).
    public func linkIsOurs(_ link: UInt32) -> Bool {
        NBDDevice(index: link).connection(expecting: settings.identifier) == .ours
    }

    public func linkIsDead(_ descriptor: Int32) -> Bool { NBDDaemon.isHungUp(descriptor) }

    public func ending(ofWorkerWithStatus status: Int32) -> WorkerEnding {
        guard status & 0x7f == 0 else { return .died }
        switch NBDDaemon.Exit(rawValue: (status >> 8) & 0xff) {
        case .disconnected: return .linkEnded
        case .socketClosed: return .linkDropped
        case .handedOff: return .handedOff
        case .failed, .badArguments, nil: return .died
        }
    }

    public func releaseUnclaimed(link: UInt32, attachedBy method: String) {
        NBDDaemon.releaseUnclaimed(
            index: link, method: DeviceState.AttachMethod(rawValue: method) ?? .netlink, ioctl: nil)
    }

    /// The device went away without `-u` (a plain umount with disconnect-on-close): its state
    /// and log go with it.
    public func forget(link: UInt32) {
        if let state = try? store.load(device: Int(link)), state.backendIdentifier == settings.identifier {
            try? store.remove(device: Int(link))
            store.removeLog(identifier: settings.identifier)
            CapturedCredentials.remove(state.servedSource.capturedCredentials)
        }
    }

    /// Updates the device's state file with the serving worker, if the file is still ours.
    public func record(_ event: SupervisorEvent, link: UInt32, serving: DaemonProcess?) throws(SystemError) {
        guard var state = try? store.load(device: Int(link)), state.backendIdentifier == settings.identifier else {
            return
        }
        state.apply(event, serving: serving)
        try store.save(state)
    }

    /// The journal's unanswered requests, named by cookie and extent: a request the kernel
    /// sent once keeps both while successors take it over.
    public func requestsInFlight() -> [InFlightRequest] {
        (journal?.unansweredRequests() ?? []).map(Self.inFlight)
    }

    public func failRequests(_ requests: [InFlightRequest]) -> Bool {
        guard let journal else { return false }
        let keys = Set(requests.map(\.key))
        return journal.failOnResume { keys.contains(Self.inFlight($0).key) } > 0
    }

    public func supervisorArguments(resuming handover: SupervisorHandover) -> [String]? {
        NBDSupervisor.arguments(for: settings) + [SupervisorHandover.flag, handover.argument]
    }

    static func inFlight(_ request: Request) -> InFlightRequest {
        InFlightRequest(
            key: "\(request.cookie):\(request.type.rawValue):\(request.offset):\(request.length)",
            summary: "NBD \(request.type) of \(request.length) bytes at \(request.offset)")
    }
}
