#if canImport(Glibc)
import Glibc
#endif
import CShim
import ImageSources
import Logging
import NBDKernel
import NBDServer
import RemoteSources
import Supervision
import SystemCalls
import SystemPackage

/// A serving worker of one nbd device, run as `mount.erofs --serve-nbd-device ...` by the
/// backend or by the supervisor: it opens the source, gets a socket to the kernel (CONNECT a new
/// device, RECONFIGURE a device whose link is dead, or a live socket handed over by the previous
/// worker), reports on descriptor 3, and serves until the kernel disconnects.
///
/// Descriptors: 3, the status pipe (one `DaemonReport` once attached); when supervised, 4, the
/// control channel (`ControlMessage`), and 5, the request journal (shared memory recording what
/// was taken off the socket and not answered, so a standby can go on serving the same socket
/// if this worker dies); 6, the image, opened and checked by whoever started the device (the
/// path is opened only by a worker an older supervisor started, which passes no image). SIGUSR2 asks a supervised worker to hand its socket over: it stops at
/// a request boundary, sends every reply it owes, and passes the socket back.
public enum NBDDaemon {
    public static let flag = "--serve-nbd-device"
    static let statusDescriptor: Int32 = 3
    static let controlDescriptor: Int32 = 4
    static let journalDescriptor: Int32 = 5
    static let imageDescriptor: Int32 = 6

    /// How the worker gets its socket: CONNECT a free device, RECONFIGURE device N whose link is
    /// dead, or wait as a standby for the supervisor's word.
    public typealias Mode = WorkerMode

    /// How a worker ended, as its exit status: the supervisor decides from it whether the device
    /// still needs a server.
    public enum Exit: Int32 {
        /// The kernel sent NBD_CMD_DISC (unmount with disconnect-on-close, `-u`, `--disconnect`).
        case disconnected = 0
        case failed = 1
        case badArguments = 2
        /// The socket died under the worker (the kernel dropped it).
        case socketClosed = 3
        /// Stopped by SIGUSR2 and handed the live socket to the supervisor.
        case handedOff = 4
    }

    public struct Settings: Sendable, Equatable {
        public var source: String
        public var identifier: String
        public var deadConnectionTimeout: UInt64
        public var forceIoctl: Bool
        public var mode: Mode
        /// The block layer's per-request timer (/sys/block/nbdN/queue/io_timeout). With no nbd
        /// TIMEOUT the kernel never fails a slow request on expiry, it only re-arms the timer;
        /// but expiry is also when a request sent on a socket that died is moved to the new
        /// socket. A short timer bounds the stall of a recovery.
        public var requeueMilliseconds: UInt32
        /// How long a worker polls the socket for the next request before it sleeps in poll(2)
        /// (`KernelModeServer`'s `pollMicroseconds`; 0: never).
        public var pollMicroseconds: UInt32

        var arguments: [String] {
            [
                NBDDaemon.flag, source, identifier, String(deadConnectionTimeout), forceIoctl ? "ioctl" : "netlink",
                mode.argument, String(requeueMilliseconds), String(pollMicroseconds),
            ]
        }

        public init(
            source: String, identifier: String, deadConnectionTimeout: UInt64, forceIoctl: Bool,
            mode: Mode = .connect, requeueMilliseconds: UInt32 = 250,
            pollMicroseconds: UInt32 = Self.defaultPollMicroseconds
        ) {
            self.source = source
            self.identifier = identifier
            self.deadConnectionTimeout = deadConnectionTimeout
            self.forceIoctl = forceIoctl
            self.mode = mode
            self.requeueMilliseconds = requeueMilliseconds
            self.pollMicroseconds = pollMicroseconds
        }

        /// Under emulation a request follows a reply by a few hundred microseconds: polling that
        /// long catches it without a sleep and a wake-up. 8000 small files read through the VM's
        /// nbd device went from 0.62x to 1.04x of a loop device with 1000. The poll stops after
        /// a longer gap (see `MessageReader`), so an idle device costs nothing.
        public static let defaultPollMicroseconds: UInt32 = 1000

        /// Also the 7 arguments of builds before the poll setting: a supervisor started by one
        /// spawns the workers of a hot upgrade.
        init?(arguments: [String]) {
            guard arguments.count == 7 || arguments.count == 8, arguments[0] == NBDDaemon.flag,
                let timeout = UInt64(arguments[3]), ["ioctl", "netlink"].contains(arguments[4]),
                let mode = Mode(argument: arguments[5]), let requeue = UInt32(arguments[6])
            else { return nil }
            var poll = Self.defaultPollMicroseconds
            if arguments.count == 8 {
                guard let value = UInt32(arguments[7]) else { return nil }
                poll = value
            }
            self.init(
                source: arguments[1], identifier: arguments[2], deadConnectionTimeout: timeout,
                forceIoctl: arguments[4] == "ioctl", mode: mode, requeueMilliseconds: requeue, pollMicroseconds: poll)
        }
    }

