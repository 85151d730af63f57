import CLZMA

/// EROFS's LZMA pclusters are MicroLZMA streams (LZMA1 with the properties byte folded into the
/// first range-coder byte and no end marker); liblzma decodes them given both sizes.
enum MicroLZMADecoder {
    /// The largest dictionary EROFS allows (`Z_EROFS_LZMA_MAX_DICT_SIZE`).
    static let maximumDictionarySize: UInt32 = 8 << 20

    static func decode(
        _ input: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer,
        partial: Bool,
        dictionarySize configured: UInt32
    ) throws(DecompressionError) {
        func failure(_ message: String) -> DecompressionError {
            DecompressionError(algorithm: .lzma, message: message)
        }
        guard let inputBase = input.baseAddress, !input.isEmpty else { throw failure("empty input") }
        guard let outputBase = output.baseAddress, !output.isEmpty else {
            throw failure("empty output (a MicroLZMA stream always decodes to at least one byte)")
        }
        guard configured <= maximumDictionarySize else {
            throw failure("dictionary size \(configured) exceeds the EROFS maximum \(maximumDictionarySize)")
        }
        // No match can reach further back than the output start, so a dictionary as large as the
        // output is always enough; this avoids allocating 8 MiB for every 4 KiB cluster.
        let wanted = configured == 0 ? maximumDictionarySize : configured
        let outputBound = UInt32(clamping: max(output.count, 4096))
        let dictionarySize = min(wanted, outputBound)

        var stream = lzma_stream()
        let initResult = lzma_microlzma_decoder(
            &stream, UInt64(input.count), UInt64(output.count), partial ? 0 : 1, dictionarySize)
        guard initResult == LZMA_OK else {
            throw failure("decoder initialization failed (lzma_ret \(initResult.rawValue))")
        }
        defer { lzma_end(&stream) }

        stream.next_in = inputBase.assumingMemoryBound(to: UInt8.self)
        stream.avail_in = input.count
        stream.next_out = outputBase.assumingMemoryBound(to: UInt8.self)
        stream.avail_out = output.count
        let result = lzma_code(&stream, LZMA_FINISH)
        guard result == LZMA_STREAM_END else {
            throw failure(
                "\(describe(result)) after \(stream.total_in) of \(input.count) input bytes, "
                    + "\(stream.total_out) of \(output.count) output bytes")
        }
        guard stream.avail_out == 0 else {
            throw failure("stream ends after \(stream.total_out) bytes, expected \(output.count)")
        }
    }

    private static func describe(_ result: lzma_ret) -> String {
        switch result {
        case LZMA_OK: "stream incomplete"
        case LZMA_DATA_ERROR: "corrupt data"
        case LZMA_BUF_ERROR: "truncated input or output too small"
        case LZMA_MEM_ERROR: "out of memory"
        case LZMA_OPTIONS_ERROR: "unsupported options"
        default: "lzma_ret \(result.rawValue)"
        }
    }
}
