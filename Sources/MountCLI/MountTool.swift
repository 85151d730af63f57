#if canImport(Glibc)
import Glibc
#endif
import Backends
import FUSEBackend
import CShim
import KernelAttach
import Logging
import NBDKernel
import Supervision
import SystemCalls
import UblkBackend

/// mount.erofs: parses the command line, runs the chosen mode, and maps the outcome to
/// mount(8)'s exit statuses (0 success, 1 bad usage, 32 mount failure).
public enum MountTool {
    public static let version = "0.1.0"

    public enum ExitStatus: Int32 {
        case success = 0
        case usage = 1
        case systemError = 2
        case mountFailure = 32
    }

    public static func main(_ arguments: [String]) -> Int32 {
        if arguments.first == NBDDaemon.flag { return NBDDaemon.main(arguments) }
        if arguments.first == NBDSupervisor.flag { return NBDSupervisor.main(arguments) }
        if arguments.first == FUSEDaemon.flag { return FUSEDaemon.main(arguments) }
        if arguments.first == UblkDaemon.flag { return UblkDaemon.main(arguments) }
        if arguments.first == UblkSupervisor.flag { return UblkSupervisor.main(arguments) }
        let line: MountCommandLine
        do { line = try MountCommandLine.parse(arguments) } catch {
            printError("\(error)")
            printError("Try 'mount.erofs --help' for more information.")
            return ExitStatus.usage.rawValue
        }
        let logger = makeLogger(level: line.debugLevel)
        if line.debugLevel >= 2 {
            for warning in line.options.warnings { printError("warning: \(warning)") }
        }
        do {
            try run(line, logger: logger)
            return ExitStatus.success.rawValue
        } catch let failure as MountFailure {
            printError(failure.description)
            return ExitStatus.mountFailure.rawValue
        } catch let usage as UsageError {
            printError(usage.description)
            return ExitStatus.usage.rawValue
        } catch {
            printError("\(error)")
            return ExitStatus.systemError.rawValue
        }
    }

    static func run(_ line: MountCommandLine, logger: Logger) throws {
        switch line.mode {
        case .help:
            print(helpText)
        case .version:
            print("mount.erofs (erofs-mount) \(version)")
        case .mount:
            // The nbd backend enters the namespace only to mount (its daemon, state and image
            // stay ours); the local one mounts from inside.
            // A FUSE or ublk daemon started inside another namespace would run that namespace's
            // /proc/self/exe and keep its state there: not supported yet.
            if line.backend == .fuse || line.backend == .ublk, line.namespace != nil {
                throw MountFailure(
                    "-N is not supported with -t erofs.\(line.backend?.rawValue ?? "?") (yet): mount from inside the namespace"
                )
            }
            if line.backend != .nbd { try enterNamespace(line.namespace) }
            try mount(line, logger: logger)
        case .unmount:
            // A ublk device is found by its state (ours, in our /run): with -N the generic
            // unmounter finds the mount in that namespace instead.
            if line.namespace == nil, let released = try UblkBackend(logger: logger).unmount(line.target!) {
                logger.info("unmounted \(released.mountPoint) and deleted \(released.device)")
                return
            }
            let namespace = try line.namespace.map { (name) throws(MountFailure) in try openNamespace(name) }
            let result = try Unmounter(logger: logger).unmount(line.target!, in: namespace)
            if result.fsType.hasPrefix("fuse.erofs") {
                let problems = FUSEBackend(logger: logger).finishUnmount(major: result.major, minor: result.minor)
                if !problems.isEmpty {
                    throw MountFailure("unmounted \(result.mountPoint), but: \(problems.joined(separator: "; "))")
                }
            }
            logger.info("unmounted \(result.mountPoint) (\(result.source))")
        case .disconnect:
            try disconnect(line.target!, logger: logger)
        case .list:
            try list(logger: logger)
        case .reattach:
            if let id = UblkRecovery.deviceID(of: line.target!) {
                let state = try UblkRecovery(logger: logger).reattach(id, target: line.target!)
                logger.info(
                    "\(state.devicePath) is served again by worker \(state.servingPID.map(String.init) ?? "?") (supervisor \(state.daemonPID.map(String.init) ?? "?"))"
                )
                return
            }
            let state = try NBDRecovery(logger: logger).reattach(line.target!)
            logger.info("\(state.devicePath) is served again by daemon \(state.daemonPID)")
        case .upgrade:
            if let id = UblkRecovery.deviceID(of: line.target!) {
                let state = try UblkRecovery(logger: logger).upgrade(id, target: line.target!)
                logger.info(
                    "\(state.devicePath) is served by worker \(state.servingPID.map(String.init) ?? "?") of the installed binary"
                )
                return
            }
            let state = try NBDRecovery(logger: logger).upgrade(line.target!)
            logger.info(
                "\(state.devicePath) is served by worker \(state.servingPID.map(String.init) ?? "?") of the installed binary"
            )
        }
    }

