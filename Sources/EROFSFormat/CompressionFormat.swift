/// Limits and per-algorithm settings of compressed data (erofs_fs.h, Z_EROFS_*).
public enum CompressionFormat {
    /// Z_EROFS_PCLUSTER_MAX_SIZE: the most bytes one physical cluster holds.
    public static let maximumPhysicalClusterSize = 1024 * 1024
    /// Z_EROFS_PCLUSTER_MAX_DSIZE: the most bytes one physical cluster decodes to.
    public static let maximumDecodedClusterSize = 12 * 1024 * 1024
    /// Z_EROFS_COMPRESSION_MAX: algorithm numbers are below this.
    public static let algorithmCount = 4
    /// Z_EROFS_ALL_COMPR_ALGS: the bits `available_compr_algs` may have.
    public static let allAlgorithms: UInt16 = (1 << algorithmCount) - 1
    /// z_erofs_zstd_cfgs.windowlog counts from ZSTD_WINDOWLOG_ABSOLUTEMIN.
    public static let zstdMinimumWindowLog: UInt8 = 10
}

/// h_advise of the map header (Z_EROFS_ADVISE_*). Bit 0 means COMPACTED_2B for compact
/// indexes and EXTENTS for full ones.
public struct MapAdvise: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// Z_EROFS_ADVISE_COMPACTED_2B (compact indexes: 4B, then 2B packs, then 4B)
    public static let compacted2B = MapAdvise(rawValue: 0x0001)
    /// Z_EROFS_ADVISE_EXTENTS (full layout: extent records instead of lcluster indexes)
    public static let extents = MapAdvise(rawValue: 0x0001)
    /// Z_EROFS_ADVISE_BIG_PCLUSTER_1
    public static let bigPcluster1 = MapAdvise(rawValue: 0x0002)
    /// Z_EROFS_ADVISE_BIG_PCLUSTER_2
    public static let bigPcluster2 = MapAdvise(rawValue: 0x0004)
    /// Z_EROFS_ADVISE_INLINE_PCLUSTER (ztailpacking)
    public static let inlinePcluster = MapAdvise(rawValue: 0x0008)
    /// Z_EROFS_ADVISE_INTERLACED_PCLUSTER
    public static let interlacedPcluster = MapAdvise(rawValue: 0x0010)
    /// Z_EROFS_ADVISE_FRAGMENT_PCLUSTER
    public static let fragmentPcluster = MapAdvise(rawValue: 0x0020)
    /// Z_EROFS_ADVISE_EXTRECSZ_BIT
    public static let extentRecordSizeBit: UInt16 = 1
    /// Z_EROFS_ADVISE_EXTRECSZ_MASK
    public static let extentRecordSizeMask: UInt16 = 0x3

    /// z_erofs_extent_recsize(): 4, 8, 16 or 32 bytes per extent record.
    public var extentRecordSize: Int { 4 << Int((rawValue >> Self.extentRecordSizeBit) & Self.extentRecordSizeMask) }
}

/// z_erofs_map_header: 8 bytes at the first multiple of 8 after a compressed inode and its
/// xattrs, before its indexes.
public struct MapHeader: FixedSizeStructure, Sendable, Equatable {
    public static let cName = "z_erofs_map_header"
    /// sizeof(struct z_erofs_map_header)
    public static let size = 8
    /// The header starts at a multiple of this (Z_EROFS_MAP_HEADER_START).
    public static let alignment: UInt64 = 8
    /// Z_EROFS_FRAGMENT_INODE_BIT, of h_clusterbits: the whole file is in the packed inode and
    /// the header's 8 bytes, less this bit, are its offset there.
    public static let fragmentInodeBit: UInt8 = 7
    /// h_clusterbits bits 0-3: lcluster bits beyond the block size bits.
    public static let clusterBitsMask: UInt8 = 0x0F
    /// h_algorithmtype: bits 0-3 HEAD1's algorithm, bits 4-7 HEAD2's.
    public static let algorithmTypeBits: UInt8 = 4

    /// The 8 bytes as one le64 (the whole-file fragment offset, with its flag bit).
    public var raw: UInt64

    /// Decodes the first 8 of `bytes` (the caller reads exactly that many).
    public init(decoding bytes: some Collection<UInt8>) {
        let raw = Self.structureBytes(bytes)
        self.raw = raw.le64(at: 0)
    }

