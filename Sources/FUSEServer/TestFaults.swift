#if DEBUG
#if canImport(Glibc)
import Glibc
#endif
import FUSEProtocol

/// Debug builds only (a release build has no such code): `EROFS_TEST_CRASH_READ_INODE=INO` in a
/// serving worker's environment makes it abort on every READ of the file whose st_ino is INO,
/// the way a worker with a bug on one request would. What FUSERecoveryTests' crash-loop test
/// mounts with: every successor that takes the request over dies too, until the supervisor has
/// the next one fail it with EIO.
enum TestFaults {
    static let crashInode: UInt64? = getenv("EROFS_TEST_CRASH_READ_INODE").flatMap { UInt64(String(cString: $0)) }

    static func crashIfAsked(_ request: FUSERequest, nodes: NodeIDMap) {
        guard let inode = crashInode, case .read = request.operation, nodes.nid(of: request.header.nodeID) == inode
        else { return }
        abort()
    }
}
#endif
