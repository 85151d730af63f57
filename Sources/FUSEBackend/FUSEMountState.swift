#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Backends
import KernelAttach
import Supervision
import SystemCalls

/// What `-u` needs to finish a FUSE mount: the daemon serving it. One file per mount in
/// /run/erofs-mount/fuse (0700; files 0600), named by the mount's device number (the FUSE
/// connection), which the mount table shows.
public struct FUSEMountState: Codable, Sendable, Equatable {
    public var daemonPID: Int32
    public var daemonStartTime: UInt64
    public var source: String
    public var mountPoint: String
    public var threads: Int
    public var logFile: String

    public var daemon: DaemonProcess { DaemonProcess(pid: daemonPID, startTime: daemonStartTime) }

    /// Whether the recorded daemon is, alive, our FUSE daemon serving this source: only such a
    /// process is ever signalled (a state names a pid; the pid may be anyone's by now).
    public var daemonIsOurs: Bool {
        daemon.runsOurBinary { arguments in
            arguments.count > 2 && arguments[1] == FUSEDaemon.flag && arguments.last == source
        }
    }
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
            throw SystemError("encode FUSE mount state", path: path(major: major, minor: minor), detail: "\(error)")
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

    /// Removes the state (and log) of every mount served by the daemon `pid`: what the daemon
    /// does as it exits, so that a plain umount(8) leaves no state behind either.
    public func removeStates(ofDaemon pid: Int32) {
        guard let names = try? files.names() else { return }
        for name in names where name.hasSuffix(".json") {
            guard let state = load(named: name), state.daemonPID == pid else { continue }
            try? files.remove(named: name)
            unlink(state.logFile)
        }
    }
}
