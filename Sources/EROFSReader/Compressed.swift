import EROFSFormat

extension EROFSFilesystem {
    func readCompressed(_ inode: Inode, at offset: UInt64, count: Int) throws(EROFSError) -> [UInt8] {
        throw EROFSError(.unsupported, "compressed data is not supported yet", nid: inode.nid)
    }
}
