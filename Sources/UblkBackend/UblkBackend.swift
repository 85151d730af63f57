#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import LocalBackend
import Supervision
import KernelAttach
import Logging
import RemoteSources
import SystemCalls
import SystemPackage
import UblkKernel

/// `mount.erofs -t erofs.ublk IMAGE DIR`: the kernel's ublk driver (Linux 6.0+) presents the
/// image as /dev/ublkbN, served by a daemon over io_uring, and that device is mounted. Anything
/// that fails on the way is undone: no device, process or state is left behind.
public struct UblkBackend: Sendable {
    public struct Request: Sendable {
        public var source: String
        public var mountPoint: String
        public var flags: MountFlags
        public var data: String
        public var fake: Bool
        /// A remote image the caller opened and checked, and its size; nil: `source` is local.
        public var remote: (source: ServedSource, size: UInt64)?
        /// Hardware queues and their depth (`-o ublk.queues`, `ublk.depth`); nil: the defaults.
        public var queues: UInt16?
        public var queueDepth: UInt16?
        /// READs answered from a mapping of the image (one copy), or (false) through a pread
        /// into the tag's buffer (two): `-o ublk.copy=map|pread`.
        public var mapImage = true

        public init(source: String, mountPoint: String, flags: MountFlags, data: String, fake: Bool) {
            self.source = source
            self.mountPoint = mountPoint
            self.flags = flags
            self.data = data
            self.fake = fake
        }
    }

    /// Device shape. Queues: one per CPU up to 4 (each queue is a thread of the daemon).
    /// Depth 64 (the block layer's default nr_requests is 64 per queue for `none`). 512 KiB per
    /// request, as loop devices allow (max_sectors_kb), so a cold big-file read is not split more.
    public static let queueDepth: UInt16 = 64
    public static let maxIOBytes: UInt32 = 512 * 1024
    public static var queueCount: UInt16 { UInt16(max(1, min(4, sysconf(Int32(_SC_NPROCESSORS_ONLN))))) }

    let logger: Logger
    let store: UblkStateStore

    public init(logger: Logger, store: UblkStateStore = UblkStateStore()) {
        self.logger = logger
        self.store = store
    }

    /// Opens /dev/ublk-control, or fails with the one line a host without ublk gets.
    static func control() throws(MountFailure) -> UblkControl {
        do { return try UblkControl() } catch {
            if error.errno == .noSuchFileOrDirectory || error.errno == .noSuchAddressOrDevice {
                throw MountFailure(
                    "the ublk backend needs the kernel's ublk driver: \(Ublk.controlPath) is missing (modprobe ublk_drv; Linux 6.0+)"
                )
            }
            throw MountFailure("cannot use the ublk driver", cause: error)
        }
    }

