#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// An open directory that only we (and root) can change, for files that root writes and later
/// trusts: daemon states, logs, the remote block cache.
///
/// It is reached one component at a time from `/` without following a symlink; every component
/// above it is owned by root or us and writable by nobody else (unless sticky, as /tmp: others
/// cannot rename what is ours there); the directory itself is ours and closed to others' writes
/// (unless sticky), made 0700 when we create it, never chmodded. So no name in it can be
/// swapped for a symlink or a hard link to a file elsewhere that root would then truncate or
/// overwrite. Files are opened relative to the descriptor, never by path, with O_NOFOLLOW,
/// and must be regular files of ours with one link.
public final class PrivateDirectory: Sendable {
    public let path: String
    /// Owned: closed on deinit.
    public let descriptor: FileDescriptor
    /// What the directory is for, in refusals: "use state directory", "use cache directory".
    let purpose: String

    private init(path: String, descriptor: FileDescriptor, purpose: String) {
        self.path = path
        self.descriptor = descriptor
        self.purpose = purpose
    }

    deinit { try? descriptor.close() }

    /// The directory at the absolute `path` (made 0700 with any missing components when
    /// `creating`), checked as the type's comment says; nil when it does not exist and
    /// `creating` is false. Refusals are `.refused` errors naming the component at fault.
    public static func open(_ path: String, creating: Bool, purpose: String) throws(SystemError)
        -> PrivateDirectory?
    {
        guard path.hasPrefix("/") else {
            throw SystemError(.refused, purpose, path: path, detail: "not an absolute path")
        }
        guard !path.split(separator: "/").contains(where: { $0 == "." || $0 == ".." }) else {
            throw SystemError(.refused, purpose, path: path, detail: "`.` or `..` in the path")
        }
        let components = canonicalParent(of: path).split(separator: "/").map(String.init)
        let me = geteuid()
        var current = FileDescriptor(
            rawValue: try retryingOnInterrupt("open", path: "/") { Glibc.open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        )
        var reached = ""
        for (position, component) in components.enumerated() {
            reached += "/" + component
            let isLast = position == components.count - 1
            var fd = openat(current.rawValue, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd < 0 && errno == ENOENT {
                guard creating else {
                    try? current.close()
                    return nil
                }
                if mkdirat(current.rawValue, component, 0o700) != 0 && errno != EEXIST {
                    let failure = SystemError.lastErrno("mkdir", path: reached)
                    try? current.close()
                    throw failure
                }
                fd = openat(current.rawValue, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            let opened = SystemError.lastErrno("open", path: reached)
            try? current.close()
            guard fd >= 0 else {
                if opened.errno == .tooManySymbolicLinkLevels || opened.errno == .notDirectory {
                    throw SystemError(
                        .refused, purpose, path: reached, detail: "not a directory (a symlink is not followed)")
                }
                throw opened
            }
            current = FileDescriptor(rawValue: fd)
            var status = stat()
            guard fstat(fd, &status) == 0 else {
                let failure = SystemError.lastErrno("fstat", path: reached)
                try? current.close()
                throw failure
            }
            if let refusal = refusal(of: status, isLast: isLast, me: me) {
                try? current.close()
                throw SystemError(.refused, purpose, path: reached, detail: refusal)
            }
        }
        return PrivateDirectory(path: path, descriptor: current, purpose: purpose)
    }

    /// `path` with the symlinks above its last component resolved (a /var that links to
    /// /data/var), when they resolve: what is checked is the directory reached, whatever named
    /// it. The last component itself is never followed.
    static func canonicalParent(of given: String) -> String {
        // "/a/link/" names link itself: its trailing slashes must not make it a parent.
        var path = Substring(given)
        while path.count > 1 && path.hasSuffix("/") { path = path.dropLast() }
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex,
            let resolved = realpath(String(path[..<slash]), nil)
        else { return String(path) }
        defer { free(resolved) }
        let parent = String(cString: resolved)
        return (parent == "/" ? "" : parent) + path[slash...]
    }

    /// Why a component with `status` may not be trusted, or nil: the directory itself must be
    /// ours alone (one someone else made may hold files they planted); those above it must be
    /// root's or ours and closed to others, or sticky.
    static func refusal(of status: stat, isLast: Bool, me: uid_t) -> String? {
        let othersMayWrite = status.st_mode & 0o022 != 0
        let sticky = status.st_mode & UInt32(S_ISVTX) != 0
        if isLast {
            guard status.st_uid == me else {
                return "owned by uid \(status.st_uid), not by us (uid \(me)): its files cannot be trusted; remove it"
            }
            // Never chmodded: it may be a directory the user named (`remote.cache=/srv/x`)
            // that others rely on. Sticky, others cannot touch our files in it.
            guard !othersMayWrite || sticky else {
                return
                    "mode \(String(status.st_mode & 0o7777, radix: 8)): others could plant files in it (chmod go-w, or remove it)"
            }
            return nil
        }
        guard status.st_uid == 0 || status.st_uid == me, !othersMayWrite || sticky else {
            return
                "owned by uid \(status.st_uid) with mode \(String(status.st_mode & 0o7777, radix: 8)): others could replace what lies under it"
        }
        return nil
    }

    /// Opens the file `name` in the directory with `flags` (O_NOFOLLOW and O_CLOEXEC added;
    /// `permissions` when it is created): nil when it does not exist and `flags` has no
    /// O_CREAT. Refused when it is a symlink, not a regular file, or not ours.
    public func openFile(_ name: String, _ flags: Int32, permissions: mode_t = 0o600) throws(SystemError)
        -> FileDescriptor?
    {
        let file = "\(path)/\(name)"
        let fd = openat(descriptor.rawValue, name, flags | O_NOFOLLOW | O_CLOEXEC, permissions)
        if fd < 0 {
            if errno == ENOENT && flags & O_CREAT == 0 { return nil }
            if errno == ELOOP {
                throw SystemError(.refused, purpose, path: file, detail: "a symlink, not a file of ours")
            }
            throw .lastErrno("open", path: file)
        }
        let opened = FileDescriptor(rawValue: fd)
        var status = stat()
        var refusal: String?
        if fstat(fd, &status) != 0 {
            refusal = "cannot be examined"
        } else if status.st_mode & S_IFMT != S_IFREG {
            refusal = "not a regular file"
        } else if status.st_uid != geteuid() {
            refusal = "owned by uid \(status.st_uid), not by us (uid \(geteuid()))"
        } else if status.st_nlink > 1 {
            // A second name elsewhere: a hard link planted to a file of ours outside.
            refusal = "\(status.st_nlink) links: not a file of ours alone"
        }
        if let refusal {
            try? opened.close()
            throw SystemError(.refused, purpose, path: file, detail: refusal)
        }
        return opened
    }

    /// Removes the file `name`; one that is not there is no error.
    public func remove(_ name: String) throws(SystemError) {
        if unlinkat(descriptor.rawValue, name, 0) != 0 && errno != ENOENT {
            throw .lastErrno("remove", path: "\(path)/\(name)")
        }
    }

    /// The status of `name` in the directory, not following a symlink; nil when it is not there.
    public func status(of name: String) -> stat? {
        var status = stat()
        return fstatat(descriptor.rawValue, name, &status, AT_SYMLINK_NOFOLLOW) == 0 ? status : nil
    }

    /// The names of the files in the directory.
    public func names() throws(SystemError) -> [String] {
        // fdopendir takes the descriptor it is given: hand it a copy.
        let copy = try retryingOnInterrupt("dup", path: path) { fcntl(descriptor.rawValue, F_DUPFD_CLOEXEC, 0) }
        guard let stream = fdopendir(copy) else {
            let failure = SystemError.lastErrno("read directory", path: path)
            Glibc.close(copy)
            throw failure
        }
        defer { closedir(stream) }
        // The copy shares its position with ours: start from the top each time.
        rewinddir(stream)
        return directoryEntryNames(stream)
    }
}