    /// The worker's whole life; returns its exit status.
    public static func main(_ arguments: [String]) -> Int32 {
        var logger = Logger(label: "erofs-nbd-daemon")
        logger.logLevel = .info
        guard let settings = Settings(arguments: arguments) else {
            DaemonReport.failed("internal error: bad daemon arguments \(arguments)").send(to: statusDescriptor)
            return Exit.badArguments.rawValue
        }
        // A disconnect closes the socket under a reply in flight: that is an error to handle, not a signal.
        signal(SIGPIPE, SIG_IGN)
        // Blocked here, before any thread exists, so only the watcher below ever takes it.
        var handOffSignal = sigset_t()
        sigemptyset(&handOffSignal)
        sigaddset(&handOffSignal, SIGUSR2)
        pthread_sigmask(SIG_BLOCK, &handOffSignal, nil)
        do {
            return try serve(settings, logger: logger).rawValue
        } catch {
            logger.error("\(error)")
            DaemonReport.failed("\(error)").send(to: statusDescriptor)
            return Exit.failed.rawValue
        }
    }

    static func serve(_ settings: Settings, logger: Logger) throws(SystemError) -> Exit {
        // Looked at before anything is opened: descriptors 4 and 5 are the supervisor's only if
        // they are open now (the spawn closed everything above what it passed).
        let control: ControlChannel? =
            fcntl(controlDescriptor, F_GETFD) >= 0 ? ControlChannel(descriptor: controlDescriptor) : nil
        var journal: RequestJournal?
        if control != nil, fcntl(journalDescriptor, F_GETFD) >= 0 {
            do { journal = try RequestJournal(descriptor: journalDescriptor) } catch {
                logger.warning("no request journal, a crash will cost a new socket: \(error)")
            }
        }
        let handedDown = fcntl(imageDescriptor, F_GETFD) >= 0
        // A remote image is opened by every worker from its description (no descriptor to hand
        // down); a local one is the file the mount checked.
        let (served, source) = try ServedSource.openServed(
            argument: settings.source, handedDown: imageDescriptor, warn: { logger.warning("\($0)") })
        var recovery: RequestJournal.Recovery?
        /// With a journal: the open file big replies are sent from (see `KernelModeServer`).
        var replyFile: OwnedDescriptor?

        var ioctlAttachment: NBDIoctlAttachment?
        // Our end of the kernel's link, open until we return (or hand it over).
        let socket: OwnedDescriptor
        let index: UInt32
        let method: DeviceState.AttachMethod
        switch settings.mode {
        case .connect:
            let connection = try connect(settings, size: source.size)
            (index, method, ioctlAttachment) = (connection.index, connection.method, connection.ioctl)
            socket = connection.socket
        case .reattach(let device):
            socket = try reconnect(device: device, settings: settings)
            (index, method) = (device, .netlink)
        case .standby(let known):
            guard let control else {
                throw SystemError("standby", detail: "no control channel on descriptor \(controlDescriptor)")
            }
            // Everything that can be done before the word comes is done now: the family
            // resolved, the code paged in (in the background, best effort, Linux 5.14+: the
            // takeover code has never run here; without this the first takeover stalled reads
            // 0.3-1 s in the VM tests). Taking over is then one RECONFIGURE or a resume.
            let netlink = try NBDNetlink.open()
            _ = cshim_populate_executable_code_in_background()
            try control.send(.prepared)
            var word = try control.receive()
            var told: UInt32?
            if case .device(let index)? = word {
                told = index
                word = try control.receive()
            }
            guard let device = known ?? told else {
                throw SystemError(
                    .protocolViolation, "standby",
                    detail: "the supervisor never said which device (\(String(describing: word)))")
            }
            if case .replyFile(let file)? = word {
                replyFile = OwnedDescriptor(file.take())
                word = try control.receive()
            }
            if case .resume(let live)? = word {
                do {
                    guard let journal else {
                        throw SystemError("resume /dev/nbd\(device)", detail: "no request journal")
                    }
                    let file = replyFile?.rawValue ?? -1
                    let position = file >= 0 ? lseek(file, 0, SEEK_CUR) : -1
                    recovery = try journal.recover(replyFilePosition: position >= 0 ? UInt64(position) : nil)
                    try control.send(.resumed(true))
                    logger.info(
                        "/dev/nbd\(device): resuming: \(recovery?.unanswered.count ?? 0) requests to answer, \(recovery?.unfinishedSend == nil ? "no" : "one") reply to complete"
                    )
                } catch {
                    logger.warning("/dev/nbd\(device): cannot resume the live socket, asking for a new one: \(error)")
                    // Our copies go before we answer: the supervisor then lets the link die.
                    live.close()
                    replyFile = nil
                    try control.send(.resumed(false))
                    word = try control.receive()
                }
                if recovery != nil { word = .serveLink(live) }
            }
            switch word {
            case .serveLink(let handedOver)?:
                socket = OwnedDescriptor(handedOver.take())
            case .reconnect?:
                socket = try reconnect(device: device, settings: settings, netlink: netlink)
            case let other:
                throw SystemError(
                    .protocolViolation, "standby for /dev/nbd\(device)",
                    detail: "unexpected word from the supervisor: \(String(describing: other))")
            }
            (index, method) = (device, .netlink)
        }
        // Only a supervisor that gave us a journal knows these words (an older one, upgrading
        // to us, does not).
        if let control, journal != nil, recovery == nil, method == .netlink {
            // The supervisor's copy keeps the kernel's link up if we die (it has one already
            // of a socket it handed us; another copy is harmless). A supervisor gone by now
            // also misses the report below, which releases the device.
            try? control.send(.serving(socket.rawValue))
            // Big replies go by sendfile from a file of their own; a remote image has none.
            if let file = source as? FileSource {
                replyFile = OwnedDescriptor(
                    handedDown ? try reopen(file) : open(settings.source, O_RDONLY | O_CLOEXEC))
                try? control.send(.replyFile(replyFile?.rawValue ?? -1))
            } else {
                try? control.send(.replyFile(-1))  // none: the supervisor need not wait for one
            }
        }
        logger.info(
            "serving \(served.displayName) on /dev/nbd\(index) over \(method.rawValue) (\(settings.mode.argument))")
        guard DaemonReport.ready(index: Int(index), method: method.rawValue, pid: getpid()).send(to: statusDescriptor)
        else {
            // Whoever started us died before learning of the device: nobody will mount or
            // release it, so it must not outlive us.
            logger.error("/dev/nbd\(index): nobody took the report; releasing the device")
            if settings.mode == .connect { releaseUnclaimed(index: index, method: method, ioctl: ioctlAttachment) }
            return .failed
        }

        let server = try KernelModeServer(
            socket: FileDescriptor(rawValue: socket.rawValue), source: source, logger: logger, journal: journal,
            resuming: recovery,
            replyFile: replyFile?.rawValue ?? -1, pollMicroseconds: settings.pollMicroseconds)
        if control != nil {
            _ = try JoinableThread {
                var set = sigset_t()
                sigemptyset(&set)
                sigaddset(&set, SIGUSR2)
                var received: Int32 = 0
                while sigwait(&set, &received) != 0 {}
                server.stop()
            }
        }
        let end = try server.run()
        logger.info("/dev/nbd\(index): serving ended (\(end))")
        if end == .stopped, let control {
            try control.send(.handOff(socket.rawValue))
            return .handedOff
        }
        socket.close()
        // An ioctl device's NBD_DO_IT returns once the kernel has let go of the socket.
        if let ioctlAttachment { _ = ioctlAttachment.waitUntilFinished() }
        return end == .disconnectRequested ? .disconnected : .socketClosed
    }

