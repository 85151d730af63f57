import CZlib

/// EROFS's DEFLATE pclusters are raw deflate streams (no zlib header, no checksum).
enum RawDeflateDecoder {
    static func decode(
        _ input: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer,
        partial: Bool,
        windowBits configured: UInt8
    ) throws(DecompressionError) {
        func failure(_ message: String) -> DecompressionError {
            DecompressionError(algorithm: .deflate, message: message)
        }
        let windowBits = configured == 0 ? 15 : Int32(configured)
        guard (8...15).contains(windowBits) else {
            throw failure("window bits \(configured) outside 8...15")
        }
        guard let inputBase = input.baseAddress, !input.isEmpty else { throw failure("empty input") }
        guard let inputCount = UInt32(exactly: input.count), let outputCount = UInt32(exactly: output.count)
        else { throw failure("cluster larger than 4 GiB") }

        var stream = z_stream()
        // inflateInit2 is a macro over inflateInit2_, which checks the library version and the
        // struct size; negative window bits select raw deflate.
        let initResult = inflateInit2_(&stream, -windowBits, zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        guard initResult == Z_OK else { throw failure("inflateInit2 failed (\(initResult))") }
        defer { inflateEnd(&stream) }

        stream.next_in = UnsafeMutablePointer(mutating: inputBase.assumingMemoryBound(to: UInt8.self))
        stream.avail_in = inputCount
        // A zero-length output still needs a valid pointer for zlib; it never writes through it.
        var scratch: UInt8 = 0
        let result: Int32 = withUnsafeMutablePointer(to: &scratch) { scratchPointer in
            stream.next_out = output.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? scratchPointer
            stream.avail_out = outputCount
            return inflate(&stream, partial ? Z_SYNC_FLUSH : Z_FINISH)
        }
        let produced = output.count - Int(stream.avail_out)
        if partial {
            // Z_OK or Z_BUF_ERROR with a full output: the stream simply continues beyond it.
            guard produced == output.count, result == Z_OK || result == Z_STREAM_END || result == Z_BUF_ERROR
            else { throw failure(describe(result, stream: stream, produced: produced, expected: output.count)) }
        } else {
            guard result == Z_STREAM_END, produced == output.count else {
                throw failure(describe(result, stream: stream, produced: produced, expected: output.count))
            }
        }
    }

    private static func describe(_ result: Int32, stream: z_stream, produced: Int, expected: Int) -> String {
        let reason: String
        switch result {
        case Z_STREAM_END: reason = "stream ends early"
        case Z_OK, Z_BUF_ERROR:
            reason = stream.avail_out == 0 ? "stream decodes to more than the output" : "truncated input"
        case Z_DATA_ERROR:
            reason = "corrupt data" + (stream.msg.map { " (\(String(cString: $0)))" } ?? "")
        case Z_MEM_ERROR: reason = "out of memory"
        default: reason = "inflate returned \(result)"
        }
        return "\(reason): \(produced) of \(expected) output bytes"
    }
}
