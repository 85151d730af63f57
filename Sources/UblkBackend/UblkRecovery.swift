#if canImport(Glibc)
import Glibc
#endif
import LocalBackend
import Logging
import Supervision
import SystemCalls
import SystemPackage
import UblkKernel

/// `--reattach`, `--upgrade` and `--list` for ublk devices: act on a device mount.erofs
/// manages after checking that its state, the kernel's view and the processes agree. A check
/// that fails changes nothing.
public struct UblkRecovery: Sendable {
    let logger: Logger
    let store: UblkStateStore

    public init(logger: Logger, store: UblkStateStore = UblkStateStore()) {
        self.logger = logger
        self.store = store
    }

    /// N of /dev/ublkbN when TARGET is that device or an EROFS mount of it; nil otherwise
    /// (then it is someone else's business: nbd's, or an error of the caller's).
    public static func deviceID(of target: String) -> UInt32? {
        (try? managedDeviceIndex(of: target, prefix: "ublkb", kind: "a ublk device")).flatMap(UInt32.init(exactly:))
    }

    /// The state of device `id`, which must exist in the kernel and not be stopped.
    func managedDevice(_ id: UInt32) throws(MountFailure) -> (UblkDeviceState, DeviceInfo) {
        let state: UblkDeviceState?
        do { state = try store.load(device: id) } catch {
            throw MountFailure("\(Ublk.blockDevice(id)): cannot use its state", cause: error)
        }
        guard let state else {
            throw MountFailure("\(Ublk.blockDevice(id)) is not managed by mount.erofs (no state in \(store.directory))")
        }
        let control = try UblkBackend.control()
        let info: DeviceInfo
        do { info = try control.deviceInfo(id) } catch {
            throw MountFailure(
                "\(state.devicePath): the kernel has no such ublk device: the state \(store.path(device: id)) is stale (`mount.erofs -u` removes it)",
                cause: error)
        }
        guard info.deviceState != .dead else {
            throw MountFailure(
                "\(state.devicePath) was stopped: it cannot be served again (`mount.erofs -u` removes it)")
        }
        return (state, info)
    }

    /// Starts a new supervisor, whose first worker takes the device over by user recovery, on
    /// a device whose every process of ours is gone.
    public func reattach(_ id: UInt32, target: String) throws(MountFailure) -> UblkDeviceState {
        var (state, info) = try managedDevice(id)
        guard info.flags.contains(.userRecovery) else {
            throw MountFailure("\(state.devicePath) was added without user recovery: it cannot be reattached")
        }
        if let alive = [state.supervisor, state.worker].compactMap({ $0 }).first(where: { state.isOurs($0) }) {
            throw MountFailure(
                "\(state.devicePath) is still served by process \(alive.pid); `mount.erofs --upgrade \(target)` replaces its worker"
            )
        }
        // A remote image is opened again by the worker, pinned to the version mounted.
        let image =
            state.remote == nil
            ? try ImageIdentity.reopen(state.source, mountedAs: state.image, on: state.devicePath, logger: logger)
            : nil
        defer { try? image?.close() }
        try UblkLauncher(store: store).start(
            UblkDaemon.Settings(source: state.servedSource.argument, deviceID: id, mode: .reattach(id)),
            image: image?.rawValue ?? -1, into: &state)
        state.recoveries = (state.recoveries ?? 0) + 1
        do { try store.save(state) } catch {
            throw MountFailure("\(state.devicePath) is served again, but its state could not be saved", cause: error)
        }
        return state
    }

    /// Replaces the serving worker with the binary now installed: asks the supervisor and
    /// waits until the state records the upgrade.
    public func upgrade(_ id: UInt32, target: String, timeout: Double = 60) throws(MountFailure) -> UblkDeviceState {
        let (state, _) = try managedDevice(id)
        guard let supervisor = state.supervisor, state.isOurs(supervisor) else {
            throw MountFailure(
                "no supervisor serves \(state.devicePath) (it was killed?): `mount.erofs --reattach \(target)` starts one once its worker is gone"
            )
        }
        do {
            return try supervisor.requestUpgrade(
                of: state.devicePath, from: state, timeout: timeout, log: store.logPath(device: id),
                reload: { try? store.load(device: id) })
        } catch { throw MountFailure(error.description) }
    }

    /// `--list` rows in the nbd columns: DEVICE BACKEND METHOD RECOVERY DAEMON WORKER LINK
    /// MOUNTPOINT BINARY SOURCE.
    public func listRows() throws(MountFailure) -> [[String]] {
        let ids: [UInt32]
        do { ids = try store.deviceIDs() } catch { throw MountFailure("cannot list the ublk devices", cause: error) }
        let control = try? UblkControl()
        return ids.map { id in
            guard let state = (try? store.load(device: id)) ?? nil else {
                return [Ublk.blockDevice(id), "ublk", "?", "?", "?", "?", "?", "?", "?", "(unreadable state)"]
            }
            let describe = { (process: DaemonProcess?) in
                process.map { "\($0.pid)\(state.isOurs($0) ? "" : " (gone)")" } ?? "-"
            }
            let link: String
            switch (try? control?.deviceInfo(id))?.deviceState {
            case .live?: link = state.isOurs(state.worker) ? "live" : "live, its worker is gone"
            case .quiesced?: link = "quiesced, waiting for a daemon"
            case .dead?: link = "stopped"
            case .failIO?: link = "failing I/O"
            case nil: link = "not in the kernel"
            }
            return [
                state.devicePath, "ublk", UblkDaemon.method, "auto", describe(state.supervisor), describe(state.worker),
                link, state.mountPoint ?? "-",
                DaemonProcess.binaryColumn(
                    supervisor: state.supervisor, worker: state.worker, isOurs: { state.isOurs($0) }),
                state.source,
            ]
        }
    }
}
