#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

extension FileDescriptor {
    /// Opens `path`, turning swift-system's `Errno` into a `SystemError` that names the path.
    public static func open(
        path: String, _ mode: FileDescriptor.AccessMode, options: FileDescriptor.OpenOptions = [],
        permissions: FilePermissions? = nil
    ) throws(SystemError) -> FileDescriptor {
        do {
            return try FileDescriptor.open(
                FilePath(path), mode, options: options.union(.closeOnExec), permissions: permissions,
                retryOnInterrupt: true)
        } catch {
            throw SystemError("open", path: path, errno: error as? Errno)
        }
    }

    /// Reads exactly `count` bytes at `offset`, or fewer only at end of file.
    public func read(exactly count: Int, at offset: Int64, path: String? = nil) throws(SystemError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let got = try retryingOnInterrupt("pread", path: path) {
                bytes.withUnsafeMutableBytes { buffer in
                    Glibc.pread(rawValue, buffer.baseAddress! + filled, count - filled, off_t(offset) + off_t(filled))
                }
            }
            if got == 0 { break }
            filled += got
        }
        bytes.removeSubrange(filled...)
        return bytes
    }
}

extension FileDescriptor {
    /// Whether sendfile(2) can read this file: its filesystem splices (before Linux 6.5 some
    /// refuse with EINVAL). Probed once by sending its first byte into a throwaway socket pair;
    /// the file's own position is not moved.
    public var supportsSendfile: Bool {
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            return false
        }
        defer { Glibc.close(ends[0]); Glibc.close(ends[1]) }
        var offset: off_t = 0
        var sent: Int
        repeat { sent = Glibc.sendfile(ends[0], rawValue, &offset, 1) } while sent < 0 && errno == EINTR
        return sent >= 0
    }
}

/// The names in an open directory stream (opendir/fdopendir), without "." and "..": names are
/// bytes, decoded as UTF-8 for the callers that match them against names they made.
public func directoryEntryNames(_ stream: OpaquePointer) -> [String] {
    var names: [String] = []
    while let entry = readdir(stream) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) {
            String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}
