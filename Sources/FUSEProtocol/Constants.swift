/// Constants of the FUSE wire protocol (the kernel's include/uapi/linux/fuse.h), by name.

/// The protocol version this server speaks: 7.x, where x is what it negotiates down to.
public enum FUSEVersion {
    public static let major: UInt32 = 7
    /// The newest minor whose structures this module encodes (init_out with flags2: 7.36).
    public static let minor: UInt32 = 38
    /// The oldest minor we serve: 7.28 brought FUSE_MAX_PAGES and 7.29 FUSE_NO_OPENDIR_SUPPORT;
    /// every kernel this project supports (6.1 and later) speaks 7.37 or newer.
    public static let oldestMinor: UInt32 = 28
}

/// The node id the kernel uses for the root of the mount.
public let fuseRootNodeID: UInt64 = 1

/// A request opcode. A struct, not an enum: the kernel may send opcodes newer than this code.
public struct FUSEOpcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let lookup = FUSEOpcode(rawValue: 1)
    public static let forget = FUSEOpcode(rawValue: 2)
    public static let getattr = FUSEOpcode(rawValue: 3)
    public static let setattr = FUSEOpcode(rawValue: 4)
    public static let readlink = FUSEOpcode(rawValue: 5)
    public static let symlink = FUSEOpcode(rawValue: 6)
    public static let mknod = FUSEOpcode(rawValue: 8)
    public static let mkdir = FUSEOpcode(rawValue: 9)
    public static let unlink = FUSEOpcode(rawValue: 10)
    public static let rmdir = FUSEOpcode(rawValue: 11)
    public static let rename = FUSEOpcode(rawValue: 12)
    public static let link = FUSEOpcode(rawValue: 13)
    public static let open = FUSEOpcode(rawValue: 14)
    public static let read = FUSEOpcode(rawValue: 15)
    public static let write = FUSEOpcode(rawValue: 16)
    public static let statfs = FUSEOpcode(rawValue: 17)
    public static let release = FUSEOpcode(rawValue: 18)
    public static let fsync = FUSEOpcode(rawValue: 20)
    public static let setxattr = FUSEOpcode(rawValue: 21)
    public static let getxattr = FUSEOpcode(rawValue: 22)
    public static let listxattr = FUSEOpcode(rawValue: 23)
    public static let removexattr = FUSEOpcode(rawValue: 24)
    public static let flush = FUSEOpcode(rawValue: 25)
    public static let initialize = FUSEOpcode(rawValue: 26)
    public static let opendir = FUSEOpcode(rawValue: 27)
    public static let readdir = FUSEOpcode(rawValue: 28)
    public static let releasedir = FUSEOpcode(rawValue: 29)
    public static let fsyncdir = FUSEOpcode(rawValue: 30)
    public static let getlk = FUSEOpcode(rawValue: 31)
    public static let setlk = FUSEOpcode(rawValue: 32)
    public static let setlkw = FUSEOpcode(rawValue: 33)
    public static let access = FUSEOpcode(rawValue: 34)
    public static let create = FUSEOpcode(rawValue: 35)
    public static let interrupt = FUSEOpcode(rawValue: 36)
    public static let bmap = FUSEOpcode(rawValue: 37)
    public static let destroy = FUSEOpcode(rawValue: 38)
    public static let ioctl = FUSEOpcode(rawValue: 39)
    public static let poll = FUSEOpcode(rawValue: 40)
    public static let notifyReply = FUSEOpcode(rawValue: 41)
    public static let batchForget = FUSEOpcode(rawValue: 42)
    public static let fallocate = FUSEOpcode(rawValue: 43)
    public static let readdirplus = FUSEOpcode(rawValue: 44)
    public static let rename2 = FUSEOpcode(rawValue: 45)
    public static let lseek = FUSEOpcode(rawValue: 46)
    public static let copyFileRange = FUSEOpcode(rawValue: 47)
    public static let setupMapping = FUSEOpcode(rawValue: 48)
    public static let removeMapping = FUSEOpcode(rawValue: 49)
    public static let syncfs = FUSEOpcode(rawValue: 50)
    public static let tmpfile = FUSEOpcode(rawValue: 51)
    public static let statx = FUSEOpcode(rawValue: 52)
    public static let copyFileRange64 = FUSEOpcode(rawValue: 53)

    /// Operations that would change the filesystem: a read-only image answers EROFS.
    public static let modifying: Set<FUSEOpcode> = [
        .setattr, .symlink, .mknod, .mkdir, .unlink, .rmdir, .rename, .link, .write, .setxattr,
        .removexattr, .create, .fallocate, .rename2, .copyFileRange, .tmpfile, .copyFileRange64,
        .setupMapping, .removeMapping,
    ]

    public var description: String { "opcode \(rawValue)" }
}

