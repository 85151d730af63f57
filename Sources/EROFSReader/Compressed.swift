import Compression
import EROFSFormat

/// The per-inode compression header (z_erofs_map_header) and what follows from it.
struct CompressionInfo: Sendable {
    var advise: MapAdvise
    var logicalClusterBits: Int
    /// Algorithms of HEAD1 and HEAD2 lclusters.
    var headAlgorithms: (UInt8, UInt8)
    /// ztailpacking: size of the inline (tail) pcluster; 0 when none.
    var inlineSize: Int
    /// Fragments: offset of the tail (or whole file) in the packed inode.
    var fragmentOffset: UInt64
    /// ztailpacking: where the inline pcluster sits in the metadata space.
    var inlineLocation: UInt64
    /// The lcluster that heads the tail extent (inline or fragment); nil when not looked up.
    var tailHeadLcn: UInt64?
    /// The whole file is a fragment of the packed inode.
    var wholeFileFragment: Bool
    /// Extent records instead of lcluster indexes (full layout with Z_EROFS_ADVISE_EXTENTS):
    /// the record size (4, 8, 16 or 32 bytes), 0 when not used.
    var extentRecordSize: Int = 0
    var extentCount: UInt64 = 0

    var hasFragment: Bool { advise.contains(.fragmentPcluster) }
}

/// What one logical cluster index says (decoded from the full or the compacted form).
struct LogicalCluster {
    typealias Kind = LclusterType
    var lcn: UInt64
    var kind: Kind
    var clusterOffset: UInt64 = 0
    /// NONHEAD: distance back to the head, and forward to the next head.
    var delta: (UInt64, UInt64) = (0, 0)
    /// HEAD: physical block of the pcluster.
    var physicalBlock: UInt64 = 0
    /// NONHEAD with CBLKCNT: compressed block count of the pcluster.
    var compressedBlocks: UInt64 = 0
    var partialReference = false
    /// Offset just after this index's pack (where inline tail data starts).
    var nextPackOffset: UInt64 = 0
}

/// One decompressed extent of a compressed file.
struct CompressedExtent {
    enum Format {
        case algorithm(CompressionAlgorithm)
        /// Stored uncompressed at the start of the pcluster.
        case shifted
        /// Stored uncompressed, rotated by the logical offset within a block.
        case interlaced
    }
    enum Source {
        /// Not stored: reads as zeros.
        case hole
        case image(UInt64)
        case metadata(UInt64, inMetabox: Bool)
        case fragment(UInt64)
    }
    var logicalStart: UInt64
    var logicalLength: UInt64
    var source: Source
    var physicalLength: Int
    var format: Format
    var partial: Bool
}

/// Configuration of the decompressors from the superblock (COMPR_CFGS records).
struct CompressionSettings: Sendable {
    var availableAlgorithms: UInt16
    var decompression: DecompressionSettings
}

/// The image's compression algorithms and their settings, for display.
public struct CompressionDescription: Sendable {
    /// Algorithm names ("lz4", "lzma", "deflate", "zstd"); empty for an uncompressed image.
    public var algorithms: [String]
    public var lzmaDictionarySize: UInt32?
    public var deflateWindowBits: UInt8?
    public var zstdWindowLog: UInt8?
}

extension EROFSFilesystem {
    public var compressionDescription: CompressionDescription {
        let settings = compressionSettings
        var description = CompressionDescription(algorithms: [])
        let compressed =
            superblock.featureIncompat.contains(.compressionConfigs)
            || superblock.featureIncompat.contains(.zeroPadding) || superblock.availableCompressionAlgorithms != 0
        guard compressed else { return description }
        for algorithm in CompressionAlgorithm.allCases
        where settings.availableAlgorithms & (1 << UInt16(algorithm.rawValue)) != 0 {
            description.algorithms.append("\(algorithm)")
            switch algorithm {
            case .lzma: description.lzmaDictionarySize = settings.decompression.lzmaDictionarySize
            case .deflate: description.deflateWindowBits = settings.decompression.deflateWindowBits
            case .zstd: description.zstdWindowLog = settings.decompression.zstdWindowLog
            case .lz4: break
            }
        }
        return description
    }

    static let maximumPhysicalCluster = CompressionFormat.maximumPhysicalClusterSize
    static let maximumLogicalExtent = UInt64(CompressionFormat.maximumDecodedClusterSize)

    /// Reads the COMPR_CFGS records after the superblock (or the LZ4-only defaults).
    func readCompressionSettings() throws(EROFSError) -> CompressionSettings {
        guard superblock.featureIncompat.contains(.compressionConfigs) else {
            return CompressionSettings(availableAlgorithms: 1, decompression: DecompressionSettings())
        }
        let algorithms = superblock.availableCompressionAlgorithms
        guard algorithms & ~CompressionFormat.allAlgorithms == 0 else {
            throw EROFSError(
                .unsupported, "unknown compression algorithms 0x\(String(algorithms, radix: 16))",
                offset: UInt64(Superblock.offset + Superblock.availableCompressionAlgorithmsOffset))
        }
        var settings = DecompressionSettings()
        var position = UInt64(Superblock.offset + superblock.size)
        let lengthSize = LengthPrefixedRecord.lengthSize
        // One record per algorithm the superblock announces, in algorithm order.
        for algorithm in CompressionAlgorithm.allCases where algorithms & (1 << UInt16(algorithm.rawValue)) != 0 {
            position = LengthPrefixedRecord.aligned(position)
            let length = Int(try imageBytes(at: position, count: lengthSize).le16(at: 0))
            guard length > 0, length <= LengthPrefixedRecord.maximumLength else {
                throw EROFSError(.corrupt, "compression config of \(length) bytes", offset: position)
            }
            let record = try imageBytes(at: position + UInt64(lengthSize), count: length)
            position += UInt64(lengthSize + length)
            switch algorithm {
            // z_erofs_lzma_cfgs.dict_size
            case .lzma where record.count >= 4: settings.lzmaDictionarySize = record.le32(at: 0)
            // z_erofs_deflate_cfgs.windowbits
            case .deflate where record.count >= 1: settings.deflateWindowBits = record[0]
            // z_erofs_zstd_cfgs.windowlog
            case .zstd where record.count >= 2:
                settings.zstdWindowLog = record[1] &+ CompressionFormat.zstdMinimumWindowLog
            default: break
            }
        }
        return CompressionSettings(availableAlgorithms: algorithms, decompression: settings)
    }

