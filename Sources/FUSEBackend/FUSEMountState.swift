#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import LocalBackend
import KernelAttach
import Supervision
import SystemCalls

/// What `-u`, `--upgrade` and `--list` need of a FUSE mount: its supervisor and the worker
/// serving it. One file per mount in /run/erofs-mount/fuse (0700; files 0600), named by the
/// mount's device number (the FUSE connection), which the mount table shows.
public struct FUSEMountState: Codable, Sendable, Equatable, SupervisedState {
    /// The supervisor (holds the connection's descriptors; starts workers).
    public var daemonPID: Int32
    public var daemonStartTime: UInt64
    public var source: String
    public var mountPoint: String
    public var threads: Int
    public var logFile: String
    /// The worker serving requests, as the supervisor last recorded it.
    public var servingPID: Int32?
    public var servingStartTime: UInt64?
    /// How a new worker gets the dead one's unanswered requests: "resend" or "journal".
    public var recovery: String?
    public var recoveries: Int?
    public var upgrades: Int?
    /// How long the last recovery took, from the old worker's death seen to the new one
    /// serving, as the supervisor measured it.
    public var lastRecoveryMilliseconds: Int?

    public init(
        daemonPID: Int32, daemonStartTime: UInt64, source: String, mountPoint: String, threads: Int, logFile: String,
        servingPID: Int32? = nil, servingStartTime: UInt64? = nil, recovery: String? = nil
    ) {
        self.daemonPID = daemonPID
        self.daemonStartTime = daemonStartTime
        self.source = source
        self.mountPoint = mountPoint
        self.threads = threads
        self.logFile = logFile
        self.servingPID = servingPID
        self.servingStartTime = servingStartTime
        self.recovery = recovery
    }

    public var daemon: DaemonProcess { DaemonProcess(pid: daemonPID, startTime: daemonStartTime) }
    public var worker: DaemonProcess? { servingPID.map { DaemonProcess(pid: $0, startTime: servingStartTime ?? 0) } }

    /// Whether `process` is, alive, our FUSE supervisor or worker for this source: only such a
    /// process is ever signalled (a state names a pid; the pid may be anyone's by now).
    public func isOurs(_ process: DaemonProcess) -> Bool {
        process.runsOurBinary { arguments in
            arguments.count > 2 && [FUSEDaemon.flag, FUSESupervisor.flag].contains(arguments[1])
                && arguments.last == source
        }
    }

    public var daemonIsOurs: Bool { isOurs(daemon) }
}

public struct FUSEStateStore: Sendable {
    public static let defaultDirectory = "/run/erofs-mount/fuse"
    public let directory: String

    public init(directory: String = FUSEStateStore.defaultDirectory) {
        self.directory = directory
    }

    public func path(major: UInt32, minor: UInt32) -> String { "\(directory)/\(major)-\(minor).json" }

    var files: StateDirectory { StateDirectory(directory) }

    static func fileName(major: UInt32, minor: UInt32) -> String { "\(major)-\(minor).json" }

    public func ensureDirectory() throws(SystemError) { try files.ensureExists() }

    /// Written as every state is (`StateDirectory.write`: temporary file, fsync, rename).
    public func save(_ state: FUSEMountState, major: UInt32, minor: UInt32) throws(SystemError) {
        let data: Data
        do { data = try JSONEncoder().encode(state) } catch {
            throw SystemError(
                .failed, "encode FUSE mount state", path: path(major: major, minor: minor), underlying: error)
        }
        try files.write(data, named: Self.fileName(major: major, minor: minor))
    }

    public func load(major: UInt32, minor: UInt32) -> FUSEMountState? {
        load(named: Self.fileName(major: major, minor: minor))
    }

    /// Read as every state is (StateDirectory.readFile: a regular file of ours in our own
    /// directory, no symlink followed); anything else is no state of ours.
    func load(named name: String) -> FUSEMountState? {
        guard let bytes = try? files.readFile(named: name) else { return nil }
        return try? JSONDecoder().decode(FUSEMountState.self, from: Data(bytes))
    }

    public func remove(major: UInt32, minor: UInt32) {
        try? files.remove(named: Self.fileName(major: major, minor: minor))
    }

    /// Removes the state (and log) of every mount whose supervisor is `pid`, or whose serving
    /// worker is `pid` and whose supervisor is gone: what they do as the connection ends, so
    /// that a plain umount(8) leaves no state behind. While the supervisor lives the state is
    /// its to remove: `-u` finds in it whom to wait for.
    public func removeStates(ofProcess pid: Int32) {
        for (major, minor, state) in all()
        where state.daemonPID == pid || (state.servingPID == pid && !state.daemon.isAlive) {
            remove(major: major, minor: minor)
            unlink(state.logFile)
        }
    }

    /// Every readable state, by the mount's device number.
    public func all() -> [(major: UInt32, minor: UInt32, state: FUSEMountState)] {
        guard let names = try? files.names() else { return [] }
        return names.sorted().compactMap { name in
            let parts = name.dropLast(".json".count).split(separator: "-")
            guard name.hasSuffix(".json"), parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]),
                let state = load(named: name)
            else { return nil }
            return (major, minor, state)
        }
    }

    /// Applies `change` to the state of connection `major:minor`, if there is one.
    public func update(major: UInt32, minor: UInt32, _ change: (inout FUSEMountState) -> Void) throws(SystemError) {
        guard var state = load(major: major, minor: minor) else { return }
        change(&state)
        try save(state, major: major, minor: minor)
    }
}
