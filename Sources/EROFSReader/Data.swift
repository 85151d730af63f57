import EROFSFormat

/// Where one stretch of an inode's data lives.
struct DataExtent {
    enum Location {
        /// Not stored: reads as zeros.
        case hole
        /// At this byte offset of a device: 0 is the primary image and the unified address
        /// space, N > 0 the extra device in slot N - 1 (already masked by the device id mask).
        case image(UInt64, device: UInt16 = 0)
        /// In the metadata space (tail-packed data right after the inode).
        case metadata(UInt64, inMetabox: Bool)
    }
    /// Logical start of the extent in the file.
    var logicalStart: UInt64
    var length: UInt64
    var location: Location
}

extension EROFSFilesystem {
    /// Up to `count` bytes of the inode's data from `offset` (fewer only at end of file).
    public func read(_ inode: Inode, at offset: UInt64, count: Int) throws(EROFSError) -> [UInt8] {
        guard offset < inode.size, count > 0 else { return [] }
        let wanted = Int(min(UInt64(count), inode.size - offset))
        if inode.layout.isCompressed {
            return try withContext(nid: inode.nid) { () throws(EROFSError) -> [UInt8] in
                try readCompressed(inode, at: offset, count: wanted)
            }
        }
        var result: [UInt8] = []
        var position = offset
        while result.count < wanted {
            let extent = try withContext(nid: inode.nid) { () throws(EROFSError) -> DataExtent in
                try mapUncompressed(inode, at: position)
            }
            guard extent.logicalStart <= position, position - extent.logicalStart < extent.length else {
                throw EROFSError(.corrupt, "data map does not cover offset \(position)", nid: inode.nid)
            }
            let skip = position - extent.logicalStart
            let take = Int(min(extent.length - skip, UInt64(wanted - result.count)))
            if result.isEmpty && take < wanted { result.reserveCapacity(wanted) }
            switch extent.location {
            case .hole:
                result.append(contentsOf: repeatElement(0, count: take))
            case .image(let physical, let device):
                let start = try checkedSum(physical, skip, "data offset")
                let bytes = try withContext(nid: inode.nid) { () throws(EROFSError) -> [UInt8] in
                    try dataBytes(at: start, device: device, count: take)
                }
                // One extent holds it all (a flat file's blocks): its bytes are the answer,
                // not copied again.
                if result.isEmpty && take == wanted { return bytes }
                result.append(contentsOf: bytes)
            case .metadata(let physical, let inMetabox):
                let start = try checkedSum(physical, skip, "inline data offset")
                result.append(
                    contentsOf: try withContext(nid: inode.nid) { () throws(EROFSError) -> [UInt8] in
                        try metadataBytes(at: start, count: take, inMetabox: inMetabox)
                    })
            }
            position += UInt64(take)
        }
        return result
    }

    /// Where `count` bytes of a flat file's data from `offset` lie in the primary image when
    /// they are one stretch of it (no hole, no tail in the metadata, no extra device), for a
    /// reply spliced from the image file; nil otherwise (`read` them). Checked as `read`
    /// checks them: an extent reaching past the image's end is nil (`read` reports it).
    public func imageRange(of inode: Inode, at offset: UInt64, count: Int) throws(EROFSError) -> (
        offset: UInt64, length: Int
    )? {
        guard !inode.layout.isCompressed, deviceTable.slots.isEmpty, offset < inode.size, count > 0 else { return nil }
        let wanted = min(UInt64(count), inode.size - offset)
        let extent = try withContext(nid: inode.nid) { () throws(EROFSError) -> DataExtent in
            try mapUncompressed(inode, at: offset)
        }
        guard extent.logicalStart <= offset, offset - extent.logicalStart < extent.length,
            case .image(let physical, let device) = extent.location, device == 0,
            extent.length - (offset - extent.logicalStart) >= wanted
        else { return nil }
        let start = physical.addingReportingOverflow(offset - extent.logicalStart)
        let end = start.partialValue.addingReportingOverflow(wanted)
        guard !start.overflow, !end.overflow, end.partialValue <= source.size else { return nil }
        return (start.partialValue, Int(wanted))
    }

