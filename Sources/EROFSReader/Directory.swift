import EROFSFormat
import SystemCalls

/// One name in a directory.
public struct DirectoryEntry: Sendable, Equatable {
    public var name: [UInt8]
    /// The target inode (bit 63: in the metabox).
    public var nid: UInt64
    /// EROFS_FT_* hint from the dirent (1 file, 2 dir, 3 chr, 4 blk, 5 fifo, 6 sock, 7 symlink).
    public var fileType: UInt8

    public var nameString: String { String(decoding: name, as: UTF8.self) }
    /// The name as bytes, as a path component.
    public var nameBytes: ByteString { ByteString(name) }

    /// The entry named `name` in `entries` sorted by name bytes, or nil.
    static func bisect(_ entries: [DirectoryEntry], for name: [UInt8]) -> DirectoryEntry? {
        var low = 0
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if entries[middle].name == name { return entries[middle] }
            if entries[middle].name.lexicographicallyPrecedes(name) { low = middle + 1 } else { high = middle }
        }
        return nil
    }
}

extension EROFSFilesystem {

    /// Every entry of a directory in on-disk (sorted) order, "." and ".." included when present.
    /// Read and decoded one block at a time, so that a damaged directory fails at its first bad
    /// block instead of after reading (perhaps 1 GiB of holes) to its end.
    public func readDirectory(_ directory: Inode) throws(EROFSError) -> [DirectoryEntry] {
        try checkDirectory(directory)
        var entries: [DirectoryEntry] = []
        var previousName: [UInt8]?
        var blockStart: UInt64 = 0
        while blockStart < directory.size {
            let expected = Int(min(UInt64(blockSize), directory.size - blockStart))
            let block = try read(directory, at: blockStart, count: expected)
            guard block.count == expected else {
                throw EROFSError(
                    .corrupt, "directory data shorter than the inode size", nid: directory.nid, offset: blockStart)
            }
            try decodeDirectoryBlock(
                block, into: &entries, previousName: &previousName, nid: directory.nid, at: blockStart)
            blockStart += UInt64(expected)
        }
        return entries
    }

    /// Decodes one directory block. Names are sorted across the whole directory (lookups
    /// bisect over blocks), so `previousName` carries the last name from block to block.
    private func decodeDirectoryBlock(
        _ block: [UInt8], into entries: inout [DirectoryEntry], previousName: inout [UInt8]?, nid: UInt64,
        at logical: UInt64
    ) throws(EROFSError) {
        guard block.count >= Dirent.size else {
            throw EROFSError(.corrupt, "directory block too short (\(block.count) bytes)", nid: nid, offset: logical)
        }
        // The first entry's name starts right after the last entry: it gives the entry count.
        let firstNameOffset = Int(Dirent(decoding: block, at: 0).nameOffset)
        guard firstNameOffset >= Dirent.size, firstNameOffset % Dirent.size == 0, firstNameOffset < block.count else {
            throw EROFSError(
                .corrupt, "bad first name offset \(firstNameOffset) in directory block", nid: nid, offset: logical)
        }
        let count = firstNameOffset / Dirent.size
        for index in 0..<count {
            let base = index * Dirent.size
            let dirent = Dirent(decoding: block, at: base)
            let nameStart = Int(dirent.nameOffset)
            var nameEnd =
                index + 1 < count ? Int(Dirent(decoding: block, at: base + Dirent.size).nameOffset) : block.count
            guard nameStart >= firstNameOffset, nameStart <= nameEnd, nameEnd <= block.count else {
                throw EROFSError(
                    .corrupt, "bad name offsets \(nameStart)..<\(nameEnd) in directory block", nid: nid,
                    offset: logical + UInt64(base))
            }
            if index + 1 == count, let zero = block[nameStart..<nameEnd].firstIndex(of: 0) { nameEnd = zero }
            let name = Array(block[nameStart..<nameEnd])
            guard !name.isEmpty, name.count <= Dirent.maximumNameLength else {
                throw EROFSError(
                    .corrupt, "directory entry name of \(name.count) bytes", nid: nid,
                    offset: logical + UInt64(nameStart))
            }
            if let previousName, !previousName.lexicographicallyPrecedes(name) {
                throw EROFSError(
                    .corrupt, "directory entries out of order", nid: nid, offset: logical + UInt64(nameStart))
            }
            previousName = name
            entries.append(DirectoryEntry(name: name, nid: dirent.nid, fileType: dirent.fileType))
        }
    }

