#if canImport(Glibc)
import Glibc
#endif
import EROFSReader
import FUSEProtocol
@testable import FUSEServer
import Logging
import ReaderFuzzSupport
import Synchronization
import Testing
import TestSupport

/// The request handler alone, over corpus images: what each operation answers, without a
/// kernel in the loop (FUSEMountTests covers the kernel's side).
@Suite struct FUSEOperationsTests {
    static let plain = Corpus.imagesOrEmpty.first { $0.name == "plain" }

    let operations: FUSEOperations

    init() throws {
        let image = try #require(FUSEOperationsTests.plain, "the corpus (../shared/corpus or $EROFS_CORPUS) is missing")
        operations = FUSEOperations(filesystem: try EROFSFilesystem(path: image.path), logger: Logger(label: "test"))
    }

    /// Sends one request; returns the reply's error (0 or a negative errno) and payload.
    func ask(
        _ opcode: FUSEOpcode, node: UInt64 = 1, body: [UInt8] = [], of operations: FUSEOperations? = nil
    ) throws -> (error: Int32, payload: [UInt8]) {
        let header = FUSEInHeader(length: UInt32(40 + body.count), opcode: opcode, unique: 5, nodeID: node)
        let response = (operations ?? self.operations).respond(to: try FUSERequest(decoding: header.encoded() + body))
        let bytes: [UInt8]
        switch response {
        case .none: return (1, [])  // no reply at all
        case .message(let message): bytes = message
        case .data(let head, let payload): bytes = head + payload
        }
        let (length, error, unique) = bytes.withUnsafeBytes {
            (
                $0.loadUnaligned(as: UInt32.self), $0.loadUnaligned(fromByteOffset: 4, as: Int32.self),
                $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            )
        }
        #expect(Int(length) == bytes.count && unique == 5)
        return (error, Array(bytes.dropFirst(16)))
    }

