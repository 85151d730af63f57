import TestSupport
import Compression
import Testing

/// The Swift LZ4 decoder against liblz4, the reference.
@Suite struct LZ4DecoderTests {
    static let levels: [ReferenceEncoder.LZ4Level] = [.fast, .high(4), .high(12)]

    @Test(arguments: DataKind.allCases)
    func matchesLiblz4OnEveryInput(kind: DataKind) throws {
        for size in [1, 2, 5, 12, 13, 100, 4095, 4096, 65536, 300_000] {
            let data = TestData.make(kind, count: size, seed: 7)
            for level in Self.levels {
                let compressed = ReferenceEncoder.lz4(data, level: level)
                #expect(ReferenceEncoder.lz4Decode(compressed, outputSize: size, partial: false) == data)
                #expect(try decompress(.lz4, compressed, outputSize: size, partial: false) == data)
                // Partial decoding at cut points all over the block, including inside matches.
                var rng = SplitMix64(seed: UInt64(size))
                for _ in 0..<8 {
                    let cut = Int.random(in: 1...size, using: &rng)
                    let ours = try decompress(.lz4, compressed, outputSize: cut, partial: true)
                    #expect(ours == Array(data[..<cut]))
                    #expect(ReferenceEncoder.lz4Decode(compressed, outputSize: cut, partial: true) == ours)
                }
            }
        }
    }

    /// Blocks cut the way mkfs.erofs cuts pclusters: each fills 4096 compressed bytes and
    /// decodes to a variable size; readers decode them whole or up to a page boundary.
    @Test(arguments: [DataKind.text, .mixed, .shortPeriods])
    func erofsStylePclusters(kind: DataKind) throws {
        let data = TestData.make(kind, count: 400_000, seed: 11)
        var start = 0
        var blocks = 0
        while start < data.count {
            let (block, consumed) = ReferenceEncoder.lz4DestSize(data[start...], capacity: 4096)
            let original = Array(data[start..<start + consumed])
            #expect(try decompress(.lz4, block, outputSize: consumed, partial: false) == original)
            let page = min(consumed, 4096)
            #expect(try decompress(.lz4, block, outputSize: page, partial: true) == Array(original[..<page]))
            start += consumed
            blocks += 1
        }
        #expect(blocks > 1)
    }

    @Test func emptyBlock() throws {
        #expect(try decompress(.lz4, [0x00], outputSize: 0, partial: false) == [])
        #expect(throws: DecompressionError.self) { try decompress(.lz4, [], outputSize: 0, partial: false) }
        #expect(throws: DecompressionError.self) { try decompress(.lz4, [0x10, 0x41], outputSize: 0, partial: false) }
    }

    /// Hand-made blocks: (bytes, output size, partial, expected output or nil for an error).
    static let crafted: [(String, [UInt8], Int, Bool, [UInt8]?)] = [
        ("literals only", [0x30, 0x61, 0x62, 0x63], 3, false, Array("abc".utf8)),
        (
            "overlapping offset 1",
            [0x1F, 0x61, 0x01, 0x00, 0x05, 0x50] + Array("vwxyz".utf8), 30, false,
            [UInt8](repeating: 0x61, count: 25) + Array("vwxyz".utf8)
        ),
        ("offset 0", [0x14, 0x61, 0x00, 0x00, 0x50] + Array("vwxyz".utf8), 14, false, nil),
        ("offset before output start", [0x14, 0x61, 0x02, 0x00, 0x50] + Array("vwxyz".utf8), 14, false, nil),
        ("literal run past input end", [0x50, 0x61, 0x62], 5, false, nil),
        ("literal length extension past input end", [0xF0, 0xFF, 0xFF], 600, false, nil),
        (
            "match length extension past input end",
            [0x1F, 0x61, 0x01, 0x00, 0xFF, 0xFF], 600, true, nil
        ),
        ("missing offset", [0x14, 0x61, 0x01], 10, false, nil),
        ("match into the last 5 bytes", [0x14, 0x61, 0x01, 0x00], 9, false, nil),
        (
            "partial stop inside a match", [0x1F, 0x61, 0x01, 0x00, 0x05, 0x50] + Array("vwxyz".utf8), 7, true,
            [UInt8](repeating: 0x61, count: 7)
        ),
        ("partial stop inside literals", [0x30, 0x61, 0x62, 0x63], 2, true, Array("ab".utf8)),
        ("literals beyond output in full mode", [0x30, 0x61, 0x62, 0x63], 2, false, nil),
        ("block shorter than output", [0x30, 0x61, 0x62, 0x63], 4, false, nil),
        ("block shorter than output, partial", [0x30, 0x61, 0x62, 0x63], 4, true, nil),
    ]

    @Test(arguments: crafted)
    func craftedBlocks(name: String, block: [UInt8], outputSize: Int, partial: Bool, expected: [UInt8]?) {
        let result = try? decompress(.lz4, block, outputSize: outputSize, partial: partial)
        #expect(result == expected, "\(name)")
        // liblz4 agrees on success (its partial mode may return fewer bytes, which the API rejects),
        // except that it copies from offset 0 (the output itself), which the format forbids.
        if name == "offset 0" { return }
        let reference = ReferenceEncoder.lz4Decode(block, outputSize: outputSize, partial: partial)
        #expect((reference?.count == outputSize ? reference : nil) == expected, "\(name): liblz4")
    }
}