    static func mount(_ line: MountCommandLine, logger: Logger) throws {
        let source = line.source!
        let target = line.target!
        let backend = line.backend ?? .local
        switch backend {
        case .local:
            if line.options.flags.contains(.remount) {
                throw UsageError("`remount` is not supported: unmount and mount again")
            }
            let request = LocalBackend.Request(
                source: source, mountPoint: target, flags: line.options.flags.rawValue,
                data: line.options.kernelDataString, forceLoop: line.options.forceLoop, fake: line.fake)
            let outcome = try LocalBackend(logger: logger).mount(request)
            switch outcome {
            case .loopDevice(let device): logger.info("mounted \(source) on \(target) through \(device)")
            case .fileBacked: logger.info("mounted \(source) on \(target) (file-backed)")
            case .blockDevice: logger.info("mounted \(source) on \(target)")
            case .fake: logger.info("\(source) is a valid EROFS image; not mounted (-f)")
            }
        case .nbd:
            var forceIoctl = false
            var deadTimeout: UInt64 = 60
            var automaticRecovery = true
            var requeueMilliseconds: UInt32 = 250
            var pollMicroseconds = NBDDaemon.Settings.defaultPollMicroseconds
            for (name, value) in line.options.backendOptions {
                switch (name, value) {
                case ("nbd.ioctl", nil): forceIoctl = true
                case ("nbd.dead_timeout", let text?) where UInt64(text) != nil: deadTimeout = UInt64(text)!
                case ("nbd.recovery", "auto"): automaticRecovery = true
                case ("nbd.recovery", "manual"): automaticRecovery = false
                case ("nbd.requeue_ms", let text?) where UInt32(text).map({ (1...600_000).contains($0) }) == true:
                    requeueMilliseconds = UInt32(text)!
                case ("nbd.poll_us", let text?) where UInt32(text).map({ $0 <= 10_000 }) == true:
                    pollMicroseconds = UInt32(text)!
                default:
                    if name.hasPrefix("nbd.") {
                        throw UsageError(
                            "unknown or malformed nbd option `\(name)\(value.map { "=" + $0 } ?? "")` (nbd.ioctl, nbd.dead_timeout=SECONDS, nbd.recovery=auto|manual, nbd.requeue_ms=1-600000, nbd.poll_us=0-10000)"
                        )
                    }
                    throw UsageError("`\(name)` sources are not supported yet")
                }
            }
            let request = NBDBackend.Request(
                source: source, mountPoint: target, flags: line.options.flags.rawValue,
                data: line.options.kernelDataString, forceIoctl: forceIoctl, deadConnectionTimeout: deadTimeout,
                automaticRecovery: automaticRecovery, requeueMilliseconds: requeueMilliseconds,
                pollMicroseconds: pollMicroseconds, fake: line.fake,
                namespace: try line.namespace.map { (name) throws(MountFailure) in try openNamespace(name) })
            if let state = try NBDBackend(logger: logger).mount(request) {
                logger.info(
                    "mounted \(source) on \(target) through \(state.devicePath) (\(state.attachMethod.rawValue), daemon \(state.daemonPID))"
                )
            } else {
                logger.info("\(source) is a valid EROFS image; not mounted (-f)")
            }
        case .ublk:
            if let name = line.options.backendOptions.first?.name {
                throw UsageError("`\(name)` options are not supported with -t erofs.ublk")
            }
            let request = UblkBackend.Request(
                source: source, mountPoint: target, flags: line.options.flags.rawValue,
                data: line.options.kernelDataString, fake: line.fake)
            if let state = try UblkBackend(logger: logger).mount(request) {
                logger.info(
                    "mounted \(source) on \(target) through \(state.devicePath) (daemon \(state.daemonPID.map(String.init) ?? "?"))"
                )
            } else {
                logger.info("\(source) is a valid EROFS image; not mounted (-f)")
            }
        case .fuse:
            let options: FUSEBackend.Options
            switch FUSEBackend.Options.parse(
                kernelData: line.options.kernelData, backendOptions: line.options.backendOptions)
            {
            case .success(let parsed): options = parsed
            case .failure(let error): throw UsageError(error.description)
            }
            let request = FUSEBackend.Request(
                source: source, mountPoint: target, flags: line.options.flags.rawValue, options: options,
                fake: line.fake)
            if let state = try FUSEBackend(logger: logger).mount(request) {
                logger.info(
                    "mounted \(source) on \(target) through FUSE (daemon \(state.daemonPID), \(state.threads) thread(s))"
                )
            } else {
                logger.info("\(source) is a valid EROFS image; not mounted (-f)")
            }
        }
    }

