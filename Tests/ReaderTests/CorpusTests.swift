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
