// lz4-bench: decodes the same LZ4 blocks with the Swift decoder (through the Compression API) and
// with liblz4's LZ4_decompress_safe, and reports the median throughput of each.
//
//   swift build -c release --product lz4-bench && .build/release/lz4-bench [--runs N] [FILE...]
import CLZ4
import Compression

#if canImport(Glibc)
import Glibc
#endif

struct Block {
    var compressed: [UInt8]
    var original: ArraySlice<UInt8>
}

/// How the data is cut into LZ4 blocks.
enum Chunking: CustomStringConvertible {
    /// Fixed-size input chunks, each compressed on its own (LZ4_compress_default).
    case fixedInput(Int)
    /// mkfs.erofs style: each block fills a fixed compressed size (LZ4_compress_destSize), so
    /// blocks decode to variable sizes, as EROFS pclusters do.
    case fixedOutput(Int)

    var description: String {
        switch self {
        case .fixedInput(let n): "\(n / 1024) KiB input blocks"
        case .fixedOutput(let n): "\(n / 1024) KiB pclusters (destSize)"
        }
    }

    func blocks(of data: [UInt8]) -> [Block] {
        var blocks: [Block] = []
        var start = 0
        data.withUnsafeBufferPointer { whole in
            let base = UnsafeRawPointer(whole.baseAddress!)
            while start < data.count {
                switch self {
                case .fixedInput(let size):
                    let count = min(size, data.count - start)
                    let bound = Int(LZ4_compressBound(Int32(count)))
                    var out = [UInt8](repeating: 0, count: bound)
                    let written = out.withUnsafeMutableBytes {
                        LZ4_compress_default(
                            (base + start).assumingMemoryBound(to: CChar.self),
                            $0.baseAddress!.assumingMemoryBound(to: CChar.self),
                            Int32(count), Int32(bound))
                    }
                    precondition(written > 0)
                    blocks.append(Block(compressed: Array(out[..<Int(written)]), original: data[start..<start + count]))
                    start += count
                case .fixedOutput(let size):
                    var consumed = Int32(min(data.count - start, Int(Int32.max)))
                    var out = [UInt8](repeating: 0, count: size)
                    let written = out.withUnsafeMutableBytes {
                        LZ4_compress_destSize(
                            (base + start).assumingMemoryBound(to: CChar.self),
                            $0.baseAddress!.assumingMemoryBound(to: CChar.self),
                            &consumed, Int32(size))
                    }
                    precondition(written > 0 && consumed > 0)
                    blocks.append(
                        Block(
                            compressed: Array(out[..<Int(written)]),
                            original: data[start..<start + Int(consumed)]))
                    start += Int(consumed)
                }
            }
        }
        return blocks
    }
}

func readFile(_ path: String, limit: Int) -> [UInt8]? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes = [UInt8](repeating: 0, count: limit)
    let count = bytes.withUnsafeMutableBytes { fread($0.baseAddress, 1, limit, file) }
    return count > 0 ? Array(bytes[..<count]) : nil
}

/// C headers concatenated: source-code text.
func headerText(limit: Int) -> [UInt8] {
    var text: [UInt8] = []
    for directory in ["/usr/include", "/usr/include/linux", "/usr/include/x86_64-linux-gnu/sys"] {
        guard let dir = opendir(directory) else { continue }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasSuffix(".h") { names.append(name) }
        }
        closedir(dir)
        for name in names.sorted() where text.count < limit {
            text += readFile(directory + "/" + name, limit: 1 << 20) ?? []
        }
    }
    return Array(text.prefix(limit))
}

func pseudoRandom(count: Int) -> [UInt8] {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    return (0..<count).map { _ in
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return UInt8(truncatingIfNeeded: state >> 24)
    }
}

/// Thread CPU time, so time slices lost to other processes on a shared machine do not count.
func seconds(_ body: () -> Void) -> Double {
    var start = timespec()
    var end = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start)
    body()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &end)
    return Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) / 1e9
}

func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

// MARK: - Main

var runs = 11
var files: [String] = []
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    if argument == "--runs", let value = arguments.popFirst(), let n = Int(value), n > 0 {
        runs = n
    } else {
        files.append(argument)
    }
}

var datasets: [(String, [UInt8])] = []
if files.isEmpty {
    datasets.append(("text (C headers)", headerText(limit: 16 << 20)))
    if let binary = readFile("/opt/swift/usr/lib/swift/linux/libswiftCore.so", limit: 16 << 20) {
        datasets.append(("binary (libswiftCore.so)", binary))
    }
    datasets.append(("incompressible", pseudoRandom(count: 8 << 20)))
    datasets.append(("zeros", [UInt8](repeating: 0, count: 8 << 20)))
} else {
    for path in files {
        guard let data = readFile(path, limit: 64 << 20) else { fatalError("cannot read \(path)") }
        datasets.append((path, data))
    }
}

print("| data | blocks | MB in → out | Swift MB/s | liblz4 MB/s | ratio |")
print("|---|---|---|---|---|---|")
for (name, data) in datasets {
    for chunking in [Chunking.fixedOutput(4096), .fixedInput(65536)] {
        let blocks = chunking.blocks(of: data)
        let maxOutput = blocks.map(\.original.count).max() ?? 0
        var output = [UInt8](repeating: 0, count: maxOutput)
        let total = blocks.reduce(0) { $0 + $1.original.count }
        let compressedTotal = blocks.reduce(0) { $0 + $1.compressed.count }

        func runSwift() {
            output.withUnsafeMutableBytes { out in
                for block in blocks {
                    block.compressed.withUnsafeBytes { input in
                        do {
                            try Decompressor.decompress(
                                .lz4, input: input,
                                output: UnsafeMutableRawBufferPointer(rebasing: out[..<block.original.count]),
                                partial: false)
                        } catch { fatalError("\(error)") }
                    }
                }
            }
        }
        func runLiblz4() {
            output.withUnsafeMutableBytes { out in
                for block in blocks {
                    block.compressed.withUnsafeBytes { input in
                        let n = LZ4_decompress_safe(
                            input.baseAddress!.assumingMemoryBound(to: CChar.self),
                            out.baseAddress!.assumingMemoryBound(to: CChar.self),
                            Int32(input.count), Int32(block.original.count))
                        precondition(Int(n) == block.original.count)
                    }
                }
            }
        }
        // Both decoders must reproduce every block before anything is timed.
        for block in blocks {
            var ours = [UInt8](repeating: 0, count: block.original.count)
            block.compressed.withUnsafeBytes { input in
                ours.withUnsafeMutableBytes { out in
                    do { try Decompressor.decompress(.lz4, input: input, output: out, partial: false) } catch {
                        fatalError("\(error)")
                    }
                }
            }
            precondition(ours.elementsEqual(block.original), "Swift decoder output differs")
        }

        var swiftTimes: [Double] = []
        var libTimes: [Double] = []
        runSwift(); runLiblz4()  // warm up
        for _ in 0..<runs {
            swiftTimes.append(seconds(runSwift))
            libTimes.append(seconds(runLiblz4))
        }
        let swiftRate = Double(total) / median(swiftTimes) / 1e6
        let libRate = Double(total) / median(libTimes) / 1e6
        func mb(_ n: Int) -> String { String(Double(Int(Double(n) / 1e5)) / 10) }
        print(
            "| \(name), \(chunking) | \(blocks.count) | \(mb(compressedTotal)) → \(mb(total)) | \(Int(swiftRate)) | \(Int(libRate)) | \(Double(Int(swiftRate / libRate * 100)) / 100) |"
        )
    }
}
print("median of \(runs) runs each; MB = 10^6 bytes of decompressed output per second")
