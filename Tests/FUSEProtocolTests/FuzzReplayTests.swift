import EROFSReader
import FUSEFuzzSupport
import FUSEProtocol
import Foundation
import Testing
import TestSupport

/// The FUSE fuzzer's seeds and findings (Fuzz/seeds/fuse, Fuzz/findings/fuse) replayed on the
/// normal build through the fuzzer's own code: decoded, then answered on the reader's seed
/// images, every answer checked as the kernel checks it.
@Suite struct FuzzReplayTests {
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func files(in folder: String) -> [URL] {
        let directory = repository.appendingPathComponent(folder)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.sorted().map { directory.appendingPathComponent($0) }
    }

    static var inputs: [URL] { files(in: "Fuzz/seeds/fuse") + files(in: "Fuzz/findings/fuse") }
    static var images: [URL] { files(in: "Fuzz/seeds/reader").filter { $0.pathExtension == "erofs" } }

    @Test func seedsArePresent() {
        #expect(FuzzReplayTests.inputs.count >= 6)
        #expect(FuzzReplayTests.images.count >= 5)
    }

    @Test func seedsAndFindingsDecodeAndAreAnsweredWithinTheRules() throws {
        var answered = 0
        for image in FuzzReplayTests.images {
            let operations = FUSEExercise.operations(for: try EROFSFilesystem(path: image.path))
            for input in FuzzReplayTests.inputs {
                let bytes = Array(try Data(contentsOf: input))
                #expect(throws: Never.self, "\(input.lastPathComponent) on \(image.lastPathComponent)") {
                    answered += try FUSEExercise.run(bytes, operations: operations).answered
                }
            }
        }
        #expect(answered > 500)
    }

    /// Mutations of the seeds through decoding and answering, deterministic (the fuzzer's
    /// check on every build, not only where libFuzzer runs).
    @Test func mutatedSeedsAreAnsweredWithinTheRules() throws {
        let image = try #require(FuzzReplayTests.images.first { $0.lastPathComponent == "compact.erofs" })
        let operations = FUSEExercise.operations(for: try EROFSFilesystem(path: image.path))
        let seeds = try FuzzReplayTests.files(in: "Fuzz/seeds/fuse").map { Array(try Data(contentsOf: $0)) }
        var generator = SplitMix64(seed: 0xF05E_2)
        var counts = FUSEExercise.Counts()
        for iteration in 0..<3000 {
            var input = seeds[iteration % seeds.count]
            for _ in 0..<(1 + Int(generator.next() % 8)) {
                let index = Int(generator.next() % UInt64(input.count))
                input[index] = UInt8(truncatingIfNeeded: generator.next())
            }
            do {
                let run = try FUSEExercise.run(input, operations: operations)
                counts.decoded += run.decoded
                counts.refused += run.refused
                counts.answered += run.answered
            } catch {
                Issue.record("iteration \(iteration): \(error)")
            }
        }
        #expect(counts.answered > 1000 && counts.refused > 100)
    }
}
