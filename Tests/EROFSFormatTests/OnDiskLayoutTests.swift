import EROFSFormat
import Testing

/// The on-disk structures, checked the way erofs_fs.h's erofs_check_ondisk_layout_definitions()
/// checks them at build time (BUILD_BUG_ON on each sizeof), and more: each structure's fields, as
/// erofs_fs.h declares them, tile its size exactly, and each decoder reads every field it
/// decodes at that field's offset and width.
@Suite struct OnDiskLayoutTests {
    /// One field of a C structure: name, offset, width in bytes.
    struct Field: CustomStringConvertible {
        var name: String
        var offset: Int
        var width: Int
        var description: String { "\(name)@\(offset)+\(width)" }
    }

    /// A structure as erofs_fs.h declares it, in declaration order (unions by their members).
    struct Layout {
        var name: String
        var size: Int
        var fields: [Field]

        init(_ name: String, size: Int, _ fields: [(String, Int)]) {
            self.name = name
            self.size = size
            var offset = 0
            self.fields = fields.map { field in
                defer { offset += field.1 }
                return Field(name: field.0, offset: offset, width: field.1)
            }
        }

        func field(_ name: String) -> Field { fields.first { $0.name == name }! }

        /// Bytes 1, 2, 3, ...: every field then decodes to a value no other offset or width gives.
        var pattern: [UInt8] { (0..<size).map { UInt8($0 + 1) } }

        /// The little-endian value of `name` in `bytes`.
        func value(_ name: String, in bytes: [UInt8]) -> UInt64 {
            let field = field(name)
            return (0..<field.width).reduce(0) { $0 | UInt64(bytes[field.offset + $1]) << (8 * UInt64($1)) }
        }
    }

    static let superblock = Layout(
        "erofs_super_block", size: 144,
        [
            ("magic", 4), ("checksum", 4), ("feature_compat", 4), ("blkszbits", 1), ("sb_extslots", 1),
            ("rb", 2), ("inos", 8), ("epoch", 8), ("fixed_nsec", 4), ("blocks_lo", 4), ("meta_blkaddr", 4),
            ("xattr_blkaddr", 4), ("uuid", 16), ("volume_name", 16), ("feature_incompat", 4), ("u1", 2),
            ("extra_devices", 2), ("devt_slotoff", 2), ("dirblkbits", 1), ("xattr_prefix_count", 1),
            ("xattr_prefix_start", 4), ("packed_nid", 8), ("xattr_filter_reserved", 1), ("ishare_xattr_prefix_id", 1),
            ("reserved", 2), ("build_time", 4), ("rootnid_8b", 8), ("reserved2", 8), ("metabox_nid", 8),
            ("reserved3", 8),
        ])
    static let compactInode = Layout(
        "erofs_inode_compact", size: 32,
        [
            ("i_format", 2), ("i_xattr_icount", 2), ("i_mode", 2), ("i_nb", 2), ("i_size", 4), ("i_mtime", 4),
            ("i_u", 4), ("i_ino", 4), ("i_uid", 2), ("i_gid", 2), ("i_reserved", 4),
        ])
    static let extendedInode = Layout(
        "erofs_inode_extended", size: 64,
        [
            ("i_format", 2), ("i_xattr_icount", 2), ("i_mode", 2), ("i_nb", 2), ("i_size", 8), ("i_u", 4),
            ("i_ino", 4), ("i_uid", 4), ("i_gid", 4), ("i_mtime", 8), ("i_mtime_nsec", 4), ("i_nlink", 4),
            ("i_reserved2", 16),
        ])
    static let xattrBodyHeader = Layout(
        "erofs_xattr_ibody_header", size: 12,
        [
            ("h_name_filter", 4), ("h_shared_count", 1), ("h_reserved2", 7),
        ])
    static let xattrEntry = Layout(
        "erofs_xattr_entry", size: 4,
        [
            ("e_name_len", 1), ("e_name_index", 1), ("e_value_size", 2),
        ])
    static let chunkInfo = Layout("erofs_inode_chunk_info", size: 4, [("format", 2), ("reserved", 2)])
    static let chunkIndex = Layout(
        "erofs_inode_chunk_index", size: 8,
        [
            ("startblk_hi", 2), ("device_id", 2), ("startblk_lo", 4),
        ])
    static let mapHeader = Layout(
        "z_erofs_map_header", size: 8,
        [
            ("h_reserved1", 2), ("h_idata_size", 2), ("h_advise", 2), ("h_algorithmtype", 1), ("h_clusterbits", 1),
        ])
    static let lclusterIndex = Layout(
        "z_erofs_lcluster_index", size: 8,
        [
            ("di_advise", 2), ("di_clusterofs", 2), ("di_u", 4),
        ])
    static let extent = Layout(
        "z_erofs_extent", size: 32,
        [
            ("plen", 4), ("pstart_lo", 4), ("pstart_hi", 4), ("lstart_lo", 4), ("lstart_hi", 4), ("reserved", 12),
        ])
    static let dirent = Layout(
        "erofs_dirent", size: 12,
        [
            ("nid", 8), ("nameoff", 2), ("file_type", 1), ("reserved", 1),
        ])
    static let deviceSlot = Layout(
        "erofs_deviceslot", size: 128,
        [
            ("tag", 64), ("blocks_lo", 4), ("uniaddr_lo", 4), ("blocks_hi", 2), ("uniaddr_hi", 2), ("reserved", 52),
        ])

