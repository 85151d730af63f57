#if canImport(Glibc)
import Glibc
#endif
import Backends
import FUSEServer
import SystemCalls

/// The supervisor of one FUSE mount, run as `mount.erofs --supervise-fuse ...` with the mount's
/// /dev/fuse descriptor as descriptor 4 and the mount command's status pipe as 3. It serves no
/// request itself. It holds every channel of the connection (the descriptor and its clones, one
/// per serving thread) and the request journal, so the connection outlives any worker: while a
/// channel's file is open, the kernel keeps what was read on it and not answered (closing the
/// last descriptor of a channel would fail those requests, closing every one ends the mount).
/// One worker serves; one standby has opened the image and waits. Then it waits for signals:
/// - SIGCHLD, the worker died (any signal, any crash): the standby takes over the channels and
///   has the kernel resend what the dead one had read (FUSE_NOTIFY_RESEND, 6.9+) or answers it
///   from the journal; a new standby starts. Applications see a pause, never an error.
/// - SIGUSR1, hot upgrade: a standby of the binary now installed opens the image, the worker
///   is stopped (SIGKILL: every request is idempotent on a read-only image, and a request in
///   flight is resent as after a crash), the new one takes over.
/// - SIGTERM: no more recoveries; the supervisor ends with the worker (at unmount).
/// A worker that ends because the connection ended (exit 0) ends the supervisor.
/// What it cannot survive is its own death: the worker then serves on, but nothing replaces it
/// when it dies (`--list` shows RECOVERY "none").
public enum FUSESupervisor {
    public static let flag = "--supervise-fuse"
    static let statusDescriptor: Int32 = 3
    static let deviceDescriptor: Int32 = 4

    struct Worker {
        var process: DaemonProcess
        /// Our end of the worker's status pipe.
        var status: Int32
        /// Our end of a standby's wake-up pipe (-1 for others).
        var wake: Int32
        var prepared = false
        var started: Double

        func release() {
            close(status)
            if wake >= 0 { close(wake) }
        }
    }

    public static func main(_ arguments: [String]) -> Int32 {
        _ = chdir("/")
        guard let settings = FUSEDaemon.Settings(arguments: arguments, flag: flag), settings.role == .first else {
            DaemonReport.failed("internal error: bad supervisor arguments \(arguments)").send(to: statusDescriptor)
            return 2
        }
        signal(SIGPIPE, SIG_IGN)
        var channels = [deviceDescriptor]
        let journal: FUSEJournal
        do {
            for _ in 1..<settings.threads { channels.append(try FUSEServer.cloneChannel(of: deviceDescriptor)) }
            journal = try FUSEJournal.create(channels: settings.threads)
        } catch {
            DaemonReport.failed("\(error)").send(to: statusDescriptor)
            return 1
        }
        var supervisor = Supervisor(settings: settings, channels: channels, journal: journal)
        return supervisor.run()
    }

    struct Supervisor {
        let settings: FUSEDaemon.Settings
        let channels: [Int32]
        let journal: FUSEJournal
        let signals: sigset_t
        var active: Worker?
        var standby: Worker?
        var stopping = false
        var standbyRetryAt = 0.0
        /// The binary new workers run: ours, until a hot upgrade installs another.
        var workerExecutable = "/proc/self/exe"
        /// Deaths by a crash signal soon after a takeover, in a row: a request that kills every
        /// worker it reaches is resent to each; after a few, the supervisor gives up.
        var quickCrashes = 0
        static let crashLoopLimit = 3

        init(settings: FUSEDaemon.Settings, channels: [Int32], journal: FUSEJournal) {
            self.settings = settings
            self.channels = channels
            self.journal = journal
            var set = sigset_t()
            sigemptyset(&set)
            for signal in [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1] { sigaddset(&set, signal) }
            sigprocmask(SIG_BLOCK, &set, nil)
            signals = set
        }

