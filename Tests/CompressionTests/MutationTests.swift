import TestSupport
import Compression
import Testing

/// Deterministically mutated streams: every one must decode or throw, never trap or overrun
/// (the test process would crash), and the LZ4 decoder must agree with liblz4.
@Suite struct MutationTests {
    enum Mutation: CaseIterable { case flipBit, setByte, truncate, insertByte, deleteByte, duplicateRange }

    static func mutate(_ input: [UInt8], using rng: inout SplitMix64) -> [UInt8] {
        var bytes = input
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            guard !bytes.isEmpty else { break }
            let position = Int.random(in: 0..<bytes.count, using: &rng)
            switch Mutation.allCases.randomElement(using: &rng)! {
            case .flipBit: bytes[position] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
            case .setByte:
                bytes[position] = [0, 0xFF, 0x0F, 0xF0, UInt8.random(in: 0...255, using: &rng)].randomElement(
                    using: &rng)!
            case .truncate: bytes.removeSubrange(position...)
            case .insertByte: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: position)
            case .deleteByte: bytes.remove(at: position)
            case .duplicateRange:
                let end = min(bytes.count, position + Int.random(in: 1...32, using: &rng))
                bytes.insert(contentsOf: bytes[position..<end], at: position)
            }
        }
        return bytes
    }

    static func seeds(_ algorithm: CompressionAlgorithm) -> [[UInt8]] {
        [
            TestData.make(.mixed, count: 4096, seed: 3), TestData.make(.text, count: 8192, seed: 4),
            TestData.make(.shortPeriods, count: 4096, seed: 5), TestData.make(.farMatches, count: 70_000, seed: 6),
        ]
    }

    @Test(arguments: CompressionAlgorithm.allCases)
    func mutatedStreamsDecodeOrThrow(algorithm: CompressionAlgorithm) {
        var rng = SplitMix64(seed: 0xE80F5 &+ UInt64(algorithm.rawValue))
        var decoded = 0
        var rejected = 0
        for data in Self.seeds(algorithm) {
            let compressed = ReferenceEncoder.encode(algorithm, data)
            // The untouched stream decodes: every rejection below is the mutation's doing.
            #expect((try? decompress(algorithm, compressed, outputSize: data.count, partial: false)) == data)
            let count = algorithm == .lz4 ? 1000 : 250
            for _ in 0..<count {
                let mutated = Self.mutate(compressed, using: &rng)
                for partial in [false, true] {
                    let size = partial ? Int.random(in: 1...data.count, using: &rng) : data.count
                    if (try? decompress(algorithm, mutated, outputSize: size, partial: partial)) != nil {
                        decoded += 1
                    } else {
                        rejected += 1
                    }
                }
            }
        }
        // Both outcomes happen: the mutations neither always break nor never break the stream
        // (for ZSTD nearly every mutation breaks the frame, so none may decode).
        #expect(decoded > 0 || algorithm == .zstd)
        #expect(rejected > 0)
    }

    @Test func lz4AgreesWithLiblz4OnMutatedBlocks() throws {
        var rng = SplitMix64(seed: 0x1234)
        var disagreements: [String] = []
        for data in Self.seeds(.lz4) {
            let compressed = ReferenceEncoder.lz4(data)
            for _ in 0..<1500 {
                let mutated = Self.mutate(compressed, using: &rng)
                for partial in [false, true] {
                    let size = partial ? Int.random(in: 1...data.count, using: &rng) : data.count
                    let ours: [UInt8]?
                    var message = ""
                    do { ours = try decompress(.lz4, mutated, outputSize: size, partial: partial) } catch {
                        ours = nil
                        message = "\(error)"
                    }
                    let reference = ReferenceEncoder.lz4Decode(mutated, outputSize: size, partial: partial)
                        .flatMap { $0.count == size ? $0 : nil }
                    if ours != reference && !(ours == nil && Self.hasZeroOffset(mutated)) {
                        disagreements.append(
                            "partial \(partial), size \(size): ours \(ours == nil ? "error" : "ok"), liblz4 \(reference == nil ? "error" : "ok") \(message) HEX \(mutated.map { String($0, radix: 16) }.joined(separator: ","))"
                        )
                    }
                }
            }
        }
        for line in disagreements.prefix(6) { print("DISAGREE", line) }
        #expect(disagreements.count == 0, "\(disagreements.count) disagreements, e.g. \(disagreements.prefix(5))")
    }

    /// Whether the block's sequence walk meets an offset of 0 (which liblz4 accepts).
    static func hasZeroOffset(_ block: [UInt8]) -> Bool {
        var ip = 0
        while ip < block.count {
            let token = Int(block[ip]); ip += 1
            var literals = token >> 4
            if literals == 15 {
                while ip < block.count { let b = Int(block[ip]); ip += 1; literals += b; if b != 255 { break } }
            }
            ip += literals
            guard ip + 2 <= block.count else { return false }
            if block[ip] == 0 && block[ip + 1] == 0 { return true }
            ip += 2
            if token & 15 == 15 { while ip < block.count { let b = block[ip]; ip += 1; if b != 255 { break } } }
        }
        return false
    }
}