    static let all = [
        superblock, compactInode, extendedInode, xattrBodyHeader, xattrEntry, chunkInfo, chunkIndex, mapHeader,
        lclusterIndex, extent, dirent, deviceSlot,
    ]

    /// BUILD_BUG_ON(sizeof(...) != N), against the sizes the decoders use.
    @Test func structureSizesAreTheKernels() {
        #expect(Superblock.maximumSize == Self.superblock.size)
        #expect(Superblock.size + Superblock.extensionSlotSize == Self.superblock.size)
        #expect(DiskInode.compactSize == Self.compactInode.size)
        #expect(DiskInode.extendedSize == Self.extendedInode.size)
        #expect(DiskInode.slotSize == 32)
        #expect(XattrBodyHeader.size == Self.xattrBodyHeader.size)
        #expect(XattrEntryHeader.size == Self.xattrEntry.size)
        #expect(ChunkFormat.infoSize == Self.chunkInfo.size)
        #expect(ChunkIndex.size == Self.chunkIndex.size)
        #expect(MapHeader.size == Self.mapHeader.size)
        #expect(LclusterIndex.size == Self.lclusterIndex.size)
        #expect(ExtentRecord.maximumSize == Self.extent.size)
        #expect(Dirent.size == Self.dirent.size)
        #expect(DeviceSlot.size == Self.deviceSlot.size)
        // "keep in sync between 2 index structures for better extendibility"
        #expect(ChunkIndex.size == LclusterIndex.size)
    }

    /// Each structure's fields follow each other with no gap and end at its size (what sizeof
    /// of a packed C structure means).
    @Test(arguments: Self.all.map(\.name))
    func fieldsTileTheStructure(name: String) throws {
        let layout = try #require(Self.all.first { $0.name == name })
        var end = 0
        for field in layout.fields {
            #expect(field.offset == end, "\(name): \(field) does not follow the previous field")
            end = field.offset + field.width
        }
        #expect(end == layout.size, "\(name): fields end at \(end), sizeof is \(layout.size)")
    }

    /// The last BUILD_BUG_ON: a map header with only Z_EROFS_FRAGMENT_INODE_BIT of h_clusterbits
    /// set reads as the le64 1 << 63.
    @Test func fragmentInodeBitIsBit63OfTheHeader() {
        let header = MapHeader(decoding: [0, 0, 0, 0, 0, 0, 0, 1 << MapHeader.fragmentInodeBit])
        #expect(header.raw == 1 << 63)
        #expect(header.isWholeFileFragment)
        #expect(header.wholeFileFragmentOffset == 0)
    }

