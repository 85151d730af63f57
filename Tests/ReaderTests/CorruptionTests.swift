import EROFSFormat
import EROFSReader
import ImageManifest
import Foundation
import ImageSources
import SystemCalls
import SystemPackage
import Testing
import TestSupport

/// An image held in memory, so tests can damage copies of it.
final class MemorySource: RandomAccessSource {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var size: UInt64 { UInt64(bytes.count) }
    var displayName: String { "memory" }
    var localFileDescriptor: FileDescriptor? { nil }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        guard offset < size else { return 0 }
        let count = min(buffer.count, bytes.count - Int(offset))
        bytes.withUnsafeBytes { source in
            buffer.baseAddress!.copyMemory(from: source.baseAddress! + Int(offset), byteCount: count)
        }
        return count
    }
}

/// Damaged images give an EROFSError, never a crash or a hang.
@Suite struct CorruptionTests {
    static func plainImage() throws -> [UInt8] {
        let corpus = try #require(Corpus.locate())
        return Array(try Data(contentsOf: URL(fileURLWithPath: corpus.directory + "/plain.erofs")))
    }

    /// Reads everything; returns whether the reader reported an error.
    static func readsWithError(_ bytes: [UInt8]) -> Bool {
        do {
            let filesystem = try EROFSFilesystem(source: MemorySource(bytes))
            _ = try filesystem.manifest(sha256: true)
            return false
        } catch {
            return true
        }
    }

    /// Reads all metadata (inodes, directories, xattrs, links) and small files only: fast
    /// enough in debug builds for hundreds of mutations.
    static func readsMetadataWithError(_ bytes: [UInt8], fileLimit: UInt64 = 8192) -> Bool {
        do {
            let filesystem = try EROFSFilesystem(source: MemorySource(bytes))
            try filesystem.walk { (path, inode) throws(EROFSError) in
                _ = try filesystem.xattrs(inode)
                if inode.kind == .symlink { _ = try filesystem.readLink(inode) }
                if inode.kind == .file && inode.size < fileLimit {
                    _ = try filesystem.read(inode, at: 0, count: Int(fileLimit))
                }
            }
            return false
        } catch {
            return true
        }
    }

