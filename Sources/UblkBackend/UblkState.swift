#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Backends
import Supervision
import SystemCalls
import SystemPackage
import UblkKernel

/// What `-u` and a future supervisor need of a ublk device we made: no secrets, only the
/// device, the image's identity and the daemon (pid and start time, against pid reuse).
public struct UblkDeviceState: Codable, Sendable, Equatable {
    public var deviceID: UInt32
    public var source: String
    public var sizeBytes: UInt64
    /// st_dev and st_ino of the image when mounted: a successor serves the same file.
    public var imageDevice: UInt64
    public var imageInode: UInt64
    public var queues: Int
    public var queueDepth: Int
    public var daemonPID: Int32?
    public var daemonStartTime: UInt64?
    public var mountPoint: String?
    public var mountOptions: String?

    public var devicePath: String { Ublk.blockDevice(deviceID) }
}

/// States as `ublkN.json`, 0600 in a 0700 directory, replaced atomically.
public struct UblkStateStore: Sendable {
    public static let defaultDirectory = "/run/erofs-mount/ublk"
    public let directory: String

    public init(directory: String = UblkStateStore.defaultDirectory) {
        self.directory = directory
    }

    public func path(device id: UInt32) -> String { "\(directory)/ublk\(id).json" }
    func logPath(device id: UInt32) -> String { "\(directory)/ublk\(id).log" }

    var files: StateDirectory { StateDirectory(directory) }

    /// Written as every state is (`StateDirectory.write`: temporary file, fsync, rename).
    public func save(_ state: UblkDeviceState) throws(SystemError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data: Data
        do { data = try encoder.encode(state) } catch {
            throw SystemError("encode state", path: path(device: state.deviceID), detail: "\(error)")
        }
        try files.write(data, named: "ublk\(state.deviceID).json")
    }

    /// Read as every state is (StateDirectory.readFile: a regular file of ours in a directory of
    /// ours, no symlink followed, at most 64 KiB), and only if it names its own device.
    public func load(device id: UInt32) throws(SystemError) -> UblkDeviceState? {
        let file = path(device: id)
        guard let bytes = try files.readFile(named: "ublk\(id).json") else { return nil }
        let state: UblkDeviceState
        do { state = try JSONDecoder().decode(UblkDeviceState.self, from: Data(bytes)) } catch {
            throw SystemError("read state", path: file, detail: "not a valid state file (\(error))")
        }
        guard state.deviceID == id else {
            throw SystemError("read state", path: file, detail: "it names device \(state.deviceID)")
        }
        return state
    }

    public func remove(device id: UInt32) throws(SystemError) {
        for name in ["ublk\(id).json", "ublk\(id).log"] { try files.remove(named: name) }
    }

    /// Creates the directory 0700, checked as every state directory is (StateDirectory).
    public func ensureDirectory() throws(SystemError) { try files.ensureExists() }
}