/// FUSE_INIT flags (flags in the low 32 bits, flags2 in the high 32 bits, as the kernel's
/// `flags | (u64)flags2 << 32`).
public struct FUSEInitFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let asyncRead = FUSEInitFlags(rawValue: 1 << 0)
    public static let posixLocks = FUSEInitFlags(rawValue: 1 << 1)
    public static let atomicOTrunc = FUSEInitFlags(rawValue: 1 << 3)
    public static let exportSupport = FUSEInitFlags(rawValue: 1 << 4)
    public static let bigWrites = FUSEInitFlags(rawValue: 1 << 5)
    public static let dontMask = FUSEInitFlags(rawValue: 1 << 6)
    public static let spliceWrite = FUSEInitFlags(rawValue: 1 << 7)
    public static let spliceMove = FUSEInitFlags(rawValue: 1 << 8)
    public static let spliceRead = FUSEInitFlags(rawValue: 1 << 9)
    public static let flockLocks = FUSEInitFlags(rawValue: 1 << 10)
    public static let hasIoctlDir = FUSEInitFlags(rawValue: 1 << 11)
    public static let autoInvalData = FUSEInitFlags(rawValue: 1 << 12)
    public static let doReaddirplus = FUSEInitFlags(rawValue: 1 << 13)
    public static let readdirplusAuto = FUSEInitFlags(rawValue: 1 << 14)
    public static let asyncDIO = FUSEInitFlags(rawValue: 1 << 15)
    public static let writebackCache = FUSEInitFlags(rawValue: 1 << 16)
    public static let noOpenSupport = FUSEInitFlags(rawValue: 1 << 17)
    public static let parallelDirops = FUSEInitFlags(rawValue: 1 << 18)
    public static let handleKillpriv = FUSEInitFlags(rawValue: 1 << 19)
    public static let posixACL = FUSEInitFlags(rawValue: 1 << 20)
    public static let abortError = FUSEInitFlags(rawValue: 1 << 21)
    public static let maxPages = FUSEInitFlags(rawValue: 1 << 22)
    public static let cacheSymlinks = FUSEInitFlags(rawValue: 1 << 23)
    public static let noOpendirSupport = FUSEInitFlags(rawValue: 1 << 24)
    public static let explicitInvalData = FUSEInitFlags(rawValue: 1 << 25)
    public static let mapAlignment = FUSEInitFlags(rawValue: 1 << 26)
    public static let submounts = FUSEInitFlags(rawValue: 1 << 27)
    public static let handleKillprivV2 = FUSEInitFlags(rawValue: 1 << 28)
    public static let setxattrExt = FUSEInitFlags(rawValue: 1 << 29)
    /// flags2 is valid (7.36).
    public static let initExt = FUSEInitFlags(rawValue: 1 << 30)
    public static let securityContext = FUSEInitFlags(rawValue: 1 << 32)
    public static let hasInodeDAX = FUSEInitFlags(rawValue: 1 << 33)
    public static let createSuppGroup = FUSEInitFlags(rawValue: 1 << 34)
    public static let hasExpireOnly = FUSEInitFlags(rawValue: 1 << 35)
    public static let directIOAllowMmap = FUSEInitFlags(rawValue: 1 << 36)
    public static let passthrough = FUSEInitFlags(rawValue: 1 << 37)
    public static let noExportSupport = FUSEInitFlags(rawValue: 1 << 38)
    /// The kernel can resend pending requests on FUSE_NOTIFY_RESEND (6.9+).
    public static let hasResend = FUSEInitFlags(rawValue: 1 << 39)
    public static let allowIdmap = FUSEInitFlags(rawValue: 1 << 40)
    public static let overIOUring = FUSEInitFlags(rawValue: 1 << 41)
}

