/// The `i_format` field of an on-disk inode: the form (compact or extended), the data layout and
/// one flag bit whose meaning depends on the file type.
public struct InodeFormat: Sendable, Hashable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// EROFS_I_VERSION_MASK (at EROFS_I_VERSION_BIT 0): set for the 64-byte extended form.
    public static let versionMask: UInt16 = 0x01
    /// EROFS_I_DATALAYOUT_BIT
    public static let dataLayoutBit: UInt16 = 1
    /// EROFS_I_DATALAYOUT_MASK (after shifting by `dataLayoutBit`)
    public static let dataLayoutMask: UInt16 = 0x07
    /// EROFS_I_NLINK_1_BIT (compact non-directories: one link, i_nb holds block bits) and
    /// EROFS_I_DOT_OMITTED_BIT (directories: no "." entry): the same bit.
    public static let nlink1Bit: UInt16 = 4
    /// EROFS_I_ALL: every bit a reader may meet.
    public static let all: UInt16 = (1 << (nlink1Bit + 1)) - 1

    public var isExtended: Bool { rawValue & Self.versionMask != 0 }
    /// The EROFS_INODE_* data layout number (0-7; 5 and above are reserved).
    public var dataLayout: UInt8 { UInt8((rawValue >> Self.dataLayoutBit) & Self.dataLayoutMask) }
    /// EROFS_I_NLINK_1_BIT / EROFS_I_DOT_OMITTED_BIT
    public var hasNlink1OrDotOmitted: Bool { rawValue & (1 << Self.nlink1Bit) != 0 }
    /// Bits beyond EROFS_I_ALL: an inode format this reader does not know.
    public var unknownBits: UInt16 { rawValue & ~Self.all }
}

/// One on-disk inode, either form, with its fields decoded little-endian as they are stored;
/// what they mean (a mode, a block number, a device) is for the reader to decide.
/// erofs_inode_compact is 32 bytes, erofs_inode_extended 64.
public struct DiskInode: Sendable, Equatable {
    /// sizeof(struct erofs_inode_compact)
    public static let compactSize = 32
    /// sizeof(struct erofs_inode_extended)
    public static let extendedSize = 64
    /// EROFS_INODE_SLOT_SIZE: nids count in units of the compact form.
    public static let slotSize = compactSize

    /// i_format
    public var format: InodeFormat
    /// i_xattr_icount
    public var xattrCount: UInt16
    /// i_mode
    public var mode: UInt16
    /// i_nb: link count, or high bits of the block number (see EROFS_I_NLINK_1_BIT).
    public var nb: UInt16
    /// i_size
    public var size: UInt64
    /// Compact: i_mtime, seconds after the superblock's epoch. Extended: i_mtime, seconds.
    public var mtime: UInt64
    /// Extended only: i_mtime_nsec.
    public var mtimeNanoseconds: UInt32
    /// i_u: block count, start block, device number or chunk info, by data layout and type.
    public var u: UInt32
    /// i_ino
    public var ino: UInt32
    /// i_uid
    public var uid: UInt32
    /// i_gid
    public var gid: UInt32
    /// Extended only: i_nlink.
    public var nlink: UInt32

    /// 32 or 64: the bytes this inode takes before its inline xattrs.
    public var onDiskSize: Int { format.isExtended ? Self.extendedSize : Self.compactSize }

    /// Decodes the inode at the start of `bytes`: at least 32 bytes, 64 for the extended form.
    public init(decoding bytes: some Collection<UInt8>) throws(FormatError) {
        let raw = Array(bytes)
        guard raw.count >= Self.compactSize else { throw FormatError("inode truncated") }
        format = InodeFormat(rawValue: raw.le16(at: 0))
        xattrCount = raw.le16(at: 2)
        mode = raw.le16(at: 4)
        nb = raw.le16(at: 6)
        u = raw.le32(at: 16)
        ino = raw.le32(at: 20)
        if format.isExtended {
            guard raw.count >= Self.extendedSize else { throw FormatError("extended inode truncated") }
            size = raw.le64(at: 8)
            uid = raw.le32(at: 24)
            gid = raw.le32(at: 28)
            mtime = raw.le64(at: 32)
            mtimeNanoseconds = raw.le32(at: 40)
            nlink = raw.le32(at: 44)
        } else {
            size = UInt64(raw.le32(at: 8))
            mtime = UInt64(raw.le32(at: 12))
            uid = UInt32(raw.le16(at: 24))
            gid = UInt32(raw.le16(at: 26))
            mtimeNanoseconds = 0
            nlink = 0
        }
    }
}

