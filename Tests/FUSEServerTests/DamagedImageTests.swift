#if canImport(Glibc)
import Glibc
#endif
import EROFSReader
import Foundation
import FUSEProtocol
import FUSEServer
import Logging
import ReaderFuzzSupport
import Testing
import TestSupport

/// Damaged images served through the request handler: every request gets a well-formed answer
/// (data, or one of the errnos a read-only filesystem gives), never a trap. Mutations land in
/// the metadata area half of the time, anywhere in the image otherwise.
@Suite struct DamagedImageTests {
    static let allowed: Set<Int32> = [0, -EIO, -ENOENT, -ENOTDIR, -EINVAL, -ENODATA, -ERANGE, -ENXIO, -EISDIR]

    /// Walks the tree the way the kernel would: READDIRPLUS from the root, LOOKUP, GETATTR,
    /// READLINK, READ, LISTXATTR/GETXATTR and LSEEK on what it finds, within a budget.
    /// Returns how many entries it reached.
    static func crawl(_ operations: FUSEOperations, budget: Int = 250) -> Int {
        var unique: UInt64 = 0
        func ask(_ opcode: FUSEOpcode, _ node: UInt64, _ body: [UInt8]) -> (Int32, [UInt8]) {
            unique += 1
            let header = FUSEInHeader(length: UInt32(40 + body.count), opcode: opcode, unique: unique, nodeID: node)
            guard let request = try? FUSERequest(decoding: header.encoded() + body) else {
                Issue.record("our own request did not decode")
                return (0, [])
            }
            let bytes: [UInt8]
            switch operations.respond(to: request) {
            case .none: return (0, [])
            case .message(let message): bytes = message
            case .data(let head, let payload): bytes = head + payload
            }
            let (length, error) = bytes.withUnsafeBytes {
                ($0.loadUnaligned(as: UInt32.self), $0.loadUnaligned(fromByteOffset: 4, as: Int32.self))
            }
            #expect(Int(length) == bytes.count)
            #expect(allowed.contains(error), "\(opcode): errno \(-error)")
            return (error, Array(bytes.dropFirst(16)))
        }
        func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
        func readIn(_ offset: UInt64, _ size: UInt32) -> [UInt8] {
            le(UInt64(0)) + le(offset) + le(size) + le(UInt32(0)) + le(UInt64(0)) + le(UInt32(0)) + le(UInt32(0))
        }
        var pending: [UInt64] = [fuseRootNodeID]
        var reached = 0
        var visited: Set<UInt64> = []
        while let directory = pending.popLast(), reached < budget {
            guard visited.insert(directory).inserted else { continue }
            var offset: UInt64 = 0
            for _ in 0..<64 {  // at most 64 READDIRPLUS per directory
                let (error, payload) = ask(.readdirplus, directory, readIn(offset, 4096))
                guard error == 0, !payload.isEmpty else { break }
                var position = 0
                while position + 152 <= payload.count, reached < budget {
                    let node = payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: position, as: UInt64.self) }
                    let mode = payload.withUnsafeBytes {
                        $0.loadUnaligned(fromByteOffset: position + 40 + 60, as: UInt32.self)
                    }
                    offset = payload.withUnsafeBytes {
                        $0.loadUnaligned(fromByteOffset: position + 128 + 8, as: UInt64.self)
                    }
                    let nameLength = Int(
                        payload.withUnsafeBytes {
                            $0.loadUnaligned(fromByteOffset: position + 128 + 16, as: UInt32.self)
                        })
                    guard position + 152 + nameLength <= payload.count else {
                        Issue.record("dirent overruns the reply"); break
                    }
                    let name = Array(payload[(position + 152)..<(position + 152 + nameLength)])
                    position += (152 + nameLength + 7) & ~7
                    reached += 1
                    _ = ask(.lookup, directory, name + [0])
                    guard node != 0 else { continue }
                    _ = ask(.getattr, node, [UInt8](repeating: 0, count: 16))
                    _ = ask(.listxattr, node, le(UInt32(0)) + le(UInt32(0)))
                    _ = ask(.getxattr, node, le(UInt32(256)) + le(UInt32(0)) + Array("user.a".utf8) + [0])
                    switch mode & 0o170000 {
                    case 0o040000: pending.append(node)
                    case 0o120000: _ = ask(.readlink, node, [])
                    case 0o100000:
                        _ = ask(.read, node, readIn(0, 65536))
                        _ = ask(.read, node, readIn(1 << 20, 4096))
                        _ = ask(.lseek, node, le(UInt64(0)) + le(UInt64(0)) + le(FUSESeekWhence.hole) + le(UInt32(0)))
                    default: break
                    }
                }
            }
        }
        return reached
    }

    @Test(arguments: ["plain", "lz4", "chunked", "metadata-compressed", "ztailpacking-fragments-dedupe"])
    func mutatedImagesGetWellFormedAnswers(name: String) throws {
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == name }, "the corpus is missing")
        let pristine = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image.path)))
        let logger = Logger(label: "damaged") { _ in SwiftLogNoOpLogHandler() }
        let clean = try EROFSFilesystem(source: InMemorySource(pristine))
        #expect(DamagedImageTests.crawl(FUSEOperations(filesystem: clean, logger: logger)) > 50)
        let metadata = Int(clean.superblock.metaBlockAddress) * clean.superblock.blockSize
        var generator = SplitMix64(seed: 0xFE5E ^ UInt64(name.utf8.count))
        var opened = 0
        for _ in 0..<24 {
            var bytes = pristine
            for _ in 0..<Int.random(in: 1...8, using: &generator) {
                let near = Bool.random(using: &generator)
                let start = near ? min(metadata, bytes.count - 1) : 0
                let end = near ? min(bytes.count, metadata + 64 * 1024) : bytes.count
                let index = Int.random(in: start..<end, using: &generator)
                bytes[index] = UInt8.random(in: 0...255, using: &generator)
            }
            ReaderExercise.fixSuperblockChecksum(&bytes)
            guard let filesystem = try? EROFSFilesystem(source: InMemorySource(bytes)) else { continue }
            opened += 1
            _ = DamagedImageTests.crawl(FUSEOperations(filesystem: filesystem, logger: logger))
        }
        #expect(opened > 12)
    }
}