    /// A file description of its own (its position counts a big reply's progress) for the
    /// image open on `source`: reopened through /proc/self/fd, and checked to be that file.
    static func reopen(_ source: FileSource) throws(SystemError) -> Int32 {
        let path = "/proc/self/fd/\(source.descriptor.rawValue)"
        let fd = try retryingOnInterrupt("reopen \(source.path) as", path: path) { open(path, O_RDONLY | O_CLOEXEC) }
        let expected = try FileStatus.fstat(source.descriptor)
        guard let actual = try? FileStatus.fstat(FileDescriptor(rawValue: fd)),
            (actual.device, actual.inode) == (expected.device, expected.inode)
        else {
            close(fd)
            throw SystemError(.refused, "reopen", path: source.path, detail: "\(path) is not the image handed down")
        }
        return fd
    }

    static func releaseUnclaimed(index: UInt32, method: DeviceState.AttachMethod, ioctl: NBDIoctlAttachment?) {
        switch method {
        case .netlink:
            try? NBDNetlink.open().disconnect(index: index)
        case .ioctl:
            let fd = open("/dev/nbd\(index)", O_RDWR | O_CLOEXEC)
            if fd >= 0 {
                _ = cshimDisconnect(fd)
                close(fd)
            }
            _ = ioctl?.waitUntilFinished()
        }
    }

