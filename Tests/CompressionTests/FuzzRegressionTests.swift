import Compression
import Testing

/// Inputs found by Fuzz/run.sh, in the fuzzer's layout: byte 0 = algorithm (bits 0-1) and partial
/// (bit 2), bytes 1-2 = output size (little-endian), then the stream. Each is replayed with the
/// fuzzer's own check: decode or throw, and for LZ4 agree with liblz4.
@Suite struct FuzzRegressionTests {
    static let inputs: [[UInt8]] = [
        // Partial LZ4: literals end 2 bytes before the input end; liblz4 stops there.
        [0x04, 0x10, 0x00, 0x16, 0x00, 0x01, 0x00, 0x2c, 0x1f, 0x01, 0x01, 0x00],
        [0x2c, 0x08, 0x00, 0x2b, 0x6c, 0x6f, 0x02, 0x00],
    ]

    @Test(arguments: inputs)
    func replay(input: [UInt8]) throws {
        let algorithm = try #require(CompressionAlgorithm(rawValue: input[0] & 3))
        let partial = input[0] & 4 != 0
        let outputSize = Int(input[1]) | Int(input[2]) << 8
        let stream = Array(input[3...])
        let ours = Result { try decompress(algorithm, stream, outputSize: outputSize, partial: partial) }
        guard algorithm == .lz4 else {
            // No reference decoder to agree with: a success must at least fill the size asked for.
            if case .success(let bytes) = ours { #expect(bytes.count == outputSize) }
            return
        }
        let reference = ReferenceEncoder.lz4Decode(stream, outputSize: outputSize, partial: partial)
            .flatMap { $0.count == outputSize ? $0 : nil }
        #expect((try? ours.get()) == reference)
    }

    /// A ZSTD frame (from a damaged pcluster) that declares a 128 MiB window, no content size,
    /// and holds 5 bytes: libzstd allocated the declared window for it. Windows are now capped at
    /// the image's configuration, at most EROFS's 1 MiB.
    @Test func zstdFrameDeclaringAHugeWindow() throws {
        let frame: [UInt8] =
            [
                0x28, 0xB5, 0x2F, 0xFD,  // magic
                0x00,  // no content size, not single-segment, no checksum, no dictionary
                17 << 3,  // window descriptor: 2^(10 + 17) = 128 MiB
                0x29, 0x00, 0x00,  // last block, raw, 5 bytes
            ] + Array("hello".utf8)
        let error = #expect(throws: DecompressionError.self) {
            try decompress(.zstd, frame, outputSize: 5, partial: false)
        }
        #expect(error?.message.contains("memory") == true, "\(String(describing: error))")
        // The same block in a frame with a 1 MiB window decodes.
        var small = frame
        small[5] = 10 << 3
        #expect(try decompress(.zstd, small, outputSize: 5, partial: false) == Array("hello".utf8))
    }
}
