#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import LocalBackend
import Logging
import NBDKernel
import RemoteSources
import Supervision
import SystemCalls
import SystemPackage

/// `mount.erofs -t erofs.nbd IMAGE DIR`: a daemon serves the image to the kernel's nbd driver
/// and /dev/nbdN is mounted. Anything that fails on the way is undone: the device is
/// disconnected, the daemon stopped and the state removed.
public struct NBDBackend: Sendable {
    public struct Request: Sendable {
        public var source: String
        public var mountPoint: String
        public var flags: MountFlags
        public var data: String
        public var forceIoctl: Bool
        public var deadConnectionTimeout: UInt64
        /// A supervisor replaces a worker that dies (netlink only); off, `--reattach` does it.
        public var automaticRecovery: Bool
        public var requeueMilliseconds: UInt32
        public var pollMicroseconds: UInt32
        public var fake: Bool
        /// `-N`: the mountpoint is in that namespace; only checking it and mount(2) happen there.
        public var namespace: MountNamespace?
        /// A remote image the caller opened and checked, and its size; nil: `source` is local.
        public var remote: (source: ServedSource, size: UInt64)?

        public init(
            source: String, mountPoint: String, flags: MountFlags, data: String, forceIoctl: Bool,
            deadConnectionTimeout: UInt64, automaticRecovery: Bool = true, requeueMilliseconds: UInt32 = 250,
            pollMicroseconds: UInt32 = NBDDaemon.Settings.defaultPollMicroseconds, fake: Bool,
            namespace: MountNamespace? = nil
        ) {
            self.namespace = namespace
            self.source = source
            self.mountPoint = mountPoint
            self.flags = flags
            self.data = data
            self.forceIoctl = forceIoctl
            self.deadConnectionTimeout = deadConnectionTimeout
            self.automaticRecovery = automaticRecovery
            self.requeueMilliseconds = requeueMilliseconds
            self.pollMicroseconds = pollMicroseconds
            self.fake = fake
        }
    }

    let logger: Logger
    let store: StateStore

    public init(logger: Logger, store: StateStore = StateStore()) {
        self.logger = logger
        self.store = store
    }

    /// Returns the state of the mounted device.
    public func mount(_ request: Request) throws(MountFailure) -> DeviceState? {
        // Whatever fails before a daemon serves, the captured credentials go (then -u does).
        var served = false
        defer { if !served { CapturedCredentials.remove(request.remote?.source.capturedCredentials) } }
        // Opened once: the daemon serves this very file, whatever is renamed over the path later.
        // A remote image is opened by each worker from its description (pinned to the version
        // the caller checked).
        let imageFile: FileDescriptor? = request.remote == nil ? try ImageProbe.open(request.source) : nil
        defer { try? imageFile?.close() }
        var imageSize = request.remote?.size ?? 0
        var identity: ImageIdentity?
        if let imageFile {
            imageSize = try ImageProbe.probe(imageFile, path: request.source).size
            do { identity = ImageIdentity(try FileStatus.fstat(imageFile)) } catch {
                throw MountFailure("cannot use source \(request.source)", cause: error)
            }
        }
        if let namespace = request.namespace {
            let checked: Result<Void, MountFailure>
            do {
                checked = try namespace.run { () throws(MountFailure) in try MountPoint.check(request.mountPoint) }
            } catch {
                throw MountFailure("cannot enter mount namespace \(namespace.name)", cause: error)
            }
            try checked.get()
        } else {
            try MountPoint.check(request.mountPoint)
        }
        if request.fake { return nil }
        let servedSource = request.remote?.source ?? .local(path: canonicalPath(request.source))
        let source = servedSource.displayName
        let identifier = "erofs-mount-" + randomHex(bytes: 8)
        let settings = NBDDaemon.Settings(
            source: servedSource.argument, identifier: identifier, deadConnectionTimeout: request.deadConnectionTimeout,
            forceIoctl: request.forceIoctl, requeueMilliseconds: request.requeueMilliseconds,
            pollMicroseconds: request.pollMicroseconds)
        let supervised = request.automaticRecovery && !request.forceIoctl
        let started = try DaemonLauncher(store: store).start(
            settings, supervised: supervised, image: imageFile?.rawValue ?? -1)
        served = true

        let device = NBDDevice(index: UInt32(started.index))
        var state = DeviceState(
            index: started.index, source: source, sizeBytes: imageSize, blockSize: 512, backendIdentifier: identifier,
            attachMethod: started.method, deadConnectionTimeout: request.deadConnectionTimeout,
            daemonPID: started.daemon.pid, daemonStartTime: started.daemon.startTime,
            servingPID: started.serving?.pid, servingStartTime: started.serving?.startTime,
            supervised: supervised && started.method == .netlink, requeueMilliseconds: request.requeueMilliseconds,
            pollMicroseconds: request.pollMicroseconds, image: identity,
            mountPoint: canonicalPath(request.mountPoint), mountOptions: request.data)
        if case .remote(let description)? = request.remote?.source { state.remote = description }
        do {
            try store.save(state)
            try device.waitUntilInService(timeout: .seconds(30))
            // A loop device has no I/O scheduler either. nbd's default, mq-deadline, hands
            // every request to a kblockd worker before the driver sends it (the queue may
            // sleep): one more context switch per read, ~10% of a 4 KiB read under emulation.
            do { try device.queue.turnOffScheduler() } catch {
                logger.warning("\(device.path): cannot turn off the I/O scheduler: \(error)")
            }
            // Requests as large as a loop device's: 6.1's nbd caps them at 128 KiB (max_sectors
            // 256 under a max_hw_sectors of 32 MiB), so a cold sequential read took twice
            // loop's requests there. 6.12 already gives 1280 KiB.
            do { try device.queue.raiseMaxRequestKiB() } catch {
                logger.warning("\(device.path): cannot raise max_sectors_kb: \(error)")
            }
            if let namespace = request.namespace {
                try namespace.mount(
                    device: device.path, on: request.mountPoint, type: "erofs", flags: request.flags, data: request.data
                )
            } else {
                try Mount.mount(
                    source: device.path, target: request.mountPoint, type: "erofs", flags: request.flags,
                    data: request.data)
            }
        } catch {
            NBDTeardown(logger: logger, store: store).release(state)
            throw MountFailure("cannot mount \(source) through \(device.path)", cause: error)
        }
        if started.method == .netlink {
            // Now that the mount holds the device, its last close (the unmount) may disconnect it.
            do {
                try NBDNetlink.open().reconfigure(
                    index: UInt32(started.index), identifier: identifier, clientFlags: [.disconnectOnClose])
            } catch {
                logger.warning("\(device.path): cannot turn on disconnect-on-close: \(error)")
            }
        } else {
            logger.warning(
                "\(device.path) is attached through the ioctl interface: it cannot be recovered if its daemon dies")
        }
        return state
    }
}

