import EROFSReader
import ImageManifest
import Foundation
import Manifest
import Testing
import TestSupport

/// The `erofs` tool's reading subcommands, run as a real binary against the corpus.
@Suite struct ToolTests {
    static let images = Corpus.imagesOrEmpty
    /// The in-process corpus test covers every image; the binary runs on one image per layout
    /// family to keep the suite fast in debug builds.
    static let sample = images.filter {
        ["plain", "chunked", "lz4", "lzma", "ztailpacking-fragments-dedupe", "metadata-compressed"].contains($0.name)
    }
    static var erofs: String { builtProductsDirectory() + "/erofs" }
    /// Every opt-in of `erofs extract`: the tree as the image has it, root's metadata included.
    static let faithfulExtract = ["--same-permissions", "--devices", "--xattrs", "--capabilities", "--root-metadata"]

    @Test func corpusIsPresent() {
        #expect(!Self.images.isEmpty, "no corpus found (../shared/corpus or $EROFS_CORPUS)")
    }

    @Test(arguments: sample)
    func listPrintsTheKernelManifest(image: Corpus.Image) throws {
        let result = try runProgram(Self.erofs, ["ls", "--recursive", "--json", "--sha256", image.path])
        #expect(result.status == 0, "\(result.standardError)")
        let expected = try image.expectedManifest()
        #expect(
            manifestDifference(actual: result.standardOutput, expected: expected) == nil,
            "\(manifestDifference(actual: result.standardOutput, expected: expected) ?? "")")
    }

    @Test(arguments: images)
    func verifyPasses(image: Corpus.Image) throws {
        let result = try runProgram(Self.erofs, ["verify", image.path])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("OK, 511 paths"))
    }

    /// Extraction with every opt-in reproduces every path: contents, modes, owners, nanosecond
    /// times, xattrs, links, devices. Directory sizes are the host filesystem's, so they are
    /// left out.
    @Test(.requiresRoot, arguments: sample)
    func extractReproducesTheTree(image: Corpus.Image) throws {
        let destination = try temporaryDirectory("extract-\(image.name)")
        defer { try? FileManager.default.removeItem(atPath: destination) }
        let result = try runProgram(
            Self.erofs, ["extract"] + Self.faithfulExtract + [image.path, destination + "/tree"])
        #expect(result.status == 0, "\(result.standardError)")
        var walked = try DirectoryWalker.manifest(ofTreeAt: destination + "/tree")
        let filesystem = try EROFSFilesystem(path: image.path)
        var expected = try filesystem.manifest(sha256: true)
        for index in walked.indices where walked[index].kind == .dir { walked[index].size = 0 }
        for index in expected.indices where expected[index].kind == .dir { expected[index].size = 0 }
        #expect(
            manifestDifference(actual: walked.manifestText, expected: expected.manifestText) == nil,
            "\(manifestDifference(actual: walked.manifestText, expected: expected.manifestText) ?? "")")
    }

    @Test func catPrintsAFile() throws {
        let image = try #require(Self.images.first { $0.name == "lz4" })
        let path =
            "/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9/level10/level11/level12/level13/level14/level15/level16/level17/level18/level19/level20/level21/level22/level23/bottom.txt"
        let filesystem = try EROFSFilesystem(path: image.path)
        let inode = try filesystem.lookup(path: path)
        let expected = try filesystem.read(inode, at: 0, count: Int(inode.size))
        let result = try runProgram(Self.erofs, ["cat", image.path, path])
        #expect(result.status == 0)
        #expect(!expected.isEmpty)
        #expect(Array(result.standardOutput.utf8) == expected)
    }

    @Test func inspectShowsSuperblockAndCompression() throws {
        let image = try #require(Self.images.first { $0.name == "lzma" })
        let result = try runProgram(Self.erofs, ["inspect", "--json", image.path])
        #expect(result.status == 0)
        #expect(result.standardOutput.contains("\"block_size\": 4096"))
        #expect(result.standardOutput.contains("\"inodes\": 509"))
        #expect(result.standardOutput.contains("\"compression\": \"lzma\""))
        #expect(result.standardOutput.contains("\"compr_cfgs/big_pcluster\""))
    }

    /// A directory entry renamed to "d/v" in the image: listing reports it, extraction skips it
    /// with a warning and exit status 2, and nothing appears outside the destination.
    @Test func extractSkipsNamesWithSlashes() throws {
        let image = try #require(Self.images.first { $0.name == "plain" })
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: image.path)))
        let needle = Array("devlevel0".utf8)  // "dev" followed by the next name in the root's block
        let start = try #require(findBytes(needle, in: bytes))
        bytes[start + 1] = UInt8(ascii: "/")
        CorruptionTests.resealSuperblock(&bytes)
        let scratch = try temporaryDirectory("unsafe")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try Data(bytes).write(to: URL(fileURLWithPath: scratch + "/damaged.erofs"))
        let listed = try runProgram(Self.erofs, ["ls", "--recursive", "--json", scratch + "/damaged.erofs"])
        #expect(listed.status == 1)
        #expect(listed.standardError.contains("contains '/'") || listed.standardError.contains("d/v"))
        let extracted = try runProgram(Self.erofs, ["extract", scratch + "/damaged.erofs", scratch + "/out"])
        #expect(extracted.status == 2)
        #expect(extracted.standardError.contains("skipped unsafe name"))
        let created = try FileManager.default.contentsOfDirectory(atPath: scratch).sorted()
        #expect(created == ["damaged.erofs", "out"])
        #expect(!FileManager.default.fileExists(atPath: scratch + "/out/d"))
        #expect(FileManager.default.fileExists(atPath: scratch + "/out/level0"))
    }

    @Test func missingPathIsAClearError() throws {
        let image = try #require(Self.images.first)
        let result = try runProgram(Self.erofs, ["cat", image.path, "/no/such/file"])
        #expect(result.status == 1)
        #expect(result.standardError.contains("no such file or directory (path /no)"))
    }
}

/// A fresh directory on a disk filesystem (/tmp here; file-backed mounts refuse tmpfs).
func temporaryDirectory(_ label: String) throws -> String {
    let path = NSTemporaryDirectory() + "reader-tests-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func findBytes(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
    guard needle.count <= haystack.count else { return nil }
    for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
        if haystack[start..<(start + needle.count)].elementsEqual(needle) { return start }
    }
    return nil
}
