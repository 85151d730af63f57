import EROFSReader
import Manifest
import SystemCalls

// The reader's view of an image in the corpus manifest form: the oracle's format lives in Manifest,
// the reader knows nothing of it; this adapter joins the two for the tool and the tests.
extension EROFSFilesystem {
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
                    // Still decode all the data so that corruption shows; holes hold none (a
                    // terabyte of them is a few chunk entries, not a terabyte of zeros).
                    try forEachRun(of: inode) { _, _ in }
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