    /// A directory inode whose size the reader will walk: anything else is refused first.
    func checkDirectory(_ directory: Inode) throws(EROFSError) {
        guard directory.kind == .directory else {
            throw EROFSError(.notDirectory, "not a directory", nid: directory.nid)
        }
        guard directory.size <= ReaderLimits.directory else {
            throw EROFSError(
                .corrupt, "absurd directory size \(directory.size) (limit \(ReaderLimits.directory))",
                nid: directory.nid)
        }
    }

    /// How many blocks a directory's entries take (each block holds whole entries).
    public func directoryBlockCount(_ directory: Inode) throws(EROFSError) -> UInt64 {
        try checkDirectory(directory)
        return dividingRoundingUp(directory.size, UInt64(blockSize))
    }

    /// The entries of block `index` of a directory, in their on-disk (sorted) order: what a
    /// lookup bisects over and a readdir resumes from, without decoding the blocks before it.
    public func directoryBlock(_ directory: Inode, index: UInt64) throws(EROFSError) -> [DirectoryEntry] {
        let count = try directoryBlockCount(directory)
        guard index < count else { return [] }
        let blockStart = index * UInt64(blockSize)
        let expected = Int(min(UInt64(blockSize), directory.size - blockStart))
        let block = try read(directory, at: blockStart, count: expected)
        guard block.count == expected else {
            throw EROFSError(
                .corrupt, "directory data shorter than the inode size", nid: directory.nid, offset: blockStart)
        }
        var entries: [DirectoryEntry] = []
        var previousName: [UInt8]?
        try decodeDirectoryBlock(block, into: &entries, previousName: &previousName, nid: directory.nid, at: blockStart)
        return entries
    }

    /// The nid named `name` in `directory`, or nil. Names are sorted across the directory, so
    /// this bisects over its blocks (by each block's first and last name), then within the one
    /// block that may hold the name: O(log n) blocks read, as the kernel's erofs_namei does.
    public func lookup(_ name: [UInt8], in directory: Inode) throws(EROFSError) -> UInt64? {
        var low: UInt64 = 0
        var high = try directoryBlockCount(directory)
        while low < high {
            let middle = low + (high - low) / 2
            let entries = try directoryBlock(directory, index: middle)
            guard let first = entries.first, let last = entries.last else { return nil }
            if name.lexicographicallyPrecedes(first.name) {
                high = middle
            } else if last.name.lexicographicallyPrecedes(name) {
                low = middle + 1
            } else {
                return DirectoryEntry.bisect(entries, for: name)?.nid
            }
        }
        return nil
    }

    /// The inode at an absolute path ("/" is the root). Symlinks are not followed.
    public func lookup(path: String) throws(EROFSError) -> Inode {
        try lookup(path: ByteString(path))
    }

    /// The inode at an absolute path given as bytes, which need not be UTF-8.
    public func lookup(path: ByteString) throws(EROFSError) -> Inode {
        var current = try withContext(path: "/") { () throws(EROFSError) -> Inode in try inode(nid: rootNid) }
        var walkedBytes: ByteString = "/"
        for component in path.bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            walkedBytes = walkedBytes.appending(component: ByteString(component))
            let walked = walkedBytes.description
            guard current.kind == .directory else {
                throw EROFSError(.notDirectory, "not a directory", path: walked)
            }
            let here = current
            let walkedSoFar = walked
            guard
                let nid = try withContext(
                    path: walkedSoFar,
                    { () throws(EROFSError) -> UInt64? in
                        try lookup(Array(component), in: here)
                    })
            else {
                throw EROFSError(.notFound, "no such file or directory", path: walked)
            }
            current = try withContext(path: walkedSoFar) { () throws(EROFSError) -> Inode in try inode(nid: nid) }
        }
        return current
    }

    /// The target of a symbolic link.
    public func readLink(_ inode: Inode) throws(EROFSError) -> [UInt8] {
        guard inode.kind == .symlink else { throw EROFSError(.notSymlink, "not a symbolic link", nid: inode.nid) }
        return try readAll(inode, limit: 4096)
    }
}

enum ReaderLimits {
    static let directory: UInt64 = 1 << 30
}