    private func byte(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: raw >> (8 * UInt64(index))) }
    private func le16(_ index: Int) -> UInt16 { UInt16(truncatingIfNeeded: raw >> (8 * UInt64(index))) }

    /// Where the header of an inode whose core and xattrs end at `end` starts.
    public static func start(after end: UInt64) -> UInt64 { (end + alignment - 1) & ~(alignment - 1) }
    /// Z_EROFS_MAP_HEADER_END: where compact indexes (and extent records) may start.
    public static func end(after end: UInt64) -> UInt64 { start(after: end) + UInt64(size) }
    /// Z_EROFS_FULL_INDEX_START: full lcluster indexes skip 8 more (reserved) bytes.
    public static func fullIndexStart(after end: UInt64) -> UInt64 { self.end(after: end) + UInt64(LclusterIndex.size) }

    /// h_clusterbits bit 7: the whole file is a fragment of the packed inode.
    public var isWholeFileFragment: Bool { byte(7) & (1 << Self.fragmentInodeBit) != 0 }
    /// With `isWholeFileFragment`: the file's offset in the packed inode.
    public var wholeFileFragmentOffset: UInt64 { raw & ~(UInt64(1) << (56 + UInt64(Self.fragmentInodeBit))) }
    /// h_fragmentoff
    public var fragmentOffset: UInt32 { UInt32(truncatingIfNeeded: raw) }
    /// h_idata_size: the encoded size of the inline (tail) pcluster.
    public var inlineDataSize: UInt16 { le16(2) }
    /// h_advise
    public var advise: MapAdvise { MapAdvise(rawValue: le16(4)) }
    /// h_algorithmtype
    public var algorithmType: UInt8 { byte(6) }
    /// HEAD1's and HEAD2's algorithm numbers.
    public var headAlgorithms: (UInt8, UInt8) {
        (algorithmType & ((1 << Self.algorithmTypeBits) - 1), algorithmType >> Self.algorithmTypeBits)
    }
    /// h_clusterbits bits 0-3
    public var clusterBitsOverBlock: UInt8 { byte(7) & Self.clusterBitsMask }
    /// h_extents_lo | h_extents_hi << 32: the number of extent records.
    public var extentCount: UInt64 { UInt64(fragmentOffset) | UInt64(le16(6)) << 32 }
}

/// The kind of a logical cluster (Z_EROFS_LCLUSTER_TYPE_*).
public enum LclusterType: UInt8, Sendable {
    /// Z_EROFS_LCLUSTER_TYPE_PLAIN: heads an uncompressed pcluster.
    case plain = 0
    /// Z_EROFS_LCLUSTER_TYPE_HEAD1: heads a pcluster of HEAD1's algorithm.
    case head1 = 1
    /// Z_EROFS_LCLUSTER_TYPE_NONHEAD: continues the extent of an earlier head.
    case nonhead = 2
    /// Z_EROFS_LCLUSTER_TYPE_HEAD2: heads a pcluster of HEAD2's algorithm.
    case head2 = 3

    /// Z_EROFS_LI_LCLUSTER_TYPE_MASK
    public static let mask: UInt16 = 3
    /// Bits the type takes in a compacted index.
    public static let bits = 2

    /// The type in the low bits of `value` (every 2-bit value is a type).
    public init(lowBitsOf value: UInt32) { self.init(rawValue: UInt8(value & UInt32(Self.mask)))! }
}

/// z_erofs_lcluster_index: one 8-byte full (non-compact) lcluster index.
public struct LclusterIndex: FixedSizeStructure, Sendable, Equatable {
    public static let cName = "z_erofs_lcluster_index"
    /// sizeof(struct z_erofs_lcluster_index)
    public static let size = 8
    /// Z_EROFS_LI_PARTIAL_REF (in di_advise; HEAD only): the pcluster decodes to more than
    /// this extent refers to.
    public static let partialReference: UInt16 = 1 << 15
    /// Z_EROFS_LI_D0_CBLKCNT (in delta[0], or a compacted NONHEAD's value): set on the first
    /// NONHEAD after a big pcluster's head, the rest is the pcluster's block count.
    public static let d0CompressedBlockCount: UInt16 = 1 << 11

    /// di_advise
    public var advise: UInt16
    /// di_clusterofs: where the head's data starts in its lcluster.
    public var clusterOffset: UInt16
    /// di_u as blkaddr (HEAD)
    public var blockAddress: UInt32
    /// di_u as delta[0], delta[1] (NONHEAD): back to the head, on to the next head.
    public var delta: (UInt16, UInt16) {
        (UInt16(truncatingIfNeeded: blockAddress), UInt16(truncatingIfNeeded: blockAddress >> 16))
    }

    /// Decodes the first 8 of `bytes` (the caller reads exactly that many).
    public init(decoding bytes: some Collection<UInt8>) {
        let raw = Self.structureBytes(bytes)
        advise = raw.le16(at: 0)
        clusterOffset = raw.le16(at: 2)
        blockAddress = raw.le32(at: 4)
    }

    public var type: LclusterType { LclusterType(lowBitsOf: UInt32(advise)) }
    public var isPartialReference: Bool { advise & Self.partialReference != 0 }
}

