import CZstd

/// EROFS's ZSTD pclusters are one zstd frame each, decoded by streaming into the fixed output.
enum ZstdFrameDecoder {
    /// log2 of `Z_EROFS_ZSTD_MAX_DICT_SIZE` (1 MiB, the largest pcluster).
    static let maximumWindowLog: UInt8 = 20

    static func decode(
        _ input: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer,
        partial: Bool,
        windowLog: UInt8
    ) throws(DecompressionError) {
        func failure(_ message: String) -> DecompressionError {
            DecompressionError(algorithm: .zstd, message: message)
        }
        guard let inputBase = input.baseAddress, !input.isEmpty else { throw failure("empty input") }
        guard windowLog == 0 || (10...maximumWindowLog).contains(windowLog) else {
            throw failure("window log \(windowLog) outside 10...\(maximumWindowLog) (EROFS allows windows up to 1 MiB)")
        }
        guard let context = ZSTD_createDCtx() else { throw failure("out of memory") }
        defer { ZSTD_freeDCtx(context) }
        // A frame may not declare a larger window than the image's: libzstd allocates what the
        // frame declares (up to 128 MiB by default) for a pcluster of a few KiB.
        let windowLogMax = windowLog == 0 ? maximumWindowLog : windowLog
        let set = ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, Int32(windowLogMax))
        guard ZSTD_isError(set) == 0 else { throw failure("window log \(windowLogMax): \(errorName(set))") }

        var source = ZSTD_inBuffer(src: inputBase, size: input.count, pos: 0)
        var target = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        var remaining = 1  // ZSTD_decompressStream's hint; 0 once the frame is complete
        while target.pos < target.size {
            let before = (source.pos, target.pos)
            remaining = ZSTD_decompressStream(context, &target, &source)
            if ZSTD_isError(remaining) != 0 {
                throw failure("\(errorName(remaining)) after \(source.pos) of \(input.count) input bytes")
            }
            if remaining == 0 { break }
            if before == (source.pos, target.pos) {
                throw failure("truncated input: frame incomplete after \(target.pos) of \(output.count) bytes")
            }
        }
        guard target.pos == output.count else {
            throw failure("frame ends after \(target.pos) bytes, expected \(output.count)")
        }
        if partial || remaining == 0 { return }

        // The output is full but the frame is not finished: what is left must produce no data
        // (e.g. the frame checksum), or the frame is larger than the cluster.
        var extra: UInt8 = 0
        try withUnsafeMutablePointer(to: &extra) { (extraPointer) throws(DecompressionError) in
            while remaining != 0 {
                var probe = ZSTD_outBuffer(dst: extraPointer, size: 1, pos: 0)
                let inputBefore = source.pos
                remaining = ZSTD_decompressStream(context, &probe, &source)
                if ZSTD_isError(remaining) != 0 {
                    throw failure("\(errorName(remaining)) at the end of the frame")
                }
                if probe.pos != 0 { throw failure("frame decodes to more than \(output.count) bytes") }
                if remaining != 0 && source.pos == inputBefore {
                    throw failure("truncated input: frame incomplete")
                }
            }
        }
    }

    private static func errorName(_ code: Int) -> String {
        String(cString: ZSTD_getErrorName(code))
    }
}
