#if canImport(Glibc)
import Glibc
#endif
import Backends
import CShim
import EROFSReader
import FUSEServer
import Logging
import Synchronization
import SystemCalls

/// A serving worker: `mount.erofs --serve-fuse --threads N [--device PATH]... [ROLE] -- IMAGE`,
/// started by the supervisor (FUSESupervisor) with its status pipe as descriptor 3, its wake-up
/// pipe as 4 (standby only), the request journal as 5 and the connection's channels (the
/// /dev/fuse descriptor and its clones, all held by the supervisor too) from 6 on. It opens the
/// image, then by role:
/// - first: serves from the kernel's INIT on; says "ready PID METHOD" once INIT is answered;
/// - standby: says "prepared PID" and waits; a byte on descriptor 4 makes it take over, its
///   end of file (the supervisor is gone) makes it exit: a standby must never be what keeps a
///   dead connection open;
/// - take-over: at once, as a standby woken.
/// Taking over: the dead worker's unanswered requests are answered (FUSE_NOTIFY_RESEND, or the
/// journal), then it serves and says "ready PID METHOD". It exits with 0 when the connection
/// ends (unmount, abort: ENODEV).
public enum FUSEDaemon {
    public static let flag = "--serve-fuse"
    static let statusDescriptor: Int32 = 3
    static let wakeDescriptor: Int32 = 4
    static let journalDescriptor: Int32 = 5
    static let firstChannelDescriptor: Int32 = 6

    public enum Role: Equatable, Sendable {
        case first
        case standby
        case takeOver
    }

    public struct Settings: Sendable, Equatable {
        public var source: String
        public var devices: [String]
        public var threads: Int
        /// Recover from the journal even where the kernel could resend (`fuse.recovery=journal`):
        /// how the path older kernels take is tested on a new one.
        public var journalOnly: Bool
        public var role: Role
        /// The mount's device number (the FUSE connection): names its state for the supervisor.
        public var connection: (major: UInt32, minor: UInt32)?

        public init(
            source: String, devices: [String] = [], threads: Int, journalOnly: Bool = false, role: Role = .first,
            connection: (major: UInt32, minor: UInt32)? = nil
        ) {
            self.source = source
            self.devices = devices
            self.threads = threads
            self.journalOnly = journalOnly
            self.role = role
            self.connection = connection
        }

        public static func == (a: Settings, b: Settings) -> Bool {
            a.source == b.source && a.devices == b.devices && a.threads == b.threads && a.journalOnly == b.journalOnly
                && a.role == b.role && a.connection?.major == b.connection?.major
                && a.connection?.minor == b.connection?.minor
        }

        /// The arguments after argv[0], led by `flag` (the worker's or the supervisor's).
        public func arguments(flag: String = FUSEDaemon.flag) -> [String] {
            var arguments = [flag, "--threads", String(threads)] + devices.flatMap { ["--device", $0] }
            if journalOnly { arguments.append("--journal") }
            if let connection { arguments += ["--connection", "\(connection.major):\(connection.minor)"] }
            switch role {
            case .first: break
            case .standby: arguments.append("--standby")
            case .takeOver: arguments.append("--take-over")
            }
            return arguments + ["--", source]
        }

