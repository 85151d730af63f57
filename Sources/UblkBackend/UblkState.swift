#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import LocalBackend
import RemoteSources
import Supervision
import SystemCalls
import SystemPackage
import UblkKernel

/// What `-u`, `--reattach`, `--upgrade` and the supervisor need of a ublk device we made: no
/// secrets, only the device, the image's identity and our processes.
public struct UblkDeviceState: Codable, Sendable, Equatable, SupervisedState {
    public var deviceID: UInt32
    public var source: String
    public var sizeBytes: UInt64
    /// st_dev and st_ino of the image when mounted: a successor serves the same file.
    public var imageDevice: UInt64
    public var imageInode: UInt64
    /// The image's identity when mounted, size and modification time too: `--reattach` serves
    /// only that very file, unchanged.
    public var image: ImageIdentity?
    public var queues: Int
    public var queueDepth: Int
    /// The supervisor (pid and start time, against pid reuse).
    public var daemonPID: Int32?
    public var daemonStartTime: UInt64?
    /// The worker now serving, as the supervisor last recorded it.
    public var servingPID: Int32?
    public var servingStartTime: UInt64?
    /// Automatic recoveries and `--reattach`es; the last automatic one's duration.
    public var recoveries: Int?
    public var lastRecoveryMilliseconds: Int?
    public var upgrades: Int?
    public var mountPoint: String?
    public var mountOptions: String?
    /// A remote image: how every worker opens it (`source` is then its name for messages).
    /// Never a secret: credentials stay in the file the description names.
    public var remote: RemoteSourceDescription?

    public var devicePath: String { Ublk.blockDevice(deviceID) }
    /// What the workers serve: the image file, or the remote description.
    public var servedSource: ServedSource { remote.map { .remote($0) } ?? .local(path: source) }

    public var supervisor: DaemonProcess? { daemonPID.map { DaemonProcess(pid: $0, startTime: daemonStartTime ?? 0) } }
    public var worker: DaemonProcess? { servingPID.map { DaemonProcess(pid: $0, startTime: servingStartTime ?? 0) } }

    /// Whether `process` is, alive, our supervisor or worker of this device (our binary, its
    /// flag, this device): only such a process is ever signalled.
    public func isOurs(_ process: DaemonProcess?) -> Bool {
        process?.runsOurBinary { arguments in
            // A supervisor exec'd by an upgrade has the handover after these.
            arguments.count >= 5 && [UblkDaemon.flag, UblkSupervisor.flag].contains(arguments[1])
                && arguments[3] == String(deviceID)
        } ?? false
    }
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
            throw SystemError(.failed, "encode state", path: path(device: state.deviceID), underlying: error)
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
            throw SystemError(
                .corrupt, "read state", path: file, detail: "not a valid state file (\(error))", underlying: error)
        }
        guard state.deviceID == id else {
            throw SystemError(.corrupt, "read state", path: file, detail: "it names device \(state.deviceID)")
        }
        return state
    }

    /// The devices that have a state file, in order.
    public func deviceIDs() throws(SystemError) -> [UInt32] {
        try files.names().compactMap { name -> UInt32? in
            guard name.hasPrefix("ublk"), name.hasSuffix(".json") else { return nil }
            return UInt32(name.dropFirst("ublk".count).dropLast(".json".count))
        }.sorted()
    }

    public func remove(device id: UInt32) throws(SystemError) {
        for name in ["ublk\(id).json", "ublk\(id).log"] { try files.remove(named: name) }
    }

    /// Creates the directory 0700, checked as every state directory is (StateDirectory).
    public func ensureDirectory() throws(SystemError) { try files.ensureExists() }
}
