#if canImport(Glibc)
import Glibc
#endif
import SystemCalls
import SystemPackage

/// Builds the manifest of a mounted tree by asking the kernel (lstat, readlink, xattrs, read):
/// the reference view that every backend's mount is compared against.
public enum DirectoryWalker {
    /// Every path below `root` (included, as "/"), sorted by path. Names are read and used as
    /// bytes (readdir's d_name), so names that are not UTF-8 are walked as they are.
    public static func manifest(ofTreeAt root: String) throws(SystemError) -> [ManifestEntry] {
        try manifest(ofTreeAt: ByteString(root))
    }

    public static func manifest(ofTreeAt root: ByteString) throws(SystemError) -> [ManifestEntry] {
        var entries: [ManifestEntry] = []
        var pending: [ByteString] = ["/"]
        while let relative = pending.popLast() {
            let absolute = relative == "/" ? root : root + relative
            let entry = try entry(absolutePath: absolute, manifestPath: relative)
            entries.append(entry)
            if entry.kind == .dir {
                for name in try childNames(absolute) {
                    pending.append(relative.appending(component: name))
                }
            }
        }
        return entries.sortedByPath()
    }

    static func entry(absolutePath: ByteString, manifestPath: ByteString) throws(SystemError) -> ManifestEntry {
        let status = try FileStatus.lstat(absolutePath)
        guard let kind = ManifestEntry.Kind(rawValue: status.kind.rawValue) else {
            throw SystemError("walk", path: absolutePath.description, detail: "unknown file type \(status.mode)")
        }
        var xattrs: [ByteString: [UInt8]] = [:]
        for name in try ExtendedAttributes.names(absolutePath) {
            xattrs[name] = try ExtendedAttributes.value(absolutePath, name: name)
        }
        var entry = ManifestEntry(
            path: manifestPath, kind: kind, permissions: status.permissions, uid: status.uid, gid: status.gid,
            size: UInt64(status.size), mtimeNanoseconds: status.mtimeSeconds * 1_000_000_000 + status.mtimeNanoseconds,
            linkCount: status.linkCount, xattrs: xattrs)
        switch kind {
        case .char, .block: entry.rdev = (status.rdevMajor, status.rdevMinor)
        case .symlink: entry.target = try readLink(absolutePath)
        case .file: entry.sha256 = try sha256(ofFileAt: absolutePath)
        default: break
        }
        return entry
    }

    static func childNames(_ path: ByteString) throws(SystemError) -> [ByteString] {
        guard let directory = path.withCString({ opendir($0) }) else {
            throw .lastErrno("opendir", path: path.description)
        }
        defer { closedir(directory) }
        var names: [ByteString] = []
        while true {
            errno = 0
            guard let dirent = readdir(directory) else {
                if errno != 0 { throw .lastErrno("readdir", path: path.description) }
                return names
            }
            let name = withUnsafeBytes(of: dirent.pointee.d_name) { raw in ByteString(raw.prefix { $0 != 0 }) }
            if name != "." && name != ".." { names.append(name) }
        }
    }

    public static func readLink(_ path: ByteString) throws(SystemError) -> ByteString {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = try path.withCString { (cPath) throws(SystemError) in
            try retryingOnInterrupt("readlink", path: path.description) {
                buffer.withUnsafeMutableBytes { raw in
                    readlink(cPath, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
                }
            }
        }
        return ByteString(buffer[..<count])
    }

    public static func sha256(ofFileAt path: ByteString) throws(SystemError) -> String {
        let fd = try path.withCString { (cPath) throws(SystemError) in
            try FileDescriptor(
                rawValue: retryingOnInterrupt("open", path: path.description) { open(cPath, O_RDONLY | O_CLOEXEC) })
        }
        defer { try? fd.close() }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let got = try retryingOnInterrupt("read", path: path.description) {
                buffer.withUnsafeMutableBytes { raw in read(fd.rawValue, raw.baseAddress!, raw.count) }
            }
            if got == 0 { break }
            buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[..<got])) }
        }
        return Hex.encode(hasher.finalize())
    }
}