    // MARK: Reading

    func readCompressed(_ inode: Inode, at offset: UInt64, count: Int) throws(EROFSError) -> [UInt8] {
        let info = try compressionInfo(inode)
        var result: [UInt8] = []
        result.reserveCapacity(count)
        var position = offset
        let end = offset + UInt64(count)
        while position < end {
            let extent = try mapCompressed(inode, info, at: position)
            guard extent.logicalStart <= position, position - extent.logicalStart < extent.logicalLength else {
                throw EROFSError(.corrupt, "compressed map does not cover offset \(position)", nid: inode.nid)
            }
            // Holes and fragments may start 2^63 bytes or more before `position`.
            let skip = position - extent.logicalStart
            let take = Int(min(extent.logicalLength - skip, end - position))
            switch extent.source {
            case .fragment(let fragmentStart):
                let bytes = try readFragment(
                    inode, at: try checkedSum(fragmentStart, skip, "fragment offset"), count: take)
                result.append(contentsOf: bytes)
            case .hole:
                // Only the zeros asked for: a hole extent may be as long as the file (2^64 bytes).
                result.append(contentsOf: repeatElement(0, count: take))
            case .image, .metadata:
                if case .algorithm(let algorithm) = extent.format, skip == 0, UInt64(take) == extent.logicalLength,
                    !decodedExtents.contains(ExtentKey(nid: inode.nid, logicalStart: extent.logicalStart))
                {
                    // The whole extent is asked for: decoded in place at the end of the result
                    // (no buffer of its own, no copy, no cache entry: only an extent a read
                    // ends inside is read again by the next one).
                    let raw = try pclusterBytes(inode, extent)
                    let start = result.count
                    // Zeros appended from an array (a memcpy), not a generic sequence: in a debug
                    // build that loop costs ~100 ns a byte and held the sibling prefetch past its wait.
                    result.append(contentsOf: [UInt8](repeating: 0, count: take))
                    try result.withUnsafeMutableBytes { output in
                        Result { () throws(EROFSError) in
                            try decode(
                                inode, extent, algorithm: algorithm, raw: raw,
                                into: UnsafeMutableRawBufferPointer(rebasing: output[start...]))
                        }
                    }.get()
                    position += UInt64(take)
                    continue
                }
                let data = try decodedExtent(inode, extent)
                guard skip < UInt64(data.count), take <= data.count - Int(skip) else {
                    throw EROFSError(
                        .corrupt, "decoded extent of \(data.count) bytes is shorter than its map", nid: inode.nid,
                        offset: position)
                }
                result.append(contentsOf: data[Int(skip)..<(Int(skip) + take)])
            }
            position += UInt64(take)
        }
        return result
    }

    private func readFragment(_ inode: Inode, at offset: UInt64, count: Int) throws(EROFSError) -> [UInt8] {
        guard superblock.packedNid != 0, inode.nid != superblock.packedNid else {
            throw EROFSError(.corrupt, "fragment without a packed inode", nid: inode.nid)
        }
        // A packed inode in the metabox is read through the metabox inode: that one's data cannot
        // be a fragment of it.
        if inode.nid == superblock.metaboxNid && superblock.packedNid & Inode.metaboxBit != 0 {
            throw EROFSError(
                .corrupt, "the metabox inode's data is a fragment of the packed inode inside the metabox",
                nid: inode.nid)
        }
        let packed = try self.inode(nid: superblock.packedNid)
        let bytes = try read(packed, at: offset, count: count)
        guard bytes.count == count else {
            throw EROFSError(.corrupt, "fragment beyond the end of the packed inode", nid: inode.nid, offset: offset)
        }
        return bytes
    }