        mutating func run() -> Int32 {
            // The first standby starts with the first worker: a crash soon after the mount then
            // finds it ready.
            standby = try? spawn(.standby, executable: workerExecutable)
            let first: Worker
            let method: String
            do {
                first = try spawn(.first, executable: workerExecutable)
                (_, method) = try awaitReady(first, timeout: 30)
            } catch {
                stopStandby()
                DaemonReport.failed("\(error)").send(to: statusDescriptor)
                return 1
            }
            active = first
            record { $0.recovery = method }
            let line = "ready \(getpid()) \(first.process.pid) \(first.process.startTime) \(method)\n"
            guard write(statusDescriptor, line, line.utf8.count) == line.utf8.count else {
                // Whoever mounted died before learning of the daemon: the mount is theirs to
                // undo; we stop so that it ends (the worker goes with the connection).
                log("nobody took the report; stopping")
                first.process.terminate(signal: SIGKILL)
                stopStandby()
                return 1
            }
            close(statusDescriptor)
            log("supervising \(settings.source), worker \(first.process.pid) (\(method))")

            while true {
                var info = siginfo_t()
                var wait = timespec(tv_sec: 1, tv_nsec: 0)
                var set = signals
                switch sigtimedwait(&set, &info, &wait) {
                case SIGCHLD:
                    if let status = reapWorkers() { return status }
                case SIGTERM, SIGINT, SIGHUP:
                    stopping = true
                    stopStandby()
                    if active == nil { return 0 }
                case SIGUSR1:
                    upgrade()
                default:
                    break
                }
                if standby == nil, !stopping, active != nil, monotonicSeconds() >= standbyRetryAt {
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
                    log("standby \(pid) ended (\(describe(waitStatus: status)))")
                    standby?.release()
                    standby = nil
                    standbyRetryAt = monotonicSeconds() + 1
                    continue
                }
                guard pid == active?.process.pid, let ended = active else { continue }
                ended.release()
                active = nil
                let exitedCleanly = status & 0x7f == 0 && (status >> 8) & 0xff == 0
                if exitedCleanly || stopping {
                    log("worker \(pid) ended (\(describe(waitStatus: status))); done")
                    stopStandby()
                    FUSEStateStore().removeStates(ofProcess: getpid())
                    return 0
                }
                let signal = status & 0x7f
                let crashed = signal != 0 && signal != SIGKILL && signal != SIGTERM
                quickCrashes = crashed && monotonicSeconds() - ended.started < 2 ? quickCrashes + 1 : 0
                if quickCrashes >= Self.crashLoopLimit {
                    // Closing every channel ends the connection: applications get an error
                    // instead of waiting on a request no worker survives.
                    log(
                        "worker \(pid) died (\(describe(waitStatus: status))), \(quickCrashes) crashes in a row; giving up"
                    )
                    stopStandby()
                    return 1
                }
                log("worker \(pid) died (\(describe(waitStatus: status))); taking over")
                recover(since: monotonicSeconds())
                if active == nil {
                    stopStandby()
                    return 1
                }
            }
        }

        /// A new worker on the channels: the standby if there is one, else a fresh one.
        mutating func recover(since started: Double, upgradedTo executable: String? = nil) {
            var attempts = 0
            while active == nil && attempts < 5 {
                attempts += 1
                var candidate: Worker
                if let ready = standby {
                    standby = nil
                    candidate = ready
                } else {
                    do { candidate = try spawn(.takeOver, executable: executable ?? workerExecutable) } catch {
                        log("cannot start a worker: \(error)")
                        usleep(200_000)
                        continue
                    }
                }
                do {
                    if candidate.wake >= 0 {
                        if !candidate.prepared { try awaitPrepared(&candidate, timeout: 30) }
                        var byte: UInt8 = 1
                        guard write(candidate.wake, &byte, 1) == 1 else {
                            throw SystemError.lastErrno("wake the standby")
                        }
                    }
                    let (_, method) = try awaitReady(candidate, timeout: 30)
                    candidate.started = monotonicSeconds()
                    active = candidate
                    let milliseconds = Int((monotonicSeconds() - started) * 1000)
                    log("worker \(candidate.process.pid) serves after \(milliseconds) ms (\(method))")
                    record { state in
                        if executable != nil {
                            state.upgrades = (state.upgrades ?? 0) + 1
                        } else {
                            state.recoveries = (state.recoveries ?? 0) + 1
                        }
                        state.lastStallMilliseconds = milliseconds
                    }
                } catch {
                    log("worker \(candidate.process.pid) could not take over: \(error)")
                    candidate.release()
                    candidate.process.terminate(signal: SIGKILL)
                }
            }
            if active != nil { replaceStandby() }
        }

