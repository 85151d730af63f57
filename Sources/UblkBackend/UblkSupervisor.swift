#if canImport(Glibc)
import Glibc
#endif
import RemoteSources
import Supervision
import SystemCalls
import UblkKernel

/// The supervisor of one ublk device, run as `mount.erofs --supervise-ublk-device MODE ID
/// SOURCE` with a local image on descriptor 4 and the report pipe on 3: the shared `Supervisor`
/// with the ublk answers to its questions.
///
/// What differs from nbd: the kernel link is /dev/ublkcN with the io_uring commands of the
/// task that fetched each queue, which no other process can take over or hold (the driver
/// lets one process open the device, and refuses commands from another task). So a worker's
/// link is never shared or handed over (`workersShareTheirLink` false): when a worker dies the
/// driver requeues what it held (UBLK_F_USER_RECOVERY_REISSUE) and quiesces the device, and
/// the standby's `reconnect` is a user recovery (START_USER_RECOVERY, FETCH, END_USER_RECOVERY).
/// A hot upgrade asks the worker for a hand-over with SIGUSR2; a ublk worker ends on it
/// (SIGUSR2's default action), which the supervisor takes as a worker gone on the way: it
/// sends the upgraded standby `reconnect`, the same recovery. Then the supervisor execs the
/// installed binary with `--resume-supervision` (same pid, children and descriptors).
public enum UblkSupervisor {
    public static let flag = "--supervise-ublk-device"
    static let imageDescriptor: Int32 = 4

    public static func arguments(for settings: UblkDaemon.Settings) -> [String] {
        [flag] + settings.arguments.dropFirst()
    }

    public static func main(_ arguments: [String]) -> Int32 {
        // After the exec of a hot upgrade: the settings, then the handover.
        guard let (own, handover) = SupervisorHandover.split(arguments),
            let settings = UblkDaemon.Settings(arguments: own, flag: flag),
            settings.mode == .connect || settings.mode == .reattach(settings.deviceID)
        else {
            DaemonReport.failed("internal error: bad supervisor arguments \(arguments)").send(to: 3)
            return 2
        }
        signal(SIGPIPE, SIG_IGN)
        // Before any thread: the supervisor takes its signals with sigtimedwait.
        let system = ProcessSystem()
        if let handover {
            let backend = UblkSupervisedDevice(settings: settings, image: handover.shared.first ?? -1)
            return Supervisor(
                backend: backend, system: system, resuming: handover, workerExecutable: system.installedExecutable()
            ).resume()
        }
        let image = fcntl(imageDescriptor, F_GETFD) >= 0 ? imageDescriptor : -1
        let backend = UblkSupervisedDevice(settings: settings, image: image)
        return Supervisor(backend: backend, system: system).run(firstMode: settings.mode)
    }
}

/// One ublk device as the shared supervisor sees it. No crash-loop guard (the protocol's
/// defaults): the driver reissues what a dead worker held without saying which requests those
/// were, and a worker answers reads with pread into bounded buffers, so no request of a hostile
/// image kills it.
struct UblkSupervisedDevice: SupervisedBackend {
    /// The supervisor's own: its command line after an upgrade's exec.
    let settings: UblkDaemon.Settings
    var source: String { settings.source }
    var deviceID: UInt32 { settings.deviceID }
    /// A local image, handed to every worker as its descriptor 5; -1: workers open the source
    /// (a remote one always).
    let image: Int32
    var store = UblkStateStore()

    func linkName(_ link: UInt32) -> String { Ublk.blockDevice(link) }

    func workerArguments(for mode: WorkerMode) -> [String] {
        // Every mode names the device: a standby started before the first report already knows it.
        UblkDaemon.Settings(source: source, deviceID: deviceID, mode: mode).arguments
    }

    var sharedDescriptors: [Int32] { [image] }

    var workersShareTheirLink: Bool { false }

    /// Devices are added with UBLK_F_USER_RECOVERY; one without it (a kernel that dropped it)
    /// is stopped by the driver when its server dies.
    func canRecover(attachedBy method: String) -> Bool {
        guard let info = try? UblkControl().deviceInfo(deviceID) else { return false }
        return info.flags.contains(.userRecovery)
    }

    /// The device still exists, is not stopped, and its state file is still about our image.
    func linkIsOurs(_ link: UInt32) -> Bool {
        guard let info = try? UblkControl().deviceInfo(link), info.deviceState != .dead else { return false }
        return (try? store.load(device: link))??.servedSource.argument == source
    }

    func linkIsDead(_ descriptor: Int32) -> Bool { true }

    func ending(ofWorkerWithStatus status: Int32) -> WorkerEnding {
        let exited = status & 0x7f == 0
        return exited && (status >> 8) & 0xff == UblkDaemon.Exit.deviceEnded.rawValue ? .linkEnded : .died
    }

    /// The mount helper died before learning of the device: STOP_DEV ends the worker's fetches
    /// (and the worker), DEL_DEV waits for its /dev/ublkcN to close.
    func releaseUnclaimed(link: UInt32, attachedBy method: String) {
        guard let control = try? UblkControl() else { return }
        try? control.stop(link)
        try? control.delete(link)
        forget(link: link)
    }

    /// The device went away without `-u`: its state and captured credentials go with it.
    func forget(link: UInt32) {
        guard let state = (try? store.load(device: link)) ?? nil, state.servedSource.argument == source else { return }
        try? store.remove(device: link)
        CapturedCredentials.remove(state.servedSource.capturedCredentials)
    }

    func record(_ event: SupervisorEvent, link: UInt32, serving: DaemonProcess?) throws(SystemError) {
        guard var state = try store.load(device: link), state.servedSource.argument == source else { return }
        state.apply(event, serving: serving)
        try store.save(state)
    }

    func supervisorArguments(resuming handover: SupervisorHandover) -> [String]? {
        UblkSupervisor.arguments(for: settings) + [SupervisorHandover.flag, handover.argument]
    }
}