    /// The whole data of a (small) inode, for directories, symlinks and metadata files.
    func readAll(_ inode: Inode, limit: UInt64) throws(EROFSError) -> [UInt8] {
        guard inode.size <= limit else {
            throw EROFSError(.corrupt, "absurd size \(inode.size) (limit \(limit))", nid: inode.nid)
        }
        let data = try read(inode, at: 0, count: Int(inode.size))
        guard data.count == Int(inode.size) else {
            throw EROFSError(.corrupt, "data shorter than the inode size", nid: inode.nid)
        }
        return data
    }

    /// Maps the logical offset of an uncompressed inode (flat or chunk-based) to its extent.
    func mapUncompressed(_ inode: Inode, at offset: UInt64) throws(EROFSError) -> DataExtent {
        let blockSize = UInt64(self.blockSize)
        switch inode.layout {
        case .flatPlain, .flatInline:
            let tailPacked = inode.layout == .flatInline
            if !tailPacked && inode.startBlock == Inode.nullAddress {
                return DataExtent(logicalStart: offset, length: inode.size - offset, location: .hole)
            }
            let blockCount = dividingRoundingUp(inode.size, blockSize)
            let blockedBytes = try checkedProduct(
                blockCount - (tailPacked ? 1 : 0), blockSize, "data size of nid \(inode.nid)")
            if offset < blockedBytes {
                let base = try checkedProduct(inode.startBlock, blockSize, "start block of nid \(inode.nid)")
                return DataExtent(logicalStart: 0, length: blockedBytes, location: .image(base))
            }
            // The tail sits right after the inode and its xattrs and may not cross a block.
            let tailStart = inode.payloadLocation
            let tailLength = inode.size - blockedBytes
            if tailStart % blockSize + tailLength > blockSize {
                throw EROFSError(
                    .corrupt, "tail-packed data crosses a block boundary", nid: inode.nid, offset: tailStart)
            }
            return DataExtent(
                logicalStart: blockedBytes, length: tailLength,
                location: .metadata(tailStart, inMetabox: inode.inMetabox))
        case .chunkBased:
            return try mapChunk(inode, at: offset)
        case .compressedFull, .compressedCompact:
            throw EROFSError(.corrupt, "compressed inode mapped as uncompressed", nid: inode.nid)
        }
    }

    private func mapChunk(_ inode: Inode, at offset: UInt64) throws(EROFSError) -> DataExtent {
        let blockSize = UInt64(self.blockSize)
        let format = ChunkFormat(rawValue: inode.chunkFormat)
        let chunkBits = UInt64(superblock.blockSizeBits) + UInt64(format.blockBits)
        guard chunkBits < 48 else { throw EROFSError(.corrupt, "absurd chunk size 2^\(chunkBits)", nid: inode.nid) }
        let usesIndexes = format.hasIndexes
        let unit = UInt64(usesIndexes ? ChunkIndex.size : ChunkIndex.blockMapEntrySize)
        let chunkNumber = offset >> chunkBits
        let tableStart = (inode.payloadLocation + unit - 1) / unit * unit
        let entryOffset = try checkedSum(tableStart, chunkNumber * unit, "chunk table of nid \(inode.nid)")
        let entry = try metadataBytes(at: entryOffset, count: Int(unit), inMetabox: inode.inMetabox)
        let start = chunkNumber << chunkBits
        let remaining = inode.size - start
        let chunkSize = UInt64(1) << chunkBits
        let length = remaining >= chunkSize ? chunkSize : dividingRoundingUp(remaining, blockSize) * blockSize
        var block: UInt64?
        var device: UInt16 = 0
        if usesIndexes {
            let index = ChunkIndex(decoding: entry)
            let addressMask: UInt64 = format.has48BitAddresses ? (1 << 48) - 1 : (1 << 32) - 1
            let address = index.startBlock & addressMask
            if (address ^ ChunkIndex.nullAddress) & addressMask != 0 {
                // Bits beyond the mask are ignored, as the kernel does (0 without a device table).
                device = index.deviceID & deviceTable.deviceIDMask
                block = address
            }
        } else {
            let address = entry.le32(at: 0)
            if address != UInt32.max { block = UInt64(address) }
        }
        guard let block else { return DataExtent(logicalStart: start, length: length, location: .hole) }
        let physical = try checkedProduct(block, blockSize, "chunk address of nid \(inode.nid)")
        return DataExtent(logicalStart: start, length: length, location: .image(physical, device: device))
    }
}

