/// Encoding of replies written to /dev/fuse: a fuse_out_header and the operation's structure,
/// in host byte order.

/// struct fuse_attr.
public struct FUSEAttr: Equatable, Sendable {
    public var ino: UInt64
    public var size: UInt64
    public var blocks: UInt64
    public var atime: UInt64, mtime: UInt64, ctime: UInt64
    public var atimeNanoseconds: UInt32, mtimeNanoseconds: UInt32, ctimeNanoseconds: UInt32
    public var mode: UInt32
    public var linkCount: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// new_encode_dev form, as the kernel decodes it.
    public var rdev: UInt32
    public var blockSize: UInt32

    public init(
        ino: UInt64, size: UInt64, blocks: UInt64, mtime: UInt64, mtimeNanoseconds: UInt32, mode: UInt32,
        linkCount: UInt32, uid: UInt32, gid: UInt32, rdev: UInt32, blockSize: UInt32
    ) {
        self.ino = ino
        self.size = size
        self.blocks = blocks
        // EROFS keeps one time stamp; the kernel shows it as all three.
        (atime, ctime, self.mtime) = (mtime, mtime, mtime)
        (atimeNanoseconds, ctimeNanoseconds, self.mtimeNanoseconds) = (
            mtimeNanoseconds, mtimeNanoseconds, mtimeNanoseconds
        )
        self.mode = mode
        self.linkCount = linkCount
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.blockSize = blockSize
    }

    func encode(into out: inout WireWriter) {
        // Field by field, no array literals: READDIRPLUS encodes one of these per entry, and
        // each literal would be a heap allocation.
        out.append(ino)
        out.append(size)
        out.append(blocks)
        out.append(atime)
        out.append(mtime)
        out.append(ctime)
        out.append(atimeNanoseconds)
        out.append(mtimeNanoseconds)
        out.append(ctimeNanoseconds)
        out.append(mode)
        out.append(linkCount)
        out.append(uid)
        out.append(gid)
        out.append(rdev)
        out.append(blockSize)
        out.append(UInt32(0))  // flags
    }
}

/// How long the kernel may trust an answer: seconds and nanoseconds.
public struct FUSEValidity: Equatable, Sendable {
    public var seconds: UInt64
    public var nanoseconds: UInt32

    public init(seconds: UInt64, nanoseconds: UInt32 = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// An image cannot change: as good as forever. Not UInt64.max: the kernel converts the
    /// seconds to a signed time64_t, where that would be negative (already expired).
    public static let forever = FUSEValidity(seconds: 100 * 365 * 86_400)
}

/// struct fuse_entry_out: a LOOKUP answer (and each entry of READDIRPLUS).
public struct FUSEEntryOut: Equatable, Sendable {
    public var nodeID: UInt64
    public var generation: UInt64
    public var entryValidity: FUSEValidity
    public var attrValidity: FUSEValidity
    public var attr: FUSEAttr

    public init(
        nodeID: UInt64, generation: UInt64 = 0, entryValidity: FUSEValidity, attrValidity: FUSEValidity, attr: FUSEAttr
    ) {
        self.nodeID = nodeID
        self.generation = generation
        self.entryValidity = entryValidity
        self.attrValidity = attrValidity
        self.attr = attr
    }

    func encode(into out: inout WireWriter) {
        out.append(nodeID)
        out.append(generation)
        out.append(entryValidity.seconds)
        out.append(attrValidity.seconds)
        out.append(entryValidity.nanoseconds)
        out.append(attrValidity.nanoseconds)
        attr.encode(into: &out)
    }
}

/// struct fuse_init_out.
public struct FUSEInitOut: Equatable, Sendable {
    public var major: UInt32
    public var minor: UInt32
    public var maxReadahead: UInt32
    public var flags: FUSEInitFlags
    public var maxBackground: UInt16
    public var congestionThreshold: UInt16
    public var maxWrite: UInt32
    public var timeGranularity: UInt32
    public var maxPages: UInt16

