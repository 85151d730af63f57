#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import LocalBackend
import Logging
import NBDKernel
import Supervision
import SystemCalls
import SystemPackage

/// `--reattach` and `--upgrade`: act on a device mount.erofs manages, after checking that the
/// state on disk, the kernel's view and the processes agree. A check that fails changes nothing.
public struct NBDRecovery: Sendable {
    let logger: Logger
    let store: StateStore

    public init(logger: Logger, store: StateStore = StateStore()) {
        self.logger = logger
        self.store = store
    }

    /// N of /dev/nbdN for TARGET: the device itself, or the mountpoint of an EROFS mount of one.
    public static func deviceIndex(of target: String) throws(MountFailure) -> Int {
        try managedDeviceIndex(of: target, prefix: "nbd", kind: "an nbd device")
    }

    /// The state of TARGET's device, attached over netlink (`ioctl`: why an ioctl device is
    /// refused) and checked against the kernel: it must be connected, with our backend identifier.
    func managedDevice(index: Int, ioctl: String) throws(MountFailure) -> DeviceState {
        let state: DeviceState?
        do { state = try store.load(device: index) } catch {
            throw MountFailure("/dev/nbd\(index): cannot use its state", cause: error)
        }
        guard let state else {
            throw MountFailure("/dev/nbd\(index) is not managed by mount.erofs (no state in \(store.directory))")
        }
        guard state.attachMethod == .netlink else {
            throw MountFailure("\(state.devicePath) is attached through the ioctl interface\(ioctl)")
        }
        switch state.connection() {
        case .ours:
            break
        case .foreign(let actual):
            throw MountFailure(
                "/dev/nbd\(index) is connected to backend `\(actual)`, not to `\(state.backendIdentifier)` of \(store.path(forDevice: index)): it is not ours"
            )
        case .notConnected:
            throw MountFailure(
                "/dev/nbd\(index) is not connected: the state \(store.path(forDevice: index)) is stale (`mount.erofs -u` or `--disconnect` removes it)"
            )
        }
        return state
    }

    /// Starts a new daemon on a device whose daemon is gone, and hands the device its socket.
    public func reattach(_ target: String) throws(MountFailure) -> DeviceState {
        try reattach(index: Self.deviceIndex(of: target), target: target)
    }

    /// `target` as the user named the device, for messages.
    func reattach(index: Int, target: String) throws(MountFailure) -> DeviceState {
        var state = try managedDevice(index: index, ioctl: ", which cannot take a new socket: it cannot be reattached")
        if let alive = livingDaemon(of: state) {
            throw MountFailure(
                "\(state.devicePath) is still served by process \(alive); `mount.erofs --upgrade \(target)` replaces it"
            )
        }
        let settings = NBDDaemon.Settings(
            source: state.servedSource.argument, identifier: state.backendIdentifier,
            deadConnectionTimeout: state.deadConnectionTimeout,
            forceIoctl: false, mode: .reattach(UInt32(state.index)),
            requeueMilliseconds: state.requeueMilliseconds ?? 250,
            pollMicroseconds: state.pollMicroseconds ?? NBDDaemon.Settings.defaultPollMicroseconds)
        // A remote image is opened again by the worker, pinned to the version mounted.
        let image = state.remote == nil ? try reopenImage(of: state) : nil
        defer { try? image?.close() }
        let started = try DaemonLauncher(store: store).start(
            settings, supervised: state.supervised == true, image: image?.rawValue ?? -1)
        state.daemonPID = started.daemon.pid
        state.daemonStartTime = started.daemon.startTime
        state.servingPID = started.serving?.pid
        state.servingStartTime = started.serving?.startTime
        state.recoveries = (state.recoveries ?? 0) + 1
        do { try store.save(state) } catch {
            throw MountFailure("\(state.devicePath) is served again, but its state could not be saved", cause: error)
        }
        return state
    }

    /// The image of a device whose every daemon is gone, opened again by its path: it must be
    /// the very file the device was mounted from, unchanged (a file renamed over the path, or
    /// rewritten, would be served under a filesystem that cached the old one).
    func reopenImage(of state: DeviceState) throws(MountFailure) -> FileDescriptor {
        try ImageIdentity.reopen(state.source, mountedAs: state.image, on: state.devicePath, logger: logger)
    }