    /// Returns the state of the mounted device (nil for `-f`).
    public func mount(_ request: Request) throws(MountFailure) -> UblkDeviceState? {
        // Captured credentials belong to the mount from here: removed unless a supervisor
        // took them over (it removes them when the device ends).
        var handedOver = false
        defer { if !handedOver { CapturedCredentials.remove(request.remote?.source.capturedCredentials) } }
        let served = request.remote?.source ?? .local(path: canonicalPath(request.source))
        let source = served.displayName
        // A local image: one open for everything, what is probed is what the supervisor hands
        // every worker. A remote one was probed by the caller; each worker opens it from its
        // description, pinned to the version checked.
        let file: FileDescriptor? = request.remote == nil ? try ImageProbe.open(source) : nil
        defer { try? file?.close() }
        let imageSize: UInt64
        if let file {
            imageSize = try ImageProbe.probe(file, path: source).size
        } else {
            imageSize = request.remote!.size
        }
        try MountPoint.check(request.mountPoint)
        if request.fake { return nil }
        let control = try Self.control()
        let identity: FileStatus?
        do { identity = try file.map { (opened) throws(SystemError) in try FileStatus.fstat(opened) } } catch {
            throw MountFailure("cannot read \(source)", cause: error)
        }
        do { try store.ensureDirectory() } catch {
            throw MountFailure("cannot prepare the state directory", cause: error)
        }

        // Recovery-ready from the start: a server that dies leaves the device waiting (its
        // in-flight reads reissued) instead of failing reads, for a successor to take over.
        // NEED_GET_DATA: a WRITE asks for a buffer before its data is copied, so that READs can
        // be answered from a mapping of the image (UblkQueue.mapping).
        var flags: Ublk.Features = [.userRecovery, .userRecoveryReissue]
        if request.mapImage { flags.insert(.needGetData) }
        if !control.features.isEmpty { flags.formIntersection(control.features) }
        let added: DeviceInfo
        do {
            added = try control.addDevice(
                DeviceInfo(
                    queueCount: request.queues ?? Self.queueCount, queueDepth: request.queueDepth ?? Self.queueDepth,
                    maxIOBufferBytes: Self.maxIOBytes, flags: flags))
        } catch { throw MountFailure("cannot add a ublk device", cause: error) }
        let id = added.deviceID
        logger.info(
            "\(Ublk.blockDevice(id)): driver features 0x\(String(control.features.rawValue, radix: 16)), device flags 0x\(String(added.flags.rawValue, radix: 16)), \(added.queueCount) queues of depth \(added.queueDepth), \(added.maxIOBufferBytes / 1024) KiB per request"
        )
        var state = UblkDeviceState(
            deviceID: id, source: source, sizeBytes: imageSize, imageDevice: UInt64(identity?.device ?? 0),
            imageInode: UInt64(identity?.inode ?? 0), image: identity.map(ImageIdentity.init),
            queues: Int(added.queueCount), queueDepth: Int(added.queueDepth),
            mountPoint: canonicalPath(request.mountPoint),
            mountOptions: request.data)
        if case .remote(let description) = served { state.remote = description }
        do throws(MountFailure) {
            do { try store.save(state) } catch {
                throw MountFailure("cannot save the state of \(state.devicePath)", cause: error)
            }
            // 512-byte logical blocks as a loop device has; 4 KiB physical, the EROFS block size.
            // Optimal I/O 128 KiB, as the nbd driver declares: the block layer reads ahead
            // twice that (256 KiB, where 4 KiB gave its 128 KiB minimum), so a cold sequential
            // read takes half the round trips to the worker (535 requests for 256 MiB, not 1043).
            let parameters = DeviceParameters(
                logicalBlockShift: 9, physicalBlockShift: 12, optimalIOShift: 17, minimumIOShift: 9,
                maxSectors: added.maxIOBufferBytes >> 9, deviceSectors: imageSize >> 9)
            do { try control.setParameters(parameters, deviceID: id) } catch {
                throw MountFailure("cannot set the parameters of \(Ublk.blockDevice(id))", cause: error)
            }
            handedOver = true
            try UblkLauncher(store: store).start(
                UblkDaemon.Settings(source: served.argument, deviceID: id, mode: .connect),
                image: file?.rawValue ?? -1, into: &state)
            try waitForNode(state.devicePath)
            // A single-queue device gets mq-deadline from the kernel (ublk.queues=1, or one
            // CPU): none, as loop and our nbd have (see BlockQueue.turnOffScheduler).
            do { try BlockQueue(device: "ublkb\(id)").turnOffScheduler() } catch {
                logger.warning("\(state.devicePath): cannot turn off the I/O scheduler: \(error)")
            }
            do {
                try Mount.mount(
                    source: state.devicePath, target: request.mountPoint, type: "erofs", flags: request.flags,
                    data: request.data)
            } catch { throw MountFailure("cannot mount \(source) through \(state.devicePath)", cause: error) }
        } catch {
            let problems = UblkTeardown(logger: logger, store: store).release(state, control: control)
            for problem in problems { logger.warning("\(state.devicePath): \(problem)") }
            throw error
        }
        return state
    }

    private func waitForNode(_ path: String) throws(MountFailure) {
        for _ in 0..<250 {
            if access(path, F_OK) == 0 { return }
            usleep(20_000)
        }
        throw MountFailure("\(path) did not appear in 5 s")
    }

    /// `-u TARGET` for a mount on a ublk device we manage: unmounts, then releases the device.
    /// nil when TARGET is not such a mount (the generic unmount handles it).
    public func unmount(_ target: String) throws(MountFailure) -> (mountPoint: String, device: String)? {
        let canonical = canonicalPath(target)
        // TARGET is the mountpoint, the device, or (as umount(8) allows) the image it serves.
        // Mounts are known by device number and filesystem type, never by a source string
        // (anyone may mount a tmpfs named /dev/ublkb0).
        let device = (try? FileStatus.stat(canonical)).flatMap {
            $0.kind == .block ? ($0.rdevMajor, $0.rdevMinor) : nil
        }
        let ublkID = { (entry: MountInfoEntry) -> UInt32? in
            guard entry.fsType == "erofs", let name = BlockDevice.name(major: entry.major, minor: entry.minor) else {
                return nil
            }
            return ublkBlockIndex("/dev/" + name)
        }
        let servesTarget = { (entry: MountInfoEntry) -> Bool in
            if let device { return (entry.major, entry.minor) == device }
            return ublkID(entry).flatMap { try? store.load(device: $0) }?.source == canonical
        }
        guard let table = try? MountTable.read(),
            let entry = table.last(where: { $0.mountPoint == canonical }) ?? table.last(where: servesTarget),
            let id = ublkID(entry), let state = try? store.load(device: id)
        else { return nil }
        let devicePath = "/dev/ublkb\(id)"
        do { try Mount.unmount(entry.mountPoint) } catch {
            // With every process of ours dead (killed, awaiting --reattach) reads wait in the
            // device (user recovery): stopping it fails them, and the unmount can go on.
            guard error.errno == .resourceBusy, !state.isOurs(state.supervisor), !state.isOurs(state.worker) else {
                throw MountFailure("cannot unmount \(entry.mountPoint)", cause: error)
            }
            logger.warning("\(entry.source): its daemons are gone; stopping the device to fail its waiting reads")
            try? Self.control().stop(id)
            do { try Mount.unmount(entry.mountPoint) } catch {
                throw MountFailure("cannot unmount \(entry.mountPoint)", cause: error)
            }
        }
        // Mounted elsewhere too (a bind mount, another namespace's copy): the kernel holds the
        // device exclusively while any mount of it lives, and the device stays.
        if case .held = BlockDevice.claim(path: devicePath, major: entry.major, minor: entry.minor) {
            logger.info("\(devicePath) is still mounted elsewhere; it stays attached")
            return (entry.mountPoint, devicePath)
        }
        let problems = UblkTeardown(logger: logger, store: store).release(state, control: try Self.control())
        guard problems.isEmpty else {
            throw MountFailure("unmounted \(entry.mountPoint), but: \(problems.joined(separator: "; "))")
        }
        return (entry.mountPoint, devicePath)
    }
}