    /// The decompressed bytes of a whole extent, from the cache or decoded now.
    private func decodedExtent(_ inode: Inode, _ extent: CompressedExtent) throws(EROFSError) -> [UInt8] {
        let key = ExtentKey(nid: inode.nid, logicalStart: extent.logicalStart)
        if let cached = decodedExtents.value(for: key) { return cached }
        let raw = try pclusterBytes(inode, extent)
        let length = Int(extent.logicalLength)
        var output = [UInt8](repeating: 0, count: length)
        switch extent.format {
        case .shifted:
            guard length <= raw.count else {
                throw EROFSError(
                    .corrupt, "uncompressed pcluster of \(raw.count) bytes holds \(length)", nid: inode.nid,
                    offset: extent.logicalStart)
            }
            output = Array(raw[0..<length])
        case .interlaced:
            // The first (block size - offset in block) bytes of the extent sit at the end of the
            // pcluster's block, the rest at its start. Like the Linux kernel, the first part is
            // taken relative to the pcluster's end, also for inline (ztailpacking) pclusters
            // shorter than a block, where it starts before the inline data.
            guard length <= raw.count || raw.count < blockSize, raw.count <= blockSize else {
                throw EROFSError(
                    .corrupt, "interlaced pcluster of \(raw.count) bytes holds \(length)", nid: inode.nid,
                    offset: extent.logicalStart)
            }
            let toBlockEnd = blockSize - Int(extent.logicalStart % UInt64(blockSize))
            let first = min(toBlockEnd, length)
            let firstStart = Int64(raw.count) - Int64(toBlockEnd)
            let firstPart: [UInt8]
            if firstStart >= 0 && firstStart + Int64(first) <= Int64(raw.count) {
                firstPart = Array(raw[Int(firstStart)..<(Int(firstStart) + first)])
            } else {
                firstPart = try bytesAround(extent.source, relative: firstStart, count: first, nid: inode.nid)
            }
            guard length - first <= raw.count else {
                throw EROFSError(.corrupt, "interlaced pcluster too short", nid: inode.nid, offset: extent.logicalStart)
            }
            output = firstPart + Array(raw[0..<(length - first)])
        case .algorithm(let algorithm):
            try output.withUnsafeMutableBytes { out in
                Result { () throws(EROFSError) in try decode(inode, extent, algorithm: algorithm, raw: raw, into: out) }
            }.get()
        }
        // 64 cached extents of at most 1 MiB each bound the cache at 64 MiB; larger extents
        // (up to 12 MiB) are decoded again when read again.
        if output.count <= 1 << 20 { decodedExtents.insert(output, for: key) }
        return output
    }

    /// The stored bytes of an extent's pcluster.
    private func pclusterBytes(_ inode: Inode, _ extent: CompressedExtent) throws(EROFSError) -> [UInt8] {
        switch extent.source {
        case .image(let physical): return try dataBytes(at: physical, count: extent.physicalLength)
        case .metadata(let physical, let inMetabox):
            return try metadataBytes(at: physical, count: extent.physicalLength, inMetabox: inMetabox)
        case .fragment, .hole:
            throw EROFSError(.corrupt, "\(extent.source) extent decoded as a pcluster", nid: inode.nid)
        }
    }

    /// Decompresses pcluster `raw` (its leading zero padding included) into `output`, which
    /// it fills completely or throws.
    private func decode(
        _ inode: Inode, _ extent: CompressedExtent, algorithm: CompressionAlgorithm, raw: [UInt8],
        into output: UnsafeMutableRawBufferPointer
    ) throws(EROFSError) {
        let padding = raw.firstIndex { $0 != 0 } ?? raw.count
        guard padding < raw.count else {
            throw EROFSError(
                .corrupt, "\(algorithm) pcluster is all zeros", nid: inode.nid, offset: extent.logicalStart)
        }
        let settings = compressionSettings.decompression
        let partial = extent.partial
        let failure: DecompressionError? = raw.withUnsafeBytes { input -> DecompressionError? in
            do throws(DecompressionError) {
                try Decompressor.decompress(
                    algorithm, input: UnsafeRawBufferPointer(rebasing: input[padding...]), output: output,
                    partial: partial, settings: settings)
                return nil
            } catch {
                return error
            }
        }
        if let failure {
            throw EROFSError(
                .corrupt,
                "\(failure) (pcluster of \(raw.count) bytes for \(output.count) bytes at file offset \(extent.logicalStart))",
                nid: inode.nid)
        }
    }

    /// Bytes at a signed offset from a pcluster's start, in the pcluster's own address space.
    private func bytesAround(_ source: CompressedExtent.Source, relative: Int64, count: Int, nid: UInt64)
        throws(EROFSError) -> [UInt8]
    {
        let start: UInt64
        switch source {
        case .image(let physical), .metadata(let physical, _):
            guard relative >= 0 || UInt64(-relative) <= physical else {
                throw EROFSError(.corrupt, "interlaced data before the start of the image", nid: nid)
            }
            start = relative >= 0 ? physical + UInt64(relative) : physical - UInt64(-relative)
        case .fragment, .hole:
            throw EROFSError(.corrupt, "fragment extent decoded as a pcluster", nid: nid)
        }
        if case .metadata(_, let inMetabox) = source {
            return try metadataBytes(at: start, count: count, inMetabox: inMetabox)
        }
        return try dataBytes(at: start, count: count)
    }

    // MARK: Mapping

    func compressionInfo(_ inode: Inode) throws(EROFSError) -> CompressionInfo {
        if let cached = compressionInfos.value(for: inode.nid) { return cached }
        let headerOffset = MapHeader.start(after: inode.payloadLocation)
        let header = MapHeader(
            decoding: try metadataBytes(at: headerOffset, count: MapHeader.size, inMetabox: inode.inMetabox))
        let info: CompressionInfo
        if header.isWholeFileFragment {
            info = CompressionInfo(
                advise: .fragmentPcluster, logicalClusterBits: 0, headAlgorithms: (0, 0),
                inlineSize: 0, fragmentOffset: header.wholeFileFragmentOffset, inlineLocation: 0,
                tailHeadLcn: 0, wholeFileFragment: true)
        } else if inode.layout == .compressedFull && header.advise.contains(.extents) {
            info = try extentRecordsInfo(inode, header, at: headerOffset)
        } else {
            info = try lclusterIndexesInfo(inode, header, at: headerOffset)
        }
        compressionInfos.insert(info, for: inode.nid)
        return info
    }

