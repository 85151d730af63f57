// libFuzzer entry point over the Compression API; see Fuzz/run.sh.
//
// Input layout: byte 0 selects the algorithm (bits 0-1) and partial mode (bit 2); bytes 1-2 are
// the output size (little-endian, 0...65535); the rest is the compressed stream.
// The LZ4 decoder is also checked against liblz4 (differential): both must agree on success and
// produce the same bytes; the only accepted difference is an offset of 0, which liblz4 copies.
// Fuzz/run.sh compiles the Compression sources into this same module (no `import Compression`).
import CLZ4
#if canImport(Glibc)
import Glibc
#endif

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDecompress(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 3 else { return 0 }
    guard let algorithm = CompressionAlgorithm(rawValue: data[0] & 3) else { return 0 }
    let partial = data[0] & 4 != 0
    let outputSize = Int(data[1]) | Int(data[2]) << 8
    // Exact-size buffers, so AddressSanitizer catches any access outside them.
    let input = UnsafeMutableRawBufferPointer.allocate(byteCount: size - 3, alignment: 1)
    defer { input.deallocate() }
    input.copyMemory(from: UnsafeRawBufferPointer(start: data + 3, count: size - 3))
    let output = UnsafeMutableRawBufferPointer.allocate(byteCount: outputSize, alignment: 1)
    defer { output.deallocate() }

    var ourError: DecompressionError?
    do {
        try Decompressor.decompress(algorithm, input: UnsafeRawBufferPointer(input), output: output, partial: partial)
    } catch {
        ourError = error
    }
    guard algorithm == .lz4, input.count > 0 else { return 0 }

    let reference = UnsafeMutableRawBufferPointer.allocate(byteCount: outputSize + 1, alignment: 1)
    defer { reference.deallocate() }
    let source = input.baseAddress!.assumingMemoryBound(to: CChar.self)
    let target = reference.baseAddress!.assumingMemoryBound(to: CChar.self)
    let produced =
        partial
        ? LZ4_decompress_safe_partial(source, target, Int32(input.count), Int32(outputSize), Int32(outputSize))
        : LZ4_decompress_safe(source, target, Int32(input.count), Int32(outputSize))
    let referenceSucceeded = Int(produced) == outputSize
    switch (ourError, referenceSucceeded) {
    case (nil, true):
        if outputSize > 0 && memcmp(output.baseAddress!, reference.baseAddress!, outputSize) != 0 {
            fatalError("LZ4 output differs from liblz4 (partial \(partial), size \(outputSize))")
        }
    case (nil, false):
        fatalError("LZ4 decoded what liblz4 rejects (partial \(partial), size \(outputSize), liblz4 \(produced))")
    case (let error?, true):
        if !error.message.hasPrefix("zero match offset") {
            fatalError("LZ4 rejected what liblz4 decodes (partial \(partial), size \(outputSize)): \(error)")
        }
    case (_?, false):
        break
    }
    return 0
}
