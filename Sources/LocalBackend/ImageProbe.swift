#if canImport(Glibc)
import Glibc
#endif
import CShim
import EROFSFormat
import ImageSources
import SystemCalls
import SystemPackage

/// What a mount source is, checked before anything is set up: it exists, it is a regular file
/// or a block device, and it holds a valid EROFS superblock that fits in it.
public struct ImageProbe: Sendable {
    public enum SourceKind: Sendable, Equatable { case regularFile, blockDevice }

    public var path: String
    public var kind: SourceKind
    public var size: UInt64
    public var superblock: Superblock

    /// Opens and validates `path`. Errors name the path and say what is wrong.
    public static func probe(_ path: String) throws(MountFailure) -> ImageProbe {
        let fd = try open(path)
        defer { try? fd.close() }
        return try probe(fd, path: path)
    }

    /// Opens `path` for reading if it is a regular file or a block device (looked at first: an
    /// open of a FIFO would wait for a writer).
    public static func open(_ path: String) throws(MountFailure) -> FileDescriptor {
        let status: FileStatus
        do { status = try FileStatus.stat(path) } catch {
            throw MountFailure("cannot open source \(path)", cause: error)
        }
        _ = try sourceKind(status, path: path)
        do { return try FileDescriptor.open(path: path, .readOnly, options: .closeOnExec) } catch {
            throw MountFailure("cannot open source \(path)", cause: error)
        }
    }

    static func sourceKind(_ status: FileStatus, path: String) throws(MountFailure) -> SourceKind {
        switch status.kind {
        case .file: return .regularFile
        case .block: return .blockDevice
        case .dir: throw MountFailure("source \(path) is a directory, not an EROFS image or block device")
        default: throw MountFailure("source \(path) is not a regular file or block device")
        }
    }

    /// Validates the image open on `fd` (named `path` in messages).
    public static func probe(_ fd: FileDescriptor, path: String) throws(MountFailure) -> ImageProbe {
        let status: FileStatus
        do { status = try FileStatus.fstat(fd) } catch {
            throw MountFailure("cannot open source \(path)", cause: error)
        }
        let kind = try sourceKind(status, path: path)
        var size = UInt64(max(0, status.size))
        if kind == .blockDevice {
            var bytes: UInt64 = 0
            if cshim_ioctl_ptr(fd.rawValue, CSHIM_BLKGETSIZE64, &bytes) == 0 { size = bytes }
        }
        let head: [UInt8]
        do { head = try fd.read(exactly: Superblock.offset + 64 * 1024, at: 0, path: path) } catch {
            throw MountFailure("cannot read source \(path)", cause: error)
        }
        let superblock = try validate(head: head, size: size, name: path)
        return ImageProbe(path: path, kind: kind, size: size, superblock: superblock)
    }

    /// Validates a remote image (named by its `displayName`) as a local one is validated: the
    /// superblock, its checksum, and an object at least as long as the superblock says.
    public static func probe(source: any RandomAccessSource) throws(MountFailure) -> ImageProbe {
        let head: [UInt8]
        do { head = try source.read(count: Superblock.offset + 64 * 1024, at: 0) } catch {
            // The remote layer's own words (status, timeout...), not only an errno.
            throw MountFailure("cannot read \(source.displayName): \(error.detail ?? error.description)")
        }
        let superblock = try validate(head: head, size: source.size, name: source.displayName)
        return ImageProbe(path: source.displayName, kind: .regularFile, size: source.size, superblock: superblock)
    }

    /// The superblock in `head` (the source's first bytes), checked against the source's size.
    static func validate(head: [UInt8], size: UInt64, name path: String) throws(MountFailure) -> Superblock {
        let superblock: Superblock
        do {
            superblock = try Superblock(decoding: head.dropFirst(Superblock.offset))
            try superblock.verifyChecksum(firstBlockFromSuperblock: Array(head.dropFirst(Superblock.offset)))
        } catch {
            throw MountFailure("\(path): \(error)")
        }
        let needed = superblock.blocks * UInt64(superblock.blockSize)
        if needed > size {
            throw MountFailure(
                "\(path): truncated EROFS image: the superblock says \(superblock.blocks) blocks of \(superblock.blockSize) bytes (\(needed) bytes), the source has \(size)"
            )
        }
        return superblock
    }
}

/// A mount that could not be done: mount(8)'s exit status 32. The message is for the user.
public struct MountFailure: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var cause: SystemError?

    public init(_ message: String, cause: SystemError? = nil) {
        self.message = message
        self.cause = cause
    }

    public var description: String {
        guard let cause else { return message }
        if let errno = cause.errno { return "\(message): \(String(cString: strerror(errno.rawValue)))" }
        return "\(message): \(cause)"
    }
}