    public init(
        major: UInt32, minor: UInt32, maxReadahead: UInt32, flags: FUSEInitFlags, maxBackground: UInt16,
        congestionThreshold: UInt16, maxWrite: UInt32, timeGranularity: UInt32, maxPages: UInt16
    ) {
        self.major = major
        self.minor = minor
        self.maxReadahead = maxReadahead
        self.flags = flags
        self.maxBackground = maxBackground
        self.congestionThreshold = congestionThreshold
        self.maxWrite = maxWrite
        self.timeGranularity = timeGranularity
        self.maxPages = maxPages
    }
}

/// struct fuse_kstatfs.
public struct FUSEStatfs: Equatable, Sendable {
    public var blocks: UInt64
    public var freeBlocks: UInt64
    public var availableBlocks: UInt64
    public var files: UInt64
    public var freeFiles: UInt64
    public var blockSize: UInt32
    public var nameLength: UInt32
    public var fragmentSize: UInt32

    public init(blocks: UInt64, files: UInt64, blockSize: UInt32, nameLength: UInt32 = 255) {
        self.blocks = blocks
        freeBlocks = 0
        availableBlocks = 0
        self.files = files
        freeFiles = 0
        self.blockSize = blockSize
        self.nameLength = nameLength
        fragmentSize = blockSize
    }
}

/// Reply encoders. Each returns the whole message: header and payload.
public enum FUSEReply {
    /// An error reply: `errno` is positive (ENOENT...), sent negated as the kernel expects.
    public static func error(unique: UInt64, errno: Int32) -> [UInt8] {
        header(unique: unique, error: -errno, payloadLength: 0).bytes
    }

    /// A success with `payload` as the body.
    public static func success(unique: UInt64, payload: some Collection<UInt8> = [UInt8]()) -> [UInt8] {
        var out = header(unique: unique, error: 0, payloadLength: payload.count)
        out.append(contentsOf: payload)
        return out.bytes
    }

    /// Only the out header of a success whose payload (`payloadLength` bytes) goes out in a
    /// second iovec: large reads are not copied into the header's buffer.
    public static func successHeader(unique: UInt64, payloadLength: Int) -> [UInt8] {
        header(unique: unique, error: 0, payloadLength: payloadLength, inline: false).bytes
    }

    /// FUSE_NOTIFY_RESEND (6.9+, announced by FUSE_HAS_RESEND in INIT): a notification (unique
    /// 0, the code in the error field) asking the kernel to queue again every request read on
    /// any of the connection's open channels and not answered; they come back with
    /// `fuseUniqueResend` set in their unique. Older kernels refuse the code with EINVAL.
    public static func notifyResend() -> [UInt8] {
        header(unique: 0, error: fuseNotifyResend, payloadLength: 0).bytes
    }

    /// `inline`: the payload will be appended to this buffer (room is reserved for it); else
    /// it goes out in its own iovec and only the header's bytes are allocated (a 1 MiB READ
    /// must not cost a 1 MiB allocation for its 16-byte header).
    static func header(unique: UInt64, error: Int32, payloadLength: Int, inline: Bool = true) -> WireWriter {
        var out = WireWriter(capacity: FUSEWireSize.outHeader + (inline ? payloadLength : 0))
        out.append(UInt32(truncatingIfNeeded: FUSEWireSize.outHeader + payloadLength))
        out.append(error)
        out.append(unique)
        return out
    }

    public static func entry(unique: UInt64, _ entry: FUSEEntryOut) -> [UInt8] {
        var out = header(unique: unique, error: 0, payloadLength: FUSEWireSize.entryOut)
        entry.encode(into: &out)
        return out.bytes
    }

    public static func attr(unique: UInt64, validity: FUSEValidity, _ attr: FUSEAttr) -> [UInt8] {
        var out = header(unique: unique, error: 0, payloadLength: FUSEWireSize.attrOut)
        out.append(validity.seconds)
        out.append(validity.nanoseconds)
        out.append(UInt32(0))
        attr.encode(into: &out)
        return out.bytes
    }

    /// The init reply, in the size the kernel's minor version expects (7.23 and later: 64 bytes).
    public static func initialize(unique: UInt64, _ reply: FUSEInitOut) -> [UInt8] {
        var out = header(unique: unique, error: 0, payloadLength: FUSEWireSize.initOut)
        out.append(reply.major)
        out.append(reply.minor)
        out.append(reply.maxReadahead)
        out.append(UInt32(truncatingIfNeeded: reply.flags.rawValue))
        out.append(reply.maxBackground)
        out.append(reply.congestionThreshold)
        out.append(reply.maxWrite)
        out.append(reply.timeGranularity)
        out.append(reply.maxPages)
        out.append(UInt16(0))  // map_alignment
        out.append(UInt32(truncatingIfNeeded: reply.flags.rawValue >> 32))
        for _ in 0..<7 { out.append(UInt32(0)) }
        return out.bytes
    }

