import EROFSFormat
import SystemCalls

extension EROFSFilesystem {
    /// Short name prefixes by EROFS_XATTR_INDEX_* (0 is not a valid index).
    static let xattrPrefixes: [Int: ByteString] = [
        1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default",
        4: "trusted.", 5: "lustre.", 6: "security.",
    ]

    /// Every extended attribute of the inode (inline and shared), name to value, in disk order.
    /// Names are bytes, like file names: the kernel does not require UTF-8 after the prefix.
    public func xattrs(_ inode: Inode) throws(EROFSError) -> [(name: ByteString, value: [UInt8])] {
        guard inode.xattrBodySize > 0 else { return [] }
        return try withContext(nid: inode.nid) { () throws(EROFSError) -> [(name: ByteString, value: [UInt8])] in
            let bodyStart = inode.location + UInt64(inode.inodeSize)
            let body = try metadataBytes(at: bodyStart, count: inode.xattrBodySize, inMetabox: inode.inMetabox)
            let sharedCount = Int(body[4])
            let sharedEnd = 12 + 4 * sharedCount
            guard sharedEnd <= body.count else {
                throw EROFSError(.corrupt, "\(sharedCount) shared xattrs do not fit the xattr area", offset: bodyStart)
            }
            var result: [(name: ByteString, value: [UInt8])] = []
            for index in 0..<sharedCount {
                let id = UInt64(body.le32(at: 12 + 4 * index))
                let inMetabox = superblock.featureCompat.contains(.sharedXattrsInMetabox)
                let base = UInt64(superblock.xattrBlockAddress) * UInt64(blockSize)
                let offset = try checkedSum(base, id * 4, "shared xattr address")
                let header = try metadataBytes(at: offset, count: 4, inMetabox: inMetabox)
                let length = 4 + Int(header[0]) + Int(header.le16(at: 2))
                let entry = try metadataBytes(at: offset, count: length, inMetabox: inMetabox)
                result.append(try decodeXattrEntry(entry, at: offset))
            }
            var position = sharedEnd
            while position < body.count {
                guard body.count - position >= 4 else {
                    throw EROFSError(.corrupt, "xattr entry header truncated", offset: bodyStart + UInt64(position))
                }
                let length = 4 + Int(body[position]) + Int(body.le16(at: position + 2))
                guard length <= body.count - position else {
                    throw EROFSError(.corrupt, "xattr entry of \(length) bytes overruns the xattr area", offset: bodyStart + UInt64(position))
                }
                result.append(try decodeXattrEntry(Array(body[position..<(position + length)]), at: bodyStart + UInt64(position)))
                position += (length + 3) & ~3
            }
            return result
        }
    }

    /// Decodes one erofs_xattr_entry (header, name, value) into a full name and its value.
    private func decodeXattrEntry(_ entry: [UInt8], at offset: UInt64) throws(EROFSError) -> (name: ByteString, value: [UInt8]) {
        let nameLength = Int(entry[0])
        let index = Int(entry[1])
        let prefix: ByteString
        if index & 0x80 != 0 {
            let table = longXattrPrefixes
            guard index & 0x7f < table.count else {
                throw EROFSError(.corrupt, "xattr long prefix \(index & 0x7f) beyond the table of \(table.count)", offset: offset)
            }
            prefix = table[index & 0x7f]
        } else {
            guard let known = EROFSFilesystem.xattrPrefixes[index] else {
                throw EROFSError(.corrupt, "unknown xattr name index \(index)", offset: offset)
            }
            prefix = known
        }
        let suffix = entry[4..<(4 + nameLength)]
        let name = prefix + ByteString(suffix)
        return (name, Array(entry[(4 + nameLength)...]))
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
        var position = UInt64(superblock.xattrPrefixStart) * 4
        var prefixes: [ByteString] = []
        for _ in 0..<count {
            position = (position + 3) & ~3
            let lengthBytes = try prefixTableBytes(holder, at: position, count: 2)
            let length = Int(lengthBytes.le16(at: 0))
            guard length >= 1, length <= 256 else {
                throw EROFSError(.corrupt, "long xattr prefix of \(length) bytes", offset: position)
            }
            let item = try prefixTableBytes(holder, at: position + 2, count: length)
            position += 2 + UInt64(length)
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
