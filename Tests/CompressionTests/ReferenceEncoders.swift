import CLZ4
import CLZMA
import CZlib
import CZstd
import Compression

/// Compressed inputs made at test time with the real libraries, in the forms EROFS stores.
enum ReferenceEncoder {
    enum LZ4Level: Sendable { case fast, high(Int32) }

    static func lz4(_ data: [UInt8], level: LZ4Level = .fast) -> [UInt8] {
        let bound = Int(LZ4_compressBound(Int32(data.count)))
        var out = [UInt8](repeating: 0, count: max(bound, 1))
        var source = data + [0]  // never empty, so the base address exists
        let written = source.withUnsafeMutableBytes { src in
            out.withUnsafeMutableBytes { dst in
                let s = src.baseAddress!.assumingMemoryBound(to: CChar.self)
                let d = dst.baseAddress!.assumingMemoryBound(to: CChar.self)
                switch level {
                case .fast: return LZ4_compress_default(s, d, Int32(data.count), Int32(bound))
                case .high(let l): return LZ4_compress_HC(s, d, Int32(data.count), Int32(bound), l)
                }
            }
        }
        precondition(written > 0, "LZ4 compression failed")
        return Array(out[..<Int(written)])
    }

    /// mkfs.erofs's way: compress as much of `data` as fits in `capacity` bytes; returns the
    /// block and how many input bytes it holds.
    static func lz4DestSize(_ data: ArraySlice<UInt8>, capacity: Int) -> (block: [UInt8], consumed: Int) {
        var out = [UInt8](repeating: 0, count: capacity)
        var consumed = Int32(data.count)
        let written = Array(data).withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                LZ4_compress_destSize(
                    src.baseAddress!.assumingMemoryBound(to: CChar.self),
                    dst.baseAddress!.assumingMemoryBound(to: CChar.self),
                    &consumed, Int32(capacity))
            }
        }
        precondition(written > 0 && consumed > 0, "LZ4_compress_destSize failed")
        return (Array(out[..<Int(written)]), Int(consumed))
    }

    /// liblz4's own decoder, the oracle: the decoded bytes, or nil when it reports an error.
    static func lz4Decode(_ input: [UInt8], outputSize: Int, partial: Bool) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: outputSize + 1)
        var source = input + [0]
        let result = source.withUnsafeMutableBytes { src in
            out.withUnsafeMutableBytes { dst in
                let s = src.baseAddress!.assumingMemoryBound(to: CChar.self)
                let d = dst.baseAddress!.assumingMemoryBound(to: CChar.self)
                return partial
                    ? LZ4_decompress_safe_partial(s, d, Int32(input.count), Int32(outputSize), Int32(outputSize))
                    : LZ4_decompress_safe(s, d, Int32(input.count), Int32(outputSize))
            }
        }
        guard result >= 0 else { return nil }
        return Array(out[..<Int(result)])
    }

    /// A MicroLZMA stream as mkfs.erofs writes it.
    static func microLZMA(_ data: [UInt8], preset: UInt32 = 6, dictionarySize: UInt32 = 1 << 20) -> [UInt8] {
        var options = lzma_options_lzma()
        precondition(lzma_lzma_preset(&options, preset) == 0)
        options.dict_size = dictionarySize
        var stream = lzma_stream()
        precondition(lzma_microlzma_encoder(&stream, &options) == LZMA_OK)
        defer { lzma_end(&stream) }
        var out = [UInt8](repeating: 0, count: data.count + data.count / 2 + 64)
        let capacity = out.count
        let result = data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                stream.next_in = src.baseAddress
                stream.avail_in = data.count
                stream.next_out = dst.baseAddress
                stream.avail_out = capacity
                return lzma_code(&stream, LZMA_FINISH)
            }
        }
        precondition(result == LZMA_STREAM_END && stream.total_in == UInt64(data.count), "MicroLZMA encoding failed")
        return Array(out[..<Int(stream.total_out)])
    }

    /// A raw deflate stream (no zlib header).
    static func rawDeflate(_ data: [UInt8], level: Int32 = 6, windowBits: Int32 = 15) -> [UInt8] {
        var stream = z_stream()
        precondition(
            deflateInit2_(
                &stream, level, Z_DEFLATED, -windowBits, 8, Z_DEFAULT_STRATEGY,
                zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK)
        defer { deflateEnd(&stream) }
        var source = data + [0]
        let bound = Int(deflateBound(&stream, UInt(data.count))) + 16
        var out = [UInt8](repeating: 0, count: bound)
        let result = source.withUnsafeMutableBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                stream.next_in = src.baseAddress
                stream.avail_in = UInt32(data.count)
                stream.next_out = dst.baseAddress
                stream.avail_out = UInt32(bound)
                return deflate(&stream, Z_FINISH)
            }
        }
        precondition(result == Z_STREAM_END, "deflate failed: \(result)")
        return Array(out[..<Int(stream.total_out)])
    }

    /// One zstd frame, optionally with its content checksum.
    static func zstd(_ data: [UInt8], level: Int32 = 3, checksum: Bool = false) -> [UInt8] {
        let bound = ZSTD_compressBound(data.count)
        var out = [UInt8](repeating: 0, count: bound)
        guard let context = ZSTD_createCCtx() else { fatalError("ZSTD_createCCtx") }
        defer { ZSTD_freeCCtx(context) }
        _ = ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level)
        _ = ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, checksum ? 1 : 0)
        let source = data + [0]
        let written = source.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                ZSTD_compress2(context, dst.baseAddress, bound, src.baseAddress, data.count)
            }
        }
        precondition(ZSTD_isError(written) == 0, "zstd compression failed")
        return Array(out[..<written])
    }

    static func encode(_ algorithm: CompressionAlgorithm, _ data: [UInt8]) -> [UInt8] {
        switch algorithm {
        case .lz4: lz4(data)
        case .lzma: microLZMA(data)
        case .deflate: rawDeflate(data)
        case .zstd: zstd(data)
        }
    }
}

/// Calls the API on arrays; the output starts as a non-zero filler so unwritten bytes show.
func decompress(
    _ algorithm: CompressionAlgorithm, _ input: [UInt8], outputSize: Int, partial: Bool,
    settings: DecompressionSettings = .init()
) throws -> [UInt8] {
    var output = [UInt8](repeating: 0xA5, count: outputSize)
    try input.withUnsafeBytes { src in
        try output.withUnsafeMutableBytes { dst in
            try Decompressor.decompress(algorithm, input: src, output: dst, partial: partial, settings: settings)
        }
    }
    return output
}