/// A stretch of a regular file's data: bytes, or a hole (reads as zeros, stored nowhere).
public enum DataRun: Sendable {
    case data([UInt8])
    case hole(length: UInt64)
}

extension EROFSFilesystem {
    /// Streams a regular file as runs of data (at most `chunkSize` bytes each) and holes, in
    /// order from offset 0, so that a writer can seek over the holes: chunks with a null address,
    /// flat files without blocks, compressed extents without a pcluster. Memory stays bounded by
    /// `chunkSize` whatever the holes' length.
    public func forEachRun(
        of inode: Inode, chunkSize: Int = 1 << 20, _ body: (_ offset: UInt64, _ run: DataRun) throws(EROFSError) -> Void
    ) throws(EROFSError) {
        var offset: UInt64 = 0
        while offset < inode.size {
            let (isHole, end) = try span(of: inode, at: offset)
            if isHole {
                try body(offset, .hole(length: end - offset))
                offset = end
                continue
            }
            while offset < end {
                let chunk = try read(inode, at: offset, count: Int(min(UInt64(chunkSize), end - offset)))
                guard !chunk.isEmpty else {
                    throw EROFSError(.corrupt, "data ends before the inode size", nid: inode.nid, offset: offset)
                }
                try body(offset, .data(chunk))
                offset += UInt64(chunk.count)
            }
        }
    }

    /// How many bytes of a regular file are not holes: what writing it out takes on disk (at
    /// most; data blocks of zeros still count). Maps the file, decodes nothing.
    public func storedLength(of inode: Inode) throws(EROFSError) -> UInt64 {
        var stored: UInt64 = 0
        var offset: UInt64 = 0
        while offset < inode.size {
            let (isHole, end) = try span(of: inode, at: offset)
            if !isHole { stored += end - offset }
            offset = end
        }
        return stored
    }

    /// Whether the data at `offset` is a hole, and where that extent ends (within the file, and
    /// always beyond `offset`).
    func span(of inode: Inode, at offset: UInt64) throws(EROFSError) -> (isHole: Bool, end: UInt64) {
        try withContext(nid: inode.nid) { () throws(EROFSError) -> (isHole: Bool, end: UInt64) in
            let start: UInt64
            let length: UInt64
            let isHole: Bool
            if inode.layout.isCompressed {
                let extent = try mapCompressed(inode, try compressionInfo(inode), at: offset)
                (start, length) = (extent.logicalStart, extent.logicalLength)
                if case .hole = extent.source { isHole = true } else { isHole = false }
            } else {
                let extent = try mapUncompressed(inode, at: offset)
                (start, length) = (extent.logicalStart, extent.length)
                if case .hole = extent.location { isHole = true } else { isHole = false }
            }
            guard start <= offset, offset - start < length else {
                throw EROFSError(.corrupt, "data map does not cover offset \(offset)", nid: inode.nid)
            }
            // Extents may reach 2^64 (a hole as long as the file): clip before adding.
            let remaining = length - (offset - start)
            return (isHole, remaining >= inode.size - offset ? inode.size : offset + remaining)
        }
    }
}
