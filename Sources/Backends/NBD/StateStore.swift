#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SystemCalls

/// Device states as files `nbdN.json` in one directory (0700, ours; files 0600, ours), written
/// atomically (temporary file, fsync, rename) so a crash never leaves half a state behind.
///
/// A state names processes to signal and devices to disconnect, so only a state nobody else can
/// have written is used: the directory is reached one component at a time without following a
/// symlink, every component is owned by root or us and writable by nobody else (unless sticky,
/// as /tmp), the directory itself is ours, and every file in it is a regular file of ours. The
/// location is fixed (no environment variable: a setuid or sudo-run helper must not be
/// steered); tests pass their own directory to `init(directory:)`.
public struct StateStore: Sendable {
    public static let defaultDirectory = "/run/erofs-mount/nbd"
    /// A state file is a few hundred bytes; anything far larger is not one of ours.
    static let maximumFileBytes = 64 * 1024

    public let directory: String

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
        let final = Self.fileName(forDevice: state.index)
        do { try state.validate(fileIndex: state.index) } catch {
            throw SystemError("save state", path: path(forDevice: state.index), detail: error.reason)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        let data: Data
        do { data = try encoder.encode(state) } catch {
            throw SystemError("encode state", path: path(forDevice: state.index), detail: "\(error)")
        }
        let directory = try openCreating()
        let temporary = final + ".tmp.\(getpid())"
        // A leftover of a crashed save with our pid: ours, and replaced.
        unlinkat(directory.fd, temporary, 0)
        let fd = try retryingOnInterrupt("create", path: "\(self.directory)/\(temporary)") {
            openat(directory.fd, temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        }
        var failure: SystemError?
        data.withUnsafeBytes { raw in
            var written = 0
            while written < raw.count {
                let n = write(fd, raw.baseAddress! + written, raw.count - written)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { failure = .lastErrno("write", path: "\(self.directory)/\(temporary)"); return }
                written += n
            }
        }
        if failure == nil && fsync(fd) != 0 { failure = .lastErrno("fsync", path: "\(self.directory)/\(temporary)") }
        close(fd)
        if failure == nil && renameat(directory.fd, temporary, directory.fd, final) != 0 {
            failure = .lastErrno("rename", path: path(forDevice: state.index))
        }
        if let failure {
            unlinkat(directory.fd, temporary, 0)
            throw failure
        }
    }

    /// The state of device `index`, or nil when there is none. A file that is not a valid state
    /// of ours (not a regular file, not ours, too big, not JSON, naming another device,
    /// impossible values) is an error naming it.
    public func load(device index: Int) throws(SystemError) -> DeviceState? {
        guard let directory = try open(creating: false) else { return nil }
        return try load(device: index, in: directory)
    }

    private func load(device index: Int, in directory: DirectoryHandle) throws(SystemError) -> DeviceState? {
        let file = path(forDevice: index)
        guard let bytes = try readFile(named: Self.fileName(forDevice: index), in: directory) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let state: DeviceState
        do { state = try decoder.decode(DeviceState.self, from: Data(bytes)) } catch {
            throw SystemError("read state", path: file, detail: "not a valid state file (\(error))")
        }
        do { try state.validate(fileIndex: index) } catch {
            throw SystemError("read state", path: file, detail: "not a valid state file (\(error.reason))")
        }
        return state
    }

    /// The bytes of the file `name` in the state directory, or nil when there is none (or no
    /// directory). Only a regular file of ours, reached without following a symlink, of at most
    /// 64 KiB is read: every backend's state goes through here.
    public func readFile(named name: String) throws(SystemError) -> [UInt8]? {
        guard let directory = try open(creating: false) else { return nil }
        return try readFile(named: name, in: directory)
    }

    private func readFile(named name: String, in directory: DirectoryHandle) throws(SystemError) -> [UInt8]? {
        let file = "\(self.directory)/\(name)"
        let fd = openat(directory.fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            if errno == ELOOP {
                throw SystemError("read state", path: file, detail: "a symlink, not a state file of ours")
            }
            throw .lastErrno("open", path: file)
        }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw .lastErrno("fstat", path: file) }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw SystemError("read state", path: file, detail: "not a regular file")
        }
        guard status.st_uid == geteuid() else {
            throw SystemError(
                "read state", path: file, detail: "owned by uid \(status.st_uid), not by us (uid \(geteuid()))")
        }
        guard status.st_size <= Self.maximumFileBytes else {
            throw SystemError("read state", path: file, detail: "\(status.st_size) bytes: too big for a state file")
        }
        var bytes = [UInt8](repeating: 0, count: Int(status.st_size))
        var filled = 0
        while filled < bytes.count {
            let got = try retryingOnInterrupt("read", path: file) {
                bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + filled, $0.count - filled, off_t(filled)) }
            }
            if got == 0 { break }
            filled += got
        }
        return Array(bytes[..<filled])
    }

    public func remove(device index: Int) throws(SystemError) {
        guard let directory = try open(creating: false) else { return }
        if unlinkat(directory.fd, Self.fileName(forDevice: index), 0) != 0 && errno != ENOENT {
            throw .lastErrno("remove", path: path(forDevice: index))
        }
    }

    /// Every device with a state file, by index; unreadable files are reported, not skipped.
    /// Names that are no state file of ours (`nbd-1.json`, `nbd01.json`, `x`) are ignored.
    public func all() throws(SystemError) -> [(index: Int, state: Result<DeviceState, SystemError>)] {
        guard let directory = try open(creating: false) else { return [] }
        // fdopendir takes the descriptor it is given: hand it a copy.
        let copy = try retryingOnInterrupt("dup", path: self.directory) { fcntl(directory.fd, F_DUPFD_CLOEXEC, 0) }
        guard let stream = fdopendir(copy) else {
            close(copy)
            throw .lastErrno("read directory", path: self.directory)
        }
        defer { closedir(stream) }
        var indices: [Int] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let index = Self.deviceIndex(fileName: name) { indices.append(index) }
        }
        return indices.sorted().compactMap { index -> (Int, Result<DeviceState, SystemError>)? in
            switch Result(catching: { () throws(SystemError) in try load(device: index, in: directory) }) {
            case .success(nil): return nil
            case .success(let state?): return (index, .success(state))
            case .failure(let error): return (index, .failure(error))
            }
        }
    }

    /// Creates the directory (0700) if needed and checks that it is safe to use.
    public func ensureDirectory() throws(SystemError) {
        _ = try openCreating()
    }

    /// Opens `identifier`'s daemon log for appending (0600, created if needed).
    func openLog(identifier: String) throws(SystemError) -> Int32 {
        let directory = try openCreating()
        return try retryingOnInterrupt("open", path: logPath(identifier: identifier)) {
            openat(
                directory.fd, Self.logName(identifier), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
    }

    /// The last lines of `identifier`'s log (for a message), or "".
    func logTail(identifier: String, lines: Int = 3) -> String {
        guard let directory = try? open(creating: false) else { return "" }
        let fd = openat(directory.fd, Self.logName(identifier), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFREG else { return "" }
        let length = min(Int(status.st_size), 16 * 1024)
        var bytes = [UInt8](repeating: 0, count: length)
        let got = bytes.withUnsafeMutableBytes {
            pread(fd, $0.baseAddress!, length, off_t(status.st_size) - off_t(length))
        }
        guard got > 0 else { return "" }
        return String(decoding: bytes[..<got], as: UTF8.self).split(separator: "\n").suffix(lines).joined(
            separator: " | ")
    }

    func removeLog(identifier: String) {
        guard let directory = try? open(creating: false) else { return }
        unlinkat(directory.fd, Self.logName(identifier), 0)
    }

    public func logPath(identifier: String) -> String { "\(directory)/\(Self.logName(identifier))" }

    static func logName(_ identifier: String) -> String { "\(identifier).log" }

    private func openCreating() throws(SystemError) -> DirectoryHandle {
        guard let directory = try open(creating: true) else {
            throw SystemError("create state directory", path: directory)
        }
        return directory
    }

    /// The directory, reached without following a symlink and checked (see the type's comment);
    /// nil when it does not exist and `creating` is false.
    private func open(creating: Bool) throws(SystemError) -> DirectoryHandle? {
        guard directory.hasPrefix("/") else {
            throw SystemError("use state directory", path: directory, detail: "not an absolute path")
        }
        let components = directory.split(separator: "/").map(String.init)
        guard !components.contains(where: { $0 == "." || $0 == ".." }) else {
            throw SystemError("use state directory", path: directory, detail: "`.` or `..` in the path")
        }
        let me = geteuid()
        var current = DirectoryHandle(
            fd: try retryingOnInterrupt("open", path: "/") { Glibc.open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC) })
        var path = ""
        for (position, component) in components.enumerated() {
            path += "/" + component
            let isLast = position == components.count - 1
            var fd = openat(current.fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd < 0 && errno == ENOENT {
                guard creating else { return nil }
                if mkdirat(current.fd, component, 0o700) != 0 && errno != EEXIST {
                    throw .lastErrno("mkdir", path: path)
                }
                fd = openat(current.fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            if fd < 0 {
                if errno == ELOOP || errno == ENOTDIR {
                    throw SystemError(
                        "use state directory", path: path, detail: "not a directory (a symlink is not followed)")
                }
                throw .lastErrno("open", path: path)
            }
            current = DirectoryHandle(fd: fd)
            var status = stat()
            guard fstat(fd, &status) == 0 else { throw .lastErrno("fstat", path: path) }
            if isLast {
                // Ours alone: a directory someone else made may hold states they planted.
                guard status.st_uid == me else {
                    throw SystemError(
                        "use state directory", path: path,
                        detail:
                            "owned by uid \(status.st_uid), not by us (uid \(me)): its states cannot be trusted; remove it"
                    )
                }
                if status.st_mode & 0o7777 != 0o700 && fchmod(fd, 0o700) != 0 { throw .lastErrno("chmod", path: path) }
            } else {
                let othersMayWrite = status.st_mode & 0o022 != 0
                let sticky = status.st_mode & UInt32(S_ISVTX) != 0
                guard status.st_uid == 0 || status.st_uid == me, !othersMayWrite || sticky else {
                    throw SystemError(
                        "use state directory", path: path,
                        detail:
                            "owned by uid \(status.st_uid) with mode \(String(status.st_mode & 0o7777, radix: 8)): others could replace what lies under it"
                    )
                }
            }
        }
        return current
    }
}

/// An open directory, closed when the last copy goes.
final class DirectoryHandle: Sendable {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}
