#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import Logging
import NBDKernel
import SystemCalls

/// `--reattach` and `--upgrade`: act on a device mount.erofs manages, after checking that the
/// state on disk, the kernel's view and the processes agree. A check that fails changes nothing.
public struct NBDRecovery: Sendable {
    let logger: Logger
    let store: StateStore

    public init(logger: Logger, store: StateStore = StateStore()) {
        self.logger = logger
        self.store = store
    }

    /// N of /dev/nbdN for TARGET: the device itself, or a mountpoint mounted from one.
    public static func deviceIndex(of target: String) throws(MountFailure) -> Int {
        if let index = nbdIndex(target) { return index }
        let entry: MountInfoEntry?
        do { entry = try MountTable.mount(at: canonicalPath(target)) } catch {
            throw MountFailure("cannot read the mount table", cause: error)
        }
        guard let source = entry?.source, let index = nbdIndex(source) else {
            throw MountFailure("\(target) is neither /dev/nbdN nor mounted from one")
        }
        return index
    }

    /// The state of TARGET's device, checked against the kernel: it must be connected, with our
    /// backend identifier.
    public func managedDevice(_ target: String) throws(MountFailure) -> DeviceState {
        let index = try Self.deviceIndex(of: target)
        let state: DeviceState?
        do { state = try store.load(device: index) } catch {
            throw MountFailure("/dev/nbd\(index): cannot use its state", cause: error)
        }
        guard let state else {
            throw MountFailure("/dev/nbd\(index) is not managed by mount.erofs (no state in \(store.directory))")
        }
        switch NBDDevice(index: UInt32(index)).connection(expecting: state.backendIdentifier) {
        case .ours:
            break
        case .foreign(let actual):
            throw MountFailure("/dev/nbd\(index) is connected to backend `\(actual)`, not to `\(state.backendIdentifier)` of \(store.path(forDevice: index)): it is not ours")
        case .notConnected:
            throw MountFailure("/dev/nbd\(index) is not connected: the state \(store.path(forDevice: index)) is stale (`mount.erofs -u` or `--disconnect` removes it)")
        }
        return state
    }

    /// Starts a new daemon on a device whose daemon is gone, and hands the device its socket.
    public func reattach(_ target: String) throws(MountFailure) -> DeviceState {
        var state = try managedDevice(target)
        guard state.attachMethod == .netlink else {
            throw MountFailure("\(state.devicePath) is attached through the ioctl interface, which cannot take a new socket: it cannot be reattached")
        }
        if let alive = livingDaemon(of: state) {
            throw MountFailure("\(state.devicePath) is still served by process \(alive); `mount.erofs --upgrade \(target)` replaces it")
        }
        let settings = NBDDaemon.Settings(
            source: state.source, identifier: state.backendIdentifier, deadConnectionTimeout: state.deadConnectionTimeout,
            forceIoctl: false, mode: .reattach(UInt32(state.index)), requeueMilliseconds: state.requeueMilliseconds ?? 250,
            pollMicroseconds: state.pollMicroseconds ?? NBDDaemon.Settings.defaultPollMicroseconds)
        let started = try DaemonLauncher(store: store).start(settings, supervised: state.supervised == true)
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

    /// Replaces the serving worker with the binary now installed, without failing a request:
    /// asks the supervisor and waits until the state names the new worker.
    public func upgrade(_ target: String, timeout: Double = 60) throws(MountFailure) -> DeviceState {
        let state = try managedDevice(target)
        guard state.attachMethod == .netlink else {
            throw MountFailure("\(state.devicePath) is attached through the ioctl interface: its daemon cannot be replaced while it is mounted")
        }
        let supervisor = DaemonProcess(pid: state.daemonPID, startTime: state.daemonStartTime)
        guard state.supervised == true, supervisor.isAlive else {
            if let alive = livingDaemon(of: state) {
                throw MountFailure("\(state.devicePath) has no supervisor (mounted with nbd.recovery=manual, or the supervisor died): stop its daemon \(alive) and run `mount.erofs --reattach \(target)`")
            }
            throw MountFailure("no daemon serves \(state.devicePath): `mount.erofs --reattach \(target)` starts one")
        }
        let before = state.upgrades ?? 0
        kill(supervisor.pid, SIGUSR1)
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            usleep(20_000)
            if let now = try? store.load(device: state.index), (now.upgrades ?? 0) > before { return now }
            if !supervisor.isAlive { break }
        }
        throw MountFailure("\(state.devicePath): the upgrade did not complete within \(Int(timeout)) s (see \(store.directory)/\(state.backendIdentifier).log)")
    }

    /// The pid of a process of ours still serving or supervising the device.
    func livingDaemon(of state: DeviceState) -> Int32? {
        if DaemonProcess(pid: state.daemonPID, startTime: state.daemonStartTime).isAlive { return state.daemonPID }
        if let pid = state.servingPID, DaemonProcess(pid: pid, startTime: state.servingStartTime ?? 0).isAlive { return pid }
        return nil
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
