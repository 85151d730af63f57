#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// The parts of `struct stat` this project looks at, as a value.
public struct FileStatus: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case file, dir, symlink, char, block, fifo, socket, unknown
    }

    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: Int64
    public var linkCount: UInt64
    public var inode: UInt64
    public var device: UInt64
    public var rdev: UInt64
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: Int64

    public var kind: Kind {
        switch mode & UInt32(S_IFMT) {
        case UInt32(S_IFREG): .file
        case UInt32(S_IFDIR): .dir
        case UInt32(S_IFLNK): .symlink
        case UInt32(S_IFCHR): .char
        case UInt32(S_IFBLK): .block
        case UInt32(S_IFIFO): .fifo
        case UInt32(S_IFSOCK): .socket
        default: .unknown
        }
    }

    /// Permission bits with setuid, setgid and sticky.
    public var permissions: UInt32 { mode & 0o7777 }
    public var rdevMajor: UInt32 { UInt32(truncatingIfNeeded: ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)) }
    public var rdevMinor: UInt32 { UInt32(truncatingIfNeeded: ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) }

    init(_ st: Glibc.stat) {
        mode = st.st_mode
        uid = st.st_uid
        gid = st.st_gid
        size = Int64(st.st_size)
        linkCount = UInt64(st.st_nlink)
        inode = UInt64(st.st_ino)
        device = UInt64(st.st_dev)
        rdev = UInt64(st.st_rdev)
        mtimeSeconds = Int64(st.st_mtim.tv_sec)
        mtimeNanoseconds = Int64(st.st_mtim.tv_nsec)
    }

    /// `lstat(2)`: does not follow a final symlink.
    public static func lstat(_ path: String) throws(SystemError) -> FileStatus {
        try lstat(ByteString(path))
    }

    /// `lstat(2)` of a path that need not be UTF-8.
    public static func lstat(_ path: ByteString) throws(SystemError) -> FileStatus {
        var st = Glibc.stat()
        try path.withCString { (cPath) throws(SystemError) in
            try retryingOnInterrupt("lstat", path: path.description) {
                fstatat(AT_FDCWD, cPath, &st, AT_SYMLINK_NOFOLLOW)
            }
        }
        return FileStatus(st)
    }

    /// `stat(2)`: follows symlinks.
    public static func stat(_ path: String) throws(SystemError) -> FileStatus {
        var st = Glibc.stat()
        try retryingOnInterrupt("stat", path: path) { fstatat(AT_FDCWD, path, &st, 0) }
        return FileStatus(st)
    }

    /// `fstat(2)`.
    public static func fstat(_ fd: FileDescriptor) throws(SystemError) -> FileStatus {
        var st = Glibc.stat()
        try retryingOnInterrupt("fstat") { Glibc.fstat(fd.rawValue, &st) }
        return FileStatus(st)
    }
}