    /// Derived constants hold the values erofs_fs.h gives them.
    @Test func namedConstantsHaveTheHeadersValues() {
        #expect(Superblock.offset == 1024)  // EROFS_SUPER_OFFSET
        #expect(Superblock.extensionSlotSize == 16)  // EROFS_SB_EXTSLOT_SIZE
        #expect(IncompatFeatures.all.rawValue == 0x1FF)  // EROFS_ALL_FEATURE_INCOMPAT
        #expect(InodeFormat.all == 0x1F)  // EROFS_I_ALL
        #expect(ChunkFormat.all == 0x7F)  // EROFS_CHUNK_FORMAT_ALL
        #expect(CompressionFormat.allAlgorithms == 0xF)  // Z_EROFS_ALL_COMPR_ALGS
        #expect(LclusterIndex.partialReference == 0x8000)  // Z_EROFS_LI_PARTIAL_REF
        #expect(LclusterIndex.d0CompressedBlockCount == 0x800)  // Z_EROFS_LI_D0_CBLKCNT
        #expect(ExtentRecord.plenMask == 0x1F_FFFF)  // Z_EROFS_EXTENT_PLEN_MASK
        #expect(ExtentRecord.plenPartial == 1 << 27)  // Z_EROFS_EXTENT_PLEN_PARTIAL
        #expect(Dirent.nidMetaboxBit == 63)  // EROFS_DIRENT_NID_METABOX_BIT
        #expect(CompactedIndexPack.fourByte.itemBits == 16)
        #expect(CompactedIndexPack.twoByte.itemBits == 14)
        #expect(CompactedIndexPack.fourByte.shift == 2 && CompactedIndexPack.twoByte.shift == 1)
        // Z_EROFS_FULL_INDEX_START(end): ALIGN(end, 8) + sizeof(struct z_erofs_map_header) + 8
        #expect(MapHeader.fullIndexStart(after: 33) == 40 + 8 + 8)
        #expect(MapHeader.end(after: 40) == 48)
        // z_erofs_extent_recsize()
        #expect([0, 2, 4, 6].map { MapAdvise(rawValue: $0).extentRecordSize } == [4, 8, 16, 32])
    }

    // MARK: Decoders read each field where the structure has it