    /// Rewrites the superblock checksum after a deliberate change in the first block.
    static func resealSuperblock(_ image: inout [UInt8]) {
        var covered = Array(image[1024..<4096])
        covered.replaceSubrange(4..<8, with: [0, 0, 0, 0])
        let crc = CRC32C.update(~0, covered)
        for byte in 0..<4 { image[1028 + byte] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(byte))) }
    }

    @Test func truncationsAreErrors() throws {
        let image = try Self.plainImage()
        // Inside the superblock, inside the inode area, in the middle of the data, one byte short.
        for length in [0, 1000, 1100, 4096, 4096 + 2000, image.count / 2, image.count - 1] {
            #expect(Self.readsWithError(Array(image.prefix(length))), "truncated to \(length) bytes")
        }
    }

    @Test func superblockBitFlipsAreCaughtByTheChecksum() throws {
        let image = try Self.plainImage()
        for bit in stride(from: 0, to: 128 * 8, by: 7) {
            var damaged = image
            damaged[1024 + bit / 8] ^= 1 << UInt8(bit % 8)
            #expect(Self.readsWithError(damaged), "bit \(bit) of the superblock")
        }
    }

    /// Deterministic random byte damage across the metadata area (inodes, dirents, xattrs):
    /// any outcome but a crash or a hang is acceptable; most must be reported.
    @Test func metadataMutationsNeverCrash() throws {
        let image = try Self.plainImage()
        let filesystem = try EROFSFilesystem(source: MemorySource(image))
        let metadataEnd = Int(filesystem.rootNid) * 32 + 4096 * 16
        var generator = SplitMix64(seed: 0xE0F5)
        var reported = 0
        let rounds = 200
        for _ in 0..<rounds {
            var damaged = image
            // Anywhere in the metadata (inodes, xattrs, directories); the checksum is resealed so
            // that damage to the first block reaches the inode and directory decoders.
            let position = 1024 + 128 + Int(generator.next() % UInt64(metadataEnd - 1024 - 128))
            damaged[position] = UInt8(truncatingIfNeeded: generator.next())
            Self.resealSuperblock(&damaged)
            if Self.readsMetadataWithError(damaged) { reported += 1 }
        }
        // The property is that we got here (no trap, no hang). Many single-byte changes are
        // legal (a time, an id, a name byte), so only some of them can be reported.
        #expect(reported > 0)
    }

    /// Damage anywhere in compressed images (indexes, pclusters, inline tails, fragments):
    /// every read ends, with data or with an error.
    @Test(arguments: ["lz4", "lzma", "ztailpacking-fragments-dedupe", "metadata-compressed"])
    func compressedImageMutationsNeverCrash(name: String) throws {
        let corpus = try #require(Corpus.locate())
        let image = Array(try Data(contentsOf: URL(fileURLWithPath: "\(corpus.directory)/\(name).erofs")))
        var generator = SplitMix64(seed: 0xC0FFEE)
        var reported = 0
        for _ in 0..<40 {
            var damaged = image
            for _ in 0..<4 {
                let position = 4096 + Int(generator.next() % UInt64(image.count - 4096))
                damaged[position] ^= UInt8(truncatingIfNeeded: generator.next() | 1)
            }
            if Self.readsMetadataWithError(damaged, fileLimit: 1 << 17) { reported += 1 }
        }
        #expect(reported > 0)
    }

    /// A file whose size field says 4 GiB (compact) or 2^64-1 (extended): an error, quickly.
    @Test(arguments: ["plain", "lz4"])
    func absurdFileSizeIsAnError(name: String) throws {
        let corpus = try #require(Corpus.locate())
        var image = Array(try Data(contentsOf: URL(fileURLWithPath: "\(corpus.directory)/\(name).erofs")))
        let filesystem = try EROFSFilesystem(source: MemorySource(image))
        let file = try filesystem.lookup(path: "/sizes/mixed-131089")
        let location = Int(file.location)
        let (offset, width) = file.isExtended ? (8, 8) : (8, 4)
        for byte in 0..<width { image[location + offset + byte] = 0xFF }
        if location < 4096 { Self.resealSuperblock(&image) }
        let damaged = try EROFSFilesystem(source: MemorySource(image))
        #expect(throws: EROFSError.self) { try damaged.manifest(sha256: true) }
    }

    @Test func directoryCycleIsReported() throws {
        var image = try Self.plainImage()
        let filesystem = try EROFSFilesystem(source: MemorySource(image))
        // Point the first subdirectory's ".." style entry at itself: rewrite the nid of the
        // root's first real child directory entry to the root nid.
        let root = try filesystem.inode(nid: filesystem.rootNid)
        let entries = try filesystem.readDirectory(root)
        let index = try #require(
            entries.firstIndex { $0.fileType == 2 && $0.name != [0x2e] && $0.name != [0x2e, 0x2e] })
        // The root directory is tail-packed or in one block: find its first block's bytes.
        let rootData = try filesystem.read(root, at: 0, count: 4096)
        let needle = Array(rootData[(index * 12)..<(index * 12 + 12)])
        let location = try #require(findSubsequence(needle, in: image))
        let rootNid = filesystem.rootNid
        for byte in 0..<8 { image[location + byte] = UInt8(truncatingIfNeeded: rootNid >> (8 * UInt64(byte))) }
        Self.resealSuperblock(&image)
        let damaged = try EROFSFilesystem(source: MemorySource(image))
        #expect(throws: EROFSError.self) { try damaged.manifest(sha256: false) }
    }

    func findSubsequence(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if Array(haystack[start..<(start + needle.count)]) == needle { return start }
        }
        return nil
    }
}

struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
