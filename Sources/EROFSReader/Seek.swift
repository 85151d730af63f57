/// SEEK_DATA and SEEK_HOLE over an inode's data map, as the kernel's erofs_file_llseek answers
/// them for uncompressed layouts (holes: flat files without blocks, chunk-based null chunks).
extension EROFSFilesystem {
    public enum SeekTarget: Sendable { case data, hole }

    /// The first offset at or after `offset` that is data (or a hole); nil when there is no data
    /// from `offset` on (ENXIO). The end of the file counts as a hole. Compressed files are
    /// reported as all data, which is always a valid answer.
    public func seek(_ inode: Inode, from offset: UInt64, to target: SeekTarget) throws(EROFSError) -> UInt64? {
        guard offset < inode.size else { return nil }
        if inode.layout.isCompressed { return target == .data ? offset : inode.size }
        var position = offset
        // A hostile chunk table can describe 2^40 tiny chunks: past this many extents, call the
        // rest data (never wrong for SEEK_DATA; SEEK_HOLE then says the end of the file).
        var budget = 1 << 16
        while position < inode.size && budget > 0 {
            let extent = try withContext(nid: inode.nid) { () throws(EROFSError) -> DataExtent in
                try mapUncompressed(inode, at: position)
            }
            guard extent.logicalStart <= position, position - extent.logicalStart < extent.length else {
                throw EROFSError(.corrupt, "data map does not cover offset \(position)", nid: inode.nid)
            }
            let isHole = if case .hole = extent.location { true } else { false }
            if isHole == (target == .hole) { return position }
            position = extent.logicalStart + extent.length
            budget -= 1
        }
        if target == .hole { return inode.size }
        return position < inode.size ? position : nil
    }
}
