/// The EROFS superblock: 128 bytes at offset 1024, plus `extensionSlots` × 16 bytes.
/// Field offsets follow erofs-utils 1.9.3's `include/erofs_fs.h`.
public struct Superblock: Sendable, Equatable {
    /// EROFS_SUPER_OFFSET
    public static let offset = 1024
    /// EROFS_SUPER_MAGIC_V1
    public static let magic: UInt32 = 0xE0F5_E1E2
    /// The superblock without extension slots (sizeof(struct erofs_super_block) before 48BIT).
    public static let size = 128
    /// EROFS_SB_EXTSLOT_SIZE
    public static let extensionSlotSize = 16
    /// Bytes to read to decode any superblock this code knows (128 + one extension slot:
    /// sizeof(struct erofs_super_block) since 48BIT).
    public static let maximumSize = size + extensionSlotSize
    /// offsetof(struct erofs_super_block, checksum)
    public static let checksumOffset = 4
    /// offsetof(struct erofs_super_block, u1.available_compr_algs)
    public static let availableCompressionAlgorithmsOffset = 84
    /// Block sizes from 512 bytes to 64 KiB, as log2.
    public static let blockSizeBitsRange: ClosedRange<UInt8> = 9...16
    /// xattr_prefix_start counts in units of this many bytes.
    public static let xattrPrefixStartUnit: UInt64 = 4

    public var checksum: UInt32
    public var featureCompat: CompatFeatures
    public var featureIncompat: IncompatFeatures
    public var blockSizeBits: UInt8
    public var extensionSlots: UInt8
    public var rootNid: UInt64
    public var inodeCount: UInt64
    public var epoch: UInt64
    public var fixedNanoseconds: UInt32
    public var blocks: UInt64
    public var metaBlockAddress: UInt32
    public var xattrBlockAddress: UInt32
    public var uuid: [UInt8]
    public var volumeName: String
    /// Bitmap of compression algorithms, or LZ4's max distance when COMPR_CFGS is off.
    public var availableCompressionAlgorithms: UInt16
    public var extraDevices: UInt16
    public var deviceTableSlotOffset: UInt16
    public var directoryBlockSizeBits: UInt8
    public var xattrPrefixCount: UInt8
    public var xattrPrefixStart: UInt32
    public var packedNid: UInt64
    public var xattrFilterReserved: UInt8
    public var ishareXattrPrefixId: UInt8
    public var buildTime: UInt32
    public var metaboxNid: UInt64

    public var blockSize: Int { 1 << Int(blockSizeBits) }
    public var size: Int { Superblock.size + Int(extensionSlots) * Superblock.extensionSlotSize }

    /// Decodes and validates the superblock from the bytes at offset 1024 (at least 128 bytes).
    public init(decoding bytes: some Collection<UInt8>) throws(FormatError) {
        let raw = Array(bytes)
        guard raw.count >= Superblock.size else {
            throw FormatError(
                "not an EROFS image: too short for a superblock (\(Superblock.offset + raw.count) bytes)")
        }
        let magic = raw.le32(at: 0)
        guard magic == Superblock.magic else {
            throw FormatError(
                "not an EROFS image: bad magic 0x\(String(magic, radix: 16, uppercase: true)) at offset \(Superblock.offset)"
            )
        }
        checksum = raw.le32(at: Superblock.checksumOffset)
        featureCompat = CompatFeatures(rawValue: raw.le32(at: 8))
        blockSizeBits = raw[12]
        extensionSlots = raw[13]
        featureIncompat = IncompatFeatures(rawValue: raw.le32(at: 80))
        let unknown = featureIncompat.subtracting(.all)
        guard unknown.isEmpty else {
            throw FormatError(
                "unsupported EROFS image: unknown incompatible feature bits 0x\(String(unknown.rawValue, radix: 16))")
        }
        guard Superblock.blockSizeBitsRange.contains(blockSizeBits) else {
            throw FormatError("corrupt EROFS superblock: block size 2^\(blockSizeBits) out of range (512 to 65536)")
        }
        let is48Bit = featureIncompat.contains(.bits48)
        guard Superblock.size + Int(extensionSlots) * Superblock.extensionSlotSize <= raw.count || !is48Bit else {
            throw FormatError("corrupt EROFS superblock: \(extensionSlots) extension slots but image too short")
        }
        let maximum = Superblock.maximumSize
        let extended = raw.count >= maximum ? raw : raw + [UInt8](repeating: 0, count: maximum - raw.count)
        // With 48BIT, bytes 14-15 are the block count's high bits only when the 8-byte root nid
        // is set; mkfs.erofs leaves it 0 (root nid in bytes 14-15) while both fit the old fields.
        let rootNid8Bytes = is48Bit ? extended.le64(at: 112) : 0
        if rootNid8Bytes != 0 {
            rootNid = rootNid8Bytes
            blocks = UInt64(raw.le32(at: 36)) | UInt64(raw.le16(at: 14)) << 32
        } else {
            rootNid = UInt64(raw.le16(at: 14))
            blocks = UInt64(raw.le32(at: 36))
        }
        inodeCount = raw.le64(at: 16)
        epoch = raw.le64(at: 24)
        fixedNanoseconds = raw.le32(at: 32)
        metaBlockAddress = raw.le32(at: 40)
        xattrBlockAddress = raw.le32(at: 44)
        uuid = Array(raw[48..<64])
        let nameBytes = raw[64..<80].prefix { $0 != 0 }
        volumeName = String(decoding: nameBytes, as: UTF8.self)
        availableCompressionAlgorithms = raw.le16(at: Superblock.availableCompressionAlgorithmsOffset)
        extraDevices = raw.le16(at: 86)
        deviceTableSlotOffset = raw.le16(at: 88)
        directoryBlockSizeBits = raw[90]
        xattrPrefixCount = raw[91]
        xattrPrefixStart = raw.le32(at: 92)
        packedNid = raw.le64(at: 96)
        xattrFilterReserved = raw[104]
        ishareXattrPrefixId = raw[105]
        buildTime = raw.le32(at: 108)
        metaboxNid = featureIncompat.contains(.metabox) ? extended.le64(at: 128) : 0
    }

