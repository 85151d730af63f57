import EROFSFormat
import SystemCalls

extension EROFSFilesystem {
    /// Short name prefixes by EROFS_XATTR_INDEX_* (0 is not a valid index).
    static let xattrPrefixes: [Int: ByteString] = Dictionary(
        uniqueKeysWithValues: XattrNameIndex.allCases.map { (Int($0.rawValue), ByteString($0.prefix)) })

    /// Every extended attribute of the inode (inline and shared), name to value, in disk order.
    /// Names are bytes, like file names: the kernel does not require UTF-8 after the prefix.
    public func xattrs(_ inode: Inode) throws(EROFSError) -> [(name: ByteString, value: [UInt8])] {
        guard inode.xattrBodySize > 0 else { return [] }
        return try withContext(nid: inode.nid) { () throws(EROFSError) -> [(name: ByteString, value: [UInt8])] in
            let bodyStart = inode.location + UInt64(inode.inodeSize)
            let body = try metadataBytes(at: bodyStart, count: inode.xattrBodySize, inMetabox: inode.inMetabox)
            let header = XattrBodyHeader(decoding: body)
            let sharedCount = Int(header.sharedCount)
            let idSize = XattrBodyHeader.sharedIDSize
            let sharedEnd = XattrBodyHeader.size + idSize * sharedCount
            guard sharedEnd <= body.count else {
                throw EROFSError(.corrupt, "\(sharedCount) shared xattrs do not fit the xattr area", offset: bodyStart)
            }
            var result: [(name: ByteString, value: [UInt8])] = []
            for index in 0..<sharedCount {
                // Shared xattr ids count 4-byte units of the shared xattr area.
                let id = UInt64(body.le32(at: XattrBodyHeader.size + idSize * index))
                let inMetabox = superblock.featureCompat.contains(.sharedXattrsInMetabox)
                let base = UInt64(superblock.xattrBlockAddress) * UInt64(blockSize)
                let offset = try checkedSum(base, id * UInt64(idSize), "shared xattr address")
                let header = try metadataBytes(at: offset, count: XattrEntryHeader.size, inMetabox: inMetabox)
                let length = try entryHeader(header, at: offset).entrySize
                let entry = try metadataBytes(at: offset, count: length, inMetabox: inMetabox)
                result.append(try decodeXattrEntry(entry, at: offset))
            }
            var position = sharedEnd
            while position < body.count {
                let header = try entryHeader(body[position...], at: bodyStart + UInt64(position))
                let length = header.entrySize
                guard length <= body.count - position else {
                    throw EROFSError(
                        .corrupt, "xattr entry of \(length) bytes overruns the xattr area",
                        offset: bodyStart + UInt64(position))
                }
                result.append(
                    try decodeXattrEntry(Array(body[position..<(position + length)]), at: bodyStart + UInt64(position)))
                position += header.alignedEntrySize
            }
            return result
        }
    }

    private func entryHeader(_ bytes: some Collection<UInt8>, at offset: UInt64) throws(EROFSError) -> XattrEntryHeader
    {
        do { return try XattrEntryHeader(decoding: bytes) } catch {
            throw EROFSError(.corrupt, error.message, offset: offset)
        }
    }

    /// Decodes one erofs_xattr_entry (header, name, value) into a full name and its value.
    private func decodeXattrEntry(_ entry: [UInt8], at offset: UInt64) throws(EROFSError) -> (
        name: ByteString, value: [UInt8]
    ) {
        let header = try entryHeader(entry, at: offset)
        let nameLength = Int(header.nameLength)
        let index = Int(header.nameIndex)
        let prefix: ByteString
        if header.nameIndex & XattrEntryHeader.longPrefix != 0 {
            let table = longXattrPrefixes
            let tableIndex = Int(header.nameIndex & XattrEntryHeader.longPrefixMask)
            guard tableIndex < table.count else {
                throw EROFSError(
                    .corrupt, "xattr long prefix \(tableIndex) beyond the table of \(table.count)", offset: offset)
            }
            prefix = table[tableIndex]
        } else {
            guard let known = EROFSFilesystem.xattrPrefixes[index] else {
                throw EROFSError(.corrupt, "unknown xattr name index \(index)", offset: offset)
            }
            prefix = known
        }
        let nameEnd = XattrEntryHeader.size + nameLength
        let name = prefix + ByteString(entry[XattrEntryHeader.size..<nameEnd])
        return (name, Array(entry[nameEnd...]))
    }

    /// The long xattr name prefix table (xattr_prefix_count entries at xattr_prefix_start × 4,
    /// in the packed or metabox inode unless plain_xattr_pfx says in the image itself).
    func readLongXattrPrefixes() throws(EROFSError) -> [ByteString] {
        let count = Int(superblock.xattrPrefixCount)
        guard count > 0 else { return [] }
        var holder: Inode?
        if !superblock.featureCompat.contains(.plainXattrPrefixes) {
            if superblock.metaboxNid != 0 {
                holder = try inode(nid: superblock.metaboxNid)
            } else if superblock.packedNid != 0 {
                holder = try inode(nid: superblock.packedNid)
            }
        }
        var position = UInt64(superblock.xattrPrefixStart) * Superblock.xattrPrefixStartUnit
        var prefixes: [ByteString] = []
        let lengthSize = LengthPrefixedRecord.lengthSize
        for _ in 0..<count {
            position = LengthPrefixedRecord.aligned(position)
            let lengthBytes = try prefixTableBytes(holder, at: position, count: lengthSize)
            let length = Int(lengthBytes.le16(at: 0))
            guard length >= 1, length <= LengthPrefixedRecord.maximumLength else {
                throw EROFSError(.corrupt, "long xattr prefix of \(length) bytes", offset: position)
            }
            // erofs_xattr_long_prefix: base_index, then the infix.
            let item = try prefixTableBytes(holder, at: position + UInt64(lengthSize), count: length)
            position += UInt64(lengthSize + length)
            guard let base = EROFSFilesystem.xattrPrefixes[Int(item[0])] else {
                throw EROFSError(.corrupt, "long xattr prefix on unknown base index \(item[0])", offset: position)
            }
            prefixes.append(base + ByteString(item[1...]))
        }
        return prefixes
    }

    private func prefixTableBytes(_ holder: Inode?, at offset: UInt64, count: Int) throws(EROFSError) -> [UInt8] {
        guard let holder else { return try imageBytes(at: offset, count: count) }
        let bytes = try read(holder, at: offset, count: count)
        guard bytes.count == count else {
            throw EROFSError(.corrupt, "long xattr prefix table beyond its inode", nid: holder.nid, offset: offset)
        }
        return bytes
    }
}