/// Starts the process that serves a device (a supervisor with its worker, or a lone worker)
/// and waits for its report. Failures come back as one message with the daemon's own words.
struct DaemonLauncher {
    struct Started {
        var daemon: DaemonProcess
        /// The worker, when `daemon` is its supervisor.
        var serving: DaemonProcess?
        var index: Int
        var method: DeviceState.AttachMethod
    }

    let store: StateStore

    /// `image`: the source, open; the daemon serves it and never opens the path itself.
    func start(_ settings: NBDDaemon.Settings, supervised: Bool, image: Int32) throws(MountFailure) -> Started {
        let log: OwnedDescriptor
        do { log = OwnedDescriptor(try store.openLog(identifier: settings.identifier)) } catch {
            throw MountFailure("cannot prepare the state directory", cause: error)
        }
        let arguments = supervised ? NBDSupervisor.arguments(for: settings) : settings.arguments
        // The supervisor takes the image as descriptor 4; a lone worker where every worker does.
        let descriptors =
            supervised ? [image] : Array(repeating: -1, count: Int(NBDDaemon.imageDescriptor) - 4) + [image]
        let started: ReportingDaemon
        do {
            started = try ReportingDaemon.spawn(
                arguments: arguments, descriptors: descriptors, logDescriptor: log.rawValue)
        } catch {
            store.removeLog(identifier: settings.identifier)
            throw MountFailure("cannot start the serving daemon", cause: error)
        }
        let daemon = started.process
        let report: DaemonReport?
        do { report = try started.report(timeout: 30) } catch {
            daemon.terminate(signal: SIGKILL)
            store.removeLog(identifier: settings.identifier)
            throw MountFailure("the serving daemon did not start", cause: error)
        }
        guard case .ready(let index, let word, let servingPID)? = report,
            let method = DeviceState.AttachMethod(rawValue: word)
        else {
            var status: Int32 = 0
            waitpid(daemon.pid, &status, 0)
            let log = store.logTail(identifier: settings.identifier)
            store.removeLog(identifier: settings.identifier)
            if settings.mode == .connect { releaseDevice(connectedAs: settings.identifier) }
            if case .failed(let message)? = report { throw MountFailure("cannot serve \(settings.source): \(message)") }
            throw MountFailure(
                "the serving daemon exited before attaching a device (\(describe(waitStatus: status)))"
                    + (log.isEmpty ? "" : "; its log: \(log)"))
        }
        let serving =
            servingPID == daemon.pid
            ? nil : DaemonProcess(pid: servingPID, startTime: DaemonProcess.startTime(of: servingPID) ?? 0)
        return Started(daemon: daemon, serving: serving, index: index, method: method)
    }

