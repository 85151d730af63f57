import EROFSFormat
import EROFSReader
import Foundation
import Manifest
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
}
