import EROFSReader
import ImageSources
import Synchronization
import SystemCalls
import SystemPackage
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

/// A source that records the read-ahead hints it is given.
final class HintRecordingSource: RandomAccessSource, @unchecked Sendable {
    let inner: MemorySource
    private let hints = Mutex<[UInt64]>([])
    init(_ bytes: [UInt8]) { inner = MemorySource(bytes) }
    var size: UInt64 { inner.size }
    var displayName: String { "hints" }
    var localFileDescriptor: FileDescriptor? { nil }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        try inner.read(into: buffer, at: offset)
    }
    func readAhead(at offset: UInt64, count: Int) { hints.withLock { $0.append(offset) } }
    func takeHints() -> [UInt64] {
        hints.withLock { hints in
            defer { hints = [] }
            return hints
        }
    }
}

/// A listing's inodes are asked for ahead in one go, so that the disk fetches them in parallel
/// (a READDIRPLUS of a tree's root reads inodes all over the image).
@Suite struct InodeReadAheadTests {
    @Test func theBlocksOfAListingsInodesAreHintedOnceUnlessCached() throws {
        let source = HintRecordingSource(try CorruptionTests.plainImage())
        let filesystem = try EROFSFilesystem(source: source)
        let root = try filesystem.inode(nid: filesystem.rootNid)
        let entries = try filesystem.readDirectory(root)
        _ = source.takeHints()
        filesystem.readAheadInodes(of: entries[...])
        let hints = source.takeHints()
        let blockSize = UInt64(filesystem.superblock.blockSize)
        let base = UInt64(filesystem.superblock.metaBlockAddress) * blockSize
        // Each hint is a whole block that holds (the start or the end of) a listed inode, given once.
        let expected = Set(
            entries.flatMap { entry in
                let location = base + entry.nid * 32
                return [location / blockSize * blockSize, (location + 63) / blockSize * blockSize]
            }
        ).filter { $0 < source.size }
        #expect(!hints.isEmpty)
        #expect(Set(hints).isSubset(of: expected), "hinted blocks no listed inode is in")
        #expect(hints.count == Set(hints).count, "a block hinted twice: \(hints)")
        // Decoded once, their blocks are cached: nothing more is asked of the disk.
        for entry in entries { _ = try filesystem.inode(nid: entry.nid) }
        filesystem.readAheadInodes(of: entries[...])
        #expect(source.takeHints().isEmpty)
    }
}
