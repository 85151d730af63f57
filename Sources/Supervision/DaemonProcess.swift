#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import CShim
import KernelAttach
import SystemCalls

/// A serving daemon: started by re-executing our own binary (never fork once threads may
/// exist), in its own session, with no inherited stdio, and given its descriptors at fixed
/// numbers.
public struct DaemonProcess: Sendable, Equatable {
    public var pid: Int32
    /// Clock ticks since boot at which the process started (/proc/PID/stat field 22).
    public var startTime: UInt64

    public init(pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// Spawns `executable arguments...` (by default our own binary) with `descriptors[i]` as
    /// descriptor 3 + i (a negative entry leaves that number closed), stdin from /dev/null and
    /// stdout/stderr to `logFile` (or /dev/null), to `logDescriptor`, or left as ours with
    /// `inheritOutput`.
    public static func spawn(
        executable: String = "/proc/self/exe", arguments: [String], descriptors: [Int32], logFile: String?,
        logDescriptor: Int32 = -1, inheritOutput: Bool = false
    ) throws(SystemError) -> DaemonProcess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if !inheritOutput {
            if logDescriptor >= 0 {
                posix_spawn_file_actions_adddup2(&actions, logDescriptor, 1)
            } else if let logFile {
                posix_spawn_file_actions_addopen(
                    &actions, 1, logFile, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0o600)
            } else {
                posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            }
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        for (offset, fd) in descriptors.enumerated() where fd >= 0 {
            // dup2 onto itself would keep CLOEXEC set; go through a high number first.
            posix_spawn_file_actions_adddup2(&actions, fd, 100 + Int32(offset))
        }
        for (offset, fd) in descriptors.enumerated() {
            if fd < 0 {
                // An inherited descriptor without CLOEXEC must not pass for the missing one.
                posix_spawn_file_actions_addclose(&actions, 3 + Int32(offset))
                continue
            }
            posix_spawn_file_actions_adddup2(&actions, 100 + Int32(offset), 3 + Int32(offset))
            posix_spawn_file_actions_addclose(&actions, 100 + Int32(offset))
        }
        cshim_spawn_closefrom(&actions, 3 + Int32(descriptors.count))

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var defaultSignals = sigset_t()
        sigfillset(&defaultSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        posix_spawnattr_setflags(
            &attributes,
            Int16(Int32(POSIX_SPAWN_SETSIGMASK) | Int32(POSIX_SPAWN_SETSIGDEF) | Int32(CSHIM_POSIX_SPAWN_SETSID)))

        var argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var environment: [UnsafeMutablePointer<CChar>?] = daemonEnvironment().map { strdup($0) } + [nil]
        defer { for pointer in environment { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, &argv, &environment)
        guard result == 0 else {
            throw SystemError("spawn the serving daemon", path: executable, errno: .init(rawValue: result))
        }
        return DaemonProcess(pid: pid, startTime: DaemonProcess.startTime(of: pid) ?? 0)
    }

    /// Our environment without secrets: a daemon lives long and its /proc/PID/environ is
    /// readable by root for its whole life, so no credential variable (`AWS_*`: keys, tokens,
    /// and the rest of the family for good measure) goes to it. Remote credentials reach a
    /// daemon through a captured file (RemoteSources' `CapturedCredentials`).
    static func daemonEnvironment() -> [String] {
        var result: [String] = []
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if !text.hasPrefix("AWS_") { result.append(text) }
            entry += 1
        }
        return result
    }

    /// Whether this exact process (not a later one with a reused pid) is still alive. A start
    /// time of 0 (unknown) matches no process: a pid alone may name anyone's.
    public var isAlive: Bool {
        guard pid > 1, startTime != 0 else { return false }
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let now = DaemonProcess.startTime(of: pid) else { return false }
        guard !DaemonProcess.isZombie(pid) else { return false }
        return now == startTime
    }

    /// Whether this is, alive, a process running our binary whose arguments (argv[0] first)
    /// satisfy `matches`: what every backend checks before it signals a pid a state names.
    public func runsOurBinary(where matches: ([String]) -> Bool) -> Bool {
        guard isAlive, let exe = Self.executable(of: "\(pid)"), exe == Self.executable(of: "self") else { return false }
        guard
            var arguments = try? readTextFile("/proc/\(pid)/cmdline").split(
                separator: "\0", omittingEmptySubsequences: false
            ).map(String.init)
        else { return false }
        if arguments.last == "" { arguments.removeLast() }  // cmdline ends each argument with a NUL
        return matches(arguments)
    }

    /// /proc/PROCESS/exe without the " (deleted)" of a binary replaced since it started.
    public static func executable(of process: String) -> String? {
        guard let path = runningBinary(of: process) else { return nil }
        return path.hasSuffix(" (deleted)") ? String(path.dropLast(" (deleted)".count)) : path
    }

    /// The binary the process runs, as /proc/PROCESS/exe says: with " (deleted)" when the file
    /// was replaced or removed since it started (an upgrade installed a new one).
    public static func runningBinary(of process: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4097)
        let length = readlink("/proc/\(process)/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The BINARY column of `--list` for a device's supervisor (or lone daemon) and serving
    /// worker: the supervisor's /proc/PID/exe, and the worker's when it differs (an upgrade
    /// under way, or one that replaced the file: " (deleted)"); "-" when neither is ours.
    public static func binaryColumn(
        supervisor: DaemonProcess?, worker: DaemonProcess?, isOurs: (DaemonProcess) -> Bool
    ) -> String {
        func running(_ process: DaemonProcess?) -> String? {
            process.flatMap { isOurs($0) ? runningBinary(of: "\($0.pid)") : nil }
        }
        switch (running(supervisor), running(worker)) {
        case (let supervisor?, let served?) where served != supervisor: return "\(supervisor) | worker: \(served)"
        case (let supervisor?, _): return supervisor
        case (nil, let served?): return "worker: \(served)"
        case (nil, nil): return "-"
        }
    }

    /// Dead and waiting to be reaped. A leader that exited while another of its threads is
    /// still in the kernel (an NBD_DO_IT returning) shows Z too, but is not gone yet.
    static func isZombie(_ pid: Int32) -> Bool {
        guard let fields = statFields(of: pid), fields.count > StatField.state, fields[StatField.state] == "Z" else {
            return false
        }
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"))?.count ?? 1
        return threads <= 1
    }

    /// Where `statFields` puts the fields used here: field N of proc_pid_stat(5) at N - 3.
    enum StatField {
        static let state = 3 - 3
        /// The kernel's PF_* flags (field 9).
        static let flags = 9 - 3
        static let startTime = 22 - 3
        /// The wait status, set when the exit begins (field 52).
        static let exitCode = 52 - 3
    }

    /// The fields of /proc/PID/stat from field 3 (state) on: the command name (field 2) may
    /// hold spaces and parentheses, so they are counted from the last ')'.
    static func statFields(of pid: Int32) -> [Substring]? {
        guard let stat = try? readTextFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].split { $0 == " " || $0 == "\n" }
    }

    /// Field 22 of /proc/PID/stat.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard let fields = statFields(of: pid), fields.count > StatField.startTime else { return nil }
        return UInt64(fields[StatField.startTime])
    }

    /// The wait status of this process if it is exiting (or has exited and is not yet reaped):
    /// the kernel records it (field 52 of /proc/PID/stat, as waitpid would report it) when the
    /// exit begins, long before the parent's SIGCHLD. Nil while it is not exiting or when it
    /// is not this process any more.
    public var exitStatusWhileExiting: Int32? {
        // PF_EXITING: set as the exit begins.
        let exiting: UInt64 = 0x4
        guard let fields = DaemonProcess.statFields(of: pid), fields.count > StatField.exitCode,
            UInt64(fields[StatField.startTime]) == startTime, let flags = UInt64(fields[StatField.flags]),
            flags & exiting != 0
        else { return nil }
        return Int32(fields[StatField.exitCode])
    }

    /// Sends `signal` and waits up to `timeout` seconds for the process to be gone.
    @discardableResult
    public func terminate(signal: Int32 = SIGTERM, timeout: Double = 5) -> Bool {
        guard isAlive else { return true }
        kill(pid, signal)
        return waitForExit(timeout: timeout)
    }

    /// Waits up to `timeout` seconds for the process to be gone (reaping it if it is our child).
    public func waitForExit(timeout: Double) -> Bool {
        var waited = 0.0
        while waited < timeout {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { return true }
            if !isAlive { return true }
            usleep(20_000)
            waited += 0.02
        }
        return !isAlive
    }
}