    /// Full layout with Z_EROFS_ADVISE_EXTENTS: the header counts extent records.
    private func extentRecordsInfo(_ inode: Inode, _ header: MapHeader, at headerOffset: UInt64) throws(EROFSError)
        -> CompressionInfo
    {
        let clusterBits = Int(superblock.blockSizeBits) + Int(header.clusterBitsOverBlock)
        guard clusterBits <= 30 else {
            throw EROFSError(
                .corrupt, "logical cluster size 2^\(clusterBits) too large", nid: inode.nid, offset: headerOffset)
        }
        return CompressionInfo(
            advise: header.advise, logicalClusterBits: clusterBits, headAlgorithms: (0, 0), inlineSize: 0,
            fragmentOffset: 0, inlineLocation: 0, tailHeadLcn: nil, wholeFileFragment: false,
            extentRecordSize: header.advise.extentRecordSize, extentCount: header.extentCount)
    }

    /// Lcluster indexes (full or compacted), and where the tail extent (inline or fragment) is.
    private func lclusterIndexesInfo(_ inode: Inode, _ header: MapHeader, at headerOffset: UInt64) throws(EROFSError)
        -> CompressionInfo
    {
        let advise = header.advise
        let clusterBits = Int(superblock.blockSizeBits) + Int(header.clusterBitsOverBlock)
        var info = CompressionInfo(
            advise: advise, logicalClusterBits: clusterBits, headAlgorithms: header.headAlgorithms,
            inlineSize: 0, fragmentOffset: 0, inlineLocation: 0, tailHeadLcn: nil, wholeFileFragment: false)
        if info.hasFragment {
            info.fragmentOffset = UInt64(header.fragmentOffset)
        } else if advise.contains(.inlinePcluster) {
            info.inlineSize = Int(header.inlineDataSize)
        }
        guard clusterBits <= 20 else {
            throw EROFSError(
                .corrupt, "logical cluster size 2^\(clusterBits) too large", nid: inode.nid, offset: headerOffset)
        }
        if inode.layout == .compressedCompact && advise.contains(.bigPcluster1) != advise.contains(.bigPcluster2) {
            throw EROFSError(
                .corrupt, "compact indexes with inconsistent big pcluster flags", nid: inode.nid, offset: headerOffset)
        }
        if (info.inlineSize > 0 || info.hasFragment) && inode.size > 0 {
            // Find the extent holding the last byte: its head lcluster is the tail extent.
            let finder = ClusterMapper(filesystem: self, inode: inode, info: info)
            let last = try finder.load(lcn: (inode.size - 1) >> UInt64(clusterBits), lookahead: false)
            let inlineLocation = last.nextPackOffset
            let head = try finder.findHead(
                from: last, offsetInCluster: (inode.size - 1) & ((1 << UInt64(clusterBits)) - 1))
            info.tailHeadLcn = head.cluster.lcn
            info.inlineLocation = inlineLocation
            if info.hasFragment && inode.layout == .compressedFull {
                info.fragmentOffset |= head.cluster.physicalBlock << 32
            }
        }
        return info
    }

    func mapCompressed(_ inode: Inode, _ info: CompressionInfo, at offset: UInt64) throws(EROFSError)
        -> CompressedExtent
    {
        if info.wholeFileFragment || (info.hasFragment && info.tailHeadLcn == 0) {
            return CompressedExtent(
                logicalStart: 0, logicalLength: inode.size, source: .fragment(info.fragmentOffset), physicalLength: 0,
                format: .shifted, partial: false)
        }
        if info.extentRecordSize > 0 {
            return try mapExtentRecords(inode, info, at: offset)
        }
        let mapper = ClusterMapper(filesystem: self, inode: inode, info: info)
        let bits = UInt64(info.logicalClusterBits)
        let initial = try mapper.load(lcn: offset >> bits, lookahead: false)
        let found = try mapper.findHead(from: initial, offsetInCluster: offset & ((1 << bits) - 1))
        let head = found.cluster
        let logicalStart = found.logicalStart
        let isTail = head.lcn == info.tailHeadLcn
        var source: CompressedExtent.Source
        var physicalLength: Int
        if isTail && info.inlineSize > 0 {
            source = .metadata(info.inlineLocation, inMetabox: inode.inMetabox)
            physicalLength = info.inlineSize
            if info.inlineLocation % UInt64(blockSize) + UInt64(physicalLength) > UInt64(blockSize) {
                throw EROFSError(
                    .corrupt, "inline pcluster crosses a block boundary", nid: inode.nid, offset: info.inlineLocation)
            }
        } else if isTail && info.hasFragment {
            let length = try mapper.decompressedLength(head: head, logicalStart: logicalStart)
            return CompressedExtent(
                logicalStart: logicalStart, logicalLength: length, source: .fragment(info.fragmentOffset),
                physicalLength: 0, format: .shifted, partial: false)
        } else {
            let physical = try checkedProduct(head.physicalBlock, UInt64(blockSize), "pcluster address")
            source = .image(physical)
            let blocks = try mapper.compressedBlocks(head: head)
            physicalLength = Int(blocks) * blockSize
        }
        let logicalLength = try mapper.decompressedLength(head: head, logicalStart: logicalStart)
        guard physicalLength <= EROFSFilesystem.maximumPhysicalCluster,
            logicalLength <= EROFSFilesystem.maximumLogicalExtent,
            logicalLength > 0
        else {
            throw EROFSError(
                .corrupt, "absurd pcluster: \(physicalLength) bytes for \(logicalLength)", nid: inode.nid,
                offset: logicalStart)
        }
        let format: CompressedExtent.Format
        switch head.kind {
        case .plain:
            format = info.advise.contains(.interlacedPcluster) ? .interlaced : .shifted
        case .head1, .head2:
            let number = head.kind == .head1 ? info.headAlgorithms.0 : info.headAlgorithms.1
            guard let algorithm = CompressionAlgorithm(rawValue: number) else {
                throw EROFSError(
                    .unsupported, "unknown compression algorithm \(number)", nid: inode.nid, offset: logicalStart)
            }
            guard compressionSettings.availableAlgorithms & (1 << UInt16(number)) != 0 else {
                throw EROFSError(
                    .corrupt, "algorithm \(algorithm) not announced by the superblock", nid: inode.nid,
                    offset: logicalStart)
            }
            format = .algorithm(algorithm)
        case .nonhead:
            throw EROFSError(.corrupt, "extent head is a NONHEAD lcluster", nid: inode.nid, offset: logicalStart)
        }
        return CompressedExtent(
            logicalStart: logicalStart, logicalLength: logicalLength, source: source, physicalLength: physicalLength,
            format: format, partial: head.partialReference)
    }
}

