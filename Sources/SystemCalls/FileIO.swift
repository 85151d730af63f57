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
