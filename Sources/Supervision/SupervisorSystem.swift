#if canImport(Glibc)
import Glibc
#endif
import CShim
import SystemCalls

/// Everything the supervisor asks of the operating system about processes and time: spawning,
/// reaping, signals, the clock. The real one is `ProcessSystem`; the tests drive the state
/// machine through a scripted one, as the netlink code is tested through a recording transport.
/// Descriptors (pipes, control channels, the link) stay real either way.
public protocol SupervisorSystem: AnyObject {
    /// Starts `executable arguments...` with `descriptors[i]` as descriptor 3 + i.
    func spawn(executable: String, arguments: [String], descriptors: [Int32]) throws(SystemError) -> DaemonProcess
    /// An exited child and its wait status, without waiting; nil when none has exited.
    func reapChild() -> (pid: Int32, status: Int32)?
    /// Waits for `process`, our child, to exit; its wait status.
    func waitForChild(_ process: DaemonProcess) -> Int32
    /// The next of the supervisor's signals (SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1) or the
    /// hang-up of `descriptor` (a worker's control channel: its process let its descriptors
    /// go), waiting at most `timeout` seconds; nil when neither came.
    func nextEvent(timeout: Double, hangUpOf descriptor: Int32?) -> SupervisorWakeUp?
    /// `process`'s wait status if it is exiting, before it can be reaped; nil if it is not.
    func exitStatusWhileExiting(_ process: DaemonProcess) -> Int32?
    /// Seconds on a monotonic clock.
    func now() -> Double
    func send(_ signal: Int32, to process: DaemonProcess)
    /// Sends `signal` and waits up to `timeout` seconds for the process to be gone.
    func terminate(_ process: DaemonProcess, signal: Int32, timeout: Double)
    /// Waits up to `timeout` seconds for the process to be gone.
    func waitForExit(_ process: DaemonProcess, timeout: Double) -> Bool
    func pause(seconds: Double)
    /// The binary installed where ours was started from (a hot upgrade's new workers run it).
    func installedExecutable() -> String
    /// One line of the supervisor's log.
    func log(_ line: String)
    /// Replaces this process with `executable arguments...` (execve: same pid, same children,
    /// signal mask and descriptors without close-on-exec); returns only when that failed.
    func replaceProcess(executable: String, arguments: [String]) -> SystemError
}

/// What woke the supervisor.
public enum SupervisorWakeUp: Equatable, Sendable {
    case signal(Int32)
    /// The watched control channel hung up.
    case hangUp
}

/// The real system: posix_spawn, waitpid, and a signalfd of the signals blocked at creation,
/// polled with the serving worker's control channel.
public final class ProcessSystem: SupervisorSystem {
    let signals: sigset_t
    /// Nil if the kernel refused one: the signals are then taken with sigtimedwait, and a
    /// worker's death is seen at SIGCHLD only.
    private var signalEnd: OwnedDescriptor?