/// The extent record that covers an offset, and the logical range it maps.
private struct ExtentRecordMatch {
    var logicalStart: UInt64
    var logicalEnd: UInt64
    /// With 4-byte records, `physicalStart` is where the running sum of lengths puts it.
    var record: ExtentRecord
    /// The file's last record (its fragment, when the inode has one).
    var isLast: Bool
}

extension EROFSFilesystem {
    /// Maps an offset through extent records (z_erofs_extent): short records (4 or 8 bytes) hold
    /// one pcluster per lcluster, long ones (16 or 32 bytes) are sorted by logical start and
    /// searched.
    func mapExtentRecords(_ inode: Inode, _ info: CompressionInfo, at offset: UInt64) throws(EROFSError)
        -> CompressedExtent
    {
        let recordSize = UInt64(info.extentRecordSize)
        let headerEnd = MapHeader.end(after: inode.payloadLocation)
        let firstRecord = (headerEnd + recordSize - 1) / recordSize * recordSize
        let match =
            recordSize <= UInt64(ExtentRecord.logicalStartOffset)
            ? try shortExtentRecord(inode, info, at: offset, firstRecord: firstRecord)
            : try searchLongExtentRecords(inode, info, at: offset, firstRecord: firstRecord)
        return try compressedExtent(match, inode, info, at: offset)
    }

    private func extentRecord(_ inode: Inode, _ info: CompressionInfo, at position: UInt64) throws(EROFSError)
        -> ExtentRecord
    {
        ExtentRecord(
            decoding: try metadataBytes(at: position, count: info.extentRecordSize, inMetabox: inode.inMetabox))
    }

    /// Records of 4 or 8 bytes: one per lcluster, read in order from the first (4 bytes: only
    /// lengths, after a le64 address of the first pcluster) or straight at the offset's lcluster.
    private func shortExtentRecord(
        _ inode: Inode, _ info: CompressionInfo, at offset: UInt64, firstRecord: UInt64
    ) throws(EROFSError) -> ExtentRecordMatch {
        let recordSize = UInt64(info.extentRecordSize)
        let clusterSize = UInt64(1) << UInt64(info.logicalClusterBits)
        var position = firstRecord
        var logicalStart: UInt64
        var runningPhysical: UInt64?
        if recordSize <= UInt64(ExtentRecord.physicalStartOffset) {
            let addressSize = ExtentRecord.firstPclusterAddressSize
            runningPhysical = try metadataBytes(at: position, count: addressSize, inMetabox: inode.inMetabox).le64(
                at: 0)
            position += UInt64(addressSize)
            logicalStart = 0
        } else {
            logicalStart = offset / clusterSize * clusterSize
            position = try checkedSum(position, (logicalStart / clusterSize) * recordSize, "extent record")
        }
        var record = ExtentRecord(plen: 0, physicalStart: 0, logicalStart: 0)
        var steps: UInt64 = 0
        while logicalStart <= offset {
            steps += 1
            guard steps <= (1 << 24) else { throw EROFSError(.corrupt, "too many extent records", nid: inode.nid) }
            record = try extentRecord(inode, info, at: position)
            if let running = runningPhysical {
                record.physicalStart = running
                runningPhysical = try checkedSum(running, UInt64(record.physicalLength), "extent address")
            }
            position += recordSize
            logicalStart += clusterSize
        }
        return ExtentRecordMatch(
            logicalStart: logicalStart - clusterSize, logicalEnd: min(logicalStart, inode.size), record: record,
            isLast: logicalStart / clusterSize >= dividingRoundingUp(inode.size, clusterSize))
    }

