#if canImport(Glibc)
import Glibc
#endif
import CShim
import KernelAttach
import NBDKernel
import NBDServer
import RemoteSources
import SystemCalls

/// The supervisor of one netlink-attached nbd device, run as `mount.erofs --supervise-nbd-device
/// ...`: it serves no I/O itself. It keeps one worker serving and one standby worker that has
/// already opened the source, and waits for signals, nothing else:
/// - SIGCHLD, the serving worker died (any signal, any crash): the supervisor holds a copy of
///   the worker's socket, so the kernel's link did not die with it. The standby goes on serving
///   that socket from the request journal (shared memory in which the worker recorded what it
///   took off the socket and had not answered), and a new standby starts. Only when the journal
///   cannot be trusted does the standby give the device a new socket with RECONFIGURE; the
///   kernel then resends what the dead worker had read when the request timer next fires
///   (`requeueMilliseconds`, rounded up by the block layer to about a second).
/// - SIGUSR1, hot upgrade: a standby from the binary now installed opens the source, the serving
///   worker stops at a request boundary with every reply sent and hands over its live socket,
///   the new worker serves it. The kernel never sees a dead link.
/// - SIGTERM: stop supervising (`-u`, `--disconnect`); the worker ends with the device.
/// A worker that ends because the kernel disconnected ends the supervisor.
public enum NBDSupervisor {
    public static let flag = "--supervise-nbd-device"
    static let imageDescriptor: Int32 = 4

    struct Worker {
        var process: DaemonProcess
        var status: Int32
        var control: ControlChannel

        func release() {
            close(status)
            control.close()
        }

        /// The worker's next word past a `prepared` not yet read (a standby started without
        /// waiting for it).
        func nextWord(timeout: Double) throws(SystemError) -> ControlMessage? {
            let word = try control.receive(timeout: timeout)
            return word == .prepared ? try control.receive(timeout: timeout) : word
        }
    }

    public static func arguments(for settings: NBDDaemon.Settings) -> [String] {
        [flag] + settings.arguments.dropFirst()
    }

    public static func main(_ arguments: [String]) -> Int32 {
        guard let settings = NBDDaemon.Settings(arguments: [NBDDaemon.flag] + arguments.dropFirst()),
            arguments.first == flag, !settings.forceIoctl
        else {
            DaemonReport.failed("internal error: bad supervisor arguments \(arguments)").send(
                to: NBDDaemon.statusDescriptor)
            return NBDDaemon.Exit.badArguments.rawValue
        }
        signal(SIGPIPE, SIG_IGN)
        var supervisor = Supervisor(settings: settings)
        return supervisor.run()
    }

    struct Supervisor {
        let settings: NBDDaemon.Settings
        let signals: sigset_t
        var active: Worker?
        var standby: Worker?
        var index: UInt32 = 0
        /// The image (descriptor 4, from whoever started us), handed to every worker; -1 from
        /// an older launcher: the workers then open the path.
        let image: Int32
        /// Shared with every worker (descriptor 5): what the serving one has read and not answered.
        let journal: RequestJournal?
        /// Our copy of the serving worker's socket: with it open, the worker's death does not
        /// close the kernel's link, and the standby can go on serving it.
        var liveSocket: Int32 = -1
        /// Our copy of the serving worker's reply file (its position counts a big reply's progress).
        var liveReplyFile: Int32 = -1
        var stopping = false
        var standbyRetryAt = 0.0
        /// The binary new workers run: ours, until a hot upgrade installs another (a later
        /// standby must not bring the old code back).
        var workerExecutable = "/proc/self/exe"
        /// Only a netlink device can take a new socket; an ioctl one dies with its worker.
        var recovers = false

        init(settings: NBDDaemon.Settings) {
            self.settings = settings
            var set = sigset_t()
            sigemptyset(&set)
            for signal in [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1] { sigaddset(&set, signal) }
            sigprocmask(SIG_BLOCK, &set, nil)
            signals = set
            journal = try? RequestJournal.create()
            image = fcntl(NBDSupervisor.imageDescriptor, F_GETFD) >= 0 ? NBDSupervisor.imageDescriptor : -1
        }

