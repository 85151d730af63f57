// What the reader fuzzer does with each input, shared with ReaderTests so that every finding is
// replayed on the normal build through exactly the same calls. See Fuzz/README.md.
import EROFSFormat
import EROFSReader
import ImageSources
import SystemCalls
import SystemPackage

/// An image held in memory (the fuzzer's input).
public final class InMemorySource: RandomAccessSource {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var size: UInt64 { UInt64(bytes.count) }
    public var displayName: String { "in-memory image" }
    public var localFileDescriptor: FileDescriptor? { nil }
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        guard offset < size, let target = buffer.baseAddress else { return 0 }
        let count = min(buffer.count, bytes.count - Int(offset))
        bytes.withUnsafeBytes { source in
            target.copyMemory(from: source.baseAddress! + Int(offset), byteCount: count)
        }
        return count
    }
}

/// Reads everything a mount would touch: the superblock, the compression configs and long xattr
/// prefixes, every directory (walked from the root), every inode's xattrs, symlink targets, every
/// regular file's data (and its last byte, where tail-packed and fragment data sit), then every
/// path again by lookup. Errors are expected (the input is damaged); traps, hangs and absurd
/// allocations are the findings.
public enum ReaderExercise {
    /// Work per input, so that the fuzzer measures crashes, not sparse files of 2^64 zeros.
    public struct Limits: Sendable {
        public var fileBytes: UInt64 = 4 << 20
        public var inodes = 2048
        public var lookups = 256
        public var chunk = 256 << 10
        public init() {}
    }

    /// What one run reached (for tests).
    public struct Outcome: Sendable, Equatable {
        /// The error that stopped opening or walking the image, if any.
        public var error: EROFSError?
        public var inodesVisited = 0
        public var fileBytesRead: UInt64 = 0
    }

    /// Rewrites the superblock checksum (when the image has one) to match the bytes: a fuzzer
    /// cannot guess CRCs, and nearly every mutation of the first block would stop at the check.
    public static func fixSuperblockChecksum(_ image: inout [UInt8]) {
        let offset = Superblock.offset
        guard image.count > offset else { return }
        let head = Array(image[offset...].prefix(4096))
        guard let superblock = try? Superblock(decoding: head), superblock.featureCompat.contains(.superblockChecksum),
            let checksum = try? superblock.computedChecksum(firstBlockFromSuperblock: head)
        else { return }
        for index in 0..<4 { image[offset + 4 + index] = UInt8(truncatingIfNeeded: checksum >> (8 * UInt32(index))) }
    }

    /// A libFuzzer input as an image: copied, its superblock checksum made to match.
    public static func image(fromFuzzerInput data: UnsafePointer<UInt8>, count: Int) -> [UInt8] {
        var image = Array(UnsafeBufferPointer(start: data, count: count))
        fixSuperblockChecksum(&image)
        return image
    }

    private static let budgetExhausted = EROFSError(.io, "exercise budget exhausted")

    @discardableResult
    public static func run(image: [UInt8], limits: Limits = Limits()) -> Outcome {
        var outcome = Outcome()
        let filesystem: EROFSFilesystem
        do {
            filesystem = try EROFSFilesystem(source: InMemorySource(image))
        } catch {
            outcome.error = error
            return outcome
        }
        _ = filesystem.compressionDescription
        _ = filesystem.longXattrPrefixes
        var paths: [ByteString] = []
        do {
            try filesystem.walk { (path, inode) throws(EROFSError) in
                guard outcome.inodesVisited < limits.inodes else { throw budgetExhausted }
                outcome.inodesVisited += 1
                if paths.count < limits.lookups { paths.append(path) }
                // Each step on its own: an error in one (a bad xattr) must not hide the others.
                _ = try? filesystem.xattrs(inode)
                switch inode.kind {
                case .symlink:
                    _ = try? filesystem.readLink(inode)
                case .file:
                    var offset: UInt64 = 0
                    while offset < inode.size, outcome.fileBytesRead < limits.fileBytes {
                        let count = Int(min(UInt64(limits.chunk), limits.fileBytes - outcome.fileBytesRead))
                        guard let chunk = try? filesystem.read(inode, at: offset, count: count), !chunk.isEmpty else {
                            break
                        }
                        offset += UInt64(chunk.count)
                        outcome.fileBytesRead += UInt64(chunk.count)
                    }
                    if inode.size > 0 { _ = try? filesystem.read(inode, at: inode.size - 1, count: 1) }
                default:
                    break
                }
            }
        } catch {
            if error != budgetExhausted { outcome.error = error }
        }
        for path in paths {
            _ = try? filesystem.lookup(path: path)
        }
        return outcome
    }
}
