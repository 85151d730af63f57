#if canImport(Glibc)
import Glibc
#endif
import LocalBackend
import Supervision
import CShim
import EROFSReader
import FUSEServer
import ImageSources
import RemoteSources
import Logging
import Synchronization
import SystemCalls

/// A serving worker: `mount.erofs --serve-fuse --threads N [--device PATH]... --mode MODE --
/// IMAGE`, started by the shared supervisor (FUSESupervisor) with its status pipe as
/// descriptor 3, its control channel as 4, the request journal as 5 and the connection's
/// channels (the /dev/fuse descriptor and its clones, all held by the supervisor too) from 6
/// on. It opens the image, then by mode (Supervision.WorkerMode):
/// - connect (the mount's first worker): serves from the kernel's INIT on;
/// - standby: says `prepared` and waits for the supervisor's word: `resume` (the worker died),
///   `serveLink` (an upgrade: the worker stopped at a request boundary) or `reconnect`; the end
///   of the channel (the supervisor is gone) makes it exit: a standby must never be what keeps
///   a dead connection open;
/// - reattach: takes over at once, as a standby told to.
/// Taking over: the dead worker's unanswered requests are answered (FUSE_NOTIFY_RESEND, or the
/// journal), then it serves. It sends channel 0 as its link (`serving`) unless it resumed, and
/// reports "ready LINK METHOD PID" (METHOD: resend or journal). SIGUSR2 (hot upgrade): it stops
/// at a request boundary, hands channel 0 over and exits `handedOff`; it exits
/// `connectionEnded` when the kernel ends the connection (unmount, abort: ENODEV).
public enum FUSEDaemon {
    public static let flag = "--serve-fuse"
    static let statusDescriptor: Int32 = 3
    static let controlDescriptor: Int32 = 4
    static let journalDescriptor: Int32 = 5
    static let firstChannelDescriptor: Int32 = 6

    public enum Exit: Int32 {
        case connectionEnded = 0
        case failed = 1
        case badArguments = 2
        /// Stopped by SIGUSR2 and handed the connection back.
        case handedOff = 4
    }

    public struct Settings: Sendable, Equatable {
        public var source: String
        public var devices: [String]
        public var threads: Int
        /// Recover from the journal even where the kernel could resend (`fuse.recovery=journal`):
        /// how the path older kernels take is tested on a new one.
        public var journalOnly: Bool
        /// SiblingPrefetch's budget in KiB (0: off).
        public var prefetchKiB: Int
        /// Whether listings are pushed ahead of their reads (SiblingPrefetch.Ahead).
        public var prefetchAhead: SiblingPrefetch.Ahead = .auto
        public var mode: WorkerMode
        /// The mount's device number (the FUSE connection): names its state.
        public var connection: (major: UInt32, minor: UInt32)?

        public init(
            source: String, devices: [String] = [], threads: Int, journalOnly: Bool = false,
            mode: WorkerMode = .connect, connection: (major: UInt32, minor: UInt32)? = nil,
            prefetchKiB: Int = FUSEOperations.defaultPrefetchBudget / 1024
        ) {
            self.source = source
            self.devices = devices
            self.threads = threads
            self.journalOnly = journalOnly
            self.prefetchKiB = prefetchKiB
            self.mode = mode
            self.connection = connection
        }

        public static func == (a: Settings, b: Settings) -> Bool {
            a.source == b.source && a.devices == b.devices && a.threads == b.threads && a.journalOnly == b.journalOnly
                && a.prefetchKiB == b.prefetchKiB && a.prefetchAhead == b.prefetchAhead
                && a.mode == b.mode && a.connection?.major == b.connection?.major
                && a.connection?.minor == b.connection?.minor
        }

