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
    static var inputs: [URL] { FuzzInputs.files(in: "Fuzz/seeds/fuse") + FuzzInputs.files(in: "Fuzz/findings/fuse") }
    static var images: [URL] { FuzzInputs.files(in: "Fuzz/seeds/reader").filter { $0.pathExtension == "erofs" } }

    @Test func seedsArePresent() {
        #expect(FuzzReplayTests.inputs.count >= 6)
        #expect(FuzzReplayTests.images.count >= 5)
    }

    @Test func seedsAndFindingsDecodeAndAreAnsweredWithinTheRules() throws {
        var answered = 0
        var pushed = 0
        for image in FuzzReplayTests.images {
            let operations = FUSEExercise.operations(for: try EROFSFilesystem(path: image.path))
            for input in FuzzReplayTests.inputs {
                let bytes = Array(try Data(contentsOf: input))
                #expect(throws: Never.self, "\(input.lastPathComponent) on \(image.lastPathComponent)") {
                    let counts = try FUSEExercise.run(bytes, operations: operations)
                    answered += counts.answered
                    pushed += counts.pushed
                }
            }
        }
        #expect(answered > 500)
        _ = pushed
    }

    /// The pushes after a read (SiblingPrefetch's NOTIFY_STOREs) pass the fuzzer's checks on every
    /// seed image: READDIRPLUS of the root, then a read from the start of each node it listed.
    @Test func pushesAfterReadsAreWellFormed() throws {
        var pushed = 0
        for image in FuzzReplayTests.images {
            let operations = FUSEExercise.operations(for: try EROFSFilesystem(path: image.path))
            let listing = operations.respond(
                to: try FUSERequest(decoding: request(.readdirplus, node: 1, body: readIn(offset: 0, size: 65536))))
            guard case .message(let reply) = listing, reply.count > 16 else { continue }
            // fuse_entry_out (its node id first), then fuse_dirent with the name, 8-aligned.
            var position = 16
            var reads: [UInt8] = []
            while position + FUSEWireSize.entryOut + FUSEWireSize.direntHeader <= reply.count {
                let node = reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: position, as: UInt64.self) }
                let nameLength = reply.withUnsafeBytes {
                    Int($0.loadUnaligned(fromByteOffset: position + FUSEWireSize.entryOut + 16, as: UInt32.self))
                }
                if node != 0 { reads += request(.read, node: node, body: readIn(offset: 0, size: 4096)) }
                position += FUSEDirentList.entrySize(nameLength: nameLength, plus: true)
            }
            #expect(throws: Never.self, "\(image.lastPathComponent)") {
                pushed += try FUSEExercise.run(reads, operations: operations).pushed
            }
        }
        #expect(pushed > 5)
    }

    /// Mutations of the seeds through decoding and answering, deterministic (the fuzzer's
    /// check on every build, not only where libFuzzer runs).
    @Test func mutatedSeedsAreAnsweredWithinTheRules() throws {
        let image = try #require(FuzzReplayTests.images.first { $0.lastPathComponent == "compact.erofs" })
        let operations = FUSEExercise.operations(for: try EROFSFilesystem(path: image.path))
        let seeds = try FuzzInputs.files(in: "Fuzz/seeds/fuse").map { Array(try Data(contentsOf: $0)) }
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