        mutating func run() -> Int32 {
            // The first standby starts with the first worker and learns the device from us: a
            // crash soon after the mount then finds it ready, not still starting.
            standby = try? spawn(mode: .standby(nil), executable: workerExecutable)
            // The first worker's report goes, as is, to whoever started us.
            let first: Worker
            let report: DaemonReport
            do {
                (first, report) = try start(mode: settings.mode)
            } catch {
                stopStandby()
                DaemonReport.failed("\(error)").send(to: NBDDaemon.statusDescriptor)
                return NBDDaemon.Exit.failed.rawValue
            }
            guard case .ready(let device, let method, _) = report else {
                stopStandby()
                report.send(to: NBDDaemon.statusDescriptor)
                first.release()
                _ = first.process.waitForExit(timeout: 10)
                return NBDDaemon.Exit.failed.rawValue
            }
            active = first
            index = UInt32(device)
            recovers = method == .netlink
            if recovers, let early = standby, (try? early.control.send(.device(index))) == nil {
                stopStandby()
            }
            if !recovers { stopStandby() }
            adoptSocket(of: first)
            let delivered = report.send(to: NBDDaemon.statusDescriptor)
            guard delivered else {
                // Whoever started us died before learning of the device: release it.
                log("/dev/nbd\(index): nobody took the report; releasing the device")
                stopping = true
                stopStandby()
                NBDDaemon.releaseUnclaimed(index: index, method: method, ioctl: nil)
                _ = first.process.waitForExit(timeout: 30)
                first.release()
                return NBDDaemon.Exit.failed.rawValue
            }
            log("supervising /dev/nbd\(index) (\(method.rawValue)), worker \(first.process.pid)")
            if recovers && standby == nil { replaceStandby() }
            // Our recovery code first runs at the first crash: its pages are mapped now, so
            // that crash does not also wait for them to be read (best effort, Linux 5.14+).
            if recovers { _ = cshim_populate_executable_code_in_background() }

            while true {
                var info = siginfo_t()
                var wait = timespec(tv_sec: 1, tv_nsec: 0)
                var set = signals
                let signal = sigtimedwait(&set, &info, &wait)
                switch signal {
                case SIGCHLD:
                    if let status = reapWorkers() { return status }
                case SIGTERM, SIGINT, SIGHUP:
                    stopping = true
                    stopStandby()
                    if active == nil { return NBDDaemon.Exit.disconnected.rawValue }
                case SIGUSR1:
                    upgrade()
                default:
                    break
                }
                if standby == nil, !stopping, active != nil, recovers, monotonicSeconds() >= standbyRetryAt {
                    replaceStandby()
                }
            }
        }

        /// Reaps every exited child; returns the supervisor's exit status when it should end.
        mutating func reapWorkers() -> Int32? {
            while true {
                var status: Int32 = 0
                let pid = waitpid(-1, &status, WNOHANG)
                guard pid > 0 else { return nil }
                if pid == standby?.process.pid {
                    log("standby worker \(pid) ended (\(describe(waitStatus: status)))")
                    standby?.release()
                    standby = nil
                    standbyRetryAt = monotonicSeconds() + 1
                    continue
                }
                guard pid == active?.process.pid, let ended = active else { continue }
                ended.release()
                active = nil
                let exitedCleanly = status & 0x7f == 0 && (status >> 8) & 0xff == NBDDaemon.Exit.disconnected.rawValue
                if stopping || exitedCleanly || !recovers || !deviceIsOurs() {
                    log("/dev/nbd\(index): worker \(pid) ended (\(describe(waitStatus: status))); done")
                    dropLiveSocket()
                    stopStandby()
                    if !stopping { forgetDevice() }
                    return NBDDaemon.Exit.disconnected.rawValue
                }
                log("/dev/nbd\(index): worker \(pid) died (\(describe(waitStatus: status))); recovering")
                let socketClosed = status & 0x7f == 0 && (status >> 8) & 0xff == NBDDaemon.Exit.socketClosed.rawValue
                if socketClosed { dropLiveSocket() }
                recover()
                if active == nil {
                    dropLiveSocket()
                    stopStandby()
                    return NBDDaemon.Exit.failed.rawValue
                }
            }
        }

        /// A new worker on the dead link: the standby if there is one, else a fresh one; retried
        /// while the device still waits for us.
        mutating func recover() {
            let started = monotonicSeconds()
            var resumed = false
            if liveSocket >= 0, !NBDDaemon.isHungUp(liveSocket) {
                if standby == nil { replaceStandby() }
                if let candidate = standby {
                    standby = nil
                    resumed = resume(candidate)
                    if resumed { active = candidate } else { standby = candidate }
                }
            }
            // The slow way: the link must die first, then the kernel takes a new socket.
            if !resumed { dropLiveSocket() }
            if active == nil, let candidate = standby {
                standby = nil
                do {
                    try candidate.control.send(.reconnect)
                    if case .ready? = try DaemonReport.receive(from: candidate.status, timeout: 10) {
                        active = candidate
                    }
                } catch {
                    log("standby \(candidate.process.pid) could not take over: \(error)")
                }
                if active == nil {
                    candidate.release()
                    candidate.process.terminate(signal: SIGKILL, timeout: 5)
                }
            }
            while active == nil && !stopping && deviceIsOurs() {
                do {
                    let (worker, report) = try start(mode: .reattach(index))
                    if case .ready = report { active = worker; break }
                    worker.release()
                    log("/dev/nbd\(index): a new worker failed: \(report)")
                } catch {
                    log("/dev/nbd\(index): cannot start a new worker: \(error)")
                }
                usleep(500_000)
            }
            guard let active else { return }
            if !resumed { adoptSocket(of: active) }
            let milliseconds = Int((monotonicSeconds() - started) * 1000)
            log(
                "/dev/nbd\(index): worker \(active.process.pid) serves again after \(milliseconds) ms (\(resumed ? "same socket, from the journal" : "new socket"))"
            )
            record { state in
                state.recoveries = (state.recoveries ?? 0) + 1
                state.lastRecoveryMilliseconds = milliseconds
            }
            replaceStandby()
        }

