import EROFSFormat
import Foundation
import Testing
import TestSupport

@Suite struct SuperblockTests {
    static func superblockBytes(of image: String) throws -> [UInt8] {
        let data = try Data(contentsOf: URL(fileURLWithPath: image))
        return Array(data[Superblock.offset..<min(data.count, Superblock.offset + 65536)])
    }

    @Test(arguments: Corpus.imagesOrEmpty)
    func decodesEveryCorpusImage(image: Corpus.Image) throws {
        let bytes = try Self.superblockBytes(of: image.path)
        let superblock = try Superblock(decoding: bytes)
        try superblock.verifyChecksum(firstBlockFromSuperblock: bytes)
        let expectedBlockSize = image.name.hasPrefix("blocksize512") ? 512 : 4096
        #expect(superblock.blockSize == expectedBlockSize)
        let fileSize = try FileManager.default.attributesOfItem(atPath: image.path)[.size] as! UInt64
        #expect(superblock.blocks * UInt64(superblock.blockSize) <= fileSize)
        #expect(superblock.inodeCount > 100)
        if image.name == "metadata-compressed" { #expect(superblock.featureIncompat.contains(.metabox)) }
        if image.name == "chunked" { #expect(superblock.featureIncompat.contains(.chunkedFile)) }
    }

    @Test func corpusIsPresent() throws {
        let corpus = try #require(Corpus.locate(), "the corpus (../shared/corpus or $EROFS_CORPUS) is missing")
        #expect(try corpus.images().count >= 12)
    }

    @Test func badMagicNamesTheValueAndOffset() {
        var bytes = [UInt8](repeating: 0, count: 128)
        bytes[0] = 0x7f; bytes[1] = 0x45
        #expect(throws: FormatError("not an EROFS image: bad magic 0x457F at offset 1024")) {
            try Superblock(decoding: bytes)
        }
    }

    @Test func tooShort() {
        #expect(throws: FormatError.self) { try Superblock(decoding: [UInt8](repeating: 0, count: 40)) }
    }

    @Test func unknownIncompatibleFeatureIsRefused() throws {
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "plain" })
        var bytes = try Self.superblockBytes(of: image.path)
        bytes[80 + 1] |= 0x02  // bit 9: 0x200, unknown to erofs-utils 1.9.3
        #expect(throws: FormatError("unsupported EROFS image: unknown incompatible feature bits 0x200")) {
            try Superblock(decoding: bytes)
        }
    }

    @Test func blockSizeOutOfRange() throws {
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "plain" })
        var bytes = try Self.superblockBytes(of: image.path)
        bytes[12] = 30
        #expect(throws: FormatError.self) { try Superblock(decoding: bytes) }
    }

    @Test func checksumMismatchIsDetected() throws {
        // mkfs.erofs sets sb_csum by default; a flipped byte in the superblock's block must fail it.
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "lz4" })
        var bytes = try Self.superblockBytes(of: image.path)
        let superblock = try Superblock(decoding: bytes)
        try #require(superblock.featureCompat.contains(.superblockChecksum))
        bytes[64] ^= 0x01  // volume name
        let flipped = try Superblock(decoding: bytes)
        #expect(throws: FormatError.self) { try flipped.verifyChecksum(firstBlockFromSuperblock: bytes) }
    }

    @Test func crc32cKnownAnswer() {
        // The standard check value of CRC-32C is 0xE3069283 (with the final inversion EROFS omits).
        #expect(~CRC32C.update(~0, Array("123456789".utf8)) == 0xE306_9283)
    }
}