/// `i_u.c.format` of a chunk-based inode (erofs_inode_chunk_info, 4 bytes).
public struct ChunkFormat: Sendable, Hashable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// sizeof(struct erofs_inode_chunk_info)
    public static let infoSize = 4
    /// EROFS_CHUNK_FORMAT_BLKBITS_MASK: chunk size = block size << these bits.
    public static let blockBitsMask: UInt16 = 0x001F
    /// EROFS_CHUNK_FORMAT_INDEXES: 8-byte chunk indexes instead of a 4-byte block array.
    public static let indexes: UInt16 = 0x0020
    /// EROFS_CHUNK_FORMAT_48BIT: chunk indexes carry 48-bit block numbers.
    public static let bits48: UInt16 = 0x0040
    /// EROFS_CHUNK_FORMAT_ALL
    public static let all: UInt16 = (bits48 << 1) - 1

    public var blockBits: UInt16 { rawValue & Self.blockBitsMask }
    public var hasIndexes: Bool { rawValue & Self.indexes != 0 }
    public var has48BitAddresses: Bool { rawValue & Self.bits48 != 0 }
    public var unknownBits: UInt16 { rawValue & ~Self.all }
}

/// erofs_inode_chunk_index: where one chunk of a chunk-based inode is (8 bytes).
public struct ChunkIndex: FixedSizeStructure, Sendable, Equatable {
    public static let cName = "erofs_inode_chunk_index"
    /// sizeof(struct erofs_inode_chunk_index)
    public static let size = 8
    /// EROFS_BLOCK_MAP_ENTRY_SIZE: a chunk without indexes is one le32 block number.
    public static let blockMapEntrySize = 4
    /// EROFS_NULL_ADDR: a chunk that is a hole (all bits of the address field set).
    public static let nullAddress: UInt64 = ~0

    /// startblk_hi
    public var startBlockHigh: UInt16
    /// device_id (bits beyond the image's device id mask are ignored)
    public var deviceID: UInt16
    /// startblk_lo
    public var startBlockLow: UInt32

    /// Decodes the first 8 of `bytes` (the caller reads exactly that many).
    public init(decoding bytes: some Collection<UInt8>) {
        let raw = Self.structureBytes(bytes)
        startBlockHigh = raw.le16(at: 0)
        deviceID = raw.le16(at: 2)
        startBlockLow = raw.le32(at: 4)
    }

    /// The 48-bit start block (the high half counts only with EROFS_CHUNK_FORMAT_48BIT).
    public var startBlock: UInt64 { UInt64(startBlockHigh) << 32 | UInt64(startBlockLow) }
}

/// erofs_dirent: one 12-byte entry at the head of a directory block; names follow the entries.
public struct Dirent: Sendable, Equatable {
    /// sizeof(struct erofs_dirent)
    public static let size = 12
    /// EROFS_NAME_LEN
    public static let maximumNameLength = 255
    /// EROFS_DIRENT_NID_METABOX_BIT: the target inode lives in the metabox.
    public static let nidMetaboxBit: UInt64 = 63

    /// nid
    public var nid: UInt64
    /// nameoff: where the name starts in the block.
    public var nameOffset: UInt16
    /// file_type (EROFS_FT_*)
    public var fileType: UInt8

    /// Decodes the entry at byte `offset` of a directory block (which holds all 12 bytes).
    public init(decoding block: [UInt8], at offset: Int) {
        precondition(offset >= 0 && offset + Self.size <= block.count, "erofs_dirent beyond its block")
        nid = block.le64(at: offset)
        nameOffset = block.le16(at: offset + 8)
        fileType = block[offset + 10]
    }
}
