#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Supervision
import SystemCalls

/// nbd device states as files `nbdN.json` in one `StateDirectory` (its comment says which files
/// are trusted), with the daemons' logs beside them.
public struct StateStore: Sendable {
    public static let defaultDirectory = "/run/erofs-mount/nbd"

    public let directory: String
    var files: StateDirectory { StateDirectory(directory) }

    public init(directory: String = StateStore.defaultDirectory) {
        self.directory = directory
    }

    public func path(forDevice index: Int) -> String { "\(directory)/\(Self.fileName(forDevice: index))" }

    static func fileName(forDevice index: Int) -> String { "nbd\(index).json" }

    /// The device index of a state file name: `nbd` and the decimal index as we write it (no
    /// sign, no leading zero, within `DeviceState.indexRange`), then `.json`; else nil.
    static func deviceIndex(fileName name: String) -> Int? {
        guard name.hasPrefix("nbd"), name.hasSuffix(".json") else { return nil }
        let digits = name.dropFirst(3).dropLast(5)
        guard !digits.isEmpty, digits.count <= 7, digits.allSatisfy({ ("0"..."9").contains($0) }),
            digits == "0" || !digits.hasPrefix("0"), let index = Int(digits),
            DeviceState.indexRange.contains(index)
        else { return nil }
        return index
    }

    public func save(_ state: DeviceState) throws(SystemError) {
        do { try state.validate(fileIndex: state.index) } catch {
            throw SystemError(.refused, "save state", path: path(forDevice: state.index), detail: error.reason)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        let data: Data
        do { data = try encoder.encode(state) } catch {
            throw SystemError(.failed, "encode state", path: path(forDevice: state.index), underlying: error)
        }
        try files.write(data, named: Self.fileName(forDevice: state.index))
    }

    /// The state of device `index`, or nil when there is none. A file that is not a valid state
    /// of ours (not a regular file, not ours, too big, not JSON, naming another device,
    /// impossible values) is an error naming it.
    public func load(device index: Int) throws(SystemError) -> DeviceState? {
        let file = path(forDevice: index)
        guard let bytes = try files.readFile(named: Self.fileName(forDevice: index)) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let state: DeviceState
        do { state = try decoder.decode(DeviceState.self, from: Data(bytes)) } catch {
            throw SystemError(
                .corrupt, "read state", path: file, detail: "not a valid state file (\(error))", underlying: error)
        }
        do { try state.validate(fileIndex: index) } catch {
            throw SystemError(.corrupt, "read state", path: file, detail: "not a valid state file (\(error.reason))")
        }
        return state
    }

    public func remove(device index: Int) throws(SystemError) {
        try files.remove(named: Self.fileName(forDevice: index))
    }

    /// Every device with a state file, by index; unreadable files are reported, not skipped.
    /// Names that are no state file of ours (`nbd-1.json`, `nbd01.json`, `x`) are ignored.
    public func all() throws(SystemError) -> [(index: Int, state: Result<DeviceState, SystemError>)] {
        let indices = try files.names().compactMap(Self.deviceIndex(fileName:)).sorted()
        return indices.compactMap { index -> (Int, Result<DeviceState, SystemError>)? in
            switch Result(catching: { () throws(SystemError) in try load(device: index) }) {
            case .success(nil): return nil
            case .success(let state?): return (index, .success(state))
            case .failure(let error): return (index, .failure(error))
            }
        }
    }

    /// Creates the directory (0700) if needed and checks that it is safe to use.
    public func ensureDirectory() throws(SystemError) { try files.ensureExists() }

    /// Opens `identifier`'s daemon log for appending (0600, created if needed).
    func openLog(identifier: String) throws(SystemError) -> Int32 { try files.openLog(identifier: identifier) }

    /// The last lines of `identifier`'s log (for a message), or "".
    func logTail(identifier: String, lines: Int = 3) -> String { files.logTail(identifier: identifier, lines: lines) }

    func removeLog(identifier: String) { files.removeLog(identifier: identifier) }

    public func logPath(identifier: String) -> String { files.logPath(identifier: identifier) }
}