        /// The arguments after argv[0], led by `flag` (the worker's or the supervisor's).
        public func arguments(flag: String = FUSEDaemon.flag) -> [String] {
            var arguments =
                [flag, "--threads", String(threads), "--prefetch-kb", String(prefetchKiB)]
                + devices.flatMap { ["--device", $0] }
            if journalOnly { arguments.append("--journal") }
            // Only when not the default: a worker of an older build (an upgrade's standby) parses them.
            if prefetchAhead != .auto { arguments += ["--prefetch-ahead", prefetchAhead.rawValue] }
            if let connection { arguments += ["--connection", "\(connection.major):\(connection.minor)"] }
            return arguments + ["--mode", mode.argument, "--", source]
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
                case ("--prefetch-kb", let text?):
                    guard let kib = Int(text), kib >= 0 else { return nil }
                    settings.prefetchKiB = kib
                    index += 2
                case ("--prefetch-ahead", let text?):
                    guard let ahead = SiblingPrefetch.Ahead(rawValue: text) else { return nil }
                    settings.prefetchAhead = ahead
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
                case ("--mode", let text?):
                    guard let mode = WorkerMode(argument: text) else { return nil }
                    settings.mode = mode
                    index += 2
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

    /// Set by the SIGUSR2 thread: `serve` returned for a hand-over, not because the connection
    /// ended.
    private static let handingOff = Atomic<Bool>(false)

    public static func main(_ arguments: [String]) -> Int32 {
        // A long-lived daemon must not keep its starter's working directory busy (it would
        // block unmounting that filesystem); every path it is given is absolute.
        _ = chdir("/")
        var logger = Logger(label: "erofs-fuse-worker[\(getpid())]")
        logger.logLevel = .info
        guard let settings = Settings(arguments: arguments), let connection = settings.connection else {
            logger.error("bad arguments: \(arguments)")
            DaemonReport.failed("bad worker arguments").send(to: statusDescriptor)
            return Exit.badArguments.rawValue
        }
        // SIGUSR2 (hand over) is taken by one thread with sigwait: blocked here, before any
        // thread exists, so every thread inherits the mask.
        var handOffSignal = sigset_t()
        sigemptyset(&handOffSignal)
        sigaddset(&handOffSignal, SIGUSR2)
        pthread_sigmask(SIG_BLOCK, &handOffSignal, nil)
        let control = ControlChannel(descriptor: controlDescriptor)
        let filesystem: EROFSFilesystem
        let journal: FUSEJournal
        let served: ServedSource
        do {
            served = try ServedSource(argument: settings.source)
        } catch {
            logger.error("\(error)")
            DaemonReport.failed("\(error)").send(to: statusDescriptor)
            return Exit.badArguments.rawValue
        }
        do {
            let source: any RandomAccessSource
            do { source = try served.open { logger.warning("\($0)") } } catch {
                throw EROFSError(.io, "cannot open the image: \(error)", path: served.displayName)
            }
            var devices: [any RandomAccessSource] = []
            for path in settings.devices {
                do { devices.append(try FileSource(path: path)) } catch {
                    throw EROFSError(.device, "cannot open extra device \(devices.count + 1): \(error)", path: path)
                }
            }
            filesystem = try EROFSFilesystem(source: source, devices: devices)
            journal = try FUSEJournal(descriptor: journalDescriptor, channels: settings.threads)
        } catch {
            logger.error("\(error)")
            DaemonReport.failed("\(error)").send(to: statusDescriptor)
            return Exit.failed.rawValue
        }
        let channels = (0..<Int32(settings.threads)).map { firstChannelDescriptor + $0 }
        let server = FUSEServer(
            operations: FUSEOperations(
                filesystem: filesystem, logger: logger, prefetchBudget: settings.prefetchKiB * 1024,
                prefetchAhead: settings.prefetchAhead),
            settings: .init(threads: settings.threads), logger: logger)
        var takesOver = false
        var resumed = false
        switch settings.mode {
        case .connect:
            break
        case .reattach:
            takesOver = true
        case .standby:
            // Our code mapped now, while nothing waits: a takeover that had to read it from
            // disk (the caches dropped since the binary last ran) would stall every request.
            _ = cshim_populate_executable_code()
            do {
                try control.send(.prepared)
                word: while true {
                    switch try control.receive() {
                    case nil:
                        logger.info("the supervisor is gone; a standby has nothing to do")
                        return Exit.connectionEnded.rawValue
                    // A descriptor a word carries closes with the word: the channels are ours
                    // already.
                    case .resume?:
                        resumed = true
                        break word
                    case .serveLink?:
                        break word
                    case .reconnect?:
                        break word
                    case .replyFile?:
                        continue
                    default:
                        continue  // `device`: the link is known from our arguments
                    }
                }
            } catch {
                logger.error("\(error)")
                return Exit.failed.rawValue
            }
            takesOver = true
        }
        // Ready: our link for the supervisor unless it told us to resume the one it holds (it
        // holds every channel anyway; see FUSESupervisedBackend), no reply file, the report.
        let linkKept = resumed
        let report = { @Sendable (method: String) in
            if !linkKept {
                try? control.send(.serving(channels[0]))
                try? control.send(.replyFile(-1))
            }
            DaemonReport.ready(index: Int(connection.minor), method: method, pid: getpid()).send(to: statusDescriptor)
        }
        var replaying = false
        if takesOver {
            let started = monotonicSeconds()
            let outcome = server.takeOver(channels: channels, journal: journal, preferResend: !settings.journalOnly)
            replaying = outcome != .resent
            logger.info(
                "took over \(served.displayName): \(outcome) in \(Int((monotonicSeconds() - started) * 1_000_000)) us")
            if resumed { try? control.send(.resumed(true)) }
            // Said before any request is answered: a request that kills us then kills a worker
            // the supervisor counts as serving (its crash-loop guard).
            report(outcome == .resent ? "resend" : "journal")
        } else {
            server.whenReady {
                report(server.kernelFlags.contains(.hasResend) && !settings.journalOnly ? "resend" : "journal")
            }
        }
        do {
            _ = try JoinableThread {
                var signals = sigset_t()
                sigemptyset(&signals)
                sigaddset(&signals, SIGUSR2)
                var received: Int32 = 0
                while sigwait(&signals, &received) != 0 {}
                handingOff.store(true, ordering: .sequentiallyConsistent)
                server.stop()
            }
            try server.serve(channels: channels, journal: journal, initialized: takesOver, replaying: replaying)
        } catch {
            logger.error("\(error)")
            DaemonReport.failed("\(error)").send(to: statusDescriptor)
            return Exit.failed.rawValue
        }
        if handingOff.load(ordering: .sequentiallyConsistent) {
            // Every thread stopped with its replies sent: the successor finds nothing owed.
            do { try control.send(.handOff(channels[0])) } catch { logger.error("\(error)") }
            logger.info("handed over")
            return Exit.handedOff.rawValue
        }
        logger.info("connection ended; exiting")
        // The mount's captured credentials live as long as its connection (a worker that dies
        // or hands over leaves them to its successor; -u removes them after a crash).
        CapturedCredentials.remove(served.capturedCredentials)
        FUSEStateStore().removeStates(ofProcess: getpid())
        return Exit.connectionEnded.rawValue
    }
}