    /// Records of 16 or 32 bytes: a binary search by logical start over `extentCount` records.
    private func searchLongExtentRecords(
        _ inode: Inode, _ info: CompressionInfo, at offset: UInt64, firstRecord: UInt64
    ) throws(EROFSError) -> ExtentRecordMatch {
        let recordSize = UInt64(info.extentRecordSize)
        var match = ExtentRecordMatch(
            logicalStart: inode.size, logicalEnd: inode.size,
            record: ExtentRecord(plen: 0, physicalStart: 0, logicalStart: 0), isLast: false)
        var low: UInt64 = 0
        var high = info.extentCount
        var steps = 0
        while low < high {
            steps += 1
            guard steps <= 64 else { throw EROFSError(.corrupt, "extent search does not converge", nid: inode.nid) }
            let middle = low + (high - low) / 2
            let position = try checkedSum(
                firstRecord, try checkedProduct(middle, recordSize, "extent index"), "extent record")
            let record = try extentRecord(inode, info, at: position)
            let start = record.logicalStart
            if start > offset {
                high = middle
                guard start <= match.logicalEnd else {
                    throw EROFSError(.corrupt, "extent records out of order", nid: inode.nid)
                }
                match.logicalEnd = start
            } else {
                low = middle + 1
                if start == offset { high = min(low + 1, high) }
                match.logicalStart = start
                match.record = record
            }
        }
        match.isLast = low >= info.extentCount
        return match
    }

    /// The extent a matched record describes: a fragment, a hole, or a pcluster in the image.
    private func compressedExtent(
        _ match: ExtentRecordMatch, _ inode: Inode, _ info: CompressionInfo, at offset: UInt64
    ) throws(EROFSError) -> CompressedExtent {
        let logicalStart = match.logicalStart
        guard logicalStart < match.logicalEnd, logicalStart <= offset, offset < match.logicalEnd else {
            throw EROFSError(.corrupt, "no extent record covers offset \(offset)", nid: inode.nid)
        }
        let length = match.logicalEnd - logicalStart
        let record = match.record
        if match.isLast && info.hasFragment {
            // The last record's plen (and pstart_lo, when the record has it) is the fragment offset.
            var fragmentOffset = UInt64(record.plen)
            if info.extentRecordSize > ExtentRecord.physicalStartOffset { fragmentOffset |= record.physicalStart << 32 }
            return CompressedExtent(
                logicalStart: logicalStart, logicalLength: length, source: .fragment(fragmentOffset), physicalLength: 0,
                format: .shifted, partial: false)
        }
        let physicalLength = UInt64(record.physicalLength)
        guard physicalLength > 0 else {
            return CompressedExtent(
                logicalStart: logicalStart, logicalLength: length, source: .hole, physicalLength: 0, format: .shifted,
                partial: false)
        }
        guard physicalLength <= UInt64(EROFSFilesystem.maximumPhysicalCluster),
            length <= EROFSFilesystem.maximumLogicalExtent
        else {
            throw EROFSError(
                .corrupt, "absurd extent: \(physicalLength) bytes for \(length)", nid: inode.nid, offset: logicalStart)
        }
        let physical = record.physicalStart
        let format: CompressedExtent.Format
        if record.format > 0 {
            guard let algorithm = CompressionAlgorithm(rawValue: UInt8(record.format - 1)) else {
                throw EROFSError(
                    .unsupported, "unknown compression algorithm \(record.format - 1)", nid: inode.nid,
                    offset: logicalStart)
            }
            format = .algorithm(algorithm)
        } else if info.advise.contains(.interlacedPcluster) && (physical | physicalLength) & UInt64(blockSize - 1) == 0
        {
            format = .interlaced
        } else {
            format = .shifted
        }
        return CompressedExtent(
            logicalStart: logicalStart, logicalLength: length, source: .image(physical),
            physicalLength: Int(physicalLength),
            format: format, partial: record.isPartial)
    }
}

struct ExtentKey: Hashable, Sendable {
    var nid: UInt64
    var logicalStart: UInt64
}

/// Walks an inode's lcluster indexes (full 8-byte records or compacted 2B/4B packs).
struct ClusterMapper {
    let filesystem: EROFSFilesystem
    let inode: Inode
    let info: CompressionInfo

    var bits: UInt64 { UInt64(info.logicalClusterBits) }
    var clusterCount: UInt64 { dividingRoundingUp(inode.size, 1 << bits) }
    var bigPcluster1: Bool { info.advise.contains(.bigPcluster1) }
    var bigPcluster2: Bool { info.advise.contains(.bigPcluster2) }

    func corrupt(_ message: String, lcn: UInt64) -> EROFSError {
        EROFSError(.corrupt, "\(message) at lcluster \(lcn)", nid: inode.nid)
    }

    func load(lcn: UInt64, lookahead: Bool) throws(EROFSError) -> LogicalCluster {
        guard lcn < clusterCount else { throw corrupt("lcluster beyond the end of the file", lcn: lcn) }
        var cluster =
            inode.layout == .compressedCompact
            ? try loadCompact(lcn: lcn, lookahead: lookahead) : try loadFull(lcn: lcn)
        if cluster.kind != .nonhead && cluster.clusterOffset >= 1 << bits {
            throw corrupt("cluster offset \(cluster.clusterOffset) beyond the lcluster", lcn: lcn)
        }
        cluster.lcn = lcn
        return cluster
    }

    // MARK: Full indexes

