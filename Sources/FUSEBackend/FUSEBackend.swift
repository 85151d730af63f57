#if canImport(Glibc)
import Glibc
#endif
import LocalBackend
import FUSEServer
import KernelAttach
import Logging
import RemoteSources
import Supervision
import SystemCalls

/// `mount.erofs -t erofs.fuse IMAGE DIR`: the image is served by workers on this project's
/// reader over /dev/fuse, under a supervisor that keeps the connection across their deaths
/// (FUSESupervisor). The mount is made here (mount(2) with `fd=`), the supervisor is given the
/// descriptor, and the mount returns once a worker has answered the kernel's INIT. Anything
/// that fails on the way is undone: nothing stays mounted or running.
public struct FUSEBackend: Sendable {
    public struct Request: Sendable {
        public var source: String
        public var mountPoint: String
        /// MS_* flags (MS_RDONLY always).
        public var flags: MountFlags
        public var options: Options
        public var fake: Bool
        /// A remote source, opened and checked by the caller; nil: `source` is a local image.
        public var remote: ServedSource?

        public init(
            source: String, mountPoint: String, flags: MountFlags, options: Options, fake: Bool,
            remote: ServedSource? = nil
        ) {
            self.remote = remote
            self.source = source
            self.mountPoint = mountPoint
            self.flags = flags
            self.options = options
            self.fake = fake
        }
    }

    /// The `-o` options that mean something to this backend.
    public struct Options: Sendable, Equatable {
        /// Serving threads, each on its own channel of the connection.
        public var threads: Int
        /// Recover from the request journal even where the kernel can resend
        /// (`fuse.recovery=journal`).
        public var journalOnly = false
        /// Extra devices (blobs) of a multi-device image, in device-table order.
        public var devices: [String] = []
        /// Kernel EROFS options accepted but without effect here, each with why.
        public var warnings: [String] = []
        /// KiB of small files pushed into the page cache after a read from a file's start
        /// (FUSEServer's SiblingPrefetch); 0: off.
        public var prefetchKiB = FUSEOperations.defaultPrefetchBudget / 1024
        public static let maximumPrefetchKiB = 16384
        /// Whether listings are pushed ahead of their reads (`fuse.prefetch_ahead`).
        public var prefetchAhead = SiblingPrefetch.Ahead.auto
        /// The mount's readahead window in KiB (`fuse.readahead_kb`), set after INIT: the
        /// kernel starts a FUSE mount at 128 KiB (its default; INIT's max_readahead can only
        /// lower it), so a sequential read reached us in 128 KiB requests although 512 KiB
        /// ones were negotiated. 0 leaves the kernel's.
        public var readaheadKiB = Options.defaultReadaheadKiB
        public static let defaultReadaheadKiB = 1024
        public static let maximumReadaheadKiB = 16384

        public static let maximumThreads = 64
        /// One per CPU, up to 8: requests are short, a few channels keep every CPU fed.
        public static var defaultThreads: Int { max(1, min(8, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))) }

        public init(threads: Int = Options.defaultThreads) { self.threads = threads }