    /// A new device: our end of its socketpair, and how it was attached.
    struct Connection: ~Copyable {
        var socket: OwnedDescriptor
        var index: UInt32
        var method: DeviceState.AttachMethod
        var ioctl: NBDIoctlAttachment?
    }

    /// A new device: netlink CONNECT (the ioctl interface where the family is missing or when
    /// asked).
    static func connect(_ settings: Settings, size: UInt64) throws(SystemError) -> Connection {
        // The kernel holds its own reference to its end once attached: ours closes as this
        // returns (keeping it would keep a dead link looking alive).
        let ends = try socketPair()
        let flags: NBDServerFlags = [.hasFlags, .readOnly, .sendFlush]
        if !settings.forceIoctl, let netlink = try? NBDNetlink.open() {
            let index = try netlink.connect(
                NBDConnectRequest(
                    sizeBytes: size, blockSizeBytes: 512, serverFlags: flags,
                    deadConnectionTimeoutSeconds: settings.deadConnectionTimeout,
                    backendIdentifier: settings.identifier, sockets: [ends.kernelEnd.rawValue]))
            setRequeueTimer(device: index, milliseconds: settings.requeueMilliseconds)
            return Connection(socket: ends.serverEnd, index: index, method: .netlink, ioctl: nil)
        }
        let attachment = try NBDIoctlAttachment.attachToFreeDevice(
            socket: ends.kernelEnd.rawValue,
            configuration: .init(sizeBytes: size, blockSizeBytes: 512, serverFlags: flags))
        return Connection(socket: ends.serverEnd, index: attachment.device.index, method: .ioctl, ioctl: attachment)
    }

    /// Gives device `index`, whose link is dead, a new socket with RECONFIGURE, and makes sure
    /// the kernel kept it: when no socket of the device is dead the kernel returns success and
    /// drops the new one, which shows as a hang-up on our end.
    static func reconnect(device index: UInt32, settings: Settings, netlink: NBDNetlink? = nil) throws(SystemError)
        -> OwnedDescriptor
    {
        let netlink = if let netlink { netlink } else { try NBDNetlink.open() }
        // The kernel marks the old socket dead from its receive worker, a moment after the old
        // server's end closed: a socket it drops that early is worth a few more tries.
        var attempt = 0
        while true {
            attempt += 1
            let ends = try socketPair()
            try netlink.reconfigure(index: index, sockets: [ends.kernelEnd.rawValue], identifier: settings.identifier)
            // Ours closed first: only the kernel's reference is left to keep the peer open.
            ends.kernelEnd.close()
            let serverEnd = ends.serverEnd
            // The request timer set at CONNECT stays; setting it now would freeze the queue,
            // which waits for the very requests that wait for this socket.
            if !isHungUp(serverEnd.rawValue) { return serverEnd }
            guard attempt < 20 else {
                throw SystemError(
                    .refused, "nbd RECONFIGURE /dev/nbd\(index)",
                    detail:
                        "the kernel did not take the new socket: the device has no dead connection (is its daemon still serving?)"
                )
            }
            usleep(50_000)
        }
    }

    /// A socketpair for the kernel: its end, and the server's.
    struct SocketEnds: ~Copyable {
        var kernelEnd: OwnedDescriptor
        var serverEnd: OwnedDescriptor
    }

    static func socketPair() throws(SystemError) -> SocketEnds {
        let pair = try DescriptorPair.socketPair(type: SOCK_STREAM)
        return SocketEnds(kernelEnd: pair.first, serverEnd: pair.second)
    }

    /// Whether the other end of a socketpair is gone (every reference closed).
    static func isHungUp(_ socket: Int32) -> Bool {
        // A Unix stream socket whose peer is closed has both directions shut: POLLHUP.
        var poller = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 0) > 0 else { return false }
        return poller.revents & Int16(POLLHUP) != 0
    }

    /// Best effort: a kernel without the attribute keeps its 30 s default, which only makes a
    /// recovery slower. Only while no request is in flight: the write freezes the queue.
    static func setRequeueTimer(device index: UInt32, milliseconds: UInt32) {
        guard milliseconds > 0 else { return }
        let path = "/sys/block/nbd\(index)/queue/io_timeout"
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        var text = "\(milliseconds)\n"
        text.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
}

/// NBD_DISCONNECT then NBD_CLEAR_SOCK on an ioctl-attached device.
func cshimDisconnect(_ fd: Int32) -> Int32 {
    let result = cshim_ioctl_ulong(fd, CSHIM_NBD_DISCONNECT, 0)
    _ = cshim_ioctl_ulong(fd, CSHIM_NBD_CLEAR_SOCK, 0)
    return result
}