        /// Hot upgrade: the installed binary's standby takes the live socket from the worker.
        mutating func upgrade() {
            guard let old = active, !stopping else { return }
            let started = monotonicSeconds()
            stopStandby()
            let fresh: Worker
            let executable = installedExecutable()
            do { fresh = try startStandby(executable: executable) } catch {
                log("/dev/nbd\(index): upgrade failed, the current worker keeps serving: \(error)")
                replaceStandby()
                return
            }
            kill(old.process.pid, SIGUSR2)
            var handedOver: Int32?
            do {
                if case .handOff(let socket)? = try old.control.receive(timeout: 30) { handedOver = socket }
            } catch {
                log("/dev/nbd\(index): worker \(old.process.pid) did not hand over its socket: \(error)")
            }
            var resumed = false
            do {
                if let handedOver {
                    try fresh.control.send(.serveSocket(handedOver))
                    close(handedOver)
                } else {
                    // It died (or hung) on the way: once it is gone, this is a recovery.
                    old.process.terminate(signal: SIGKILL, timeout: 5)
                    resumed = liveSocket >= 0 && resume(fresh)
                    if !resumed {
                        dropLiveSocket()
                        try fresh.control.send(.reconnect)
                    }
                }
                if !resumed {
                    guard case .ready? = try DaemonReport.receive(from: fresh.status, timeout: 10) else {
                        throw SystemError("upgrade", detail: "the new worker did not start serving")
                    }
                }
            } catch {
                log("/dev/nbd\(index): upgrade failed: \(error)")
                fresh.release()
                fresh.process.terminate(signal: SIGKILL, timeout: 5)
                // The old worker is gone or going; the SIGCHLD path recovers the device.
                return
            }
            old.release()
            active = fresh
            workerExecutable = executable
            if !resumed { adoptSocket(of: fresh) }
            let milliseconds = Int((monotonicSeconds() - started) * 1000)
            log("/dev/nbd\(index): upgraded to worker \(fresh.process.pid) in \(milliseconds) ms")
            record { state in state.upgrades = (state.upgrades ?? 0) + 1 }
            replaceStandby()
        }

        /// Asks the standby to go on serving the live socket from the journal; false when it
        /// could not (it then waits for `reconnect`) or is gone.
        mutating func resume(_ candidate: Worker) -> Bool {
            do {
                if liveReplyFile >= 0 { try candidate.control.send(.replyFile(liveReplyFile)) }
                try candidate.control.send(.resume(liveSocket))
                guard case .resumed(true)? = try candidate.nextWord(timeout: 30) else {
                    log("/dev/nbd\(index): the standby cannot resume from the journal; giving the device a new socket")
                    return false
                }
                guard case .ready? = try DaemonReport.receive(from: candidate.status, timeout: 10) else {
                    throw SystemError("resume", detail: "the standby did not report")
                }
                return true
            } catch {
                log("/dev/nbd\(index): standby \(candidate.process.pid) could not resume: \(error)")
                return false
            }
        }

        /// Takes the copy of its socket a worker sends before its report (not after a resume:
        /// the socket is the one we hold).
        mutating func adoptSocket(of worker: Worker) {
            guard journal != nil else { return }  // workers without a journal send no copy
            guard case .serving(let socket)? = try? worker.nextWord(timeout: 2) else {
                log(
                    "/dev/nbd\(index): worker \(worker.process.pid) sent no copy of its socket; a crash will need a new one"
                )
                return
            }
            dropLiveSocket()
            liveSocket = socket
            if case .replyFile(let file)? = try? worker.control.receive(timeout: 2) { liveReplyFile = file }
        }

        mutating func dropLiveSocket() {
            if liveSocket >= 0 { close(liveSocket) }
            if liveReplyFile >= 0 { close(liveReplyFile) }
            (liveSocket, liveReplyFile) = (-1, -1)
        }