    /// `--disconnect TARGET` (/dev/nbdN or a mountpoint): aborts the device forcibly and cleans
    /// up as -u does; a mount on it then fails its reads instead of hanging.
    static func disconnect(_ target: String, logger: Logger) throws {
        let index = try NBDRecovery.deviceIndex(of: target)
        let store = StateStore()
        let loaded: DeviceState?
        do { loaded = try store.load(device: index) } catch {
            throw MountFailure("/dev/nbd\(index): cannot use its state", cause: error)
        }
        guard let state = loaded else {
            throw MountFailure("/dev/nbd\(index) is not managed by mount.erofs (no state in \(store.directory))")
        }
        let problems = NBDTeardown(logger: logger).release(state)
        guard problems.isEmpty else { throw MountFailure("/dev/nbd\(index): \(problems.joined(separator: "; "))") }
        logger.info("disconnected /dev/nbd\(index)")
    }

    /// `--list`: every nbd and ublk device mount.erofs manages, with what the kernel says of its
    /// link and which binary its processes run (an upgrade leaves the old one "(deleted)").
    static func list(logger: Logger) throws {
        let states: [(index: Int, state: Result<DeviceState, SystemError>)]
        do { states = try StateStore().all() } catch {
            throw MountFailure("cannot list the nbd devices", cause: error)
        }
        let kernel = (try? NBDNetlink.open().status()).map {
            Dictionary($0.map { (Int($0.index), $0.connected) }, uniquingKeysWith: { $1 })
        }
        print("DEVICE\tBACKEND\tMETHOD\tRECOVERY\tDAEMON\tWORKER\tLINK\tMOUNTPOINT\tBINARY\tSOURCE")
        for (index, result) in states {
            switch result {
            case .success(let state):
                let daemon = DaemonProcess(pid: state.daemonPID, startTime: state.daemonStartTime)
                let worker =
                    state.servingPID.map { DaemonProcess(pid: $0, startTime: state.servingStartTime ?? 0) } ?? daemon
                let isOurs = { (process: DaemonProcess) in process.isOurs(serving: state.backendIdentifier) }
                let recovery =
                    state.attachMethod == .ioctl ? "none (ioctl)" : state.supervised == true ? "auto" : "manual"
                let link: String
                switch kernel?[index] {
                case nil: link = NBDDevice(index: UInt32(index)).isInService ? "in service" : "not connected"
                case false?: link = "disconnected"
                case true?: link = isOurs(worker) ? "connected" : "dead, waiting for a daemon"
                }
                let describe = { (process: DaemonProcess) in "\(process.pid)\(isOurs(process) ? "" : " (gone)")" }
                let binary = DaemonProcess.binaryColumn(
                    supervisor: daemon, worker: state.servingPID == nil ? nil : worker, isOurs: isOurs)
                print(
                    [
                        state.devicePath, "nbd", state.attachMethod.rawValue, recovery, describe(daemon),
                        state.servingPID == nil ? "-" : describe(worker), link, state.mountPoint ?? "-", binary,
                        state.source,
                    ]
                    .joined(separator: "\t"))
            case .failure(let error):
                print("/dev/nbd\(index)\tnbd\t?\t?\t?\t?\t?\t?\t?\t(unreadable state: \(error))")
            }
        }
        for row in try UblkRecovery(logger: logger).listRows() { print(row.joined(separator: "\t")) }
    }

