#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import Logging
import NBDKernel
import SystemCalls

/// `mount.erofs -t erofs.nbd IMAGE DIR`: a daemon serves the image to the kernel's nbd driver
/// and /dev/nbdN is mounted. Anything that fails on the way is undone: the device is
/// disconnected, the daemon stopped and the state removed.
public struct NBDBackend: Sendable {
    public struct Request: Sendable {
        public var source: String
        public var mountPoint: String
        public var flags: UInt
        public var data: String
        public var forceIoctl: Bool
        public var deadConnectionTimeout: UInt64
        public var fake: Bool

        public init(source: String, mountPoint: String, flags: UInt, data: String, forceIoctl: Bool,
                    deadConnectionTimeout: UInt64, fake: Bool) {
            self.source = source
            self.mountPoint = mountPoint
            self.flags = flags
            self.data = data
            self.forceIoctl = forceIoctl
            self.deadConnectionTimeout = deadConnectionTimeout
            self.fake = fake
        }
    }

    let logger: Logger
    let store: StateStore

    public init(logger: Logger, store: StateStore = StateStore()) {
        self.logger = logger
        self.store = store
    }

    /// Returns the state of the mounted device.
    public func mount(_ request: Request) throws(MountFailure) -> DeviceState? {
        let image = try ImageProbe.probe(request.source)
        try MountPoint.check(request.mountPoint)
        if request.fake { return nil }
        let source = canonicalPath(request.source)
        let identifier = "erofs-mount-" + randomHex(bytes: 8)
        do { try store.ensureDirectory() } catch {
            throw MountFailure("cannot prepare the state directory", cause: error)
        }

        var statusEnds: [Int32] = [-1, -1]
        guard pipe(&statusEnds) == 0 else {
            throw MountFailure("cannot start the serving daemon", cause: .lastErrno("pipe"))
        }
        for end in statusEnds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        let settings = NBDDaemon.Settings(
            source: source, identifier: identifier, deadConnectionTimeout: request.deadConnectionTimeout,
            forceIoctl: request.forceIoctl)
        let logFile = "\(store.directory)/\(identifier).log"
        let daemon: DaemonProcess
        do {
            daemon = try DaemonProcess.spawn(arguments: settings.arguments, descriptors: [statusEnds[1]], logFile: logFile)
        } catch {
            close(statusEnds[0]); close(statusEnds[1])
            throw MountFailure("cannot start the serving daemon", cause: error)
        }
        close(statusEnds[1])
        defer { close(statusEnds[0]) }

        let report: DaemonReport?
        do { report = try DaemonReport.receive(from: statusEnds[0], timeout: 30) } catch {
            daemon.terminate(signal: SIGKILL)
            unlink(logFile)
            throw MountFailure("the serving daemon did not start", cause: error)
        }
        guard case .ready(let index, let method)? = report else {
            var status: Int32 = 0
            waitpid(daemon.pid, &status, 0)
            let log = (try? readTextFile(logFile)) ?? ""
            unlink(logFile)
            if case .failed(let message)? = report { throw MountFailure("cannot serve \(source): \(message)") }
            throw MountFailure("the serving daemon exited before attaching a device (\(describe(waitStatus: status)))"
                + (log.isEmpty ? "" : "; its log: \(log.split(separator: "\n").suffix(3).joined(separator: " | "))"))
        }

        let device = NBDDevice(index: UInt32(index))
        let state = DeviceState(
            index: index, source: source, sizeBytes: image.size, blockSize: 512, backendIdentifier: identifier,
            attachMethod: method, deadConnectionTimeout: request.deadConnectionTimeout, daemonPID: daemon.pid,
            daemonStartTime: daemon.startTime, mountPoint: canonicalPath(request.mountPoint), mountOptions: request.data)
        do {
            try store.save(state)
            try device.waitUntilInService(timeout: .seconds(30))
            try Mount.mount(source: device.path, target: request.mountPoint, type: "erofs", flags: request.flags, data: request.data)
        } catch {
            NBDTeardown(logger: logger, store: store).release(state)
            throw MountFailure("cannot mount \(source) through \(device.path)", cause: error)
        }
        if method == .netlink {
            // Now that the mount holds the device, its last close (the unmount) may disconnect it.
            do {
                try NBDNetlink.open().reconfigure(index: UInt32(index), identifier: identifier, clientFlags: [.disconnectOnClose])
            } catch {
                logger.warning("\(device.path): cannot turn on disconnect-on-close: \(error)")
            }
        } else {
            logger.warning("\(device.path) is attached through the ioctl interface: it cannot be recovered if its daemon dies")
        }
        return state
    }

    private func describe(waitStatus status: Int32) -> String {
        if status & 0x7f == 0 { return "exit status \((status >> 8) & 0xff)" }
        return "killed by signal \(status & 0x7f)"
    }
}

/// Releases an nbd device we manage: disconnect, wait for its daemon, remove its state.
public struct NBDTeardown: Sendable {
    let logger: Logger
    let store: StateStore

    public init(logger: Logger, store: StateStore = StateStore()) {
        self.logger = logger
        self.store = store
    }

    /// Best effort: every step runs even when an earlier one failed; what failed is returned.
    @discardableResult
    public func release(_ state: DeviceState) -> [String] {
        var problems: [String] = []
        let device = NBDDevice(index: UInt32(state.index))
        let daemon = DaemonProcess(pid: state.daemonPID, startTime: state.daemonStartTime)
        if device.isInService || device.serverPID != nil {
            switch state.attachMethod {
            case .netlink:
                do { try NBDNetlink.open().disconnect(index: UInt32(state.index)) } catch {
                    problems.append("disconnect \(device.path): \(error)")
                }
            case .ioctl:
                let fd = open(device.path, O_RDWR | O_CLOEXEC)
                if fd >= 0 {
                    _ = cshimDisconnect(fd)
                    close(fd)
                } else {
                    problems.append("open \(device.path) to disconnect it: \(String(cString: strerror(errno)))")
                }
            }
        }
        // The daemon ends by itself once the kernel disconnects; a daemon that does not is stopped.
        // On the ioctl path its NBD_DO_IT can take seconds to return under emulation (seen once
        // past 11 s on 6.12), during which no signal ends it: be patient before giving up.
        if !daemon.waitForExit(timeout: 10) && !daemon.terminate(signal: SIGTERM, timeout: 5) {
            daemon.terminate(signal: SIGKILL, timeout: 15)
        }
        if daemon.isAlive { problems.append("daemon \(state.daemonPID) is still running") }
        do { try store.remove(device: state.index) } catch { problems.append("\(error)") }
        unlink("\(store.directory)/\(state.backendIdentifier).log")
        return problems
    }
}

func randomHex(bytes count: Int) -> String {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in
        let byte = UInt8.random(in: 0...255, using: &generator)
        return String(byte >> 4, radix: 16) + String(byte & 0xf, radix: 16)
    }.joined()
}