/// Compacted lcluster indexes (EROFS_INODE_COMPRESSED_COMPACT): packs of `clusters` items of
/// (lo value, 2-bit type), bit-packed little-endian, followed by the le32 block address the
/// pack's head blocks count from. The kernel's zmap.c lays them out; erofs_fs.h does not name
/// these numbers.
public struct CompactedIndexPack: Sendable, Equatable {
    /// Lclusters one pack describes.
    public var clusters: Int
    /// Bytes of one pack.
    public var size: Int

    /// COMPACTED_4B: 2 lclusters in 8 bytes.
    public static let fourByte = CompactedIndexPack(clusters: 2, size: 8)
    /// COMPACTED_2B: 16 lclusters in 32 bytes.
    public static let twoByte = CompactedIndexPack(clusters: 16, size: 32)
    /// The 4B packs before the first 2B one fill up to this alignment.
    public static let twoByteAlignment: UInt64 = 32
    /// Bytes at each pack's end: the le32 block address.
    public static let blockAddressSize = 4
    /// Lowest bits of a lo value: wide enough for Z_EROFS_LI_D0_CBLKCNT.
    public static let minimumLoBits = 12
    /// 2B packs exist only for lclusters up to 2^12 bytes (their lo has 14 bits, of which 12).
    public static let twoByteMaximumClusterBits: UInt64 = 12
    /// Compacted indexes are defined for lclusters up to 2^14 bytes.
    public static let maximumClusterBits: UInt64 = 14

    /// Bits of one item (its lo value and its type).
    public var itemBits: Int { (size - Self.blockAddressSize) * 8 / clusters }
    /// Bytes one item takes on average: the shift from lcluster number to byte offset.
    public var shift: UInt64 { UInt64((size / clusters).trailingZeroBitCount) }
}

/// z_erofs_extent: one extent record (Z_EROFS_ADVISE_EXTENTS). Records of 4 and 8 bytes hold
/// one pcluster per lcluster (`plen`, and `pstart_lo` in the 8-byte form); 16 and 32-byte ones
/// also give their logical start and are searched.
public struct ExtentRecord: Sendable, Equatable {
    /// sizeof(struct z_erofs_extent)
    public static let maximumSize = 32
    /// Z_EROFS_EXTENT_PLEN_PARTIAL
    public static let plenPartial: UInt32 = 1 << 27
    /// Z_EROFS_EXTENT_PLEN_FMT_BIT: plen >> this is 0 (uncompressed) or algorithm + 1.
    public static let plenFormatBit: UInt32 = 28
    /// Z_EROFS_EXTENT_PLEN_MASK
    public static let plenMask: UInt32 = UInt32(CompressionFormat.maximumPhysicalClusterSize << 1) - 1
    /// 4-byte records (plen only) follow a le64: the address of the first pcluster, the
    /// others following it back to back.
    public static let firstPclusterAddressSize = 8
    /// offsetof(struct z_erofs_extent, pstart_lo): records this short carry no address.
    public static let physicalStartOffset = 4
    /// offsetof(struct z_erofs_extent, lstart_lo): records longer than this carry a logical start.
    public static let logicalStartOffset = 12
    /// offsetof(struct z_erofs_extent, lstart_hi)
    public static let logicalStartHighOffset = 16

    /// plen
    public var plen: UInt32
    /// pstart_lo | pstart_hi << 32 (what the record size holds of it)
    public var physicalStart: UInt64
    /// lstart_lo | lstart_hi << 32 (0 in records of 8 bytes or less)
    public var logicalStart: UInt64

    public init(plen: UInt32, physicalStart: UInt64, logicalStart: UInt64) {
        self.plen = plen
        self.physicalStart = physicalStart
        self.logicalStart = logicalStart
    }

    /// Decodes a record of `bytes.count` bytes (4, 8, 16 or 32).
    public init(decoding bytes: some Collection<UInt8>) {
        let raw = Array(bytes)
        plen = raw.le32(at: 0)
        physicalStart = raw.count > Self.physicalStartOffset ? UInt64(raw.le32(at: 4)) : 0
        if raw.count > Self.logicalStartOffset {
            physicalStart |= UInt64(raw.le32(at: 8)) << 32
            logicalStart = UInt64(raw.le32(at: Self.logicalStartOffset))
        } else {
            logicalStart = 0
        }
        if raw.count > Self.logicalStartHighOffset {
            logicalStart |= UInt64(raw.le32(at: Self.logicalStartHighOffset)) << 32
        }
    }

    /// The pcluster's encoded length.
    public var physicalLength: UInt32 { plen & Self.plenMask }
    /// 0: stored uncompressed; N: compressed with algorithm N - 1.
    public var format: UInt32 { plen >> Self.plenFormatBit }
    public var isPartial: Bool { plen & Self.plenPartial != 0 }
}
