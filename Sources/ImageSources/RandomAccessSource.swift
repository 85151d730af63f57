#if canImport(Glibc)
import Glibc
#endif
import CShim
import Synchronization
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
    /// Starts bringing in `count` bytes at `offset` that will be read soon, without waiting for
    /// them (a hint: several of these let the disk fetch scattered bytes in parallel, where
    /// reading them one by one waits for each in turn).
    func readAhead(at offset: UInt64, count: Int)
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

    /// No hint is taken by default.
    public func readAhead(at offset: UInt64, count: Int) {}

    /// What of `count` bytes at `offset` lies within the source; nil when nothing does.
    public func span(at offset: UInt64, count: Int) -> Range<UInt64>? {
        guard count > 0, offset < size else { return nil }
        return offset..<(offset + min(UInt64(count), size - offset))
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
    private let readahead: ClusteredReadahead
    /// Whether reads first ask for what the page cache holds (RWF_NOWAIT), to notice misses;
    /// off where the file system refuses that.
    private let probesTheCache = Atomic<Bool>(true)

    public var displayName: String { path }
    public var localFileDescriptor: FileDescriptor? { descriptor }

    public convenience init(path: String) throws(SystemError) {
        try self.init(descriptor: try FileDescriptor.open(path: path, .readOnly), path: path)
    }

    /// An image already open (handed down by the process that opened and checked it, so that
    /// a file renamed over `path` since is not what is read); takes ownership of `fd`.
    public convenience init(descriptor fd: FileDescriptor, path: String) throws(SystemError) {
        try self.init(descriptor: fd, path: path, readahead: ClusteredReadahead())
    }

    init(descriptor fd: FileDescriptor, path: String, readahead: ClusteredReadahead) throws(SystemError) {
        self.path = path
        self.readahead = readahead
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
        if let cached = cachedBytes(into: buffer.baseAddress!, count: wanted, at: offset) {
            filled = cached
            if filled < wanted {
                readahead.missed(descriptor: descriptor.rawValue, at: offset + UInt64(filled), size: size)
            } else {
                readahead.served(descriptor: descriptor.rawValue, at: offset, size: size)
            }
        }
        while filled < wanted {
            let got = try retryingOnInterrupt("pread", path: path) {
                pread(descriptor.rawValue, buffer.baseAddress! + filled, wanted - filled, off_t(offset) + off_t(filled))
            }
            if got == 0 { break }
            filled += got
        }
        return filled
    }

    public func readAhead(at offset: UInt64, count: Int) {
        guard let span = span(at: offset, count: count) else { return }
        _ = posix_fadvise(descriptor.rawValue, off_t(span.lowerBound), off_t(span.count), POSIX_FADV_WILLNEED)
    }

    /// A spliced range is read by the kernel from the page cache: a miss at its start is
    /// noticed here, before the splice blocks on it.
    public func fileRange(at offset: UInt64, count: Int) -> FileRange? {
        guard offset <= size, UInt64(count) <= size - offset else { return nil }
        var byte: UInt8 = 0
        if count > 0 {
            if cachedBytes(into: &byte, count: 1, at: offset) == 0 {
                readahead.missed(descriptor: descriptor.rawValue, at: offset, size: size)
            } else {
                readahead.served(descriptor: descriptor.rawValue, at: offset, size: size)
            }
        }
        return FileRange(descriptor: descriptor, offset: offset)
    }

    /// Reads what the page cache already holds of `count` bytes at `offset` (0 when the first
    /// page is not there); never waits for the disk. nil when the file system cannot say: no
    /// miss is known then, and the blocking read does it all.
    private func cachedBytes(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) -> Int? {
        guard probesTheCache.load(ordering: .relaxed) else { return nil }
        while true {
            let got = cshim_pread_nowait(descriptor.rawValue, buffer, count, off_t(offset))
            if got >= 0 { return got }
            switch errno {
            case EINTR: continue
            case EAGAIN: return 0
            case EOPNOTSUPP:
                probesTheCache.store(false, ordering: .relaxed)
                return nil
            default: return nil  // the blocking read that follows reports it
            }
        }
    }
}
