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
        unlinkat(directory.fd, temporary, 0)
        let fd = try retryingOnInterrupt("create", path: "\(path)/\(temporary)") {
            openat(directory.fd, temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        }
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
        if failure == nil && renameat(directory.fd, temporary, directory.fd, name) != 0 {
            failure = .lastErrno("rename", path: "\(path)/\(name)")
        }
        if let failure {
            unlinkat(directory.fd, temporary, 0)
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

    func readFile(named name: String, in directory: DirectoryHandle) throws(SystemError) -> [UInt8]? {
        let file = "\(self.path)/\(name)"
        let fd = openat(directory.fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            if errno == ELOOP {
                throw SystemError(.refused, "read state", path: file, detail: "a symlink, not a state file of ours")
            }
            throw .lastErrno("open", path: file)
        }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw .lastErrno("fstat", path: file) }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw SystemError(.refused, "read state", path: file, detail: "not a regular file")
        }
        guard status.st_uid == geteuid() else {
            throw SystemError(
                .refused, "read state", path: file,
                detail: "owned by uid \(status.st_uid), not by us (uid \(geteuid()))")
        }
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
        guard let directory = try open(creating: false) else { return }
        if unlinkat(directory.fd, name, 0) != 0 && errno != ENOENT {
            throw .lastErrno("remove", path: "\(path)/\(name)")
        }
    }

    /// The names of the files in the directory (none when there is no directory).
    public func names() throws(SystemError) -> [String] {
        guard let directory = try open(creating: false) else { return [] }
        return try names(in: directory)
    }

    func names(in directory: DirectoryHandle) throws(SystemError) -> [String] {
        // fdopendir takes the descriptor it is given: hand it a copy.
        let copy = try retryingOnInterrupt("dup", path: path) { fcntl(directory.fd, F_DUPFD_CLOEXEC, 0) }
        guard let stream = fdopendir(copy) else {
            close(copy)
            throw .lastErrno("read directory", path: path)
        }
        defer { closedir(stream) }
        return directoryEntryNames(stream)
    }

    /// Creates the directory (0700) if needed and checks that it is safe to use.
    public func ensureExists() throws(SystemError) {
        _ = try openCreating()
    }

    /// Opens `identifier`'s daemon log for appending (0600, created if needed).
    public func openLog(identifier: String) throws(SystemError) -> Int32 {
        let directory = try openCreating()
        return try retryingOnInterrupt("open", path: logPath(identifier: identifier)) {
            openat(
                directory.fd, Self.logName(identifier), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
    }

    /// The last lines of `identifier`'s log (for a message), or "".
    public func logTail(identifier: String, lines: Int = 3) -> String {
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

    public func removeLog(identifier: String) {
        guard let directory = try? open(creating: false) else { return }
        unlinkat(directory.fd, Self.logName(identifier), 0)
    }

    public func logPath(identifier: String) -> String { "\(path)/\(Self.logName(identifier))" }

    public static func logName(_ identifier: String) -> String { "\(identifier).log" }

    func openCreating() throws(SystemError) -> DirectoryHandle {
        guard let directory = try open(creating: true) else {
            throw SystemError("create state directory", path: path)
        }
        return directory
    }

    /// The directory, reached without following a symlink and checked (see the type's comment);
    /// nil when it does not exist and `creating` is false.
    func open(creating: Bool) throws(SystemError) -> DirectoryHandle? {
        guard path.hasPrefix("/") else {
            throw SystemError(.refused, "use state directory", path: path, detail: "not an absolute path")
        }
        let components = path.split(separator: "/").map(String.init)
        guard !components.contains(where: { $0 == "." || $0 == ".." }) else {
            throw SystemError(.refused, "use state directory", path: path, detail: "`.` or `..` in the path")
        }
        let me = geteuid()
        var current = DirectoryHandle(
            fd: try retryingOnInterrupt("open", path: "/") { Glibc.open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC) })
        var reached = ""
        for (position, component) in components.enumerated() {
            reached += "/" + component
            let isLast = position == components.count - 1
            var fd = openat(current.fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd < 0 && errno == ENOENT {
                guard creating else { return nil }
                if mkdirat(current.fd, component, 0o700) != 0 && errno != EEXIST {
                    throw .lastErrno("mkdir", path: reached)
                }
                fd = openat(current.fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            if fd < 0 {
                if errno == ELOOP || errno == ENOTDIR {
                    throw SystemError(
                        .refused, "use state directory", path: reached,
                        detail: "not a directory (a symlink is not followed)")
                }
                throw .lastErrno("open", path: reached)
            }
            current = DirectoryHandle(fd: fd)
            var status = stat()
            guard fstat(fd, &status) == 0 else { throw .lastErrno("fstat", path: reached) }
            if isLast {
                // Ours alone: a directory someone else made may hold states they planted.
                guard status.st_uid == me else {
                    throw SystemError(
                        .refused, "use state directory", path: reached,
                        detail:
                            "owned by uid \(status.st_uid), not by us (uid \(me)): its states cannot be trusted; remove it"
                    )
                }
                if status.st_mode & 0o7777 != 0o700 && fchmod(fd, 0o700) != 0 {
                    throw .lastErrno("chmod", path: reached)
                }
            } else {
                let othersMayWrite = status.st_mode & 0o022 != 0
                let sticky = status.st_mode & UInt32(S_ISVTX) != 0
                guard status.st_uid == 0 || status.st_uid == me, !othersMayWrite || sticky else {
                    throw SystemError(
                        .refused, "use state directory", path: reached,
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
