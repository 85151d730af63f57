/// The compression algorithms of EROFS, numbered as the on-disk `Z_EROFS_COMPRESSION_*` values.
public enum CompressionAlgorithm: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case lz4 = 0, lzma = 1, deflate = 2, zstd = 3

    public var description: String {
        switch self {
        case .lz4: "lz4"
        case .lzma: "lzma"
        case .deflate: "deflate"
        case .zstd: "zstd"
        }
    }
}

/// Per-image settings from the superblock's compression configs (COMPR_CFGS), defaults otherwise.
public struct DecompressionSettings: Sendable, Equatable {
    /// `z_erofs_lzma_cfgs.dict_size`; 0 selects the EROFS maximum (8 MiB).
    public var lzmaDictionarySize: UInt32
    /// `z_erofs_deflate_cfgs.windowbits`; 0 selects 15.
    public var deflateWindowBits: UInt8
    /// `z_erofs_zstd_cfgs.windowlog + 10`; 0 selects libzstd's default limit.
    public var zstdWindowLog: UInt8

    public init(lzmaDictionarySize: UInt32 = 0, deflateWindowBits: UInt8 = 0, zstdWindowLog: UInt8 = 0) {
        self.lzmaDictionarySize = lzmaDictionarySize
        self.deflateWindowBits = deflateWindowBits
        self.zstdWindowLog = zstdWindowLog
    }
}

/// A physical cluster that could not be decoded: corrupt, truncated, or of the wrong size.
public struct DecompressionError: Error, CustomStringConvertible, Sendable, Equatable {
    public var algorithm: CompressionAlgorithm
    public var message: String

    public init(algorithm: CompressionAlgorithm, message: String) {
        self.algorithm = algorithm
        self.message = message
    }

    public var description: String { "\(algorithm) decompression failed: \(message)" }
}

public enum Decompressor {
    /// Decodes one physical cluster. `input` is the compressed stream with EROFS's leading zero
    /// padding already removed by the caller. Fills `output` completely:
    /// - partial == false: the stream must decode to exactly output.count bytes;
    /// - partial == true: the stream may decode to more; decoding stops once output is full.
    /// Throws on corrupt or truncated input, never reads or writes out of bounds, never traps.
    public static func decompress(
        _ algorithm: CompressionAlgorithm,
        input: UnsafeRawBufferPointer,
        output: UnsafeMutableRawBufferPointer,
        partial: Bool,
        settings: DecompressionSettings = .init()
    ) throws(DecompressionError) {
        if partial && output.isEmpty { return }
        switch algorithm {
        case .lz4:
            let produced = try LZ4BlockDecoder.decode(input, into: output, partial: partial)
            guard produced == output.count else {
                throw DecompressionError(
                    algorithm: .lz4,
                    message: "block ends after \(produced) bytes, expected \(output.count)")
            }
        case .lzma:
            try MicroLZMADecoder.decode(
                input, into: output, partial: partial, dictionarySize: settings.lzmaDictionarySize)
        case .deflate:
            try RawDeflateDecoder.decode(
                input, into: output, partial: partial, windowBits: settings.deflateWindowBits)
        case .zstd:
            try ZstdFrameDecoder.decode(
                input, into: output, partial: partial, windowLog: settings.zstdWindowLog)
        }
    }
}
