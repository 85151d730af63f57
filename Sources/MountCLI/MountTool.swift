#if canImport(Glibc)
import Glibc
#endif
import LocalBackend
import NBDBackend
import FUSEBackend
import CShim
import KernelAttach
import Logging
import NBDKernel
import RemoteSources
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
        if arguments.first == FUSESupervisor.flag { return FUSESupervisor.main(arguments) }
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
            // Read before unmounting: the processes remove the state as they exit, and -u
            // waits for them.
            let fuse = FUSEBackend(logger: logger)
            let fuseMount = line.namespace == nil ? try? fuse.managedMount(at: line.target!) : nil
            let result = try Unmounter(logger: logger).unmount(line.target!, in: namespace)
            try NBDTeardown(logger: logger).finishUnmount(result)
            if result.fsType.hasPrefix("fuse.erofs") {
                let known = fuseMount.flatMap { $0.major == result.major && $0.minor == result.minor ? $0.state : nil }
                let problems = fuse.finishUnmount(major: result.major, minor: result.minor, state: known)
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
            let fuse = FUSEBackend(logger: logger)
            if let mount = try fuse.managedMount(at: line.target!) {
                let state = try fuse.upgrade(major: mount.major, minor: mount.minor, state: mount.state)
                logger.info(
                    "\(state.mountPoint) is served by worker \(state.servingPID.map(String.init) ?? "?") of the installed binary"
                )
                return
            }
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
        let environment = ProcessEnvironment.current()
        let planned = try RemoteMount.description(
            source: source, options: line.options, environment: environment)
        let backend = try chooseBackend(line, remote: planned != nil)
        var remote: RemoteMount?
        if let planned {
            // Before anything is fetched or captured (with -N the nbd backend checks it there).
            if line.namespace == nil { try MountPoint.check(target) }
            remote = try RemoteMount.prepare(
                planned.description, registry: planned.registry, environment: environment, fake: line.fake,
                logger: logger)
        }
        switch backend {
        case .local:
            if line.options.flags.contains(.remount) {
                throw UsageError("`remount` is not supported: unmount and mount again")
            }
            let request = LocalBackend.Request(
                source: source, mountPoint: target, flags: line.options.flags,
                data: line.options.kernelDataString, forceLoop: line.options.forceLoop, fake: line.fake)
            let outcome: LocalBackend.Outcome
            do { outcome = try LocalBackend(logger: logger).mount(request) } catch {
                // Plain `-t erofs`: where the kernel cannot mount the image, FUSE can.
                guard line.backend == nil, error.kernelRefused else { throw error }
                printError("\(error); mounting through FUSE instead (-t erofs.fuse)")
                try mountFUSE(line, remote: nil, logger: logger)
                return
            }
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
            for (name, value) in line.options.backendOptions where !RemoteSourceDescription.owns(name) {
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
            var request = NBDBackend.Request(
                source: source, mountPoint: target, flags: line.options.flags,
                data: line.options.kernelDataString, forceIoctl: forceIoctl, deadConnectionTimeout: deadTimeout,
                automaticRecovery: automaticRecovery, requeueMilliseconds: requeueMilliseconds,
                pollMicroseconds: pollMicroseconds, fake: line.fake,
                namespace: try line.namespace.map { (name) throws(MountFailure) in try openNamespace(name) })
            request.remote = remote.map { ($0.served, $0.probe.size) }
            if let state = try NBDBackend(logger: logger).mount(request) {
                logger.info(
                    "mounted \(state.source) on \(target) through \(state.devicePath) (\(state.attachMethod.rawValue), daemon \(state.daemonPID))"
                )
            } else {
                logger.info("\(source) is a valid EROFS image; not mounted (-f)")
            }
        case .ublk:
            var request = UblkBackend.Request(
                source: source, mountPoint: target, flags: line.options.flags,
                data: line.options.kernelDataString, fake: line.fake)
            request.remote = remote.map { ($0.served, $0.probe.size) }
            for (name, value) in line.options.backendOptions where !RemoteSourceDescription.owns(name) {
                switch (name, value) {
                case ("ublk.queues", let text?) where UInt16(text).map({ (1...64).contains($0) }) == true:
                    request.queues = UInt16(text)!
                case ("ublk.depth", let text?) where UInt16(text).map({ (1...1024).contains($0) }) == true:
                    request.queueDepth = UInt16(text)!
                case ("ublk.copy", "map"): request.mapImage = true
                case ("ublk.copy", "pread"): request.mapImage = false
                default:
                    throw UsageError(
                        "unknown or malformed ublk option `\(name)\(value.map { "=" + $0 } ?? "")` (ublk.queues=1-64, ublk.depth=1-1024, ublk.copy=map|pread)"
                    )
                }
            }
            if let state = try UblkBackend(logger: logger).mount(request) {
                logger.info(
                    "mounted \(state.source) on \(target) through \(state.devicePath) (daemon \(state.daemonPID.map(String.init) ?? "?"), \(state.queues) queues of depth \(state.queueDepth))"
                )
            } else {
                logger.info("\(source) is a valid EROFS image; not mounted (-f)")
            }
        case .fuse:
            try mountFUSE(line, remote: remote, logger: logger)
        }
    }

    /// The backend of a mount: the one `-t erofs.SUBTYPE` names, else (plain `-t erofs`) for a
    /// remote source nbd where the kernel has it and FUSE otherwise (said on stderr), and the
    /// kernel for a local image (falling back to FUSE where it refuses: see `mount`).
    static func chooseBackend(_ line: MountCommandLine, remote: Bool) throws -> BackendKind {
        guard remote else { return line.backend ?? .local }
        switch line.backend {
        case .local?:
            throw UsageError(
                "a remote source is served by a daemon: use -t erofs.nbd, -t erofs.fuse or plain -t erofs, not -t erofs.local"
            )
        case let chosen?:
            return chosen
        case nil:
            if (try? NBDNetlink.open()) != nil {
                printError("\(line.source!) is remote: mounting through nbd (-t erofs.nbd)")
                return .nbd
            }
            printError("\(line.source!) is remote and this kernel has no nbd: mounting through FUSE (-t erofs.fuse)")
            return .fuse
        }
    }

    static func mountFUSE(_ line: MountCommandLine, remote: RemoteMount?, logger: Logger) throws {
        let options: FUSEBackend.Options
        switch FUSEBackend.Options.parse(
            kernelData: line.options.kernelData,
            backendOptions: line.options.backendOptions.filter { !RemoteSourceDescription.owns($0.name) })
        {
        case .success(let parsed): options = parsed
        case .failure(let error): throw UsageError(error.description)
        }
        let request = FUSEBackend.Request(
            source: line.source!, mountPoint: line.target!, flags: line.options.flags, options: options,
            fake: line.fake, remote: remote?.served)
        let name = remote?.displayName ?? line.source!
        if let state = try FUSEBackend(logger: logger).mount(request) {
            logger.info(
                "mounted \(name) on \(line.target!) through FUSE (daemon \(state.daemonPID), \(state.threads) thread(s))"
            )
        } else {
            logger.info("\(name) is a valid EROFS image; not mounted (-f)")
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
        for row in FUSEBackend.listRows() { print(row.joined(separator: "\t")) }
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
        Mount an EROFS image (a file, a block device, an http(s):// URL, an S3
        BUCKET/KEY, or a layer of an image in an OCI registry) on MOUNTPOINT.

        Options:
          -t erofs[.SUBTYPE]   backend: local (kernel mount), nbd, fuse (workers serve
                               the image over /dev/fuse with this project's reader, under
                               a supervisor that replaces a dead one), ublk (the kernel's
                               ublk driver over io_uring, Linux 6.0+ with ublk_drv
                               loaded). Plain -t erofs (or none): a local image
                               is mounted by the kernel, or through FUSE where the kernel
                               refuses it (ENODEV, EPERM, EOPNOTSUPP: no EROFS, not
                               allowed, an algorithm it lacks); a remote source through
                               nbd where the kernel has it, else FUSE. The fallback or
                               choice is said on stderr
          -o OPTIONS           comma-separated mount options (see below)
          -u TARGET            unmount TARGET (mountpoint or image) and release what the
                               mount set up (loop device; nbd or ublk device, daemon
                               and state; the FUSE supervisor and worker)
              --disconnect TARGET abort an nbd device (/dev/nbdN or the mountpoint of an
                               EROFS mount of one) forcibly
              --list           show the nbd and ublk devices and FUSE mounts mount.erofs
                               manages, their supervisor and serving worker, the binary
                               they run ("(deleted)": replaced since) and their link
              --reattach TARGET   start a new daemon for an nbd or ublk device (/dev/nbdN,
                               /dev/ublkbN or its mountpoint) whose daemons died (ublk:
                               by user recovery); refused while one lives
              --upgrade TARGET    replace the serving worker and the supervisor of an nbd or
                               ublk device (the worker of a FUSE mount: its mountpoint)
                               with the binary now installed, without failing a request
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
          ublk.queues=N        (-t erofs.ublk) hardware queues, one serving thread each
                               (default: one per CPU up to 4; 1-64, at most one per CPU)
          ublk.depth=N         (-t erofs.ublk) requests in flight per queue (default 64;
                               1-1024)
          ublk.copy=map|pread  (-t erofs.ublk) how a read's data reaches the kernel: map
                               (default): the kernel copies it from the daemon's mapping
                               of the image (one copy, as a loop device makes); pread: the
                               daemon reads it into a buffer first (two copies)
          fuse.threads=N       (-t erofs.fuse) serving threads, one /dev/fuse channel each
                               (default: one per CPU, up to 8; 1-64)
          fuse.recovery=M      (-t erofs.fuse) how a new worker gets the requests a dead
                               one had read: resend (default: the kernel resends them,
                               6.9+; the journal where it cannot) or journal (always
                               the journal, as on older kernels). With -t erofs.fuse,
                               device= names extra devices, user_xattr and acl are always
                               on, cache_strategy=, dax, (no)directio are ignored with a
                               warning, other kernel options are refused
          fuse.prefetch_kb=N   (-t erofs.fuse) after a file is read from its start, push up
                               to N KiB of the small files (<= 64 KiB) after it in its
                               directory into the page cache, and then each next
                               directory listed (up to 2 MiB, or N KiB if more), before
                               it is read: a walk reading every file then costs ~1 round
                               trip per directory, not per file (default 512, 0-16384;
                               0: off)
          fuse.prefetch_ahead=auto|on|off  (-t erofs.fuse) push each next directory
                               listed before it is read: auto (the default) when a CPU
                               is idle, on always, off only after a read
          fuse.readahead_kb=N  (-t erofs.fuse) the mount's readahead window, set once the
                               daemon serves (default 1024, 0-16384; 0: the kernel's 128)
          anything else        passed to the kernel's EROFS (device=, domain_id=, fsid=,
                               dax, user_xattr, acl, cache_strategy=, ...)

        Remote sources (-t erofs, erofs.nbd, erofs.fuse): SOURCE is an http:// or
        https:// URL, or BUCKET/KEY (or s3://BUCKET/KEY) with any s3.* option. The mount
        opens the object, checks its superblock and pins its version (ETag); a bad
        source fails in one line (exit 32) with nothing left behind. Credentials from
        the environment reach the daemon in a 0600 file under
        /run/erofs-mount/credentials, removed at unmount: never in its argv,
        environment, the state or a log.
        \(RemoteSourceDescription.optionsHelp)
        OCI registries: with any oci.* option SOURCE is an image reference,
        [REGISTRY[:PORT]/]REPO[:TAG|@sha256:DIGEST], and one layer of it is mounted as
        a remote source (oci.layer=N or oci.blob=DIGEST, oci.platform=, oci.insecure,
        oci.tarindex=, oci.zinfo=, oci.username=/oci.password=: see erofs --help).
        The mount pins the manifest and layer digests for its daemons; registry
        credentials (oci.username/password, ~/.docker/config.json or a credential
        helper) are captured like the AWS ones above; --list shows REF layer DIGEST.

        Exit status: 0 success, 1 bad usage, 32 mount failure.
        """
}

extension MountFailure {
    /// Whether the kernel's mount(2) refused the image in a way FUSE does not: no EROFS in
    /// this kernel (ENODEV), not allowed here (EPERM), or a feature or algorithm it lacks
    /// (EOPNOTSUPP).
    var kernelRefused: Bool {
        guard let cause, cause.operation.hasPrefix("mount "), let code = cause.errno?.rawValue else { return false }
        return [ENODEV, EPERM, EOPNOTSUPP].contains(code)
    }
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
