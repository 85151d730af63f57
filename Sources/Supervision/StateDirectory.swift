#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// The directory every backend keeps its states and daemon logs in (`/run/erofs-mount/nbd`,
/// `.../fuse`, `.../ublk`): one implementation of the checks and of the atomic write, so that
/// a state that names processes to signal is read and written the same way by every backend.
///
/// A state names processes to signal and devices to disconnect, so only a state nobody else can
/// have written is used: the directory is reached one component at a time without following a
/// symlink, every component is owned by root or us and writable by nobody else (unless sticky,
/// as /tmp), the directory itself is ours, and every file in it is a regular file of ours. The
/// location is fixed by each backend (no environment variable: a setuid or sudo-run helper must
/// not be steered); tests pass their own directory.
public struct StateDirectory: Sendable {
    /// A state file is a few hundred bytes; anything far larger is not one of ours.
    public static let maximumFileBytes = 64 * 1024

    public let path: String

    public init(_ path: String) { self.path = path }

    /// Replaces the file `name` with `bytes`, atomically (temporary file, fsync, rename): a
    /// crash leaves the old state or the new, never half of one.
    public func write(_ bytes: some Collection<UInt8>, named name: String) throws(SystemError) {
        let directory = try openCreating()
        let temporary = name + ".tmp.\(getpid())"
        // A leftover of a crashed save with our pid: ours, and replaced.
        try? directory.remove(temporary)
        guard let file = try directory.openFile(temporary, O_WRONLY | O_CREAT | O_EXCL) else {
            throw SystemError("create", path: "\(path)/\(temporary)")
        }
        let fd = file.rawValue
        var failure: SystemError?
        Array(bytes).withUnsafeBytes { raw in
            var written = 0
            while written < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + written, raw.count - written)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { failure = .lastErrno("write", path: "\(path)/\(temporary)"); return }
                written += n
            }
        }
        if failure == nil && fsync(fd) != 0 { failure = .lastErrno("fsync", path: "\(path)/\(temporary)") }
        close(fd)
        if failure == nil
            && renameat(directory.descriptor.rawValue, temporary, directory.descriptor.rawValue, name) != 0
        {
            failure = .lastErrno("rename", path: "\(path)/\(name)")
        }
        if let failure {
            try? directory.remove(temporary)
            throw failure
        }
    }

    /// The bytes of the file `name` in the state directory, or nil when there is none (or no
    /// directory). Only a regular file of ours, reached without following a symlink, of at most
    /// 64 KiB is read: every backend's state goes through here.
    public func readFile(named name: String) throws(SystemError) -> [UInt8]? {
        guard let directory = try open(creating: false) else { return nil }
        return try readFile(named: name, in: directory)
    }

    func readFile(named name: String, in directory: PrivateDirectory) throws(SystemError) -> [UInt8]? {
        let file = "\(self.path)/\(name)"
        guard let opened = try directory.openFile(name, O_RDONLY | O_NONBLOCK) else { return nil }
        defer { try? opened.close() }
        let fd = opened.rawValue
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw .lastErrno("fstat", path: file) }
        guard status.st_size <= Self.maximumFileBytes else {
            throw SystemError(
                .refused, "read state", path: file, detail: "\(status.st_size) bytes: too big for a state file")
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

    /// Removes the file `name`; one that is not there is no error.
    public func remove(named name: String) throws(SystemError) {
        try open(creating: false)?.remove(name)
    }

    /// The names of the files in the directory (none when there is no directory).
    public func names() throws(SystemError) -> [String] {
        try open(creating: false)?.names() ?? []
    }

    /// Creates the directory (0700) if needed and checks that it is safe to use.
    public func ensureExists() throws(SystemError) {
        _ = try openCreating()
    }

    /// Opens `identifier`'s daemon log for appending (0600, created if needed).
    public func openLog(identifier: String) throws(SystemError) -> Int32 {
        let directory = try openCreating()
        guard let log = try directory.openFile(Self.logName(identifier), O_WRONLY | O_CREAT | O_APPEND) else {
            throw SystemError("open", path: logPath(identifier: identifier))
        }
        return log.rawValue
    }

    /// The last lines of `identifier`'s log (for a message), or "".
    public func logTail(identifier: String, lines: Int = 3) -> String {
        guard let directory = try? open(creating: false) else { return "" }
        guard let log = try? directory.openFile(Self.logName(identifier), O_RDONLY | O_NONBLOCK) else { return "" }
        defer { try? log.close() }
        let fd = log.rawValue
        var status = stat()
        guard fstat(fd, &status) == 0 else { return "" }
        let length = min(Int(status.st_size), 16 * 1024)
        var bytes = [UInt8](repeating: 0, count: length)
        let got = bytes.withUnsafeMutableBytes {
            pread(fd, $0.baseAddress!, length, off_t(status.st_size) - off_t(length))
        }
        guard got > 0 else { return "" }
        return String(decoding: bytes[..<got], as: UTF8.self).split(separator: "\n").suffix(lines).joined(
            separator: " | ")
    }

    public func removeLog(identifier: String) {
        guard let directory = try? open(creating: false) else { return }
        try? directory.remove(Self.logName(identifier))
    }

    public func logPath(identifier: String) -> String { "\(path)/\(Self.logName(identifier))" }

    public static func logName(_ identifier: String) -> String { "\(identifier).log" }

    func openCreating() throws(SystemError) -> PrivateDirectory {
        guard let directory = try open(creating: true) else {
            throw SystemError("create state directory", path: path)
        }
        return directory
    }

    /// The directory, checked (see the type's comment); nil when it does not exist and
    /// `creating` is false.
    func open(creating: Bool) throws(SystemError) -> PrivateDirectory? {
        try PrivateDirectory.open(path, creating: creating, purpose: "use state directory")
    }
}