    private func loadFull(lcn: UInt64) throws(EROFSError) -> LogicalCluster {
        let base = MapHeader.fullIndexStart(after: inode.payloadLocation)
        let position = try checkedSum(base, lcn * UInt64(LclusterIndex.size), "lcluster index")
        let index = LclusterIndex(
            decoding: try filesystem.metadataBytes(at: position, count: LclusterIndex.size, inMetabox: inode.inMetabox))
        var cluster = LogicalCluster(lcn: lcn, kind: index.type)
        cluster.nextPackOffset = position + UInt64(LclusterIndex.size)
        guard cluster.kind == .nonhead else {
            cluster.partialReference = index.isPartialReference
            cluster.clusterOffset = UInt64(index.clusterOffset)
            cluster.physicalBlock = UInt64(index.blockAddress)
            return cluster
        }
        cluster.clusterOffset = 1 << bits
        let (delta0, delta1) = index.delta
        cluster.delta = (UInt64(delta0), UInt64(delta1))
        if delta0 & LclusterIndex.d0CompressedBlockCount != 0 {
            guard bigPcluster1 || bigPcluster2 else { throw corrupt("CBLKCNT without big pclusters", lcn: lcn) }
            cluster.compressedBlocks = UInt64(delta0 & ~LclusterIndex.d0CompressedBlockCount)
            cluster.delta.0 = 1
        }
        return cluster
    }

    // MARK: Compacted indexes

    private func loadCompact(lcn: UInt64, lookahead: Bool) throws(EROFSError) -> LogicalCluster {
        let (pack, index) = try compactPack(holding: lcn)
        let item = pack.item(index)
        var cluster = LogicalCluster(lcn: lcn, kind: item.kind)
        cluster.nextPackOffset = pack.end
        guard item.kind == .nonhead else {
            cluster.clusterOffset = item.lo
            cluster.physicalBlock = pack.blockAddress &+ (try blocksBeforeHead(in: pack, at: index, lcn: lcn))
            return cluster
        }
        cluster.clusterOffset = 1 << bits
        if lookahead { cluster.delta.1 = pack.distanceToNextHead(from: index) }
        if item.lo & CompactPack.d0CompressedBlockCount != 0 {
            guard bigPcluster1 else { throw corrupt("CBLKCNT without big pclusters", lcn: lcn) }
            cluster.compressedBlocks = item.lo & ~CompactPack.d0CompressedBlockCount
            cluster.delta.0 = 1
        } else {
            cluster.delta.0 = pack.distanceToHead(from: index)
        }
        return cluster
    }

    /// The pack of compacted indexes that holds lcluster `requested`, and its item's index in it.
    /// Indexes start with 4B packs up to a 32-byte boundary, then (with COMPACTED_2B) 2B packs
    /// for whole groups of 16 lclusters, then 4B packs to the end.
    private func compactPack(holding requested: UInt64) throws(EROFSError) -> (CompactPack, Int) {
        guard bits <= CompactedIndexPack.maximumClusterBits else {
            throw corrupt("compacted indexes with lcluster size 2^\(bits)", lcn: requested)
        }
        let base = MapHeader.end(after: inode.payloadLocation)
        let total = clusterCount
        let fourByteShift = CompactedIndexPack.fourByte.shift
        let alignment = CompactedIndexPack.twoByteAlignment
        let initial4B = ((alignment - base % alignment) >> fourByteShift) % (alignment >> fourByteShift)
        var compacted2B: UInt64 = 0
        if info.advise.contains(.compacted2B) && initial4B < total {
            let group = UInt64(CompactedIndexPack.twoByte.clusters)
            compacted2B = (total - initial4B) / group * group
        }
        var lcn = requested
        var position = base
        var layout = CompactedIndexPack.fourByte
        if lcn >= initial4B {
            position += initial4B << fourByteShift
            lcn -= initial4B
            if lcn < compacted2B {
                layout = .twoByte
            } else {
                position += compacted2B << CompactedIndexPack.twoByte.shift
                lcn -= compacted2B
            }
        }
        position += lcn << layout.shift
        if layout == .twoByte && bits > CompactedIndexPack.twoByteMaximumClusterBits {
            throw EROFSError(.unsupported, "compacted 2B indexes with lcluster size 2^\(bits)", nid: inode.nid)
        }
        let packSize = UInt64(layout.size)
        let packStart = position / packSize * packSize
        let bytes = try filesystem.metadataBytes(at: packStart, count: layout.size, inMetabox: inode.inMetabox)
        let pack = CompactPack(
            bytes: bytes, layout: layout, start: packStart, loBits: max(Int(bits), CompactedIndexPack.minimumLoBits))
        return (pack, Int((position - packStart) >> layout.shift))
    }

    /// Blocks of the pclusters before the head at item `index`, from the pack's base block.
    private func blocksBeforeHead(in pack: CompactPack, at index: Int, lcn: UInt64) throws(EROFSError) -> UInt64 {
        var index = index
        var blocks: UInt64 = 0
        if !bigPcluster1 {
            // One block per pcluster, counted as the kernel's unpack_compacted_index counts
            // them: from 1, one more per head before this one (a NONHEAD's lo skips its run).
            blocks = 1
            while index > 0 {
                index -= 1
                let item = pack.item(index)
                if item.kind == .nonhead { index -= Int(item.lo) }
                if index >= 0 { blocks += 1 }
            }
            return blocks
        }
        // Big pclusters: each gives its block count in its first NONHEAD (CBLKCNT).
        while index > 0 {
            index -= 1
            let item = pack.item(index)
            guard item.kind == .nonhead else {
                blocks += 1
                continue
            }
            if item.lo & CompactPack.d0CompressedBlockCount != 0 {
                index -= 1
                blocks += item.lo & ~CompactPack.d0CompressedBlockCount
                continue
            }
            guard item.lo > 1 else { throw corrupt("big pcluster with delta 1", lcn: lcn) }
            index -= Int(item.lo) - 2
        }
        return blocks
    }

