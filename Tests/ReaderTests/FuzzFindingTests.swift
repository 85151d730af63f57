import EROFSFormat
import EROFSReader
import ImageManifest
import Foundation
import Manifest
import ReaderFuzzSupport
import Testing
import TestSupport

/// The reader fuzzer's seeds and findings (Fuzz/README.md), replayed on the normal build.
@Suite struct FuzzFindingTests {
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let seedDirectory = repository.appendingPathComponent("Fuzz/seeds/reader")

    static var seedNames: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: seedDirectory.path)) ?? []
        return names.filter { $0.hasSuffix(".erofs") }.sorted()
    }

    static func bytes(ofSeed name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: seedDirectory.appendingPathComponent(name)))
    }

    static var findingNames: [String] {
        let directory = repository.appendingPathComponent("Fuzz/findings/reader").path
        return ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    /// A reproducer in Fuzz/findings/reader/.
    static func bytes(ofFinding name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: repository.appendingPathComponent("Fuzz/findings/reader/\(name)")))
    }

    /// The manifest; `directorySizes: false` zeroes directory sizes (images without "." entries
    /// have smaller directories).
    static func manifestText(_ bytes: [UInt8], directorySizes: Bool = true) throws -> String {
        let filesystem = try EROFSFilesystem(source: MemorySource(bytes))
        var entries = try filesystem.manifest(sha256: true)
        if !directorySizes {
            for index in entries.indices where entries[index].kind == .dir { entries[index].size = 0 }
        }
        return entries.manifestText
    }

    /// `image` with `bytes` written at `offset` and the superblock checksum made to match, as
    /// the fuzzer does with each input.
    static func patched(_ image: [UInt8], at offset: Int, _ bytes: [UInt8]) throws -> [UInt8] {
        var image = image
        image.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
        let head = Array(image[Superblock.offset...].prefix(4096))
        let checksum = try Superblock(decoding: head).computedChecksum(firstBlockFromSuperblock: head)
        for index in 0..<4 {
            image[Superblock.offset + 4 + index] = UInt8(truncatingIfNeeded: checksum >> (8 * UInt32(index)))
        }
        return image
    }

    static func readError(_ image: [UInt8]) -> EROFSError? {
        do {
            _ = try EROFSFilesystem(source: MemorySource(image)).manifest(sha256: true)
            return nil
        } catch {
            return error
        }
    }

    /// Every seed (mkfs.erofs 1.9.3, one per on-disk feature) holds the same tree with the same
    /// times and owners, so each must read exactly as the plain image does.
    @Test(arguments: seedNames)
    func seedReadsLikeThePlainImage(name: String) throws {
        let directorySizes = name != "dot-omitted.erofs"
        let expected = try Self.manifestText(try Self.bytes(ofSeed: "plain.erofs"), directorySizes: directorySizes)
        #expect(expected.split(separator: "\n").count == 12)
        let actual = try Self.manifestText(try Self.bytes(ofSeed: name), directorySizes: directorySizes)
        #expect(manifestDifference(actual: actual, expected: expected) == nil, "\(name)")
    }

    @Test func seedsArePresent() {
        #expect(Self.seedNames.count >= 20)
    }

    /// Finding 1: with the 48BIT feature, bytes 14-15 of the superblock are the root nid (not the
    /// block count's high bits) while the 8-byte root nid is 0, as mkfs.erofs 1.9.3 writes small
    /// images (-E48bit, -Edot-omitted). They were read as 36 << 32 blocks: "image truncated".
    @Test func superblockWith48BitFeatureAndShortRootNid() throws {
        let image = try Self.bytes(ofSeed: "extents-48bit.erofs")
        let head = Array(image[Superblock.offset...])
        let superblock = try Superblock(decoding: head)
        #expect(superblock.featureIncompat.contains(.bits48))
        #expect(head.le64(at: 112) == 0)
        #expect(superblock.rootNid == UInt64(head.le16(at: 14)))
        #expect(superblock.blocks == UInt64(image.count / superblock.blockSize))

        // With the 8-byte root nid set, bytes 14-15 are the high bits of the block count.
        var wide = head
        wide.replaceSubrange(112..<120, with: [0x24, 0, 0, 0, 0, 0, 0, 0])
        wide.replaceSubrange(14..<16, with: [0x01, 0x00])
        let decoded = try Superblock(decoding: wide)
        #expect(decoded.rootNid == 0x24)
        #expect(decoded.blocks == superblock.blocks | 1 << 32)
    }

    /// Finding 2: a metabox nid with the metabox bit (63) set made reading the metabox inode
    /// read the metabox: unbounded recursion, a stack overflow.
    @Test func metaboxInodeInsideTheMetabox() throws {
        let image = try Self.bytes(ofSeed: "metabox.erofs")
        #expect(Self.readError(image) == nil)
        let nid = Array(image[(Superblock.offset + 128)...]).le64(at: 0) | 1 << 63
        let damaged = try Self.patched(
            image, at: Superblock.offset + 128, (0..<8).map { UInt8(truncatingIfNeeded: nid >> (8 * $0)) })
        let error = try #require(Self.readError(damaged))
        #expect(error.kind == .corrupt)
        #expect(error.message.contains("metabox inode is inside the metabox"))
    }

    /// Finding 3: a compressed file mapped by extent records whose one record is a hole (no
    /// physical length) from 0 to the inode size, 2^63 + 4096: the hole was decoded as a whole
    /// extent, `Int(length)` trapped (and shorter holes allocated their whole length per read).
    /// Made from an `-E48bit -Eforce-inode-extended` image of one 3000-byte file.
    @Test func holeExtentOfTwoToTheSixtyThreeBytes() throws {
        let filesystem = try EROFSFilesystem(source: MemorySource(try Self.bytes(ofFinding: "hole-extent-2p63.erofs")))
        let file = try filesystem.lookup(path: "/repetitive")
        #expect(file.size == UInt64(1) << 63 + 4096)
        #expect(try filesystem.read(file, at: 0, count: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try filesystem.read(file, at: file.size - 3, count: 100) == [0, 0, 0])
    }

    /// Finding 4: a directory inode turned into a flat file of 1 GiB - 1 with no blocks (a hole)
    /// was read whole before its first block was decoded: 1 GiB of zeros, 4 minutes in a debug
    /// build. Directories are now decoded block by block and fail at the first.
    @Test func directoryOfOneGibibyteOfHoles() throws {
        let image = try Self.bytes(ofSeed: "plain.erofs")
        let filesystem = try EROFSFilesystem(source: MemorySource(image))
        let empty = try filesystem.lookup(path: "/empty")
        #expect(empty.kind == .directory && !empty.isExtended)
        let location = Int(empty.location)
        let format = image.le16(at: location) & ~0xE  // layout 0: flat, blocks only
        var damaged = try Self.patched(image, at: location, [UInt8(format & 0xFF), UInt8(format >> 8)])
        damaged = try Self.patched(damaged, at: location + 8, [0xFF, 0xFF, 0xFF, 0x3F])  // i_size
        damaged = try Self.patched(damaged, at: location + 16, [0xFF, 0xFF, 0xFF, 0xFF])  // no block
        let started = ContinuousClock.now
        let error = try #require(Self.readError(damaged))
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(error.message.contains("bad first name offset") && error.path == "/empty")
    }

    /// Directory names are sorted across blocks too (lookups bisect over blocks): a directory
    /// whose second block repeats the first is corrupt, not a second copy of each name.
    @Test func directoryBlocksOutOfOrder() throws {
        var image = try Self.bytes(ofSeed: "plain.erofs")
        let filesystem = try EROFSFilesystem(source: MemorySource(image))
        let root = try filesystem.inode(nid: filesystem.rootNid)
        #expect(!root.isExtended)
        let blockSize = filesystem.superblock.blockSize
        var block = try filesystem.read(root, at: 0, count: blockSize)
        block += [UInt8](repeating: 0, count: blockSize - block.count)
        // Two copies of the root's one block at the end of the image, and the root made a flat
        // directory of those two blocks.
        let firstBlock = UInt32(image.count / blockSize)
        image += block + block
        let location = Int(root.location)
        let format = image.le16(at: location) & ~0xE
        let blocks = firstBlock + 2
        image = try Self.patched(
            image, at: Superblock.offset + 36, (0..<4).map { UInt8(truncatingIfNeeded: blocks >> (8 * $0)) })
        image = try Self.patched(image, at: location, [UInt8(format & 0xFF), UInt8(format >> 8)])
        image = try Self.patched(
            image, at: location + 8, (0..<4).map { UInt8(truncatingIfNeeded: UInt32(2 * blockSize) >> (8 * $0)) })
        image = try Self.patched(
            image, at: location + 16, (0..<4).map { UInt8(truncatingIfNeeded: firstBlock >> (8 * $0)) })
        let damaged = try EROFSFilesystem(source: MemorySource(image))
        let error = #expect(throws: EROFSError.self) {
            try damaged.readDirectory(try damaged.inode(nid: damaged.rootNid))
        }
        #expect(error?.message == "directory entries out of order")
        #expect(error?.offset.map { $0 >= UInt64(blockSize) } == true)
    }

    /// The replay below runs no case when the findings are not found (a moved directory).
    @Test func findingsArePresent() {
        #expect(Self.findingNames.count >= 3, "no reproducers in Fuzz/findings/reader")
    }

    /// Every reproducer goes through exactly what the fuzzer does with an input; each once
    /// trapped, recursed without end or took minutes.
    @Test(arguments: findingNames)
    func findingReplaysWithoutCrashOrHang(name: String) throws {
        var image = try Self.bytes(ofFinding: name)
        ReaderExercise.fixSuperblockChecksum(&image)
        let started = ContinuousClock.now
        ReaderExercise.run(image: image)
        #expect(ContinuousClock.now - started < .seconds(10))
    }

    /// Finding 5 (libFuzzer, ~7 minutes): a compacted index pack whose items after an lcluster
    /// are all NONHEAD, the last with lo 0: the lookahead distance was computed as
    /// `distance += lo &- 1`, an overflow trap. The kernel's unsigned arithmetic gives
    /// `distance + lo - 1`.
    @Test func compactedLookaheadWithLastLoZero() throws {
        let image = try Self.bytes(ofFinding: "compact-lookahead-lo-zero.erofs")
        let outcome = ReaderExercise.run(image: image)
        #expect(outcome.inodesVisited == 12)
    }

    /// Finding 2, second form: the metabox inode's data made a whole-file fragment, and the packed
    /// inode put inside the metabox: metabox -> fragment -> packed inode -> metabox, a stack
    /// overflow. Made from the metabox seed.
    @Test func metaboxDataAsAFragmentOfAPackedInodeInTheMetabox() throws {
        let image = try Self.bytes(ofFinding: "metabox-fragment-of-packed-in-metabox.erofs")
        let error = try #require(Self.readError(image))
        #expect(error.message.contains("fragment of the packed inode inside the metabox"))
    }
}