    /// Replaces the serving worker with the binary now installed, without failing a request:
    /// asks the supervisor and waits until the state names the new worker.
    public func upgrade(_ target: String, timeout: Double = 60) throws(MountFailure) -> DeviceState {
        try upgrade(index: Self.deviceIndex(of: target), target: target, timeout: timeout)
    }

    func upgrade(index: Int, target: String, timeout: Double = 60) throws(MountFailure) -> DeviceState {
        let state = try managedDevice(index: index, ioctl: ": its daemon cannot be replaced while it is mounted")
        let supervisor = state.daemon
        guard state.supervised == true, supervisor.isOurs(serving: state.backendIdentifier) else {
            if let alive = livingDaemon(of: state) {
                throw MountFailure(
                    "\(state.devicePath) has no supervisor (mounted with nbd.recovery=manual, or the supervisor died): stop its daemon \(alive) and run `mount.erofs --reattach \(target)`"
                )
            }
            throw MountFailure("no daemon serves \(state.devicePath): `mount.erofs --reattach \(target)` starts one")
        }
        do {
            return try supervisor.requestUpgrade(
                of: state.devicePath, from: state, timeout: timeout,
                log: store.logPath(identifier: state.backendIdentifier),
                reload: { try? store.load(device: state.index) })
        } catch { throw MountFailure(error.description) }
    }

    /// The pid of a process of ours still serving or supervising the device.
    func livingDaemon(of state: DeviceState) -> Int32? {
        if state.daemon.isOurs(serving: state.backendIdentifier) { return state.daemonPID }
        if let worker = state.worker, worker.isOurs(serving: state.backendIdentifier) { return worker.pid }
        return nil
    }
}

extension DaemonProcess {
    /// Whether this is, alive, one of our daemons for the device whose backend identifier is
    /// `identifier`: the start time matches, it runs our binary (or the one an upgrade replaced
    /// at the same path: " (deleted)"), and its arguments are a supervisor's or a worker's for
    /// that identifier. A state file may name any pid; only such a process is ever signalled.
    public func isOurs(serving identifier: String) -> Bool {
        runsOurBinary { arguments in
            arguments.count > 3 && [NBDDaemon.flag, NBDSupervisor.flag].contains(arguments[1])
                && arguments[3] == identifier
        }
    }
}

extension DeviceState {
    /// The supervisor, or the lone daemon.
    var daemon: DaemonProcess { DaemonProcess(pid: daemonPID, startTime: daemonStartTime) }
    /// The serving worker under a supervisor.
    var worker: DaemonProcess? { servingPID.map { DaemonProcess(pid: $0, startTime: servingStartTime ?? 0) } }

    /// What the kernel says of the device, against this state: over netlink, the backend
    /// identifier given at CONNECT; over ioctl (no identifier), the device's server must be a
    /// thread of our daemon.
    func connection() -> DeviceConnection {
        let device = NBDDevice(index: UInt32(index))
        switch attachMethod {
        case .netlink:
            return device.connection(expecting: backendIdentifier)
        case .ioctl:
            guard let server = device.serverPID else { return (device.sizeSectors ?? 0) == 0 ? .notConnected : .ours }
            let ours =
                daemon.isOurs(serving: backendIdentifier) && access("/proc/\(daemonPID)/task/\(server)", F_OK) == 0
            return ours ? .ours : .foreign("served by pid \(server)")
        }
    }
}

/// What the kernel says of an nbd device, against the backend identifier we gave it at CONNECT.
enum DeviceConnection: Equatable {
    case ours
    case foreign(String)
    case notConnected
}

extension NBDDevice {
    /// The `backend` file exists only while a device connected with an identifier is set up.
    /// Without one (the ioctl path, or a kernel before 5.14) there is nothing to compare, and a
    /// capacity is all that says the device is connected.
    func connection(expecting identifier: String) -> DeviceConnection {
        if let actual = backendIdentifier { return actual == identifier ? .ours : .foreign(actual) }
        if hasBackendIdentifierSupport || (sizeSectors ?? 0) == 0 { return .notConnected }
        return .ours
    }
}