        mutating func replaceStandby() {
            stopStandby()
            do { standby = try startStandby(executable: workerExecutable, waitUntilPrepared: false) } catch {
                log("/dev/nbd\(index): no standby worker: \(error)")
                standbyRetryAt = monotonicSeconds() + 1
            }
        }

        mutating func stopStandby() {
            guard let old = standby else { return }
            standby = nil
            old.release()  // a standby waiting for its word ends when the channel closes
            old.process.terminate(signal: SIGTERM, timeout: 2)
        }

        /// Starts a standby. Only an upgrade waits for it to have opened the source (the old
        /// worker must not stop before); otherwise its `prepared` is skipped when its word comes,
        /// so a crash while a standby is still starting waits for that start, not for the
        /// supervisor to finish waiting on it.
        func startStandby(executable: String, waitUntilPrepared: Bool = true) throws(SystemError) -> Worker {
            let worker = try spawn(mode: .standby(index), executable: executable)
            guard waitUntilPrepared else { return worker }
            guard case .prepared? = try worker.control.receive(timeout: 30) else {
                worker.release()
                worker.process.terminate(signal: SIGKILL, timeout: 5)
                throw SystemError("start a standby worker", detail: "it ended before opening \(settings.source)")
            }
            return worker
        }

        /// Starts a worker that attaches at once, and waits for its report.
        func start(mode: NBDDaemon.Mode) throws(SystemError) -> (Worker, DaemonReport) {
            let worker = try spawn(mode: mode, executable: workerExecutable)
            let report = try DaemonReport.receive(from: worker.status, timeout: 30)
            guard let report else {
                var status: Int32 = 0
                waitpid(worker.process.pid, &status, 0)
                worker.release()
                return (
                    worker,
                    .failed("the serving worker exited before attaching a device (\(describe(waitStatus: status)))")
                )
            }
            return (worker, report)
        }

        func spawn(mode: NBDDaemon.Mode, executable: String) throws(SystemError) -> Worker {
            var statusEnds: [Int32] = [-1, -1]
            guard closeOnExecPipe(&statusEnds) else { throw .lastErrno("pipe") }
            let control: (supervisor: ControlChannel, worker: ControlChannel)
            do { control = try ControlChannel.pair() } catch {
                close(statusEnds[0]); close(statusEnds[1])
                throw error
            }
            defer {
                close(statusEnds[1])
                control.worker.close()
            }
            var workerSettings = settings
            workerSettings.mode = mode
            let process: DaemonProcess
            do {
                // Our own stdout is the device's log file: the worker appends to the same one.
                process = try DaemonProcess.spawn(
                    executable: executable, arguments: workerSettings.arguments,
                    descriptors: [statusEnds[1], control.worker.descriptor, journal?.descriptor ?? -1, image],
                    logFile: nil, inheritOutput: true)
            } catch {
                close(statusEnds[0])
                control.supervisor.close()
                throw error
            }
            return Worker(process: process, status: statusEnds[0], control: control.supervisor)
        }

        /// Whether the device still waits for a server of ours: the kernel still shows our
        /// identifier (or, before 5.14, still has a capacity).
        func deviceIsOurs() -> Bool {
            NBDDevice(index: index).connection(expecting: settings.identifier) == .ours
        }

        /// The device went away without `-u` (a plain umount with disconnect-on-close): its
        /// state and log go with it.
        func forgetDevice() {
            let store = StateStore()
            if let state = try? store.load(device: Int(index)), state.backendIdentifier == settings.identifier {
                try? store.remove(device: Int(index))
                store.removeLog(identifier: settings.identifier)
                CapturedCredentials.remove(state.servedSource.capturedCredentials)
            }
        }

        /// Updates the device's state file with the serving worker, if the file is still ours.
        func record(_ change: (inout DeviceState) -> Void) {
            let store = StateStore()
            guard var state = try? store.load(device: Int(index)), state.backendIdentifier == settings.identifier else {
                return
            }
            if let active {
                state.servingPID = active.process.pid
                state.servingStartTime = active.process.startTime
            }
            change(&state)
            do { try store.save(state) } catch { log("cannot update the state of /dev/nbd\(index): \(error)") }
        }

        func log(_ message: String) {
            var line = "erofs-nbd-supervisor[\(getpid())]: \(message)\n"
            line.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
        }
    }

    /// The binary installed where ours was started from: after an upgrade replaced the file,
    /// /proc/self/exe still names the old one, with " (deleted)" appended.
    static func installedExecutable() -> String {
        guard let path = DaemonProcess.executable(of: "self"), access(path, X_OK) == 0 else { return "/proc/self/exe" }
        return path
    }
}

public func describe(waitStatus status: Int32) -> String {
    if status & 0x7f == 0 { return "exit status \((status >> 8) & 0xff)" }
    return "killed by signal \(status & 0x7f)"
}