    /// Checks the crc32c when the image says it has one. `bytes` starts at offset 1024 and
    /// covers the rest of the superblock's block (a whole block when blocks are 1 KiB or less).
    public func verifyChecksum(firstBlockFromSuperblock bytes: [UInt8]) throws(FormatError) {
        guard featureCompat.contains(.superblockChecksum) else { return }
        let computed = try computedChecksum(firstBlockFromSuperblock: bytes)
        guard computed == checksum else {
            throw FormatError(
                "corrupt EROFS superblock: checksum 0x\(String(checksum, radix: 16)) does not match computed 0x\(String(computed, radix: 16))",
                offset: UInt64(Superblock.offset + Superblock.checksumOffset))
        }
    }
}

extension Superblock {
    /// The crc32c the checksum field should hold for these bytes (same `bytes` as
    /// `verifyChecksum`); the checksum field itself counts as zeros.
    public func computedChecksum(firstBlockFromSuperblock bytes: [UInt8]) throws(FormatError) -> UInt32 {
        let length = blockSize > Superblock.offset ? blockSize - Superblock.offset : blockSize
        guard bytes.count >= length else {
            throw FormatError(
                "truncated EROFS image: superblock block needs \(length) bytes after offset \(Superblock.offset)")
        }
        var covered = Array(bytes[0..<length])
        let checksumField = Superblock.checksumOffset..<(Superblock.checksumOffset + 4)
        covered.replaceSubrange(checksumField, with: [0, 0, 0, 0])
        return CRC32C.update(~0, covered)
    }
}

public struct CompatFeatures: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// EROFS_FEATURE_COMPAT_SB_CHKSUM
    public static let superblockChecksum = CompatFeatures(rawValue: 0x01)
    /// EROFS_FEATURE_COMPAT_MTIME
    public static let mtime = CompatFeatures(rawValue: 0x02)
    /// EROFS_FEATURE_COMPAT_XATTR_FILTER
    public static let xattrFilter = CompatFeatures(rawValue: 0x04)
    /// EROFS_FEATURE_COMPAT_SHARED_EA_IN_METABOX
    public static let sharedXattrsInMetabox = CompatFeatures(rawValue: 0x08)
    /// EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX
    public static let plainXattrPrefixes = CompatFeatures(rawValue: 0x10)
    /// EROFS_FEATURE_COMPAT_ISHARE_XATTRS
    public static let ishareXattrs = CompatFeatures(rawValue: 0x20)

    public static let names: [(CompatFeatures, String)] = [
        (.superblockChecksum, "sb_csum"), (.mtime, "mtime"), (.xattrFilter, "xattr_filter"),
        (.sharedXattrsInMetabox, "shared_ea_in_metabox"), (.plainXattrPrefixes, "plain_xattr_pfx"),
        (.ishareXattrs, "ishare_xattrs"),
    ]
}

public struct IncompatFeatures: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// EROFS_FEATURE_INCOMPAT_ZERO_PADDING
    public static let zeroPadding = IncompatFeatures(rawValue: 0x01)
    /// EROFS_FEATURE_INCOMPAT_COMPR_CFGS.
    /// Also BIG_PCLUSTER: the same bit.
    public static let compressionConfigs = IncompatFeatures(rawValue: 0x02)
    /// EROFS_FEATURE_INCOMPAT_CHUNKED_FILE
    public static let chunkedFile = IncompatFeatures(rawValue: 0x04)
    /// EROFS_FEATURE_INCOMPAT_DEVICE_TABLE.
    /// Also COMPR_HEAD2: the same bit.
    public static let deviceTable = IncompatFeatures(rawValue: 0x08)
    /// EROFS_FEATURE_INCOMPAT_ZTAILPACKING
    public static let ztailpacking = IncompatFeatures(rawValue: 0x10)
    /// EROFS_FEATURE_INCOMPAT_FRAGMENTS.
    /// Also DEDUPE: the same bit.
    public static let fragments = IncompatFeatures(rawValue: 0x20)
    /// EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES
    public static let xattrPrefixes = IncompatFeatures(rawValue: 0x40)
    /// EROFS_FEATURE_INCOMPAT_48BIT
    public static let bits48 = IncompatFeatures(rawValue: 0x80)
    /// EROFS_FEATURE_INCOMPAT_METABOX
    public static let metabox = IncompatFeatures(rawValue: 0x100)

    /// EROFS_ALL_FEATURE_INCOMPAT: every incompatible feature this reader understands
    /// (erofs-utils 1.9.3's set).
    public static let all = IncompatFeatures(rawValue: (metabox.rawValue << 1) - 1)

    public static let names: [(IncompatFeatures, String)] = [
        (.zeroPadding, "0padding"), (.compressionConfigs, "compr_cfgs/big_pcluster"),
        (.chunkedFile, "chunked_file"), (.deviceTable, "device_table/compr_head2"),
        (.ztailpacking, "ztailpacking"), (.fragments, "fragments/dedupe"),
        (.xattrPrefixes, "xattr_prefixes"), (.bits48, "48bit"), (.metabox, "metabox"),
    ]
}
