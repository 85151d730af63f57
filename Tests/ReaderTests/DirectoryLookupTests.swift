import EROFSReader
import Testing
import TestSupport

/// Lookup bisects over directory blocks, readdir resumes from one block: both must agree with
/// the full, in-order decode of every directory of every corpus image.
@Suite struct DirectoryLookupTests {
    @Test func corpusIsPresent() {
        #expect(CorpusTests.images.count >= 12, "the corpus (../shared/corpus or $EROFS_CORPUS) is missing")
    }

    @Test(arguments: CorpusTests.images)
    func everyNameIsFoundAndNoOtherIs(image: Corpus.Image) throws {
        let filesystem = try EROFSFilesystem(path: image.path)
        var directories = 0
        var multiBlock = 0
        try filesystem.walk { (_, inode) throws(EROFSError) in
            guard inode.kind == .directory else { return }
            directories += 1
            let entries = try filesystem.readDirectory(inode)
            let blocks = try filesystem.directoryBlockCount(inode)
            if blocks > 1 { multiBlock += 1 }
            var joined: [DirectoryEntry] = []
            for index in 0..<blocks { joined += try filesystem.directoryBlock(inode, index: index) }
            #expect(joined == entries)
            #expect(try filesystem.directoryBlock(inode, index: blocks).isEmpty)
            for entry in entries {
                #expect(try filesystem.lookup(entry.name, in: inode) == entry.nid, "\(entry.nameString)")
                // Just after it in byte order, and just before the first: absent.
                #expect(try filesystem.lookup(entry.name + [0], in: inode) == nil)
            }
            #expect(try filesystem.lookup([0x01], in: inode) == nil)
            #expect(try filesystem.lookup([0xff, 0xff], in: inode) == nil)
        }
        #expect(directories > 5)
        // The "wide" directory spans blocks in every image: the bisection over blocks ran.
        #expect(multiBlock >= 1)
    }
}
