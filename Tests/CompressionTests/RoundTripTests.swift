import Compression
import Testing

@Suite struct RoundTripTests {
    static let pairs: [(CompressionAlgorithm, DataKind)] = CompressionAlgorithm.allCases.flatMap { algorithm in
        DataKind.allCases.map { (algorithm, $0) }
    }

    @Test(arguments: pairs)
    func decodesWhatTheLibraryEncoded(algorithm: CompressionAlgorithm, kind: DataKind) throws {
        // A MicroLZMA stream cannot describe empty output; EROFS never stores one.
        let sizes = algorithm == .lzma ? TestData.sizes.filter { $0 > 0 } : TestData.sizes
        for size in sizes {
            let data = TestData.make(kind, count: size)
            let compressed = ReferenceEncoder.encode(algorithm, data)
            #expect(
                try decompress(algorithm, compressed, outputSize: size, partial: false) == data,
                "full decode of \(size) bytes")
            #expect(
                try decompress(algorithm, compressed, outputSize: size, partial: true) == data,
                "partial decode of all \(size) bytes")
            for prefix in Set([1, size / 2, size - 1]) where prefix > 0 && prefix < size {
                #expect(
                    try decompress(algorithm, compressed, outputSize: prefix, partial: true) == Array(data[..<prefix]),
                    "partial decode of \(prefix) of \(size) bytes")
                #expect(throws: DecompressionError.self, "full decode into \(prefix) of \(size) bytes") {
                    try decompress(algorithm, compressed, outputSize: prefix, partial: false)
                }
            }
            #expect(throws: DecompressionError.self, "decode of \(size) bytes into \(size + 1)") {
                try decompress(algorithm, compressed, outputSize: size + 1, partial: false)
            }
            #expect(throws: DecompressionError.self, "partial decode of \(size) bytes into \(size + 1)") {
                try decompress(algorithm, compressed, outputSize: size + 1, partial: true)
            }
        }
    }

    @Test(arguments: [Int32(9), 10, 12, 15])
    func deflateWindowBitsFromTheImageConfig(windowBits: Int32) throws {
        let data = TestData.make(.mixed, count: 200_000)
        let compressed = ReferenceEncoder.rawDeflate(data, windowBits: windowBits)
        let settings = DecompressionSettings(deflateWindowBits: UInt8(windowBits))
        #expect(
            try decompress(.deflate, compressed, outputSize: data.count, partial: false, settings: settings) == data)
    }

    @Test func deflateRejectsAnInvalidWindow() {
        let compressed = ReferenceEncoder.rawDeflate([1, 2, 3])
        let error = #expect(throws: DecompressionError.self) {
            try decompress(
                .deflate, compressed, outputSize: 3, partial: false,
                settings: DecompressionSettings(deflateWindowBits: 16))
        }
        #expect(error?.message.contains("window bits 16") == true)
    }

    @Test func lzmaDictionarySizeFromTheImageConfig() throws {
        let data = TestData.make(.mixed, count: 300_000)
        let compressed = ReferenceEncoder.microLZMA(data, dictionarySize: 64 << 10)
        for dictionary: UInt32 in [0, 64 << 10, 8 << 20] {
            let settings = DecompressionSettings(lzmaDictionarySize: dictionary)
            #expect(
                try decompress(.lzma, compressed, outputSize: data.count, partial: false, settings: settings) == data)
        }
        #expect(throws: DecompressionError.self) {
            try decompress(
                .lzma, compressed, outputSize: data.count, partial: false,
                settings: DecompressionSettings(lzmaDictionarySize: (8 << 20) + 1))
        }
    }

    @Test func zstdFrameWithChecksumAndWindowLog() throws {
        let data = TestData.make(.text, count: 100_000)
        let compressed = ReferenceEncoder.zstd(data, level: 19, checksum: true)
        for windowLog: UInt8 in [0, 17, 20] {
            let settings = DecompressionSettings(zstdWindowLog: windowLog)
            #expect(
                try decompress(.zstd, compressed, outputSize: data.count, partial: false, settings: settings) == data)
            #expect(
                try decompress(.zstd, compressed, outputSize: 777, partial: true, settings: settings)
                    == Array(data[..<777]))
        }
        // EROFS windows are at most 1 MiB (the kernel refuses larger configurations).
        #expect(throws: DecompressionError.self) {
            try decompress(
                .zstd, compressed, outputSize: data.count, partial: false,
                settings: DecompressionSettings(zstdWindowLog: 21))
        }
        // A corrupted checksum is detected even though all the data fit.
        var corrupt = compressed
        corrupt[corrupt.count - 1] ^= 0xFF
        #expect(throws: DecompressionError.self) {
            try decompress(.zstd, corrupt, outputSize: data.count, partial: false)
        }
    }

    @Test(arguments: CompressionAlgorithm.allCases)
    func truncatedInputThrows(algorithm: CompressionAlgorithm) {
        let data = TestData.make(.mixed, count: 65536)
        let compressed = ReferenceEncoder.encode(algorithm, data)
        for cut in [0, 1, compressed.count / 2, compressed.count - 1] {
            #expect(throws: DecompressionError.self, "\(algorithm) input cut to \(cut) bytes") {
                try decompress(algorithm, Array(compressed[..<cut]), outputSize: data.count, partial: false)
            }
        }
    }

    @Test func errorsNameTheAlgorithmAndTheProblem() {
        let error = #expect(throws: DecompressionError.self) {
            try decompress(.lz4, [0x0F, 0x05, 0x00, 0x00, 0x50] + Array("vwxyz".utf8), outputSize: 64, partial: false)
        }
        #expect(error?.algorithm == .lz4)
        #expect(error?.description.hasPrefix("lz4 decompression failed: match offset 5") == true)
    }
}