/// N of /dev/ublkbN, else nil.
public func ublkBlockIndex(_ path: String) -> UInt32? {
    guard path.hasPrefix("/dev/ublkb") else { return nil }
    return UInt32(path.dropFirst("/dev/ublkb".count))
}

/// Releases a ublk device we manage: STOP_DEV (its pending fetches end, and the daemon with
/// them), the daemon gone, DEL_DEV (which waits for /dev/ublkcN to be closed), state removed.
public struct UblkTeardown: Sendable {
    let logger: Logger
    let store: UblkStateStore

    public init(logger: Logger, store: UblkStateStore = UblkStateStore()) {
        self.logger = logger
        self.store = store
    }

    /// Best effort: every step runs even when an earlier one failed; what failed is returned.
    @discardableResult
    public func release(_ state: UblkDeviceState, control: UblkControl) -> [String] {
        var problems: [String] = []
        // Which of the state's processes are ours (our binary, serving this device), asked
        // before anything sends them on their way out: only those are signalled (a state names
        // pids; by now they may be anyone's).
        let processes = [state.supervisor, state.worker].compactMap { $0 }
        let ours = processes.filter { state.isOurs($0) }
        // The supervisor first, so that it does not recover the worker STOP_DEV is about to end.
        if let supervisor = state.supervisor, ours.contains(supervisor) { kill(supervisor.pid, SIGTERM) }
        do { try control.stop(state.deviceID) } catch {
            if error.errno != .noSuchFileOrDirectory && error.errno != .operationNotSupportedByDevice {
                problems.append("stop: \(error)")
            }
        }
        // Once stopped, the device has nothing left to serve. The worker's pending fetches end
        // when its rings go away (on 6.8+ STOP_DEV alone may not complete them).
        for process in ours where !process.terminate(signal: SIGTERM, timeout: 5) {
            process.terminate(signal: SIGKILL, timeout: 10)
        }
        for process in processes where process.isAlive {
            problems.append(
                ours.contains(process)
                    ? "process \(process.pid) is still running"
                    : "the state named process \(process.pid), which is not ours: left alone")
        }
        do { try control.delete(state.deviceID) } catch {
            if error.errno != .noSuchFileOrDirectory && error.errno != .operationNotSupportedByDevice {
                problems.append("delete: \(error)")
            }
        }
        do { try store.remove(device: state.deviceID) } catch { problems.append("\(error)") }
        CapturedCredentials.remove(state.servedSource.capturedCredentials)
        return problems
    }
}

/// Starts a device's supervisor and waits for the report of its first worker.
struct UblkLauncher {
    let store: UblkStateStore

    /// Records the supervisor and the serving worker in `state` and saves it.
    func start(_ settings: UblkDaemon.Settings, image: Int32, into state: inout UblkDeviceState)
        throws(MountFailure)
    {
        let started: ReportingDaemon
        do {
            started = try ReportingDaemon.spawn(
                arguments: UblkSupervisor.arguments(for: settings), descriptors: [image],
                logFile: store.logPath(device: settings.deviceID))
        } catch {
            throw MountFailure("cannot start the ublk daemon", cause: error)
        }
        let supervisor = started.process
        state.daemonPID = supervisor.pid
        state.daemonStartTime = supervisor.startTime
        // A timeout and a pipe closed without a whole line are both "no report".
        let report = (try? started.report(timeout: 60)) ?? nil
        guard case .ready(_, _, let pid)? = report else {
            supervisor.terminate(signal: SIGKILL)
            let reason: String
            switch report {
            case .failed(let message)?: reason = message
            default: reason = "no report in 60 s (see \(store.logPath(device: settings.deviceID)))"
            }
            throw MountFailure("the ublk daemon for \(state.source) did not start: \(reason)")
        }
        state.servingPID = pid
        state.servingStartTime = DaemonProcess.startTime(of: pid)
        do { try store.save(state) } catch {
            throw MountFailure("cannot save the state of \(state.devicePath)", cause: error)
        }
    }
}