        public init?(arguments: [String], flag: String = FUSEDaemon.flag) {
            guard arguments.first == flag else { return nil }
            var settings = Settings(source: "", threads: 1)
            var index = 1
            while index < arguments.count {
                let value = index + 1 < arguments.count ? arguments[index + 1] : nil
                switch (arguments[index], value) {
                case ("--threads", let text?):
                    guard let count = Int(text), (1...FUSEJournal.maximumChannels).contains(count) else { return nil }
                    settings.threads = count
                    index += 2
                case ("--device", let path?):
                    settings.devices.append(path)
                    index += 2
                case ("--connection", let text?):
                    let parts = text.split(separator: ":")
                    guard parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]) else {
                        return nil
                    }
                    settings.connection = (major, minor)
                    index += 2
                case ("--journal", _):
                    settings.journalOnly = true
                    index += 1
                case ("--standby", _):
                    settings.role = .standby
                    index += 1
                case ("--take-over", _):
                    settings.role = .takeOver
                    index += 1
                case ("--", let source?) where index + 2 == arguments.count:
                    settings.source = source
                    self = settings
                    return
                default:
                    return nil
                }
            }
            return nil
        }
    }

    public static func main(_ arguments: [String]) -> Int32 {
        // A long-lived daemon must not keep its starter's working directory busy (it would
        // block unmounting that filesystem); every path it is given is absolute.
        _ = chdir("/")
        var logger = Logger(label: "erofs-fuse-worker[\(getpid())]")
        logger.logLevel = .info
        let status = StatusPipe(descriptor: statusDescriptor)
        guard let settings = Settings(arguments: arguments) else {
            logger.error("bad arguments: \(arguments)")
            status.finish("error bad worker arguments")
            return 2
        }
        let filesystem: EROFSFilesystem
        let journal: FUSEJournal
        do {
            filesystem = try EROFSFilesystem(path: settings.source, devicePaths: settings.devices)
            journal = try FUSEJournal(descriptor: journalDescriptor, channels: settings.threads)
        } catch {
            logger.error("\(error)")
            status.finish("error \(error)")
            return 1
        }
        let channels = (0..<Int32(settings.threads)).map { firstChannelDescriptor + $0 }
        let server = FUSEServer(
            operations: FUSEOperations(filesystem: filesystem, logger: logger),
            settings: .init(threads: settings.threads), logger: logger)
        switch settings.role {
        case .first:
            server.whenReady {
                let resend = server.kernelFlags.contains(.hasResend) && !settings.journalOnly
                status.finish("ready \(getpid()) \(resend ? "resend" : "journal")")
            }
        case .standby:
            // Our code mapped now, while nothing waits: a takeover that had to read it from
            // disk (the caches dropped since the binary last ran) would stall every request.
            // Mapped pages also stay through drop_caches.
            _ = cshim_populate_executable_code()
            status.say("prepared \(getpid())")
            guard waitForWakeUp() else {
                logger.info("the supervisor is gone; a standby has nothing to do")
                return 0
            }
            fallthrough
        case .takeOver:
            let started = monotonicSeconds()
            let outcome = server.takeOver(channels: channels, journal: journal, preferResend: !settings.journalOnly)
            let method = outcome == .resent ? "resend" : "journal"
            logger.info(
                "took over \(settings.source): \(outcome) in \(Int((monotonicSeconds() - started) * 1_000_000)) us")
            server.whenReady { status.finish("ready \(getpid()) \(method)") }
        }
        do {
            try server.serve(channels: channels, journal: journal, initialized: settings.role != .first)
        } catch {
            logger.error("\(error)")
            status.finish("error \(error)")
            return 1
        }
        logger.info("connection ended; exiting")
        FUSEStateStore().removeStates(ofProcess: getpid())
        return 0
    }

    /// Blocks until the supervisor writes the wake-up byte (true) or is gone (false).
    static func waitForWakeUp() -> Bool {
        var byte: UInt8 = 0
        while true {
            let got = read(wakeDescriptor, &byte, 1)
            if got < 0 && errno == EINTR { continue }
            return got == 1
        }
    }
}

/// A worker's status pipe to its supervisor: lines, the last of which closes it.
final class StatusPipe: Sendable {
    let descriptor: Int32
    private let finished = Mutex(false)

    init(descriptor: Int32) { self.descriptor = descriptor }

    func say(_ line: String) {
        let text = line.split(separator: "\n").joined(separator: " ") + "\n"
        text.withCString { _ = write(descriptor, $0, strlen($0)) }
    }

    /// The last line, once: later calls write nothing.
    func finish(_ line: String) {
        guard
            finished.withLock({ done in
                defer { done = true }; return !done
            })
        else { return }
        say(line)
        close(descriptor)
    }
}