    func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
    func u64(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
    }
    func u32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
    }

    func lookup(_ name: String, in node: UInt64 = 1) throws -> (error: Int32, nodeID: UInt64) {
        let reply = try ask(.lookup, node: node, body: Array(name.utf8) + [0])
        return (reply.error, reply.error == 0 ? u64(reply.payload, at: 0) : 0)
    }

    func readdir(_ node: UInt64, offset: UInt64, size: UInt32) throws -> [(name: String, next: UInt64)] {
        let body = le(UInt64(0)) + le(offset) + le(size) + le(UInt32(0)) + le(UInt64(0)) + le(UInt32(0)) + le(UInt32(0))
        let reply = try ask(.readdir, node: node, body: body)
        #expect(reply.error == 0)
        var entries: [(String, UInt64)] = []
        var position = 0
        while position + 24 <= reply.payload.count {
            let next = u64(reply.payload, at: position + 8)
            let length = Int(u32(reply.payload, at: position + 16))
            entries.append(
                (String(decoding: reply.payload[(position + 24)..<(position + 24 + length)], as: UTF8.self), next))
            position += (24 + length + 7) & ~7
        }
        return entries
    }

    @Test func initNegotiatesWhatTheKernelOffersAndWeWant() throws {
        let offered: UInt32 = 1 | 1 << 13 | 1 << 14 | 1 << 18 | 1 << 20 | 1 << 22 | 1 << 23 | 1 << 16 | 1 << 30
        let reply = try ask(
            .initialize,
            body: le(UInt32(7)) + le(UInt32(41)) + le(UInt32(1 << 20)) + le(offered)
                + le(UInt32(1 << 7)) + [UInt8](repeating: 0, count: 44))
        #expect(reply.error == 0 && reply.payload.count == 64)
        #expect(u32(reply.payload, at: 4) == FUSEVersion.minor)
        #expect(u32(reply.payload, at: 8) == 1 << 20)  // max_readahead: all the kernel offers
        let flags = FUSEInitFlags(rawValue: UInt64(u32(reply.payload, at: 12)))
        #expect(
            flags.isSuperset(of: [
                .asyncRead, .doReaddirplus, .readdirplusAuto, .parallelDirops, .posixACL, .maxPages, .cacheSymlinks,
            ]))
        #expect(!flags.contains(.writebackCache))  // offered, not wanted on a read-only image
        #expect(u32(reply.payload, at: 32) == 0)  // flags2: HAS_RESEND offered, not taken (yet)
        // Too old a kernel is refused.
        let old = try ask(.initialize, body: le(UInt32(7)) + le(UInt32(22)) + le(UInt32(4096)) + le(UInt32(1)))
        #expect(old.error == -EPROTO)
    }

    @Test func lookupFindsNamesAndCachesAbsentOnes() throws {
        let dev = try lookup("dev")
        #expect(dev.error == 0 && dev.nodeID >= 2)
        #expect(try lookup("block", in: dev.nodeID).error == 0)
        let absent = try ask(.lookup, body: Array("no-such-name".utf8) + [0])
        // A negative entry: success with node id 0 and a validity, which the kernel caches.
        #expect(absent.error == 0 && u64(absent.payload, at: 0) == 0 && u64(absent.payload, at: 16) > 0)
        let block = try lookup("block", in: dev.nodeID)
        #expect(try lookup("x", in: block.nodeID).error == -ENOTDIR)
    }

    @Test func hostileNodeIDsAreRefusedNotTrusted() throws {
        #expect(try ask(.getattr, node: 0).error == -EINVAL)
        for node in [UInt64(2), 1 << 40, .max, .max - 1] {
            let reply = try ask(.getattr, node: node)
            #expect(reply.error == -EINVAL || reply.error == -EIO, "node \(node): \(reply.error)")
        }
    }

    @Test func openFlushAndFsyncAnswerENOSYSSoTheKernelStopsAsking() throws {
        #expect(try ask(.open, body: le(UInt32(0)) + le(UInt32(0))).error == -ENOSYS)
        #expect(try ask(.opendir, body: le(UInt32(0)) + le(UInt32(0))).error == -ENOSYS)
        #expect(try ask(.flush, body: [UInt8](repeating: 0, count: 24)).error == -ENOSYS)
        #expect(try ask(.fsync, body: [UInt8](repeating: 0, count: 16)).error == -ENOSYS)
        #expect(try ask(.write, body: [UInt8](repeating: 0, count: 48)).error == -EROFS)
        #expect(try ask(.mkdir, body: [UInt8](repeating: 0, count: 10)).error == -EROFS)
        #expect(try ask(.ioctl, body: [UInt8](repeating: 0, count: 32)).error == -ENOTTY)
        #expect(try ask(FUSEOpcode(rawValue: 999)).error == -ENOSYS)
        #expect(try ask(.forget, body: le(UInt64(1))).error == 1)  // no reply
    }

    /// Small buffers force many READDIRs; resuming at each returned cookie lists every entry
    /// once, in order, like one big READDIR.
    @Test func readdirResumesAtEachCookie() throws {
        let wide = try lookup("wide")
        try #require(wide.error == 0)
        let whole = try readdir(wide.nodeID, offset: 0, size: 1 << 20)
        #expect(whole.count > 100)
        var pieces: [(name: String, next: UInt64)] = []
        var offset: UInt64 = 0
        while true {
            let piece = try readdir(wide.nodeID, offset: offset, size: 200)
            if piece.isEmpty { break }
            pieces += piece
            offset = piece.last!.next
        }
        #expect(pieces.map(\.name) == whole.map(\.name))
        #expect(Set(whole.map(\.next)).count == whole.count)  // every cookie distinct
        // A cookie past the end, and one inside a block past its last entry, end the listing.
        #expect(try readdir(wide.nodeID, offset: 1 << 40, size: 4096).isEmpty)
    }

    /// A listing made ahead of its READDIRPLUS (SiblingPrefetch: the directory after the one a
    /// walk is done with) is the very reply the directory gives when asked with nothing made.
    @Test func aListingMadeAheadIsTheReplyMadeOnDemand() throws {
        let image = try #require(FUSEOperationsTests.plain)
        let filesystem = try EROFSFilesystem(path: image.path)
        let walking = FUSEOperations(filesystem: filesystem, logger: Logger(label: "test"), prefetchAhead: .on)
        let size: UInt32 = 4096
        func readdirplus(_ node: UInt64, of operations: FUSEOperations) throws -> [UInt8] {
            let body =
                le(UInt64(0)) + le(UInt64(0)) + le(size) + le(UInt32(0)) + le(UInt64(0)) + le(UInt32(0)) + le(UInt32(0))
            let reply = try ask(.readdirplus, node: node, body: body, of: operations)
            #expect(reply.error == 0)
            return reply.payload
        }
        // The root's listing gives the order of its subdirectories.
        _ = try readdirplus(1, of: walking)
        let subdirectories = try filesystem.readDirectory(try filesystem.inode(nid: filesystem.rootNid))
            .filter { $0.fileType == 2 && $0.name != [0x2e] && $0.name != [0x2e, 0x2e] }.map(\.nid)
        try #require(subdirectories.count >= 3)
        for (done, next) in zip(subdirectories, subdirectories.dropFirst()) {
            walking.prepareListing(after: done)
            #expect(walking.prefetch?.preparedDirectories == [next])
            let made = try readdirplus(walking.nodes.nodeID(of: next), of: walking)
            #expect(walking.prefetch?.preparedDirectories == [], "the listing made ahead was not given")
            #expect(made == (try readdirplus(operations.nodes.nodeID(of: next), of: operations)))
        }
    }

    @Test func xattrSizeProbeAndRange() throws {
        let xattrs = try lookup("xattrs")
        try #require(xattrs.error == 0)
        let list = try ask(.listxattr, node: xattrs.nodeID, body: le(UInt32(0)) + le(UInt32(0)))
        #expect(list.error == 0 && list.payload.count == 8)
        let size = u32(list.payload, at: 0)
        #expect(size > 0)
        let names = try ask(.listxattr, node: xattrs.nodeID, body: le(UInt32(size)) + le(UInt32(0)))
        #expect(names.error == 0 && names.payload.count == Int(size))
        #expect(try ask(.listxattr, node: xattrs.nodeID, body: le(UInt32(size - 1)) + le(UInt32(0))).error == -ERANGE)
        let missing = try ask(
            .getxattr, node: xattrs.nodeID, body: le(UInt32(0)) + le(UInt32(0)) + Array("user.none".utf8) + [0])
        #expect(missing.error == -ENODATA)
    }

    /// A 4096-byte symlink target goes out cut to 4095 bytes, as the kernel shows it on its own
    /// EROFS mount: the whole target was refused by the kernel (EIO) and logged at every
    /// readlink, a log any user could grow. 4095 bytes go out whole.
    @Test func aLinkTargetIsCutToWhatTheKernelTakes() throws {
        var image = CraftedImage()
        let long = (0..<4096).map { UInt8(ascii: "a") &+ UInt8($0 % 26) }
        image.add(CraftedImage.Node(.symlink(long), permissions: 0o777), named: "long", in: image.root)
        image.add(
            CraftedImage.Node(.symlink(Array(long.prefix(4095))), permissions: 0o777), named: "max", in: image.root)
        let operations = FUSEOperations(
            filesystem: try EROFSFilesystem(source: InMemorySource(image.bytes())), logger: Logger(label: "test"))
        for name in ["long", "max"] {
            let found = try ask(.lookup, node: 1, body: Array(name.utf8) + [0], of: operations)
            try #require(found.error == 0)
            let target = try ask(.readlink, node: u64(found.payload, at: 0), of: operations)
            #expect(target.error == 0 && target.payload == Array(long.prefix(4095)), "\(name)")
        }
    }
}

/// Log lines kept in memory, for the error budget test.
final class CapturedLog: Sendable {
    private let stored = Mutex<[String]>([])
    var lines: [String] { stored.withLock { $0 } }
    func append(_ line: String) { stored.withLock { $0.append(line) } }
}

struct CapturingHandler: LogHandler {
    let sink: CapturedLog
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { sink.append("\(event.message)") }
}

@Suite struct RateLimitedLogTests {
    final class FakeClock: @unchecked Sendable {
        var now = 100.0
    }

    @Test func aBurstIsLoggedTheRestCountedOnce() {
        let sink = CapturedLog()
        let clock = FakeClock()
        let log = RateLimitedLog(
            logger: Logger(label: "t") { _ in CapturingHandler(sink: sink) }, burst: 3, window: 10, clock: { clock.now }
        )
        for index in 0..<1000 { log.log("error \(index)") }
        #expect(sink.lines == ["error 0", "error 1", "error 2"])
        clock.now += 10
        log.log("later")
        #expect(sink.lines.suffix(2) == ["997 more errors were not logged", "later"])
    }
}
