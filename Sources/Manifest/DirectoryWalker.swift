#if canImport(Glibc)
import Glibc
#endif
import SystemCalls
import SystemPackage

/// Builds the manifest of a mounted tree by asking the kernel (lstat, readlink, xattrs, read):
/// the reference view that every backend's mount is compared against.
public enum DirectoryWalker {
    /// Every path below `root` (included, as "/"), sorted by path.
    public static func manifest(ofTreeAt root: String) throws(SystemError) -> [ManifestEntry] {
        var entries: [ManifestEntry] = []
        var pending = ["/"]
        while let relative = pending.popLast() {
            let absolute = relative == "/" ? root : root + relative
            let entry = try entry(absolutePath: absolute, manifestPath: relative)
            entries.append(entry)
            if entry.kind == .dir {
                for name in try childNames(absolute) {
                    pending.append(relative == "/" ? "/" + name : relative + "/" + name)
                }
            }
        }
        return entries.sortedByPath()
    }

    static func entry(absolutePath: String, manifestPath: String) throws(SystemError) -> ManifestEntry {
        let status = try FileStatus.lstat(absolutePath)
        guard let kind = ManifestEntry.Kind(rawValue: status.kind.rawValue) else {
            throw SystemError("walk", path: absolutePath, detail: "unknown file type \(status.mode)")
        }
        var xattrs: [String: [UInt8]] = [:]
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

    static func childNames(_ path: String) throws(SystemError) -> [String] {
        guard let directory = opendir(path) else { throw .lastErrno("opendir", path: path) }
        defer { closedir(directory) }
        var names: [String] = []
        while true {
            errno = 0
            guard let dirent = readdir(directory) else {
                if errno != 0 { throw .lastErrno("readdir", path: path) }
                return names
            }
            let name = withUnsafeBytes(of: dirent.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
    }

    public static func readLink(_ path: String) throws(SystemError) -> String {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = try retryingOnInterrupt("readlink", path: path) {
            buffer.withUnsafeMutableBytes { raw in
                readlink(path, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
            }
        }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }

    public static func sha256(ofFileAt path: String) throws(SystemError) -> String {
        let fd = try FileDescriptor.open(path: path, .readOnly)
        defer { try? fd.close() }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let got = try retryingOnInterrupt("read", path: path) {
                buffer.withUnsafeMutableBytes { raw in read(fd.rawValue, raw.baseAddress!, raw.count) }
            }
            if got == 0 { break }
            buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[..<got])) }
        }
        return Hex.encode(hasher.finalize())
    }
}