/// fuse_open_out.open_flags.
public struct FUSEOpenFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let directIO = FUSEOpenFlags(rawValue: 1 << 0)
    /// Keep the page cache across opens: the image cannot change.
    public static let keepCache = FUSEOpenFlags(rawValue: 1 << 1)
    public static let nonSeekable = FUSEOpenFlags(rawValue: 1 << 2)
    /// Cache readdir results in the page cache.
    public static let cacheDir = FUSEOpenFlags(rawValue: 1 << 3)
    public static let stream = FUSEOpenFlags(rawValue: 1 << 4)
    public static let noFlush = FUSEOpenFlags(rawValue: 1 << 5)
}

/// Directory entry types (DT_*) as fuse_dirent.type carries them.
public enum FUSEDirentType {
    public static let unknown: UInt32 = 0
    public static let fifo: UInt32 = 1
    public static let characterDevice: UInt32 = 2
    public static let directory: UInt32 = 4
    public static let blockDevice: UInt32 = 6
    public static let regular: UInt32 = 8
    public static let symlink: UInt32 = 10
    public static let socket: UInt32 = 12
}

/// Notifications the server sends unasked (fuse_notify_code): the out header's error field
/// carries the code, its unique is 0.
public enum FUSENotifyCode {
    /// FUSE_NOTIFY_STORE: data for an inode's page cache.
    public static let store: Int32 = 4
}

/// lseek whence values the kernel forwards (the others it answers itself).
public enum FUSESeekWhence {
    public static let data: UInt32 = 3
    public static let hole: UInt32 = 4
}

/// Fixed sizes of the wire structures.
public enum FUSEWireSize {
    public static let inHeader = 40
    public static let outHeader = 16
    public static let attr = 88
    public static let entryOut = 40 + attr
    public static let attrOut = 16 + attr
    public static let initInCompat = 16
    public static let initIn = 64
    public static let initOut = 64
    public static let openIn = 8
    public static let openOut = 16
    public static let readIn = 40
    public static let releaseIn = 24
    public static let getattrIn = 16
    public static let forgetIn = 8
    public static let batchForgetIn = 8
    public static let forgetOne = 16
    public static let getxattrIn = 8
    public static let getxattrOut = 8
    public static let accessIn = 8
    public static let lseekIn = 24
    public static let lseekOut = 8
    public static let notifyStoreOut = 24
    public static let interruptIn = 8
    public static let statfsOut = 80
    /// fuse_dirent up to its name.
    public static let direntHeader = 24
    /// The smallest read(2) buffer the kernel accepts on /dev/fuse.
    public static let minimumReadBuffer = 8192
}

/// The ioctl that gives a new /dev/fuse descriptor its own channel on an existing
/// connection: `_IOR(229, 0, uint32_t)`.
public let fuseDevIocClone: UInt = 0x8004_E500

/// The notification code of FUSE_NOTIFY_RESEND (`enum fuse_notify_code`).
public let fuseNotifyResend: Int32 = 7

/// The bit the kernel sets in the unique of a request it queues again after
/// FUSE_NOTIFY_RESEND (`FUSE_UNIQUE_RESEND`): the reply must carry the unique as received.
public let fuseUniqueResend: UInt64 = 1 << 63