    /// The head lcluster of the extent holding `offsetInCluster` of `cluster`, and where the
    /// extent starts in the file.
    func findHead(from cluster: LogicalCluster, offsetInCluster: UInt64) throws(EROFSError) -> (
        cluster: LogicalCluster, logicalStart: UInt64
    ) {
        var current = cluster
        var distance: UInt64
        switch current.kind {
        case .plain, .head1, .head2:
            if offsetInCluster >= current.clusterOffset {
                return (current, current.lcn << bits | current.clusterOffset)
            }
            guard current.lcn > 0 else { throw corrupt("data before the first extent", lcn: 0) }
            distance = 1
        case .nonhead:
            distance = current.delta.0
        }
        var steps = 0
        while current.lcn >= distance, distance > 0 {
            steps += 1
            guard steps <= 1 << 16 else { throw corrupt("lookback loop", lcn: current.lcn) }
            current = try load(lcn: current.lcn - distance, lookahead: false)
            if current.kind == .nonhead {
                distance = current.delta.0
                continue
            }
            return (current, current.lcn << bits | current.clusterOffset)
        }
        throw corrupt("bogus lookback distance \(distance)", lcn: current.lcn)
    }

    /// The pcluster size in blocks of the extent headed by `head`.
    func compressedBlocks(head: LogicalCluster) throws(EROFSError) -> UInt64 {
        let next = head.lcn + 1
        let big = head.kind == .head1 ? bigPcluster1 : bigPcluster2
        if !big || next << bits >= inode.size { return 1 }
        let cluster = try load(lcn: next, lookahead: false)
        if cluster.kind == .nonhead {
            guard cluster.delta.0 == 1 else { throw corrupt("bogus CBLKCNT", lcn: next) }
            guard cluster.compressedBlocks > 0 else { throw corrupt("missing CBLKCNT", lcn: next) }
            return cluster.compressedBlocks
        }
        return 1
    }

    /// The decompressed length of the extent headed by `head`: up to the next head lcluster.
    func decompressedLength(head: LogicalCluster, logicalStart: UInt64) throws(EROFSError) -> UInt64 {
        var lcn = head.lcn
        var steps = 0
        while true {
            if lcn << bits >= inode.size { return inode.size - logicalStart }
            steps += 1
            guard steps <= 1 << 16 else { throw corrupt("extent length loop", lcn: lcn) }
            let cluster = try load(lcn: lcn, lookahead: true)
            var step: UInt64
            if cluster.kind == .nonhead {
                step = max(cluster.delta.1, 1)
            } else if lcn != head.lcn {
                let end = lcn << bits + cluster.clusterOffset
                guard end > logicalStart else { throw corrupt("extent ends before it starts", lcn: lcn) }
                return min(end, inode.size) - logicalStart
            } else {
                step = 1
            }
            lcn = try checkedSum(lcn, step, "lcluster number")
        }
    }
}

/// One pack of compacted lcluster indexes, as read.
struct CompactPack {
    /// Z_EROFS_LI_D0_CBLKCNT, as compacted items carry it in their lo value.
    static let d0CompressedBlockCount = UInt64(LclusterIndex.d0CompressedBlockCount)

    let bytes: [UInt8]
    let layout: CompactedIndexPack
    /// Where the pack starts in the metadata space.
    let start: UInt64
    /// Bits of an item's lo value (the type takes the 2 above them).
    let loBits: Int

    /// Just after the pack: where inline tail data starts when this is the last one.
    var end: UInt64 { start + UInt64(layout.size) }
    /// The le32 at the pack's end: the block the pack's first pcluster starts at.
    var blockAddress: UInt64 { UInt64(bytes.le32(at: layout.size - CompactedIndexPack.blockAddressSize)) }

    /// Item `index`: `loBits` bits of value then 2 bits of type, at bit itemBits × index.
    func item(_ index: Int) -> (lo: UInt64, kind: LclusterType) {
        let bitPosition = layout.itemBits * index
        let byte = bitPosition / 8
        var word: UInt32 = 0
        for offset in 0..<4 where byte + offset < bytes.count {
            word |= UInt32(bytes[byte + offset]) << (8 * UInt32(offset))
        }
        let value = word >> UInt32(bitPosition & 7)
        let lo = UInt64(value & ((1 << UInt32(loBits)) - 1))
        return (lo, LclusterType(lowBitsOf: value >> UInt32(loBits)))
    }

    /// A NONHEAD's distance to the next head (delta[1]): the NONHEADs to the pack's end are
    /// counted, and when the pack ends in one, its lo holds the rest of the distance.
    func distanceToNextHead(from index: Int) -> UInt64 {
        var distance: UInt64 = 0
        var lastLo: UInt64 = 0
        for position in index..<layout.clusters {
            let decoded = item(position)
            lastLo = decoded.lo
            if decoded.kind != .nonhead { return distance }
            distance += 1
        }
        // `distance` counts the last item too (at least 1), so a lo of 0 cannot underflow.
        if lastLo & Self.d0CompressedBlockCount == 0 { distance = distance + lastLo - 1 }
        return distance
    }

    /// A NONHEAD's distance back to its head (delta[0]), when it does not carry CBLKCNT. The
    /// last item of a pack stores delta[1] instead; its delta[0] follows from the item before.
    func distanceToHead(from index: Int) -> UInt64 {
        let lo = item(index).lo
        guard index + 1 == layout.clusters else { return lo }
        let previous = item(index - 1)
        var previousLo = previous.lo
        if previous.kind != .nonhead {
            previousLo = 0
        } else if previousLo & Self.d0CompressedBlockCount != 0 {
            previousLo = 1
        }
        return previousLo + 1
    }
}