        /// Hot upgrade: a standby of the installed binary takes over from the worker.
        mutating func upgrade() {
            guard let old = active, !stopping else { return }
            let executable = NBDSupervisor.installedExecutable()
            stopStandby()
            do {
                var fresh = try spawn(.standby, executable: executable)
                do { try awaitPrepared(&fresh, timeout: 30) } catch {
                    fresh.release()
                    fresh.process.terminate(signal: SIGKILL)
                    throw error
                }
                standby = fresh
            } catch {
                log("upgrade failed, worker \(old.process.pid) keeps serving: \(error)")
                return
            }
            let started = monotonicSeconds()
            kill(old.process.pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(old.process.pid, &status, 0) < 0 && errno == EINTR {}
            old.release()
            active = nil
            workerExecutable = executable
            recover(since: started, upgradedTo: executable)
        }

        mutating func replaceStandby() {
            guard standby == nil, !stopping else { return }
            do { standby = try spawn(.standby, executable: workerExecutable) } catch {
                log("cannot start a standby: \(error)")
                standbyRetryAt = monotonicSeconds() + 1
            }
        }

        mutating func stopStandby() {
            guard let worker = standby else { return }
            standby = nil
            // Closing its wake-up pipe tells it to exit; it holds the channels until then.
            worker.release()
            worker.process.terminate(signal: SIGKILL)
        }

        /// Waits for a standby's "prepared".
        func awaitPrepared(_ worker: inout Worker, timeout: Double) throws(SystemError) {
            let line = try receiveStatusLine(from: worker.status, timeout: timeout)
            guard let line, line.hasPrefix("prepared ") else {
                throw SystemError("start a standby", detail: line ?? "it exited before opening the image")
            }
            worker.prepared = true
        }

        /// Waits for a worker's "ready PID METHOD"; returns the pid and method.
        func awaitReady(_ worker: Worker, timeout: Double) throws(SystemError) -> (Int32, String) {
            let line = try receiveStatusLine(from: worker.status, timeout: timeout)
            let fields = line?.split(separator: " ") ?? []
            guard fields.count == 3, fields[0] == "ready", let pid = Int32(fields[1]) else {
                var detail = line ?? "it exited before serving"
                if detail.hasPrefix("error ") { detail.removeFirst(6) }
                throw SystemError("start a worker", path: settings.source, detail: detail)
            }
            return (pid, String(fields[2]))
        }

        func spawn(_ role: FUSEDaemon.Role, executable: String) throws(SystemError) -> Worker {
            var statusEnds: [Int32] = [-1, -1]
            guard closeOnExecPipe(&statusEnds) else { throw .lastErrno("pipe") }
            var wakeEnds: [Int32] = [-1, -1]
            if role == .standby && !closeOnExecPipe(&wakeEnds) {
                let error = SystemError.lastErrno("pipe")
                close(statusEnds[0]); close(statusEnds[1])
                throw error
            }
            defer {
                close(statusEnds[1])
                if wakeEnds[0] >= 0 { close(wakeEnds[0]) }
            }
            var workerSettings = settings
            workerSettings.role = role
            do {
                // Our own stdout is the mount's log file: the worker appends to the same one.
                let process = try DaemonProcess.spawn(
                    executable: executable, arguments: workerSettings.arguments(),
                    descriptors: [statusEnds[1], wakeEnds[0], journal.descriptor] + channels, logFile: nil,
                    inheritOutput: true)
                return Worker(process: process, status: statusEnds[0], wake: wakeEnds[1], started: monotonicSeconds())
            } catch {
                close(statusEnds[0])
                if wakeEnds[1] >= 0 { close(wakeEnds[1]) }
                throw error
            }
        }

        /// Updates the mount's state with the serving worker, if the state exists.
        func record(_ change: (inout FUSEMountState) -> Void = { _ in }) {
            guard let connection = settings.connection else { return }
            do {
                try FUSEStateStore().update(major: connection.major, minor: connection.minor) { state in
                    if let active {
                        state.servingPID = active.process.pid
                        state.servingStartTime = active.process.startTime
                    }
                    change(&state)
                }
            } catch {
                log("cannot update the state of \(settings.source): \(error)")
            }
        }

        func log(_ message: String) {
            var line = "erofs-fuse-supervisor[\(getpid())]: \(message)\n"
            line.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
        }
    }
}
