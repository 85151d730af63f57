#if canImport(Glibc)
import Glibc
#endif
import Backends
import EROFSReader
import FUSEServer
import ImageSources
import RemoteSources
import Logging
import Synchronization
import SystemCalls

/// The serving daemon: `mount.erofs --serve-fuse --threads N [--device PATH]... -- IMAGE`,
/// spawned by the mount with the /dev/fuse descriptor of the new mount as descriptor 3 and its
/// status pipe as descriptor 4. It opens the image, serves the connection, says "ready PID" on
/// the pipe once INIT is answered, and exits when the connection ends (unmount: ENODEV).
public enum FUSEDaemon {
    public static let flag = "--serve-fuse"
    static let deviceDescriptor: Int32 = 3
    static let statusDescriptor: Int32 = 4
    private static let reported = Mutex(false)

    public struct Settings: Sendable, Equatable {
        public var source: String
        public var devices: [String]
        public var threads: Int

        public init(source: String, devices: [String] = [], threads: Int) {
            self.source = source
            self.devices = devices
            self.threads = threads
        }

        public var arguments: [String] {
            [FUSEDaemon.flag, "--threads", String(threads)] + devices.flatMap { ["--device", $0] } + ["--", source]
        }

        public init?(arguments: [String]) {
            guard arguments.first == FUSEDaemon.flag else { return nil }
            var threads = 1
            var devices: [String] = []
            var index = 1
            while index < arguments.count {
                switch arguments[index] {
                case "--threads" where index + 1 < arguments.count:
                    guard let value = Int(arguments[index + 1]), value >= 1 else { return nil }
                    threads = value
                    index += 2
                case "--device" where index + 1 < arguments.count:
                    devices.append(arguments[index + 1])
                    index += 2
                case "--" where index + 2 == arguments.count:
                    self.init(source: arguments[index + 1], devices: devices, threads: threads)
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
        var logger = Logger(label: "erofs-fuse-daemon")
        logger.logLevel = .info
        guard let settings = Settings(arguments: arguments) else {
            logger.error("bad arguments: \(arguments)")
            _ = "error bad daemon arguments\n".withCString { write(statusDescriptor, $0, strlen($0)) }
            return 2
        }
        let filesystem: EROFSFilesystem
        let served: ServedSource
        do {
            served = try ServedSource(argument: settings.source)
        } catch {
            report("error \(error)")
            return 2
        }
        // The mount's captured credentials live as long as this daemon.
        defer { CapturedCredentials.remove(served.capturedCredentials) }
        do throws(EROFSError) {
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
        } catch {
            logger.error("\(error)")
            report("error \(error)")
            return 1
        }
        let server = FUSEServer(
            operations: FUSEOperations(filesystem: filesystem, logger: logger),
            settings: .init(threads: settings.threads),
            logger: logger, onInitialized: { report("ready \(getpid())") })
        logger.info("serving \(served.displayName) with \(settings.threads) thread(s)")
        do {
            try server.serve(device: deviceDescriptor)
        } catch {
            logger.error("\(error)")
            report("error \(error)")
            return 1
        }
        logger.info("connection ended; exiting")
        FUSEStateStore().removeStates(ofDaemon: getpid())
        return 0
    }

    /// One line on the status pipe, then the pipe is closed (a second report goes nowhere).
    private static func report(_ line: String) {
        guard
            reported.withLock({ done in
                defer { done = true }; return !done
            })
        else { return }
        let text = line.split(separator: "\n").joined(separator: " ") + "\n"
        text.withCString { _ = write(statusDescriptor, $0, strlen($0)) }
        close(statusDescriptor)
    }
}
