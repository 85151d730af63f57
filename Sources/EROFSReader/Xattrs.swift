import EROFSFormat
import SystemCalls

extension EROFSFilesystem {
    /// Short name prefixes by EROFS_XATTR_INDEX_* (0 is not a valid index).
    static let xattrPrefixes: [Int: ByteString] = Dictionary(
        uniqueKeysWithValues: XattrNameIndex.allCases.map { (Int($0.rawValue), ByteString($0.prefix)) })

    /// A shared xattr entry up to this size is read in one piece, value included.
    static let smallXattrEntry = 512

    /// Every extended attribute of the inode (inline and shared), name to value, in disk order.
    /// Names are bytes, like file names: the kernel does not require UTF-8 after the prefix.
    public func xattrs(_ inode: Inode) throws(EROFSError) -> [(name: ByteString, value: [UInt8])] {
        var result: [(name: ByteString, value: [UInt8])] = []
        try walkXattrs(inode, valueOf: { _ in true }, each: { name, value in result.append((name, value ?? [])) })
        return result
    }

    /// The names of the inode's extended attributes, in disk order; no value is read (an
    /// image can make every shared id name one 64 KiB entry).
    public func xattrNames(_ inode: Inode) throws(EROFSError) -> [ByteString] {
        var names: [ByteString] = []
        try walkXattrs(inode, valueOf: { _ in false }, each: { name, _ in names.append(name) })
        return names
    }

    /// The value of the inode's first extended attribute named `name`, or nil; only that value
    /// is read.
    public func xattr(_ inode: Inode, named name: [UInt8]) throws(EROFSError) -> [UInt8]? {
        var found: [UInt8]?
        try walkXattrs(
            inode, valueOf: { found == nil && $0.bytes == name },
            each: { _, value in if found == nil, let value { found = value } })
        return found
    }

    /// Calls `body` with each extended attribute's full name, and its value when `valueOf(name)`
    /// says so (nil otherwise: a shared entry's value is then not read).
    private func walkXattrs(
        _ inode: Inode, valueOf: (ByteString) -> Bool, each body: (ByteString, [UInt8]?) -> Void
    ) throws(EROFSError) {
        guard inode.xattrBodySize > 0 else { return }
        try withContext(nid: inode.nid) { () throws(EROFSError) in
            let bodyStart = inode.location + UInt64(inode.inodeSize)
            let area = try metadataBytes(at: bodyStart, count: inode.xattrBodySize, inMetabox: inode.inMetabox)
            let header = XattrBodyHeader(decoding: area)
            let sharedCount = Int(header.sharedCount)
            let idSize = XattrBodyHeader.sharedIDSize
            let sharedEnd = XattrBodyHeader.size + idSize * sharedCount
            guard sharedEnd <= area.count else {
                throw EROFSError(.corrupt, "\(sharedCount) shared xattrs do not fit the xattr area", offset: bodyStart)
            }
            for index in 0..<sharedCount {
                // Shared xattr ids count 4-byte units of the shared xattr area.
                let id = UInt64(area.le32(at: XattrBodyHeader.size + idSize * index))
                let inMetabox = superblock.featureCompat.contains(.sharedXattrsInMetabox)
                let base = UInt64(superblock.xattrBlockAddress) * UInt64(blockSize)
                let offset = try checkedSum(base, id * UInt64(idSize), "shared xattr address")
                let header = try metadataBytes(at: offset, count: XattrEntryHeader.size, inMetabox: inMetabox)
                let entryHeader = try entryHeader(header, at: offset)
                let nameEnd = XattrEntryHeader.size + Int(entryHeader.nameLength)
                // A small entry is read whole at once; a big value only when it is wanted.
                let small = entryHeader.entrySize <= Self.smallXattrEntry
                let named = try metadataBytes(
                    at: offset, count: small ? entryHeader.entrySize : nameEnd, inMetabox: inMetabox)
                let name = try xattrName(entryHeader, Array(named[XattrEntryHeader.size..<nameEnd]), at: offset)
                guard valueOf(name) else {
                    body(name, nil)
                    continue
                }
                let entry =
                    small ? named : try metadataBytes(at: offset, count: entryHeader.entrySize, inMetabox: inMetabox)
                body(name, Array(entry[nameEnd...]))
            }
            var position = sharedEnd
            while position < area.count {
                let offset = bodyStart + UInt64(position)
                let header = try entryHeader(area[position...], at: offset)
                guard header.entrySize <= area.count - position else {
                    throw EROFSError(
                        .corrupt, "xattr entry of \(header.entrySize) bytes overruns the xattr area", offset: offset)
                }
                let nameStart = position + XattrEntryHeader.size
                let nameEnd = nameStart + Int(header.nameLength)
                let name = try xattrName(header, Array(area[nameStart..<nameEnd]), at: offset)
                body(name, valueOf(name) ? Array(area[nameEnd..<(position + header.entrySize)]) : nil)
                position += header.alignedEntrySize
            }
        }
    }

    private func entryHeader(_ bytes: some Collection<UInt8>, at offset: UInt64) throws(EROFSError) -> XattrEntryHeader
    {
        do { return try XattrEntryHeader(decoding: bytes) } catch {
            throw EROFSError(.corrupt, error.message, offset: offset)
        }
    }

    /// The full name of an erofs_xattr_entry: its prefix (short, or from the long prefix
    /// table) and the rest of the name.
    private func xattrName(_ header: XattrEntryHeader, _ rest: [UInt8], at offset: UInt64) throws(EROFSError)
        -> ByteString
    {
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
            guard let known = EROFSFilesystem.xattrPrefixes[Int(header.nameIndex)] else {
                throw EROFSError(.corrupt, "unknown xattr name index \(header.nameIndex)", offset: offset)
            }
            prefix = known
        }
        return prefix + ByteString(rest)
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