    /// Blocks the supervisor's signals, so that only `nextEvent` takes them; call before any
    /// thread exists.
    public init() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1] { sigaddset(&set, signal) }
        sigprocmask(SIG_BLOCK, &set, nil)
        signals = set
        // Non-blocking: a signal polled as pending may be gone by the read (another thread of
        // the process that does not block it took it).
        let descriptor = signalfd(-1, &set, Int32(SFD_CLOEXEC) | Int32(SFD_NONBLOCK))
        signalEnd = descriptor >= 0 ? OwnedDescriptor(descriptor) : nil
    }

    public func spawn(executable: String, arguments: [String], descriptors: [Int32]) throws(SystemError)
        -> DaemonProcess
    {
        // Our own stdout is the link's log file: the worker appends to the same one.
        try DaemonProcess.spawn(
            executable: executable, arguments: arguments, descriptors: descriptors, logFile: nil, inheritOutput: true)
    }

    public func reapChild() -> (pid: Int32, status: Int32)? {
        var status: Int32 = 0
        let pid = waitpid(-1, &status, WNOHANG)
        return pid > 0 ? (pid, status) : nil
    }

    public func waitForChild(_ process: DaemonProcess) -> Int32 {
        var status: Int32 = 0
        while waitpid(process.pid, &status, 0) < 0 && errno == EINTR {}
        return status
    }

    public func nextEvent(timeout: Double, hangUpOf descriptor: Int32?) -> SupervisorWakeUp? {
        let signalDescriptor = signalEnd?.rawValue ?? -1
        guard signalDescriptor >= 0 else {
            var info = siginfo_t()
            var wait = timespec(tv_sec: Int(timeout), tv_nsec: Int((timeout - timeout.rounded(.down)) * 1e9))
            var set = signals
            let signal = sigtimedwait(&set, &info, &wait)
            return signal > 0 ? .signal(signal) : nil
        }
        // POLLRDHUP, not POLLIN: a word the worker sends is read where it is awaited.
        var watched = [
            pollfd(fd: signalDescriptor, events: Int16(POLLIN), revents: 0),
            pollfd(fd: descriptor ?? -1, events: CSHIM_POLLRDHUP, revents: 0),
        ]
        guard poll(&watched, 2, Int32(timeout * 1000)) > 0 else { return nil }
        // Signals first: a SIGTERM that came with the hang-up stops us rather than recovering.
        if watched[0].revents & Int16(POLLIN) != 0 {
            var info = signalfd_siginfo()
            if read(signalDescriptor, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size
            {
                return .signal(Int32(bitPattern: info.ssi_signo))
            }
        }
        return watched[1].revents & (CSHIM_POLLRDHUP | Int16(POLLHUP)) != 0 ? .hangUp : nil
    }

    public func exitStatusWhileExiting(_ process: DaemonProcess) -> Int32? { process.exitStatusWhileExiting }

    public func now() -> Double { monotonicSeconds() }

    public func send(_ signal: Int32, to process: DaemonProcess) { kill(process.pid, signal) }

    public func terminate(_ process: DaemonProcess, signal: Int32, timeout: Double) {
        process.terminate(signal: signal, timeout: timeout)
    }

    public func waitForExit(_ process: DaemonProcess, timeout: Double) -> Bool { process.waitForExit(timeout: timeout) }

    public func pause(seconds: Double) { usleep(useconds_t(seconds * 1_000_000)) }

    /// After an upgrade replaced the file, /proc/self/exe still names the old one, with
    /// " (deleted)" appended: the path without it is the new binary.
    public func installedExecutable() -> String {
        guard let path = DaemonProcess.executable(of: "self"), access(path, X_OK) == 0 else { return "/proc/self/exe" }
        return path
    }

    public func log(_ line: String) {
        var text = line + "\n"
        text.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
    }

    public func replaceProcess(executable: String, arguments: [String]) -> SystemError {
        var argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        execve(executable, &argv, environ)
        return .lastErrno("execve", path: executable)
    }
}

/// The crash-loop guard: a request that was in flight at each of `limit` consecutive worker
/// deaths is what kills them (the next worker would be handed it again and die too); it is
/// failed instead. A request not in flight at a death starts counting again.
public struct CrashLoopGuard: Sendable {
    public let limit: Int
    /// Consecutive deaths each request was in flight at.
    private(set) var deaths: [String: Int] = [:]

    public init(limit: Int = 3) { self.limit = max(1, limit) }

    /// Counts a worker death with `inFlight` held; returns the requests to fail now.
    public mutating func workerDied(holding inFlight: [InFlightRequest]) -> [InFlightRequest] {
        var counted: [String: Int] = [:]
        var seen = Set<String>()
        var poisoned: [InFlightRequest] = []
        for request in inFlight where seen.insert(request.key).inserted {
            let count = (deaths[request.key] ?? 0) + 1
            if count >= limit { poisoned.append(request) } else { counted[request.key] = count }
        }
        deaths = counted
        return poisoned
    }
}