    static func enterNamespace(_ namespace: String?) throws {
        guard let namespace else { return }
        let path = Int(namespace) != nil ? "/proc/\(namespace)/ns/mnt" : namespace
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MountFailure("cannot open mount namespace", cause: .lastErrno("open", path: path)) }
        defer { close(fd) }
        guard cshim_setns_mount(fd) == 0 else {
            throw MountFailure("cannot enter mount namespace", cause: .lastErrno("setns", path: path))
        }
    }

    static func openNamespace(_ name: String) throws(MountFailure) -> MountNamespace {
        do { return try MountNamespace(name) } catch {
            throw MountFailure("cannot open mount namespace \(name)", cause: error)
        }
    }

    static func makeLogger(level: Int) -> Logger {
        var logger = Logger(label: "mount.erofs") { label in
            StderrLogHandler(label: label)
        }
        logger.logLevel =
            switch level {
            case 0: .critical
            case 1: .error
            case 2, 3: .warning
            case 4, 5: .info
            case 6, 7: .debug
            default: .trace
            }
        return logger
    }

    static let helpText = """
        Usage: mount.erofs [OPTIONS] SOURCE MOUNTPOINT
               mount.erofs -u TARGET
        Mount an EROFS image (a file or a block device) on MOUNTPOINT.

        Options:
          -t erofs[.SUBTYPE]   backend: local (kernel mount; default), nbd, fuse (a daemon
                               serves the image over /dev/fuse with this project's
                               reader), ublk (the kernel's ublk driver over io_uring,
                               Linux 6.0+ with ublk_drv loaded)
          -o OPTIONS           comma-separated mount options (see below)
          -u TARGET            unmount TARGET (mountpoint or image) and release what the
                               mount set up (loop device; nbd or ublk device, daemon
                               and state; the FUSE daemon)
              --disconnect TARGET abort an nbd device (/dev/nbdN or the mountpoint of an
                               EROFS mount of one) forcibly
              --list           show the nbd and ublk devices mount.erofs manages, their
                               daemons, the binary they run ("(deleted)": replaced since)
                               and the kernel's view of their link
              --reattach TARGET   start a new daemon for an nbd or ublk device (/dev/nbdN,
                               /dev/ublkbN or its mountpoint) whose daemons died (ublk:
                               by user recovery); refused while one lives
              --upgrade TARGET    replace the serving worker and the supervisor of an nbd or
                               ublk device with the binary now installed, without failing a
                               request
          -d 0-9               verbosity: 0 quiet, 2 warnings (default), 9 everything
          -v                   verbose (same as -d 4)
          -f                   check the source and mountpoint, mount nothing
          -n, -s               accepted for mount(8); no effect
          -N NAMESPACE         mount (or with -u unmount) in that mount namespace
                               (/proc/PID/ns/mnt or a PID); with -t erofs.nbd and -u only
                               the mountpoint is looked up there: the image, the daemon and
                               its state stay in this namespace. Refused with --list,
                               --disconnect, --reattach, --upgrade
          -V, --version        print the version and exit
          -h, --help           print this help and exit

        Mount options:
          ro (default), rw (ignored with a warning: EROFS is read-only), nosuid, suid,
          nodev, dev, noexec, exec, noatime, atime, nodiratime, diratime, relatime,
          norelatime, strictatime, lazytime, sync, dirsync, silent
          loop                 use a loop device instead of a file-backed mount
          device=PATH          an extra device (blob) of a multi-device image, repeated in
                               device-table order; a file or a block device: loop devices
                               are set up where the kernel needs block devices (local
                               images only)
          nbd.ioctl            (-t erofs.nbd) attach with the ioctl interface, not netlink
          nbd.dead_timeout=S   (-t erofs.nbd) seconds the kernel holds I/O while no daemon
                               serves the device (default 60)
          nbd.recovery=auto|manual  (-t erofs.nbd) auto (default): a supervisor keeps the
                               socket alive and puts a standby worker in place of a
                               serving worker that dies, within tens of ms; the standby
                               answers what the dead one had read (from a shared-memory
                               journal) and reads on. manual: run --reattach. The ioctl
                               interface cannot recover at all.
          nbd.requeue_ms=N     (-t erofs.nbd) the device's request timer (default 250):
                               when a recovery needs a new socket (--reattach, or a
                               journal that cannot be trusted), a request the dead worker
                               had read is resent to the new one when it expires (the
                               kernel adds up to ~1 s of slack). It never fails a slow
                               request.
          nbd.poll_us=N        (-t erofs.nbd) how long the daemon polls for the next
                               request before it sleeps, while most requests come that
                               soon (default 1000, 0-10000; 0: never): CPU for latency
          fuse.threads=N       (-t erofs.fuse) serving threads, one /dev/fuse channel each
                               (default: one per CPU, up to 8; 1-64). With -t erofs.fuse,
                               device= names extra devices, user_xattr and acl are always
                               on, cache_strategy=, dax and directio are ignored with a
                               warning, other kernel options are refused
          anything else        passed to the kernel's EROFS (device=, domain_id=, fsid=,
                               dax, user_xattr, acl, cache_strategy=, ...)

        Exit status: 0 success, 1 bad usage, 32 mount failure.
        """
}

/// Prints one line to standard error.
func printError(_ text: String) {
    var line = "mount.erofs: " + text + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// Log lines as plain `mount.erofs: message` on stderr: this is a command, not a service.
struct StderrLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .warning
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let prefix = event.level >= .warning ? "\(event.level): " : ""
        printError(prefix + "\(event.message)")
    }
}