    public static func open(unique: UInt64, fileHandle: UInt64, flags: FUSEOpenFlags) -> [UInt8] {
        var out = header(unique: unique, error: 0, payloadLength: FUSEWireSize.openOut)
        out.append(fileHandle)
        out.append(flags.rawValue)
        out.append(UInt32(0))
        return out.bytes
    }

    /// GETXATTR/LISTXATTR with size 0: how many bytes the value (or the list) has.
    public static func xattrSize(unique: UInt64, size: UInt32) -> [UInt8] {
        var out = header(unique: unique, error: 0, payloadLength: FUSEWireSize.getxattrOut)
        out.append(size)
        out.append(UInt32(0))
        return out.bytes
    }

    public static func statfs(unique: UInt64, _ statfs: FUSEStatfs) -> [UInt8] {
        var out = header(unique: unique, error: 0, payloadLength: FUSEWireSize.statfsOut)
        for value in [statfs.blocks, statfs.freeBlocks, statfs.availableBlocks, statfs.files, statfs.freeFiles] {
            out.append(value)
        }
        for value in [statfs.blockSize, statfs.nameLength, statfs.fragmentSize] { out.append(value) }
        for _ in 0..<7 { out.append(UInt32(0)) }  // padding, spare[6]
        return out.bytes
    }

    /// The head of a FUSE_NOTIFY_STORE (out header and fuse_notify_store_out): `length` bytes
    /// of the inode's data at `offset` follow in a second iovec.
    public static func notifyStoreHeader(nodeID: UInt64, offset: UInt64, length: Int) -> [UInt8] {
        var out = header(
            unique: 0, error: FUSENotifyCode.store, payloadLength: FUSEWireSize.notifyStoreOut + length, inline: false)
        out.append(nodeID)
        out.append(offset)
        out.append(UInt32(truncatingIfNeeded: length))
        out.append(UInt32(0))
        return out.bytes
    }

    public static func lseek(unique: UInt64, offset: UInt64) -> [UInt8] {
        var out = header(unique: unique, error: 0, payloadLength: FUSEWireSize.lseekOut)
        out.append(offset)
        return out.bytes
    }
}

/// Fills a READDIR or READDIRPLUS answer: entries go in while they fit the size the kernel
/// asked for. Each entry carries the offset of the one after it (the cookie the kernel sends
/// back to resume there).
public struct FUSEDirentList: Sendable {
    public let capacity: Int
    public let plus: Bool
    private var out: WireWriter
    public private(set) var count = 0

    public init(capacity: Int, plus: Bool) {
        self.capacity = capacity
        self.plus = plus
        out = WireWriter(capacity: min(capacity, 1 << 16))
    }

    /// The encoded size of one entry named `nameLength` bytes.
    public static func entrySize(nameLength: Int, plus: Bool) -> Int {
        let unaligned = (plus ? FUSEWireSize.entryOut : 0) + FUSEWireSize.direntHeader + nameLength
        return (unaligned + 7) & ~7
    }

    /// Appends one entry; false (and nothing appended) when it does not fit. `entry` is for
    /// READDIRPLUS: nil sends a zero entry, which the kernel skips (as for "." and "..").
    public mutating func append(name: [UInt8], ino: UInt64, type: UInt32, nextOffset: UInt64, entry: FUSEEntryOut?)
        -> Bool
    {
        guard out.bytes.count + FUSEDirentList.entrySize(nameLength: name.count, plus: plus) <= capacity else {
            return false
        }
        if plus {
            if let entry {
                entry.encode(into: &out)
            } else {
                out.append(contentsOf: repeatElement(0, count: FUSEWireSize.entryOut))
            }
        }
        out.append(ino)
        out.append(nextOffset)
        out.append(UInt32(truncatingIfNeeded: name.count))
        out.append(type)
        out.append(contentsOf: name)
        out.pad(to: 8)
        count += 1
        return true
    }

    public var bytes: [UInt8] { out.bytes }
}
