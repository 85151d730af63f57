// libFuzzer entry point over the EROFS reader; see Fuzz/README.md and scripts/fuzz.sh.
//
// The input is a whole image in memory. Everything a mount would touch is read: the superblock,
// every directory (walked from the root), every inode's attributes and xattrs, symlink targets,
// every path looked up again by name, and every regular file's data. Work per input is capped
// (bytes of file data, inodes visited) so that the fuzzer measures crashes, not sparse files of
// 2^64 bytes of zeros; anything that loops or allocates without bound inside one call is a bug
// (scripts/fuzz.sh runs with -timeout and -rss_limit_mb).
import EROFSFormat
import EROFSReader
import ImageSources
import SystemCalls
import SystemPackage

/// The fuzzer's input as an image.
final class InMemorySource: RandomAccessSource {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var size: UInt64 { UInt64(bytes.count) }
    var displayName: String { "fuzz input" }
    var localFileDescriptor: FileDescriptor? { nil }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        guard offset < size else { return 0 }
        let count = min(buffer.count, bytes.count - Int(offset))
        guard count > 0, let target = buffer.baseAddress else { return 0 }
        bytes.withUnsafeBytes { source in
            target.copyMemory(from: source.baseAddress! + Int(offset), byteCount: count)
        }
        return count
    }
}

/// Per-input work limits.
enum Budget {
    static let fileBytes: UInt64 = 4 << 20
    static let inodes = 2048
    static let lookups = 256
    static let chunk = 256 << 10
}

/// Thrown by the visitor to end a walk that used up its budget.
let budgetExhausted = EROFSError(.io, "fuzz budget exhausted")

/// Rewrites the superblock checksum (when the image has one) to match the mutated bytes: a
/// fuzzer cannot guess CRCs, and without this nearly every mutation of the first block would
/// stop at the checksum check.
func fixSuperblockChecksum(_ image: inout [UInt8]) {
    let offset = Superblock.offset
    guard image.count > offset else { return }
    let head = Array(image[offset...].prefix(4096))
    guard let superblock = try? Superblock(decoding: head), superblock.featureCompat.contains(.superblockChecksum),
        let checksum = try? superblock.computedChecksum(firstBlockFromSuperblock: head)
    else { return }
    for index in 0..<4 { image[offset + 4 + index] = UInt8(truncatingIfNeeded: checksum >> (8 * UInt32(index))) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func readerFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var image = Array(UnsafeBufferPointer(start: data, count: size))
    fixSuperblockChecksum(&image)
    guard let filesystem = try? EROFSFilesystem(source: InMemorySource(image)) else { return 0 }
    _ = filesystem.compressionDescription
    _ = filesystem.longXattrPrefixes
    var inodesLeft = Budget.inodes
    var bytesLeft = Budget.fileBytes
    var paths: [String] = []
    do {
        try filesystem.walk { (path, inode) throws(EROFSError) in
            inodesLeft -= 1
            guard inodesLeft >= 0 else { throw budgetExhausted }
            if paths.count < Budget.lookups { paths.append(path) }
            // Each step on its own: an error in one (a bad xattr) must not hide the others.
            _ = try? filesystem.xattrs(inode)
            switch inode.kind {
            case .symlink:
                _ = try? filesystem.readLink(inode)
            case .file:
                var offset: UInt64 = 0
                while offset < inode.size, bytesLeft > 0 {
                    let count = Int(min(UInt64(Budget.chunk), bytesLeft))
                    guard let chunk = try? filesystem.read(inode, at: offset, count: count), !chunk.isEmpty else { break }
                    offset += UInt64(chunk.count)
                    bytesLeft -= min(bytesLeft, UInt64(chunk.count))
                }
                // The last bytes too (tail-packed or fragment data), even when the budget ended early.
                if inode.size > 0 { _ = try? filesystem.read(inode, at: inode.size - 1, count: 1) }
            default:
                break
            }
        }
    } catch {
        // A corrupt image or the budget: both are fine outcomes.
    }
    for path in paths {
        _ = try? filesystem.lookup(path: path)
    }
    return 0
}

// SwiftPM links an executable's entry point as `<Module>_main` (so tests can link the module);
// libFuzzer's own main is then not used, so ours hands over to libFuzzer's driver.
@_extern(c, "LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

@_cdecl("ReaderFuzzer_main")
func readerFuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, readerFuzzerTestOneInput)
}
