import EROFSFormat

/// The type of a filesystem object, from the S_IFMT bits of its mode.
public enum FileKind: String, Sendable {
    case file, directory, symlink, characterDevice, blockDevice, fifo, socket

    init?(mode: UInt16) {
        switch mode & 0o170000 {
        case 0o100000: self = .file
        case 0o040000: self = .directory
        case 0o120000: self = .symlink
        case 0o020000: self = .characterDevice
        case 0o060000: self = .blockDevice
        case 0o010000: self = .fifo
        case 0o140000: self = .socket
        default: return nil
        }
    }
}

/// How an inode's data is laid out (i_format bits 1-3).
public enum DataLayout: UInt8, Sendable {
    case flatPlain = 0
    case compressedFull = 1
    case flatInline = 2
    case compressedCompact = 3
    case chunkBased = 4

    public var isCompressed: Bool { self == .compressedFull || self == .compressedCompact }
}

/// One decoded on-disk inode (compact 32-byte or extended 64-byte form).
public struct Inode: Sendable, Equatable {
    /// Bit 63 of a nid says the inode lives in the metabox (metadata-compressed images):
    /// EROFS_DIRENT_NID_METABOX_BIT.
    public static let metaboxBit: UInt64 = 1 << Dirent.nidMetaboxBit
    /// EROFS_NULL_ADDR: no data blocks.
    static let nullAddress: UInt64 = ChunkIndex.nullAddress

    public var nid: UInt64
    public var isExtended: Bool
    public var layout: DataLayout
    public var kind: FileKind
    /// Full st_mode (type and permission bits).
    public var mode: UInt16
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    public var mtimeSeconds: UInt64
    public var mtimeNanoseconds: UInt32
    public var linkCount: UInt32
    /// Raw encoded device number (new_encode_dev form) for character and block devices.
    public var rawDevice: UInt32
    /// First data block (flat layouts); `~0` when a flat-plain file has no blocks.
    public var startBlock: UInt64
    /// Chunk format bits (chunk-based layout).
    public var chunkFormat: UInt16
    /// i_u as compressed block count (compressed layouts).
    public var compressedBlocks: UInt32
    /// Byte size of the on-disk inode (32 or 64).
    public var inodeSize: Int
    /// Byte size of the inline xattr area that follows the inode.
    public var xattrBodySize: Int
    /// Directories without a "." entry (a mkfs.erofs 1.9 option).
    public var dotOmitted: Bool
    /// Where the inode starts in its metadata space (the image, or the metabox's data).
    public var location: UInt64

    public var inMetabox: Bool { nid & Inode.metaboxBit != 0 }
    public var permissions: UInt32 { UInt32(mode & 0o7777) }
    public var deviceMajor: UInt32 { (rawDevice & 0xfff00) >> 8 }
    public var deviceMinor: UInt32 { (rawDevice & 0xff) | ((rawDevice >> 12) & 0xfff00) }
    /// Offset (in the metadata space) right after the inode and its inline xattrs: where
    /// tail-packed data, chunk maps and compression indexes start.
    public var payloadLocation: UInt64 { location &+ UInt64(inodeSize) &+ UInt64(xattrBodySize) }

    /// Decodes the inode from `bytes` (at least 32 bytes; 64 for extended inodes).
    init(nid: UInt64, location: UInt64, bytes: [UInt8], superblock: Superblock) throws(EROFSError) {
        let disk: DiskInode
        do {
            disk = try DiskInode(decoding: bytes)
        } catch {
            throw EROFSError(.corrupt, error.message, nid: nid, offset: location)
        }
        let format = disk.format
        guard format.unknownBits == 0 else {
            throw EROFSError(
                .unsupported, "unsupported i_format 0x\(String(format.rawValue, radix: 16))", nid: nid, offset: location
            )
        }
        guard let layout = DataLayout(rawValue: format.dataLayout) else {
            throw EROFSError(.unsupported, "unsupported data layout \(format.dataLayout)", nid: nid, offset: location)
        }
        self.nid = nid
        self.location = location
        self.layout = layout
        isExtended = format.isExtended
        xattrBodySize = XattrBodyHeader.bodySize(xattrCount: disk.xattrCount)
        mode = disk.mode
        guard let kind = FileKind(mode: mode) else {
            throw EROFSError(.corrupt, "bogus mode 0o\(String(mode, radix: 8))", nid: nid, offset: location)
        }
        self.kind = kind
        let iU = disk.u
        var startBlockHigh = UInt64(disk.nb)
        var addressBits: UInt64 = 48
        inodeSize = disk.onDiskSize
        size = disk.size
        uid = disk.uid
        gid = disk.gid
        if isExtended {
            mtimeSeconds = disk.mtime
            mtimeNanoseconds = disk.mtimeNanoseconds
            linkCount = disk.nlink
        } else {
            mtimeSeconds = superblock.epoch &+ disk.mtime
            mtimeNanoseconds = superblock.fixedNanoseconds
            // Compact non-directories may say "one link" with a bit and use i_nb for block bits.
            if kind != .directory && format.hasNlink1OrDotOmitted {
                linkCount = 1
            } else {
                linkCount = UInt32(disk.nb)
                startBlockHigh = 0
                addressBits = 32
            }
        }
        dotOmitted = kind == .directory && format.hasNlink1OrDotOmitted
        rawDevice = 0
        startBlock = 0
        chunkFormat = 0
        compressedBlocks = 0
        switch kind {
        case .file, .directory, .symlink:
            startBlock = UInt64(iU) | startBlockHigh << 32
            let mask: UInt64 = (1 << addressBits) - 1
            if layout == .flatPlain && (startBlock ^ Inode.nullAddress) & mask == 0 { startBlock = Inode.nullAddress }
            compressedBlocks = iU
            if layout == .chunkBased {
                chunkFormat = UInt16(truncatingIfNeeded: iU)
                guard ChunkFormat(rawValue: chunkFormat).unknownBits == 0 else {
                    throw EROFSError(
                        .unsupported, "unsupported chunk format 0x\(String(chunkFormat, radix: 16))", nid: nid,
                        offset: location)
                }
            }
        case .characterDevice, .blockDevice:
            rawDevice = iU
        case .fifo, .socket:
            break
        }
        if kind != .file && kind != .directory && kind != .symlink && layout != .flatPlain && layout != .flatInline {
            throw EROFSError(.corrupt, "special file with data layout \(layout)", nid: nid, offset: location)
        }
    }
}
