import EROFSReader
import ExtractFuzzSupport
import ReaderFuzzSupport
import Foundation
import Testing
import TestSupport

/// The extract fuzzer's seeds (CraftedImage shapes, committed in Fuzz/seeds/extract) and
/// findings (Fuzz/findings/extract), through the fuzzer's own code on the normal build.
@Suite(.requiresRoot, .serialized) struct ExtractFuzzTests {
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The crafted seeds by file name: small enough for libFuzzer's 64 KiB inputs.
    static let seeds: [(String, CraftedImage)] = [
        ("sample", .sample()),
        ("dag-8", .directoryDAG(levels: 8)),
        ("chain-64", .deepChain(depth: 64)),
        ("sparse-1tib", .sparseFile(holes: 1 << 40, tail: Array("tail\n".utf8))),
        ("sparse-4k-chunks", .sparseFile(holes: 64 << 12, tail: Array(repeating: 0x41, count: 100), chunkBits: 0)),
    ]

    /// The committed seeds are what the writer makes now (EROFS_WRITE_SEEDS=1 rewrites them).
    @Test func committedSeedsAreTheWritersOutput() throws {
        let directory = Self.repository.appendingPathComponent("Fuzz/seeds/extract")
        for (name, image) in Self.seeds {
            let url = directory.appendingPathComponent(name + ".erofs")
            let bytes = image.bytes()
            #expect(bytes.count <= 65536, "\(name): \(bytes.count) bytes, more than the fuzzer's -max_len")
            if ProcessInfo.processInfo.environment["EROFS_WRITE_SEEDS"] == "1" { try Data(bytes).write(to: url) }
            #expect(Array(try Data(contentsOf: url)) == bytes, "\(name) differs from the writer's output")
        }
    }

    /// Each seed lists and extracts as the tool would: the DAG is refused at its second name,
    /// the others extract without error.
    @Test func seedsListAndExtract() throws {
        for (name, image) in Self.seeds {
            let outcome = ExtractExercise.run(image: image.bytes())
            if name.hasPrefix("dag") {
                #expect(
                    outcome.listingError?.message.contains("directory reached twice") == true,
                    "\(name): \(String(describing: outcome.listingError))")
                #expect(
                    outcome.extractionError?.contains("directory reached twice") == true,
                    "\(name): \(outcome.extractionError ?? "no error")")
            } else {
                #expect(outcome.listingError == nil, "\(name): \(String(describing: outcome.listingError))")
                #expect(outcome.extractionError == nil, "\(name): \(outcome.extractionError ?? "")")
                #expect(outcome.listedObjects > 1)
            }
        }
    }

    /// Every finding of the extract fuzzer replays without a crash or hang.
    @Test func findingsReplay() throws {
        let directory = Self.repository.appendingPathComponent("Fuzz/findings/extract").path
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in names.sorted() {
            var image = Array(try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name)))
            ReaderExercise.fixSuperblockChecksum(&image)
            ExtractExercise.run(image: image)
        }
    }
}
