import EROFSFormat
import Manifest
import SystemCalls

extension EROFSFilesystem {
    /// Visits every path of the tree depth-first from the root, each directory's entries in disk
    /// order; "." and ".." are skipped. Detects directory cycles (a directory reached twice).
    public func walk(_ visit: (_ path: ByteString, _ inode: Inode) throws(EROFSError) -> Void) throws(EROFSError) {
        let root = try withContext(path: "/") { () throws(EROFSError) -> Inode in try inode(nid: rootNid) }
        guard root.kind == .directory else { throw EROFSError(.corrupt, "root inode is not a directory", path: "/", nid: rootNid) }
        var seenDirectories: Set<UInt64> = [root.nid]
        var pending: [(ByteString, Inode)] = [("/", root)]
        while let (path, current) = pending.popLast() {
            try visit(path, current)
            guard current.kind == .directory else { continue }
            let entries = try withContext(path: path.description) { () throws(EROFSError) -> [DirectoryEntry] in try readDirectory(current) }
            for entry in entries.reversed() {
                if entry.name == [0x2e] || entry.name == [0x2e, 0x2e] { continue }
                guard !entry.name.contains(0x2f) else {
                    throw EROFSError(.corrupt, "directory entry name contains '/'", path: path.description, nid: current.nid)
                }
                let childPath = path.appending(component: entry.nameBytes)
                let child = try withContext(path: childPath.description) { () throws(EROFSError) -> Inode in try inode(nid: entry.nid) }
                if child.kind == .directory {
                    guard seenDirectories.insert(child.nid).inserted else {
                        throw EROFSError(.corrupt, "directory cycle: directory reached twice", path: childPath.description, nid: child.nid)
                    }
                }
                pending.append((childPath, child))
            }
        }
    }

    /// Streams a regular file's data in chunks.
    public func forEachChunk(of inode: Inode, chunkSize: Int = 1 << 20, _ body: ([UInt8]) throws(EROFSError) -> Void) throws(EROFSError) {
        var offset: UInt64 = 0
        while offset < inode.size {
            let chunk = try read(inode, at: offset, count: chunkSize)
            guard !chunk.isEmpty else { throw EROFSError(.corrupt, "data ends before the inode size", nid: inode.nid, offset: offset) }
            try body(chunk)
            offset += UInt64(chunk.count)
        }
    }

    /// The manifest entry of one inode, as the kernel would show it at `path`.
    public func manifestEntry(path: ByteString, inode: Inode, sha256: Bool) throws(EROFSError) -> ManifestEntry {
        try withContext(path: path.description) { () throws(EROFSError) -> ManifestEntry in
            let kind: ManifestEntry.Kind
            switch inode.kind {
            case .file: kind = .file
            case .directory: kind = .dir
            case .symlink: kind = .symlink
            case .characterDevice: kind = .char
            case .blockDevice: kind = .block
            case .fifo: kind = .fifo
            case .socket: kind = .socket
            }
            var attributes: [ByteString: [UInt8]] = [:]
            for (name, value) in try xattrs(inode) { attributes[name] = value }
            let mtime = Int64(truncatingIfNeeded: inode.mtimeSeconds) &* 1_000_000_000 &+ Int64(inode.mtimeNanoseconds)
            var entry = ManifestEntry(
                path: path, kind: kind, permissions: inode.permissions, uid: inode.uid, gid: inode.gid,
                size: inode.size, mtimeNanoseconds: mtime, linkCount: UInt64(inode.linkCount), xattrs: attributes)
            switch inode.kind {
            case .characterDevice, .blockDevice: entry.rdev = (inode.deviceMajor, inode.deviceMinor)
            case .symlink: entry.target = ByteString(try readLink(inode))
            case .file:
                if sha256 {
                    var hasher = SHA256()
                    try forEachChunk(of: inode) { chunk in hasher.update(chunk) }
                    entry.sha256 = Hex.encode(hasher.finalize())
                } else if inode.size > 0 {
                    // Still decode everything so that corruption shows.
                    try forEachChunk(of: inode) { _ in }
                }
            default: break
            }
            return entry
        }
    }

    /// The whole tree in the corpus manifest form (sorted by path).
    public func manifest(sha256: Bool = true) throws(EROFSError) -> [ManifestEntry] {
        var entries: [ManifestEntry] = []
        try walk { (path, inode) throws(EROFSError) in
            entries.append(try manifestEntry(path: path, inode: inode, sha256: sha256))
        }
        return entries.sortedByPath()
    }
}