        /// Sorts the kernel's EROFS options (`-o` data) and `fuse.*` options for this backend:
        /// what it honours, what it ignores with a warning, what it refuses (the error names
        /// the option and why). Never silently dropped.
        public static func parse(kernelData: [String], backendOptions: [(name: String, value: String?)]) -> Result<
            Options, OptionError
        > {
            var options = Options()
            for (name, value) in backendOptions {
                switch (name, value) {
                case ("fuse.threads", let text?):
                    guard let count = Int(text), (1...maximumThreads).contains(count) else {
                        return .failure(OptionError("fuse.threads=\(text): expected 1 to \(maximumThreads)"))
                    }
                    options.threads = count
                case ("fuse.prefetch_kb", let text?):
                    guard let kib = Int(text), (0...maximumPrefetchKiB).contains(kib) else {
                        return .failure(OptionError("fuse.prefetch_kb=\(text): expected 0 to \(maximumPrefetchKiB)"))
                    }
                    options.prefetchKiB = kib
                case ("fuse.prefetch_ahead", let text?):
                    guard let ahead = SiblingPrefetch.Ahead(rawValue: text) else {
                        return .failure(OptionError("fuse.prefetch_ahead=\(text): expected auto, on or off"))
                    }
                    options.prefetchAhead = ahead
                case ("fuse.readahead_kb", let text?):
                    guard let kib = Int(text), (0...maximumReadaheadKiB).contains(kib) else {
                        return .failure(OptionError("fuse.readahead_kb=\(text): expected 0 to \(maximumReadaheadKiB)"))
                    }
                    options.readaheadKiB = kib
                case ("fuse.recovery", "resend"):
                    options.journalOnly = false
                case ("fuse.recovery", "journal"):
                    options.journalOnly = true
                default:
                    return .failure(
                        OptionError(
                            "unknown or malformed fuse option `\(name)\(value.map { "=" + $0 } ?? "")` (fuse.threads=1-\(maximumThreads), fuse.prefetch_kb=0-\(maximumPrefetchKiB), fuse.prefetch_ahead=auto|on|off, fuse.readahead_kb=0-\(maximumReadaheadKiB), fuse.recovery=resend|journal)"
                        ))
                }
            }
            for option in kernelData {
                let parts = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = String(parts[0])
                let value = parts.count > 1 ? String(parts[1]) : nil
                switch (key, value) {
                case ("device", let path?) where !path.isEmpty:
                    options.devices.append(path)
                case ("user_xattr", nil), ("acl", nil):
                    options.warnings.append("`\(option)` is always on with -t erofs.fuse")
                case ("cache_strategy", _?), ("dax", _), ("directio", nil), ("nodirectio", nil):
                    options.warnings.append(
                        "`\(option)` tunes the kernel's EROFS and has no effect with -t erofs.fuse; ignored")
                case ("nouser_xattr", nil), ("noacl", nil):
                    return .failure(
                        OptionError(
                            "`\(option)` is not supported with -t erofs.fuse (extended attributes and ACLs are always shown)"
                        ))
                case ("fsid", _), ("domain_id", _):
                    return .failure(
                        OptionError(
                            "`\(option)` selects the kernel's fscache mode; it has no meaning with -t erofs.fuse"))
                default:
                    return .failure(OptionError("option `\(option)` is not supported with -t erofs.fuse"))
                }
            }
            return .success(options)
        }
    }

    /// An option this backend refuses: a usage error (exit 1).
    public struct OptionError: Error, CustomStringConvertible, Sendable, Equatable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    let logger: Logger
    let store: FUSEStateStore

    public init(logger: Logger, store: FUSEStateStore = FUSEStateStore()) {
        self.logger = logger
        self.store = store
    }

    /// Mounts and returns the state recorded for `-u` (nil with `-f`).
    @discardableResult
    public func mount(_ request: Request) throws(MountFailure) -> FUSEMountState? {
        if request.remote == nil { _ = try ImageProbe.probe(request.source) }
        // Whatever happens before the daemon takes over, its captured credentials go.
        var handedOver = false
        defer { if !handedOver { CapturedCredentials.remove(request.remote?.capturedCredentials) } }
        for device in request.options.devices {
            do { _ = try FileStatus.stat(device) } catch {
                throw MountFailure("cannot open extra device \(device)", cause: error)
            }
        }
        try MountPoint.check(request.mountPoint)
        for warning in request.options.warnings { logger.warning("\(warning)") }
        if request.fake { return nil }
        guard access("/dev/fuse", R_OK | W_OK) == 0 else {
            throw MountFailure(
                "cannot use /dev/fuse (is the fuse module loaded?)", cause: .lastErrno("access", path: "/dev/fuse"))
        }
        do { try store.ensureDirectory() } catch {
            throw MountFailure("cannot prepare the state directory", cause: error)
        }
        let served = request.remote ?? .local(path: canonicalPath(request.source))
        // For the mount table and messages: the path, or the object without credentials.
        let source = served.displayName
        let mountPoint = canonicalPath(request.mountPoint)

        let device = open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard device >= 0 else {
            throw MountFailure("cannot open /dev/fuse", cause: .lastErrno("open", path: "/dev/fuse"))
        }
        var deviceOpen = true
        defer { if deviceOpen { close(device) } }
        // rootmode is only the root's type; its permissions come from GETATTR. allow_other and
        // default_permissions make it behave as the kernel's EROFS does: everyone sees it and
        // the kernel checks modes (and ACLs) itself.
        let data =
            "fd=\(device),rootmode=40000,user_id=\(getuid()),group_id=\(getgid()),allow_other,default_permissions"
        do {
            try Mount.mount(source: source, target: mountPoint, type: "fuse.erofs", flags: request.flags, data: data)
        } catch {
            throw MountFailure("cannot mount \(source) on \(mountPoint) (fuse)", cause: error)
        }

        // The connection's number names the state; the supervisor updates it as workers change.
        let entry: MountInfoEntry
        do throws(SystemError) {
            guard let found = try MountTable.mount(at: mountPoint) else {
                throw SystemError("find the new mount", path: mountPoint, detail: "not in the mount table")
            }
            entry = found
        } catch {
            detach(mountPoint)
            throw MountFailure("cannot find the FUSE mount of \(source)", cause: error)
        }
        let logFile = "\(store.directory)/fuse-\(randomHex(bytes: 8)).log"
        var settings = FUSEDaemon.Settings(
            source: served.argument, devices: request.options.devices.map(canonicalPath),
            threads: request.options.threads, journalOnly: request.options.journalOnly,
            connection: (entry.major, entry.minor), prefetchKiB: request.options.prefetchKiB)
        settings.prefetchAhead = request.options.prefetchAhead
        let started: ReportingDaemon
        do {
            started = try ReportingDaemon.spawn(
                arguments: settings.arguments(flag: FUSESupervisor.flag), descriptors: [device], logFile: logFile)
        } catch {
            detach(mountPoint)
            throw MountFailure("cannot start the serving daemon", cause: error)
        }
        let daemon = started.process
        // From here the supervisor holds the connection: it lives as long as the supervisor or
        // a worker does.
        close(device)
        deviceOpen = false

        let report: DaemonReport?
        do { report = try started.report(timeout: 30) } catch {
            abandon(daemon, mountPoint: mountPoint, logFile: logFile)
            throw MountFailure("the FUSE daemon for \(source) did not answer", cause: error)
        }
        // The first worker's report, which the supervisor passes on.
        guard case .ready(_, let method, let workerPID)? = report,
            let workerStart = DaemonProcess.startTime(of: workerPID)
        else {
            let log = (try? readTextFile(logFile)) ?? ""
            abandon(daemon, mountPoint: mountPoint, logFile: logFile)
            if case .failed(let message)? = report { throw MountFailure("cannot serve \(source): \(message)") }
            throw MountFailure(
                "the FUSE daemon for \(source) exited before serving"
                    + (log.isEmpty ? "" : "; its log: \(log.split(separator: "\n").suffix(3).joined(separator: " | "))")
            )
        }
        // INIT is answered (its reply set the window): a larger one sticks from now on.
        if request.options.readaheadKiB > 0 {
            setReadahead(kib: request.options.readaheadKiB, major: entry.major, minor: entry.minor)
        }
        // The daemon removes the captured credentials as it exits; -u after a crash does.
        handedOver = true
        let state = FUSEMountState(
            daemonPID: daemon.pid, daemonStartTime: daemon.startTime, source: served.argument, mountPoint: mountPoint,
            threads: request.options.threads, logFile: logFile, servingPID: workerPID, servingStartTime: workerStart,
            recovery: method)
        do throws(SystemError) {
            try store.save(state, major: entry.major, minor: entry.minor)
        } catch {
            abandon(daemon, mountPoint: mountPoint, logFile: logFile)
            throw MountFailure("cannot record the FUSE mount of \(source)", cause: error)
        }
        return state
    }

    /// After `-u` unmounted a FUSE mount (`major:minor` from the mount table): the connection
    /// is over, so its worker and supervisor exit; wait for them (stop those that do not) and
    /// drop the state. Returns what went wrong, if anything.
    /// `state`: as read before the unmount (the processes remove it as they exit).
    public func finishUnmount(major: UInt32, minor: UInt32, state known: FUSEMountState? = nil) -> [String] {
        guard let state = known ?? store.load(major: major, minor: minor) else { return [] }
        var problems: [String] = []
        // The connection is gone and they are on their way out (their /proc/PID/exe may already
        // be unreadable): wait for that first; only a process that stays, and is ours, is
        // signalled. The worker is waited for even when the supervisor was killed before.
        for process in [state.daemon] + (state.worker.map { [$0] } ?? []) where !process.waitForExit(timeout: 5) {
            if state.isOurs(process) {
                if !process.terminate(signal: SIGTERM, timeout: 5) { process.terminate(signal: SIGKILL, timeout: 5) }
                if process.isAlive { problems.append("FUSE daemon \(process.pid) is still running") }
            } else if process.isAlive {
                problems.append("the state named process \(process.pid), which is not our FUSE daemon: left alone")
            }
        }
        // Only if the file is still this mount's: once unmounted, its device number may already
        // name a new mount, whose state is not ours to drop.
        if let current = store.load(major: major, minor: minor), current.daemonPID == state.daemonPID,
            current.daemonStartTime == state.daemonStartTime
        {
            store.remove(major: major, minor: minor)
        }
        unlink(state.logFile)
        CapturedCredentials.remove((try? ServedSource(argument: state.source))?.capturedCredentials)
        return problems
    }

    /// The state of the FUSE mount at `target` (a mountpoint), or nil when `target` is no FUSE
    /// mount of ours.
    public func managedMount(at target: String) throws(MountFailure) -> (
        major: UInt32, minor: UInt32, state: FUSEMountState
    )? {
        let entry: MountInfoEntry?
        do { entry = try MountTable.mount(at: canonicalPath(target)) } catch {
            throw MountFailure("cannot read the mount table", cause: error)
        }
        guard let entry, entry.fsType == "fuse.erofs" else { return nil }
        guard let state = store.load(major: entry.major, minor: entry.minor) else {
            throw MountFailure(
                "\(target) is a FUSE mount without a state in \(store.directory): not mounted by mount.erofs, or its state was removed"
            )
        }
        return (entry.major, entry.minor, state)
    }

    /// `--upgrade`: asks the supervisor to replace the serving worker with the binary now
    /// installed, and waits until the state names the new worker.
    public func upgrade(
        major: UInt32, minor: UInt32, state: FUSEMountState, timeout: Double = 60
    ) throws(MountFailure) -> FUSEMountState {
        guard state.daemonIsOurs else {
            throw MountFailure(
                "the supervisor of \(state.mountPoint) (\(state.daemonPID)) is gone: its worker serves on, but cannot be replaced; unmount and mount again"
            )
        }
        do {
            return try state.daemon.requestUpgrade(
                of: state.mountPoint, from: state, timeout: timeout, log: state.logFile,
                reload: { store.load(major: major, minor: minor) })
        } catch { throw MountFailure(error.description) }
    }

    /// `--list` rows of the FUSE mounts, in nbd's columns (DEVICE BACKEND METHOD RECOVERY DAEMON
    /// WORKER LINK MOUNTPOINT BINARY SOURCE): DEVICE is the connection's device number, METHOD
    /// how a new worker gets a dead one's requests (resend or journal), DAEMON the supervisor,
    /// WORKER the process serving requests, BINARY as for nbd, SOURCE the image or the remote
    /// object's name (never a credential). Without its
    /// supervisor a mount still serves, but a worker death is then final: RECOVERY says so.
    public static func listRows(store: FUSEStateStore = FUSEStateStore()) -> [[String]] {
        let mounted = Set(
            ((try? MountTable.read()) ?? []).filter { $0.fsType == "fuse.erofs" }.map { "\($0.major):\($0.minor)" })
        return store.all().map { major, minor, state in
            let supervised = state.daemonIsOurs
            let workerAlive = state.worker.map(state.isOurs) ?? false
            let link: String
            if !mounted.contains("\(major):\(minor)") {
                link = "unmounted"
            } else if workerAlive {
                link = "connected"
            } else {
                link = supervised ? "waiting for a worker" : "dead (no worker, no supervisor)"
            }
            let describe = { (process: DaemonProcess?) in
                process.map { "\($0.pid)\(state.isOurs($0) ? "" : " (gone)")" } ?? "-"
            }
            return [
                "\(major):\(minor)", "fuse", state.recovery ?? "-",
                supervised ? "auto" : "none (supervisor gone)", describe(state.daemon), describe(state.worker), link,
                state.mountPoint,
                DaemonProcess.binaryColumn(supervisor: state.daemon, worker: state.worker, isOurs: state.isOurs),
                // The state keeps the daemon's argument (a remote source's JSON description):
                // shown as the mount table names it (URL, s3://, REF layer DIGEST).
                (try? ServedSource(argument: state.source))?.displayName ?? state.source,
            ]
        }
    }

    /// Sets the readahead window of the mount's backing device info (named after the
    /// connection's device number). Only speed depends on it: a failure is a warning.
    private func setReadahead(kib: Int, major: UInt32, minor: UInt32) {
        let path = "/sys/class/bdi/\(major):\(minor)/read_ahead_kb"
        let text = "\(kib)\n"
        let descriptor = open(path, O_WRONLY | O_CLOEXEC)
        let written = descriptor < 0 ? -1 : text.withCString { write(descriptor, $0, strlen($0)) }
        if descriptor >= 0 { close(descriptor) }
        if written < 0 {
            logger.warning("cannot set the readahead of \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Undoes a mount whose daemon failed: the daemon is killed (its connection ends with it)
    /// and the mount detached.
    private func abandon(_ daemon: DaemonProcess, mountPoint: String, logFile: String) {
        daemon.terminate(signal: SIGKILL)
        detach(mountPoint)
        unlink(logFile)
    }

    /// A FUSE mount whose connection is gone (or never answered) unmounts at once with
    /// MNT_DETACH; without it, an unanswered INIT would make umount wait.
    private func detach(_ mountPoint: String) {
        do { try Mount.unmount(mountPoint, flags: Int32(MNT_DETACH)) } catch {
            logger.error("cannot detach the FUSE mount at \(mountPoint): \(error)")
        }
    }
}
