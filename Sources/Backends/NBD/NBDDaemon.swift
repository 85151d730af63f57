#if canImport(Glibc)
import Glibc
#endif
import CShim
import ImageSources
import Logging
import NBDKernel
import NBDServer
import SystemCalls
import SystemPackage

/// The serving daemon of one nbd device, run as `mount.erofs --serve-nbd-device ...` by the
/// backend: it opens the source, attaches a socketpair's kernel end to a device (netlink
/// CONNECT; the ioctl interface where the netlink family is missing or when asked), reports the
/// device on descriptor 3, and serves until the kernel disconnects.
public enum NBDDaemon {
    public static let flag = "--serve-nbd-device"
    static let statusDescriptor: Int32 = 3

    public struct Settings: Sendable, Equatable {
        public var source: String
        public var identifier: String
        public var deadConnectionTimeout: UInt64
        public var forceIoctl: Bool

        var arguments: [String] {
            [NBDDaemon.flag, source, identifier, String(deadConnectionTimeout), forceIoctl ? "ioctl" : "netlink"]
        }

        init(source: String, identifier: String, deadConnectionTimeout: UInt64, forceIoctl: Bool) {
            self.source = source
            self.identifier = identifier
            self.deadConnectionTimeout = deadConnectionTimeout
            self.forceIoctl = forceIoctl
        }

        init?(arguments: [String]) {
            guard arguments.count == 5, arguments[0] == NBDDaemon.flag, let timeout = UInt64(arguments[3]),
                  ["ioctl", "netlink"].contains(arguments[4]) else { return nil }
            self.init(source: arguments[1], identifier: arguments[2], deadConnectionTimeout: timeout,
                      forceIoctl: arguments[4] == "ioctl")
        }
    }

    /// The daemon's whole life; returns its exit status.
    public static func main(_ arguments: [String]) -> Int32 {
        var logger = Logger(label: "erofs-nbd-daemon")
        logger.logLevel = .info
        guard let settings = Settings(arguments: arguments) else {
            DaemonReport.failed("internal error: bad daemon arguments \(arguments)").send(to: statusDescriptor)
            return 2
        }
        // A disconnect closes the socket under a reply in flight: that is an error to handle, not a signal.
        signal(SIGPIPE, SIG_IGN)
        do {
            return try serve(settings, logger: logger)
        } catch {
            DaemonReport.failed("\(error)").send(to: statusDescriptor)
            return 1
        }
    }

    static func serve(_ settings: Settings, logger: Logger) throws(SystemError) -> Int32 {
        let source = try FileSource(path: settings.source)
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            throw .lastErrno("socketpair")
        }
        let (kernelEnd, serverEnd) = (ends[0], ends[1])
        let flags: NBDServerFlags = [.hasFlags, .readOnly, .sendFlush]

        var ioctlAttachment: NBDIoctlAttachment?
        let index: UInt32
        let method: DeviceState.AttachMethod
        if !settings.forceIoctl, let netlink = try? NBDNetlink.open() {
            index = try netlink.connect(NBDConnectRequest(
                sizeBytes: source.size, blockSizeBytes: 512, serverFlags: flags,
                deadConnectionTimeoutSeconds: settings.deadConnectionTimeout,
                backendIdentifier: settings.identifier, sockets: [kernelEnd]))
            method = .netlink
        } else {
            let attachment = try NBDIoctlAttachment.attachToFreeDevice(
                socket: kernelEnd, configuration: .init(sizeBytes: source.size, blockSizeBytes: 512, serverFlags: flags))
            ioctlAttachment = attachment
            index = attachment.device.index
            method = .ioctl
        }
        // The kernel holds its own reference now: keeping ours would keep a dead link looking alive.
        close(kernelEnd)
        logger.info("serving \(settings.source) on /dev/nbd\(index) over \(method.rawValue)")
        DaemonReport.ready(index: Int(index), method: method).send(to: statusDescriptor)

        let server = try KernelModeServer(socket: FileDescriptor(rawValue: serverEnd), source: source, logger: logger)
        let end = try server.run()
        logger.info("/dev/nbd\(index): serving ended (\(end))")
        close(serverEnd)
        if let ioctlAttachment { _ = ioctlAttachment.waitUntilFinished() }
        return 0
    }
}

/// NBD_DISCONNECT then NBD_CLEAR_SOCK on an ioctl-attached device.
func cshimDisconnect(_ fd: Int32) -> Int32 {
    let result = cshim_ioctl_ulong(fd, CSHIM_NBD_DISCONNECT, 0)
    _ = cshim_ioctl_ulong(fd, CSHIM_NBD_CLEAR_SOCK, 0)
    return result
}
