import EROFSReader
import ImageManifest
import Foundation
import Manifest
import Synchronization
import Testing
import TestSupport

/// The kernel is the oracle: the corpus manifests are what Linux shows for each image.
@Suite struct CorpusTests {
    static let images: [Corpus.Image] = (try? Corpus.locate()?.images()) ?? []

    /// The parametrized test below runs no case at all without the corpus: fail here instead.
    @Test func corpusIsPresent() {
        #expect(Self.images.count >= 12, "the corpus (../shared/corpus or $EROFS_CORPUS) is missing")
    }

    @Test(arguments: images)
    func manifestMatchesKernel(image: Corpus.Image) throws {
        try compare(image)
    }

    func compare(_ image: Corpus.Image) throws {
        let filesystem = try EROFSFilesystem(path: image.path)
        let ours = try filesystem.manifest(sha256: true).manifestText
        let expected = try image.expectedManifest()
        if ours != expected {
            let ourLines = ours.split(separator: "\n")
            let theirLines = expected.split(separator: "\n")
            let firstDifference = zip(ourLines, theirLines).first { $0 != $1 }
            Issue.record(
                "\(image.name): manifests differ (\(ourLines.count) vs \(theirLines.count) lines); first: ours \(firstDifference.map { String($0.0) } ?? "-") kernel \(firstDifference.map { String($0.1) } ?? "-")"
            )
        }
    }

    /// The names alone, and each value alone (what FUSE's LISTXATTR and GETXATTR read), agree
    /// with the whole list, for every inode of every corpus image with xattrs.
    @Test func xattrNamesAndSingleValuesAgreeWithTheWholeList() throws {
        var checked = 0
        for image in CorpusTests.images {
            let filesystem = try EROFSFilesystem(path: image.path)
            try filesystem.walk { _, inode throws(EROFSError) in
                let all = try filesystem.xattrs(inode)
                #expect(try filesystem.xattrNames(inode) == all.map(\.name), "\(image.name) nid \(inode.nid)")
                for (name, value) in all {
                    let first = all.first { $0.name == name }!.value
                    #expect(try filesystem.xattr(inode, named: name.bytes) == first)
                    #expect(first == value || all.filter { $0.name == name }.count > 1)
                    checked += 1
                }
                #expect(try filesystem.xattr(inode, named: Array("user.no-such-name".utf8)) == nil)
            }
        }
        #expect(checked > 100, "the corpus has xattrs to compare")
    }

    /// One filesystem object shared by several threads (as the FUSE backend will): every
    /// thread sees the same tree, with the caches churning underneath.
    @Test func concurrentReadersAgree() throws {
        let image = try #require(CorpusTests.images.first { $0.name == "ztailpacking-fragments-dedupe" })
        let filesystem = try EROFSFilesystem(path: image.path)
        let expected = try image.expectedManifest()
        let results = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            let text = (try? filesystem.manifest(sha256: true).manifestText) ?? "failed"
            results.withLock { $0.append(text) }
        }
        let texts = results.withLock { $0 }
        #expect(texts.count == 4)
        #expect(texts.allSatisfy { $0 == expected })
    }
}
