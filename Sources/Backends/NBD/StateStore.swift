#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SystemCalls

/// Device states as files `nbdN.json` in one directory (0700; files 0600), written atomically
/// (temporary file, fsync, rename) so a crash never leaves half a state behind.
public struct StateStore: Sendable {
    public static let defaultDirectory = "/run/erofs-mount/nbd"

    public let directory: String

    public init(directory: String = ProcessInfo.processInfo.environment["EROFS_MOUNT_STATE_DIR"] ?? StateStore.defaultDirectory) {
        self.directory = directory
    }

    public func path(forDevice index: Int) -> String { "\(directory)/nbd\(index).json" }

    public func save(_ state: DeviceState) throws(SystemError) {
        try ensureDirectory()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        let data: Data
        do { data = try encoder.encode(state) } catch {
            throw SystemError("encode state", path: path(forDevice: state.index), detail: "\(error)")
        }
        let final = path(forDevice: state.index)
        let temporary = final + ".tmp.\(getpid())"
        let fd = try retryingOnInterrupt("create", path: temporary) {
            open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        }
        var failure: SystemError?
        data.withUnsafeBytes { raw in
            var written = 0
            while written < raw.count {
                let n = write(fd, raw.baseAddress! + written, raw.count - written)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { failure = .lastErrno("write", path: temporary); return }
                written += n
            }
        }
        if failure == nil && fsync(fd) != 0 { failure = .lastErrno("fsync", path: temporary) }
        close(fd)
        if failure == nil && rename(temporary, final) != 0 { failure = .lastErrno("rename", path: final) }
        if let failure {
            unlink(temporary)
            throw failure
        }
    }

    /// The state of device `index`, or nil when there is none.
    public func load(device index: Int) throws(SystemError) -> DeviceState? {
        let file = path(forDevice: index)
        guard let data = FileManager.default.contents(atPath: file) else {
            if access(file, F_OK) == 0 { throw .lastErrno("read", path: file) }
            return nil
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        do { return try decoder.decode(DeviceState.self, from: data) } catch {
            throw SystemError("read state", path: file, detail: "not a valid state file (\(error))")
        }
    }

    public func remove(device index: Int) throws(SystemError) {
        let file = path(forDevice: index)
        if unlink(file) != 0 && errno != ENOENT { throw .lastErrno("remove", path: file) }
    }

    /// Every device with a state file, by index; unreadable files are reported, not skipped.
    public func all() -> [(index: Int, state: Result<DeviceState, SystemError>)] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return names.compactMap { name -> (Int, Result<DeviceState, SystemError>)? in
            guard name.hasPrefix("nbd"), name.hasSuffix(".json"),
                  let index = Int(name.dropFirst(3).dropLast(5)) else { return nil }
            switch Result(catching: { () throws(SystemError) in try load(device: index) }) {
            case .success(nil): return nil
            case .success(let state?): return (index, .success(state))
            case .failure(let error): return (index, .failure(error))
            }
        }.sorted { $0.0 < $1.0 }
    }

    /// Creates the directory (0700) if needed.
    public func ensureDirectory() throws(SystemError) {
        var path = ""
        for component in directory.split(separator: "/") {
            path += "/" + component
            if mkdir(path, 0o700) != 0 && errno != EEXIST { throw .lastErrno("mkdir", path: path) }
        }
        // The last level holds our state: make sure nobody else can read it, whoever made it.
        let status = try FileStatus.lstat(directory)
        guard status.kind == .dir else {
            throw SystemError("use state directory", path: directory, detail: "not a directory")
        }
        if status.permissions != 0o700 && chmod(directory, 0o700) != 0 {
            throw .lastErrno("chmod", path: directory)
        }
    }
}
