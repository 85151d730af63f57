// Writes valid streams of every algorithm, in the fuzzer's input layout, into a seed directory.
import CLZ4
import CLZMA
import CZlib
import CZstd
#if canImport(Glibc)
import Glibc
#endif

func sample(_ kind: Int, _ count: Int) -> [UInt8] {
    var state: UInt64 = 0x2545_F491_4F6C_DD1D &+ UInt64(kind * 1000 + count)
    let words = Array("erofs superblock inode compressed cluster mount kernel block lz4 ".utf8)
    return (0..<count).map { i in
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        switch kind {
        case 0: return words[(i + Int(state % 5)) % words.count]
        case 1: return UInt8(truncatingIfNeeded: state)
        default: return UInt8(i / 64 % 3)
        }
    }
}

func write(_ directory: String, _ name: String, selector: UInt8, outputSize: Int, _ stream: [UInt8]) {
    let bytes = [selector, UInt8(outputSize & 0xFF), UInt8(outputSize >> 8)] + stream
    guard let file = fopen(directory + "/" + name, "wb") else { fatalError("cannot write \(name)") }
    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    fclose(file)
}

let directory = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "Fuzz/seeds"
for kind in 0..<3 {
    for count in [1, 100, 4096, 20000] {
        var data = sample(kind, count)
        let name = "k\(kind)-n\(count)"

        var lz4 = [UInt8](repeating: 0, count: Int(LZ4_compressBound(Int32(count))))
        let lz4Size = data.withUnsafeMutableBytes { src in
            lz4.withUnsafeMutableBytes { dst in
                LZ4_compress_HC(
                    src.baseAddress!.assumingMemoryBound(to: CChar.self),
                    dst.baseAddress!.assumingMemoryBound(to: CChar.self),
                    Int32(count), Int32(dst.count), 9)
            }
        }
        write(directory, "lz4-" + name, selector: 0, outputSize: count, Array(lz4[..<Int(lz4Size)]))
        write(directory, "lz4p-" + name, selector: 4, outputSize: count / 2, Array(lz4[..<Int(lz4Size)]))

        var options = lzma_options_lzma()
        _ = lzma_lzma_preset(&options, 6)
        options.dict_size = 1 << 16
        var stream = lzma_stream()
        _ = lzma_microlzma_encoder(&stream, &options)
        var lzma = [UInt8](repeating: 0, count: count * 2 + 64)
        data.withUnsafeBufferPointer { src in
            lzma.withUnsafeMutableBufferPointer { dst in
                stream.next_in = src.baseAddress; stream.avail_in = count
                stream.next_out = dst.baseAddress; stream.avail_out = dst.count
                _ = lzma_code(&stream, LZMA_FINISH)
            }
        }
        write(directory, "lzma-" + name, selector: 1, outputSize: count, Array(lzma[..<Int(stream.total_out)]))
        lzma_end(&stream)

        var z = z_stream()
        _ = deflateInit2_(
            &z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY, zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        var deflated = [UInt8](repeating: 0, count: count * 2 + 64)
        data.withUnsafeMutableBufferPointer { src in
            deflated.withUnsafeMutableBufferPointer { dst in
                z.next_in = src.baseAddress; z.avail_in = UInt32(count)
                z.next_out = dst.baseAddress; z.avail_out = UInt32(dst.count)
                _ = deflate(&z, Z_FINISH)
            }
        }
        write(directory, "deflate-" + name, selector: 2, outputSize: count, Array(deflated[..<Int(z.total_out)]))
        deflateEnd(&z)

        var zstd = [UInt8](repeating: 0, count: ZSTD_compressBound(count))
        let zstdSize = data.withUnsafeBytes { src in
            zstd.withUnsafeMutableBytes { dst in ZSTD_compress(dst.baseAddress, dst.count, src.baseAddress, count, 3) }
        }
        write(directory, "zstd-" + name, selector: 3, outputSize: count, Array(zstd[..<zstdSize]))
    }
}
