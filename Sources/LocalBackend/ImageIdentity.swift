import Logging
import SystemCalls
import SystemPackage

/// Which file an image is: device and inode, and what changes when it is rewritten in place
/// (size, modification time).
public struct ImageIdentity: Codable, Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64
    public var size: Int64
    public var modificationSeconds: Int64
    public var modificationNanoseconds: Int64

    public init(_ status: FileStatus) {
        device = status.device
        inode = status.inode
        size = status.size
        modificationSeconds = status.mtimeSeconds
        modificationNanoseconds = status.mtimeNanoseconds
    }

    /// The image of a device whose every daemon is gone, opened again by its `path`: it must be
    /// the very file the device was mounted from (`expected`), unchanged (a file renamed over the
    /// path, or rewritten, would be served under a filesystem that cached the old one). A state
    /// from before these checks has no identity: the file is served with a warning.
    public static func reopen(_ path: String, mountedAs expected: ImageIdentity?, on device: String, logger: Logger)
        throws(MountFailure) -> FileDescriptor
    {
        let image = try ImageProbe.open(path)
        guard let expected else {
            logger.warning(
                "\(device): its state predates image checks; \(path) is served without checking it is the file mounted")
            return image
        }
        let change: String?
        do { change = ImageIdentity(try FileStatus.fstat(image)).difference(from: expected) } catch {
            try? image.close()
            throw MountFailure("cannot use \(path)", cause: error)
        }
        if let change {
            try? image.close()
            throw MountFailure(
                "\(path) is not the image \(device) was mounted from (\(change)): refusing to serve it under the mounted filesystem; unmount it (`mount.erofs -u`) and mount the new image"
            )
        }
        return image
    }

    /// What differs from `other`, for a message; nil when nothing does.
    public func difference(from other: ImageIdentity) -> String? {
        var changes: [String] = []
        if device != other.device || inode != other.inode {
            changes.append("device:inode \(other.device):\(other.inode) -> \(device):\(inode)")
        }
        if size != other.size { changes.append("size \(other.size) -> \(size)") }
        if modificationSeconds != other.modificationSeconds || modificationNanoseconds != other.modificationNanoseconds
        {
            changes.append("modified since")
        }
        return changes.isEmpty ? nil : changes.joined(separator: ", ")
    }
}
