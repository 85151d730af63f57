#if canImport(Glibc)
import Glibc
#endif
import CShim
import SystemCalls
import SystemPackage

/// Bytes of an image, read at any offset: a local file now; HTTP, OCI and S3 blobs later.
/// The EROFS reader reads through it and the NBD server serves from it.
public protocol RandomAccessSource: Sendable {
    /// Total size in bytes.
    var size: UInt64 { get }
    /// A name for messages (a path or a URL without credentials).
    var displayName: String { get }
    /// Fills `buffer` from `offset`; returns fewer bytes only at the end of the source.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int
    /// The descriptor behind the source when it is a local file, for zero-copy paths
    /// (sendfile/splice); nil for remote sources.
    var localFileDescriptor: FileDescriptor? { get }
    /// Where the `count` bytes from `offset` lie, as they are, in a file the source holds open,
    /// for replies spliced from that file's page cache instead of read and copied: the image
    /// file itself, or a remote source's block cache once those blocks are there and checked.
    /// nil when they are not all in one such file (then `read` them). The descriptor stays
    /// owned by the source.
    func fileRange(at offset: UInt64, count: Int) -> FileRange?
}

/// A stretch of a source's bytes found in a file: `descriptor` at `offset`.
public struct FileRange: Sendable, Equatable {
    public var descriptor: FileDescriptor
    public var offset: UInt64

    public init(descriptor: FileDescriptor, offset: UInt64) {
        self.descriptor = descriptor
        self.offset = offset
    }
}

extension RandomAccessSource {
    /// A local file's bytes are the file's own, at the same offsets.
    public func fileRange(at offset: UInt64, count: Int) -> FileRange? {
        guard let descriptor = localFileDescriptor, offset <= size, UInt64(count) <= size - offset else { return nil }
        return FileRange(descriptor: descriptor, offset: offset)
    }

    /// Reads up to `count` bytes at `offset` into a new array (shorter only at the end).
    public func read(count: Int, at offset: UInt64) throws(SystemError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = try bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(SystemError) -> Int in try read(into: buffer, at: offset) }
        }.get()
        if got < count { bytes.removeSubrange(got...) }
        return bytes
    }
}

/// A local regular file or block device, read with pread(2). Safe to share between threads.
public final class FileSource: RandomAccessSource {
    public let path: String
    public let size: UInt64
    public let descriptor: FileDescriptor

    public var displayName: String { path }
    public var localFileDescriptor: FileDescriptor? { descriptor }

    public convenience init(path: String) throws(SystemError) {
        try self.init(descriptor: try FileDescriptor.open(path: path, .readOnly), path: path)
    }

    /// An image already open (handed down by the process that opened and checked it, so that
    /// a file renamed over `path` since is not what is read); takes ownership of `fd`.
    public init(descriptor fd: FileDescriptor, path: String) throws(SystemError) {
        self.path = path
        do {
            let status = try FileStatus.fstat(fd)
            if status.kind == .block {
                var bytes: UInt64 = 0
                try retryingOnInterrupt("BLKGETSIZE64", path: path) {
                    cshim_ioctl_ptr(fd.rawValue, CSHIM_BLKGETSIZE64, &bytes)
                }
                size = bytes
            } else {
                size = UInt64(max(0, status.size))
            }
        } catch {
            try? fd.close()
            throw error
        }
        descriptor = fd
    }

    deinit { try? descriptor.close() }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        guard offset < size else { return 0 }
        let wanted = Int(min(UInt64(buffer.count), size - offset))
        var filled = 0
        while filled < wanted {
            let got = try retryingOnInterrupt("pread", path: path) {
                pread(descriptor.rawValue, buffer.baseAddress! + filled, wanted - filled, off_t(offset) + off_t(filled))
            }
            if got == 0 { break }
            filled += got
        }
        return filled
    }
}