    /// A daemon that died between CONNECT and its report leaves a device waiting for a server
    /// that will never come; the identifier, unique to this mount, finds it (Linux 5.14+).
    private func releaseDevice(connectedAs identifier: String) {
        for device in NBDDevice.all() where device.backendIdentifier == identifier {
            try? NBDNetlink.open().disconnect(index: device.index)
        }
    }
}

/// Releases an nbd device we manage: disconnect, wait for its daemon, remove its state.
public struct NBDTeardown: Sendable {
    let logger: Logger
    let store: StateStore

    public init(logger: Logger, store: StateStore = StateStore()) {
        self.logger = logger
        self.store = store
    }

    /// After `Unmounter` unmounted `result`: releases its nbd device, if it is one we manage,
    /// unless a mount of it remains anywhere: a bind mount, or a copy in another mount namespace
    /// (services with PrivateTmp hold copies of every mount). The kernel knows: the filesystem
    /// of a mount holds its device exclusively. A device still held is left to the kernel,
    /// which disconnects it when its last mount goes (disconnect-on-close); its supervisor then
    /// removes the state.
    public func finishUnmount(_ result: Unmounter.Result) throws(MountFailure) {
        let (major, minor, mountPoint) = (result.major, result.minor, result.mountPoint)
        guard let name = BlockDevice.name(major: major, minor: minor),
            let index = BlockDevice.index(of: name, prefix: "nbd")
        else { return }
        let state: DeviceState?
        do { state = try store.load(device: index) } catch {
            throw MountFailure(
                "unmounted \(mountPoint), but /dev/nbd\(index) is left attached: its state cannot be used", cause: error
            )
        }
        guard let state else { return }  // not ours to release
        switch BlockDevice.claim(path: state.devicePath, major: major, minor: minor) {
        case .free:
            break
        case .held:
            logger.info(
                "\(state.devicePath) is still mounted elsewhere (a bind mount or another mount namespace): it stays attached until its last mount goes"
            )
            return
        case .failed(let error):
            throw MountFailure(
                "unmounted \(mountPoint), but cannot tell whether \(state.devicePath) is still mounted elsewhere; it is left attached",
                cause: error)
        }
        let problems = release(state)
        if !problems.isEmpty {
            throw MountFailure("unmounted \(mountPoint), but: \(problems.joined(separator: "; "))")
        }
    }

    /// Best effort: every step runs even when an earlier one failed; what failed is returned.
    /// Only what is ours is touched: a device the kernel says is connected to another backend,
    /// or processes that are not our daemons for this device (a state may name any pid), are
    /// left alone.
    @discardableResult
    public func release(_ state: DeviceState) -> [String] {
        var problems: [String] = []
        let device = NBDDevice(index: UInt32(state.index))
        let daemon = state.daemon.isOurs(serving: state.backendIdentifier) ? state.daemon : nil
        let worker = state.worker.flatMap { $0.isOurs(serving: state.backendIdentifier) ? $0 : nil }
        // A supervisor told to stop brings no new worker when the disconnect ends the current one.
        if state.supervised == true, let daemon { kill(daemon.pid, SIGTERM) }
        switch state.connection() {
        case .ours where device.isInService || device.serverPID != nil:
            switch state.attachMethod {
            case .netlink:
                do { try NBDNetlink.open().disconnect(index: UInt32(state.index)) } catch {
                    problems.append("disconnect \(device.path): \(error)")
                }
            case .ioctl:
                let fd = open(device.path, O_RDWR | O_CLOEXEC)
                if fd >= 0 {
                    _ = cshimDisconnect(fd)
                    close(fd)
                } else {
                    problems.append("open \(device.path) to disconnect it: \(String(cString: strerror(errno)))")
                }
            }
        case .foreign(let other):
            problems.append("\(device.path) is not ours (\(other)); it is left alone")
        case .ours, .notConnected:
            break
        }
        // The daemon ends by itself once the kernel disconnects; a daemon that does not is stopped.
        // On the ioctl path its NBD_DO_IT can take seconds to return under emulation (seen once
        // past 11 s on 6.12), during which no signal ends it: be patient before giving up.
        if let daemon {
            if !daemon.waitForExit(timeout: 10) && !daemon.terminate(signal: SIGTERM, timeout: 5) {
                daemon.terminate(signal: SIGKILL, timeout: 15)
            }
            if daemon.isAlive { problems.append("daemon \(daemon.pid) is still running") }
        }
        if let worker {
            if !worker.waitForExit(timeout: 5) { worker.terminate(signal: SIGKILL, timeout: 5) }
            if worker.isAlive { problems.append("serving worker \(worker.pid) is still running") }
        }
        do { try store.remove(device: state.index) } catch { problems.append("\(error)") }
        store.removeLog(identifier: state.backendIdentifier)
        CapturedCredentials.remove(state.servedSource.capturedCredentials)
        return problems
    }
}