    @Test func superblockDecoderReadsEachField() throws {
        let layout = Self.superblock
        var bytes = layout.pattern
        func set(_ name: String, _ value: UInt64) {
            let field = layout.field(name)
            for index in 0..<field.width {
                bytes[field.offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index)))
            }
        }
        set("magic", UInt64(Superblock.magic))
        set("blkszbits", 12)
        set("sb_extslots", 1)
        set("feature_incompat", UInt64((IncompatFeatures.bits48.union(.metabox)).rawValue))
        let superblock = try Superblock(decoding: bytes)
        func value(_ name: String) -> UInt64 { layout.value(name, in: bytes) }
        #expect(UInt64(superblock.checksum) == value("checksum"))
        #expect(UInt64(superblock.featureCompat.rawValue) == value("feature_compat"))
        #expect(superblock.extensionSlots == 1)
        // 48BIT with a nonzero rootnid_8b: rb is the block count's high half.
        #expect(superblock.rootNid == value("rootnid_8b"))
        #expect(superblock.blocks == value("blocks_lo") | value("rb") << 32)
        #expect(superblock.inodeCount == value("inos"))
        #expect(superblock.epoch == value("epoch"))
        #expect(UInt64(superblock.fixedNanoseconds) == value("fixed_nsec"))
        #expect(UInt64(superblock.metaBlockAddress) == value("meta_blkaddr"))
        #expect(UInt64(superblock.xattrBlockAddress) == value("xattr_blkaddr"))
        let uuid = layout.field("uuid")
        #expect(superblock.uuid == Array(bytes[uuid.offset..<(uuid.offset + uuid.width)]))
        #expect(UInt64(superblock.availableCompressionAlgorithms) == value("u1"))
        #expect(layout.field("u1").offset == Superblock.availableCompressionAlgorithmsOffset)
        #expect(layout.field("checksum").offset == Superblock.checksumOffset)
        #expect(UInt64(superblock.extraDevices) == value("extra_devices"))
        #expect(UInt64(superblock.deviceTableSlotOffset) == value("devt_slotoff"))
        #expect(UInt64(superblock.directoryBlockSizeBits) == value("dirblkbits"))
        #expect(UInt64(superblock.xattrPrefixCount) == value("xattr_prefix_count"))
        #expect(UInt64(superblock.xattrPrefixStart) == value("xattr_prefix_start"))
        #expect(superblock.packedNid == value("packed_nid"))
        #expect(UInt64(superblock.xattrFilterReserved) == value("xattr_filter_reserved"))
        #expect(UInt64(superblock.ishareXattrPrefixId) == value("ishare_xattr_prefix_id"))
        #expect(UInt64(superblock.buildTime) == value("build_time"))
        #expect(superblock.metaboxNid == value("metabox_nid"))
    }

    @Test(arguments: [false, true])
    func inodeDecoderReadsEachField(extended: Bool) throws {
        let layout = extended ? Self.extendedInode : Self.compactInode
        var bytes = layout.pattern
        bytes[0] = extended ? bytes[0] | 1 : bytes[0] & ~1
        let inode = try DiskInode(decoding: bytes)
        func value(_ name: String) -> UInt64 { layout.value(name, in: bytes) }
        #expect(inode.format.isExtended == extended)
        #expect(inode.onDiskSize == layout.size)
        #expect(UInt64(inode.format.rawValue) == value("i_format"))
        #expect(UInt64(inode.xattrCount) == value("i_xattr_icount"))
        #expect(UInt64(inode.mode) == value("i_mode"))
        #expect(UInt64(inode.nb) == value("i_nb"))
        #expect(inode.size == value("i_size"))
        #expect(inode.mtime == value("i_mtime"))
        #expect(UInt64(inode.u) == value("i_u"))
        #expect(UInt64(inode.ino) == value("i_ino"))
        #expect(UInt64(inode.uid) == value("i_uid"))
        #expect(UInt64(inode.gid) == value("i_gid"))
        if extended {
            #expect(UInt64(inode.mtimeNanoseconds) == value("i_mtime_nsec"))
            #expect(UInt64(inode.nlink) == value("i_nlink"))
        }
        #expect(throws: FormatError.self) { try DiskInode(decoding: bytes.prefix(layout.size - 1)) }
    }

    @Test func indexAndEntryDecodersReadEachField() throws {
        var layout = Self.lclusterIndex
        var bytes = layout.pattern
        let index = LclusterIndex(decoding: bytes)
        #expect(UInt64(index.advise) == layout.value("di_advise", in: bytes))
        #expect(UInt64(index.clusterOffset) == layout.value("di_clusterofs", in: bytes))
        #expect(UInt64(index.blockAddress) == layout.value("di_u", in: bytes))
        #expect(UInt64(index.delta.0) | UInt64(index.delta.1) << 16 == layout.value("di_u", in: bytes))

        layout = Self.chunkIndex
        bytes = layout.pattern
        let chunk = ChunkIndex(decoding: bytes)
        #expect(UInt64(chunk.startBlockHigh) == layout.value("startblk_hi", in: bytes))
        #expect(UInt64(chunk.deviceID) == layout.value("device_id", in: bytes))
        #expect(UInt64(chunk.startBlockLow) == layout.value("startblk_lo", in: bytes))

        layout = Self.mapHeader
        bytes = layout.pattern
        let header = MapHeader(decoding: bytes)
        #expect(UInt64(header.inlineDataSize) == layout.value("h_idata_size", in: bytes))
        #expect(
            UInt64(header.fragmentOffset) == layout.value("h_reserved1", in: bytes) | layout.value(
                "h_idata_size", in: bytes) << 16)
        #expect(UInt64(header.advise.rawValue) == layout.value("h_advise", in: bytes))
        #expect(UInt64(header.algorithmType) == layout.value("h_algorithmtype", in: bytes))
        #expect(UInt64(header.clusterBitsOverBlock) == layout.value("h_clusterbits", in: bytes) & 0xF)

        layout = Self.dirent
        bytes = [0xEE, 0xEE] + layout.pattern
        let dirent = Dirent(decoding: bytes, at: 2)
        let direntBytes = Array(bytes[2...])
        #expect(dirent.nid == layout.value("nid", in: direntBytes))
        #expect(UInt64(dirent.nameOffset) == layout.value("nameoff", in: direntBytes))
        #expect(UInt64(dirent.fileType) == layout.value("file_type", in: direntBytes))

        layout = Self.xattrEntry
        bytes = layout.pattern
        let entry = try XattrEntryHeader(decoding: bytes)
        #expect(UInt64(entry.nameLength) == layout.value("e_name_len", in: bytes))
        #expect(UInt64(entry.nameIndex) == layout.value("e_name_index", in: bytes))
        #expect(UInt64(entry.valueSize) == layout.value("e_value_size", in: bytes))
        #expect(entry.alignedEntrySize % XattrEntryHeader.size == 0)

        layout = Self.xattrBodyHeader
        bytes = layout.pattern
        let body = XattrBodyHeader(decoding: bytes)
        #expect(UInt64(body.nameFilter) == layout.value("h_name_filter", in: bytes))
        #expect(UInt64(body.sharedCount) == layout.value("h_shared_count", in: bytes))
        #expect(XattrBodyHeader.bodySize(xattrCount: 0) == 0)
        #expect(XattrBodyHeader.bodySize(xattrCount: 3) == 12 + 2 * 4)
    }

    @Test(arguments: [4, 8, 16, 32])
    func extentRecordDecoderReadsEachField(recordSize: Int) {
        let layout = Self.extent
        let bytes = Array(layout.pattern.prefix(recordSize))
        let full = layout.pattern
        let record = ExtentRecord(decoding: bytes)
        #expect(UInt64(record.plen) == layout.value("plen", in: full))
        let physicalLow = recordSize > 4 ? layout.value("pstart_lo", in: full) : 0
        let physicalHigh = recordSize > 12 ? layout.value("pstart_hi", in: full) : 0
        #expect(record.physicalStart == physicalLow | physicalHigh << 32)
        let logicalLow = recordSize > 12 ? layout.value("lstart_lo", in: full) : 0
        let logicalHigh = recordSize > 16 ? layout.value("lstart_hi", in: full) : 0
        #expect(record.logicalStart == logicalLow | logicalHigh << 32)
        #expect(layout.field("pstart_lo").offset == ExtentRecord.physicalStartOffset)
        #expect(layout.field("lstart_lo").offset == ExtentRecord.logicalStartOffset)
        #expect(layout.field("lstart_hi").offset == ExtentRecord.logicalStartHighOffset)
    }

    @Test func deviceSlotDecoderReadsEachField() throws {
        let layout = Self.deviceSlot
        let bytes = layout.pattern
        let slot = try DeviceSlot(decoding: bytes, has48BitFields: true)
        #expect(slot.tag == Array(bytes[0..<DeviceSlot.tagSize]))
        #expect(slot.blocks == layout.value("blocks_lo", in: bytes) | layout.value("blocks_hi", in: bytes) << 32)
        #expect(
            slot.mappedBlockAddress == layout.value("uniaddr_lo", in: bytes) | layout.value("uniaddr_hi", in: bytes)
                << 32)
    }
}
