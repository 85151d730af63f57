#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What `mount.erofs` records about an nbd device it manages: enough for `-u`, `--list`,
/// `--disconnect` and `--reattach` to act on the device later, from another process.
/// Written 0600 under /run; it never holds credentials (remote sources keep theirs elsewhere).
public struct DeviceState: Codable, Sendable, Equatable {
    public enum AttachMethod: String, Codable, Sendable {
        /// Generic netlink: the device survives its daemon and can be reattached.
        case netlink
        /// The old ioctl interface: the device dies with its daemon.
        case ioctl
    }

    public static let currentVersion = 1

    public var version = DeviceState.currentVersion
    /// N of /dev/nbdN.
    public var index: Int
    /// The image: a path, or a URL without credentials.
    public var source: String
    public var sizeBytes: UInt64
    public var blockSize: UInt32
    /// What the kernel reports in /sys/block/nbdN/backend (netlink, Linux 5.14+).
    public var backendIdentifier: String
    public var attachMethod: AttachMethod
    /// Seconds the kernel holds I/O for a new daemon when the link is dead.
    public var deadConnectionTimeout: UInt64
    public var daemonPID: Int32
    /// The daemon's start time in clock ticks since boot (/proc/PID/stat field 22), so that a
    /// reused pid is never mistaken for our daemon.
    public var daemonStartTime: UInt64
    /// The serving worker under a supervisor (`daemonPID`); nil when the daemon serves itself.
    public var servingPID: Int32?
    public var servingStartTime: UInt64?
    /// Whether a supervisor brings a new worker when the serving one dies (nil: older state).
    public var supervised: Bool?
    /// The block layer's request timer on the device, in ms (see `NBDDaemon.Settings`).
    public var requeueMilliseconds: UInt32?
    /// The workers' poll before sleeping (`-o nbd.poll_us`), kept for `--reattach`.
    public var pollMicroseconds: UInt32?
    public var recoveries: Int?
    public var lastRecoveryMilliseconds: Int?
    public var upgrades: Int?
    public var mountPoint: String?
    /// Kernel mount data and flags, for messages and --list.
    public var mountOptions: String
    public var createdAt: Date

    public init(
        index: Int, source: String, sizeBytes: UInt64, blockSize: UInt32, backendIdentifier: String,
        attachMethod: AttachMethod, deadConnectionTimeout: UInt64, daemonPID: Int32, daemonStartTime: UInt64,
        servingPID: Int32? = nil, servingStartTime: UInt64? = nil, supervised: Bool? = nil,
        requeueMilliseconds: UInt32? = nil, pollMicroseconds: UInt32? = nil, mountPoint: String?, mountOptions: String, createdAt: Date = Date()
    ) {
        self.servingPID = servingPID
        self.servingStartTime = servingStartTime
        self.supervised = supervised
        self.requeueMilliseconds = requeueMilliseconds
        self.pollMicroseconds = pollMicroseconds
        self.index = index
        self.source = source
        self.sizeBytes = sizeBytes
        self.blockSize = blockSize
        self.backendIdentifier = backendIdentifier
        self.attachMethod = attachMethod
        self.deadConnectionTimeout = deadConnectionTimeout
        self.daemonPID = daemonPID
        self.daemonStartTime = daemonStartTime
        self.mountPoint = mountPoint
        self.mountOptions = mountOptions
        self.createdAt = createdAt
    }

    public var devicePath: String { "/dev/nbd\(index)" }
}
