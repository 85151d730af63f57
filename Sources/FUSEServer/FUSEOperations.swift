#if canImport(Glibc)
import Glibc
#endif
import EROFSReader
import FUSEProtocol
import Logging

/// What a request gets back: nothing (FORGET, INTERRUPT), one message, or a header and a
/// payload written together with writev (file data is not copied behind the header).
public enum FUSEResponse: Equatable, Sendable {
    case none
    case message([UInt8])
    case data(header: [UInt8], payload: [UInt8])
}

/// Node ids are nids: stable for the life of the mount and derivable from the image alone, so
/// a replacement worker (or a second thread) needs no table to answer a request. The kernel
/// fixes the root's node id at 1 and forbids 0, so every other nid travels as nid + 2.
public struct NodeIDMap: Sendable, Equatable {
    public let rootNid: UInt64

    public init(rootNid: UInt64) { self.rootNid = rootNid }

    public func nodeID(of nid: UInt64) -> UInt64 { nid == rootNid ? fuseRootNodeID : nid &+ 2 }

    /// nil for node id 0 (never valid) and ids no nid maps to.
    public func nid(of nodeID: UInt64) -> UInt64? {
        if nodeID == fuseRootNodeID { return rootNid }
        guard nodeID >= 2 else { return nil }
        let nid = nodeID - 2
        return nid == rootNid ? nil : nid
    }
}

/// The readdir position cookie: directory block and entry index inside it, as a byte offset
/// `block * blockSize + entry * 12` (the entry's dirent slot, so entry < blockSize / 12).
/// A READDIR resumes there directly: no re-walk from the first entry.
struct DirectoryCookie: Equatable {
    var block: UInt64
    var entry: Int

    init(block: UInt64, entry: Int) {
        self.block = block
        self.entry = entry
    }

    init(offset: UInt64, blockSize: Int) {
        block = offset / UInt64(blockSize)
        entry = Int(offset % UInt64(blockSize)) / 12
    }

    func offset(blockSize: Int) -> UInt64 { block &* UInt64(blockSize) &+ UInt64(entry * 12) }
}

/// Answers FUSE requests from an EROFS image. Stateless apart from the image: no open-file
/// table (file handles are 0), no lookup counts (node ids are nids), so any number of threads
/// and any later worker can serve the same connection.
public struct FUSEOperations: Sendable {
    public let filesystem: EROFSFilesystem
    public let nodes: NodeIDMap
    let logger: Logger
    let blockSize: Int

    /// O_DIRECT in fuse_read_in's flags (the file's open flags; x86_64 and arm64 value).
    static let directIOFlag: UInt32 = 0o40000

    /// The pages per request: 512 KiB. The mount's 1 MiB readahead window (FUSEBackend) then
    /// comes as two requests the threads answer at once, and each spliced reply (its header's
    /// page and 128 of data) fits a pipe of pipe-max-size (1 MiB; a bigger one needs
    /// CAP_SYS_RESOURCE, which a container may not give).
    public static let maxPages: UInt16 = 128
    static let wantedFlags: FUSEInitFlags = [
        .asyncRead, .parallelDirops, .doReaddirplus, .readdirplusAuto, .cacheSymlinks, .maxPages,
        // ACLs in xattrs are enforced by the kernel (default_permissions) only with this flag,
        // as the kernel's own EROFS enforces them.
        .posixACL,
    ]

    let errorLog: RateLimitedLog
    /// Pushes the small files after one read from its start (nil: off).
    let prefetch: SiblingPrefetch?

    /// The bytes of small files pushed after a read, by default (`fuse.prefetch_kb`).
    public static let defaultPrefetchBudget = 512 * 1024
    /// The longest symlink target a READLINK reply may carry: the kernel's PAGE_SIZE - 1.
    static let maximumLinkTarget = 4095

    public init(
        filesystem: EROFSFilesystem, logger: Logger, errorLog: RateLimitedLog? = nil,
        prefetchBudget: Int = FUSEOperations.defaultPrefetchBudget, prefetchAhead: SiblingPrefetch.Ahead = .auto
    ) {
        self.filesystem = filesystem
        self.logger = logger
        self.errorLog = errorLog ?? RateLimitedLog(logger: logger)
        prefetch = prefetchBudget > 0 ? SiblingPrefetch(budget: prefetchBudget, ahead: prefetchAhead) : nil
        nodes = NodeIDMap(rootNid: filesystem.rootNid)
        blockSize = filesystem.superblock.blockSize
    }

    /// The answer to one decoded request.
    public func respond(to request: FUSERequest) -> FUSEResponse {
        let unique = request.header.unique
        do {
            return try answer(request)
        } catch let failure as Failure {
            return .message(FUSEReply.error(unique: unique, errno: failure.errno))
        } catch {
            // A corrupt or unreadable image: EIO for this request, one line for the log (within
            // a budget: a reader looping over a damaged file must not fill /run).
            errorLog.log("\(request.header.opcode) on node \(request.header.nodeID): \(error)")
            return .message(FUSEReply.error(unique: unique, errno: EIO))
        }
    }

    /// An errno answer that is not an image problem (ENOENT, ERANGE...): not logged.
    struct Failure: Error {
        var errno: Int32
        init(_ errno: Int32) { self.errno = errno }
    }

    private func answer(_ request: FUSERequest) throws -> FUSEResponse {
        let unique = request.header.unique
        switch request.operation {
        case .initialize(let offer):
            return .message(initialize(unique: unique, offer))
        case .forget, .batchForget, .interrupt:
            return .none
        case .destroy:
            return .message(FUSEReply.success(unique: unique))
        case .sync:
            // ENOSYS: nothing to flush or sync on a read-only image, and the kernel then stops
            // sending FLUSH (one round trip per close(2)), FSYNC, FSYNCDIR and SYNCFS.
            return .message(FUSEReply.error(unique: unique, errno: ENOSYS))
        case .unsupported(.ioctl):
            // No ioctl of the kernel's EROFS applies; what any other file says.
            return .message(FUSEReply.error(unique: unique, errno: ENOTTY))
        case .modifying:
            return .message(FUSEReply.error(unique: unique, errno: EROFS))
        case .unsupported:
            return .message(FUSEReply.error(unique: unique, errno: ENOSYS))
        case .open, .opendir:
            // ENOSYS: the kernel stops sending OPEN/OPENDIR (and RELEASE) for this mount and
            // opens with FOPEN_KEEP_CACHE (directories also FOPEN_CACHE_DIR): one round trip
            // less per open(2), and nothing for a later worker to remember.
            return .message(FUSEReply.error(unique: unique, errno: ENOSYS))
        case .release, .releasedir:
            return .message(FUSEReply.success(unique: unique))
        case .statfs:
            let superblock = filesystem.superblock
            return .message(
                FUSEReply.statfs(
                    unique: unique,
                    FUSEStatfs(
                        blocks: superblock.blocks, files: superblock.inodeCount, blockSize: UInt32(superblock.blockSize)
                    )))
        case .lookup(let name):
            let parent = try inode(request)
            guard parent.kind == .directory else { throw Failure(ENOTDIR) }
            guard let nid = try filesystem.lookup(name, in: parent) else {
                // Node id 0 with a validity: the kernel caches the negative entry.
                return .message(
                    FUSEReply.entry(
                        unique: unique,
                        FUSEEntryOut(
                            nodeID: 0, entryValidity: .forever, attrValidity: .forever, attr: FUSEAttr.zero)))
            }
            return .message(FUSEReply.entry(unique: unique, try entry(nid: nid)))
        case .getattr:
            return .message(FUSEReply.attr(unique: unique, validity: .forever, attributes(try inode(request))))
        case .access(let mask):
            _ = try inode(request)
            return .message(
                mask & UInt32(W_OK) != 0
                    ? FUSEReply.error(unique: unique, errno: EROFS) : FUSEReply.success(unique: unique))
        case .readlink:
            let link = try inode(request)
            guard link.kind == .symlink else { throw Failure(EINVAL) }
            // The kernel's buffer holds PAGE_SIZE - 1 bytes, and it shows a 4096-byte target
            // of its own EROFS mount cut there: a longer reply would be refused (EIO).
            let target = try filesystem.readLink(link)
            return .message(FUSEReply.success(unique: unique, payload: Array(target.prefix(Self.maximumLinkTarget))))
        case .read(let read):
            let file = try inode(request)
            guard file.kind == .file else { throw Failure(file.kind == .directory ? EISDIR : EINVAL) }
            // O_DIRECT reads at an offset or of a size off the 512-byte sector: EINVAL, as the
            // kernel's EROFS answers them (FUSE itself would serve them; the buffer's own
            // alignment is not visible here).
            if read.flags & FUSEOperations.directIOFlag != 0, read.offset % 512 != 0 || read.size % 512 != 0 {
                throw Failure(EINVAL)
            }
            let count = Int(min(read.size, UInt32(FUSEOperations.maxPages) * 4096 * 4))
            let data = try filesystem.read(file, at: read.offset, count: count)
            return .data(header: FUSEReply.successHeader(unique: unique, payloadLength: data.count), payload: data)
        case .readdir(let read), .readdirplus(let read):
            let plus = if case .readdirplus = request.operation { true } else { false }
            let directory = try inode(request)
            guard directory.kind == .directory else { throw Failure(ENOTDIR) }
            let size = Int(min(read.size, 1 << 20))
            if plus && read.offset == 0, let payload = prefetch?.takePrepared(directory.nid, size: size) {
                return .message(FUSEReply.success(unique: unique, payload: payload))
            }
            let list = try readDirectory(directory, from: read.offset, size: size, plus: plus)
            return .message(FUSEReply.success(unique: unique, payload: list.bytes))
        case .getxattr(let name, let size):
            // Only the value asked for is read, and no value for a list: an image can make
            // every shared id of an inode name one 64 KiB entry.
            guard let value = try filesystem.xattr(try inode(request), named: name) else { throw Failure(ENODATA) }
            return .message(try sized(value, asked: size, unique: unique))
        case .listxattr(let size):
            var names: [UInt8] = []
            for name in try filesystem.xattrNames(try inode(request)) { names += name.bytes + [0] }
            return .message(try sized(names, asked: size, unique: unique))
        case .lseek(let seek):
            let file = try inode(request)
            guard file.kind == .file else { throw Failure(EINVAL) }
            let target: EROFSFilesystem.SeekTarget
            switch seek.whence {
            case FUSESeekWhence.data: target = .data
            case FUSESeekWhence.hole: target = .hole
            default: throw Failure(EINVAL)
            }
            guard let offset = try filesystem.seek(file, from: seek.offset, to: target) else { throw Failure(ENXIO) }
            return .message(FUSEReply.lseek(unique: unique, offset: offset))
        }
    }

    /// READs at least this long of a flat file go out spliced from the image file (`splicedRead`).
    static let spliceThreshold = 32 * 1024

    /// A READ of at least `spliceThreshold` bytes of a flat file that lie in one stretch of the
    /// image, itself in a file (a local image, or a remote image's checked block cache): the
    /// reply's header and where its data lies in that file, for FUSEServer to splice to the
    /// kernel without copying it through us. nil for anything else, including every error,
    /// which `respond` then answers.
    public func splicedRead(_ request: FUSERequest) -> (
        header: [UInt8], descriptor: Int32, offset: UInt64, length: Int
    )? {
        guard case .read(let read) = request.operation, read.size >= FUSEOperations.spliceThreshold,
            read.flags & FUSEOperations.directIOFlag == 0,
            let nid = nodes.nid(of: request.header.nodeID), let file = try? filesystem.inode(nid: nid),
            file.kind == .file,
            let range = try? filesystem.imageRange(of: file, at: read.offset, count: Int(read.size)),
            range.length >= FUSEOperations.spliceThreshold,
            let place = filesystem.source.fileRange(at: range.offset, count: range.length)
        else { return nil }
        return (
            FUSEReply.successHeader(unique: request.header.unique, payloadLength: range.length),
            place.descriptor.rawValue, place.offset, range.length
        )
    }

    /// GETXATTR/LISTXATTR's size protocol: 0 asks for the size, too small a buffer is ERANGE.
    private func sized(_ bytes: [UInt8], asked: UInt32, unique: UInt64) throws -> [UInt8] {
        if asked == 0 { return FUSEReply.xattrSize(unique: unique, size: UInt32(bytes.count)) }
        guard bytes.count <= Int(asked) else { throw Failure(ERANGE) }
        return FUSEReply.success(unique: unique, payload: bytes)
    }

    private func initialize(unique: UInt64, _ offer: FUSEInitIn) -> [UInt8] {
        guard offer.major == FUSEVersion.major, offer.minor >= FUSEVersion.oldestMinor else {
            logger.error(
                "the kernel speaks FUSE \(offer.major).\(offer.minor); this server needs 7.\(FUSEVersion.oldestMinor) or newer"
            )
            return FUSEReply.error(unique: unique, errno: EPROTO)
        }
        var flags = offer.flags.intersection(FUSEOperations.wantedFlags)
        if offer.flags.contains(.initExt) { flags.insert(.initExt) }
        return FUSEReply.initialize(
            unique: unique,
            FUSEInitOut(
                major: FUSEVersion.major, minor: min(offer.minor, FUSEVersion.minor), maxReadahead: offer.maxReadahead,
                flags: flags, maxBackground: 64, congestionThreshold: 48, maxWrite: 4096, timeGranularity: 1,
                maxPages: FUSEOperations.maxPages))
    }

    private func inode(_ request: FUSERequest) throws -> Inode {
        guard let nid = nodes.nid(of: request.header.nodeID) else { throw Failure(EINVAL) }
        return try filesystem.inode(nid: nid)
    }

    func entry(nid: UInt64) throws -> FUSEEntryOut {
        let child = try filesystem.inode(nid: nid)
        return FUSEEntryOut(
            nodeID: nodes.nodeID(of: nid), entryValidity: .forever, attrValidity: .forever, attr: attributes(child))
    }

    /// The attributes as the kernel's EROFS reports them (one time stamp for all three; blocks
    /// of 512 bytes: the compressed blocks of a compressed file, else the size rounded up).
    func attributes(_ inode: Inode) -> FUSEAttr {
        let blocks: UInt64
        if inode.layout.isCompressed {
            blocks = UInt64(inode.compressedBlocks) << (UInt64(filesystem.superblock.blockSizeBits) - 9)
        } else {
            let rounded = inode.size / UInt64(blockSize) + (inode.size % UInt64(blockSize) == 0 ? 0 : 1)
            blocks = rounded &* UInt64(blockSize / 512)
        }
        return FUSEAttr(
            ino: inode.nid, size: inode.size, blocks: blocks, mtime: inode.mtimeSeconds,
            mtimeNanoseconds: inode.mtimeNanoseconds,
            mode: UInt32(inode.mode), linkCount: inode.linkCount, uid: inode.uid, gid: inode.gid,
            rdev: inode.kind == .characterDevice || inode.kind == .blockDevice ? inode.rawDevice : 0,
            blockSize: UInt32(blockSize))
    }

    /// Entries from the cookie `offset` on, as many as fit `size` bytes; each carries the cookie
    /// of the entry after it.
    func readDirectory(_ directory: Inode, from offset: UInt64, size: Int, plus: Bool) throws -> FUSEDirentList {
        var list = FUSEDirentList(capacity: size, plus: plus)
        var cookie = DirectoryCookie(offset: offset, blockSize: blockSize)
        // The subdirectories listed, in order: where a walk goes next (SiblingPrefetch).
        var subdirectories: [UInt64] = []
        defer {
            if plus, let prefetch {
                prefetch.noteListedDirectories(subdirectories, size: size, firstListing: offset == 0)
            }
        }
        let blocks = try filesystem.directoryBlockCount(directory)
        while cookie.block < blocks {
            let entries = try filesystem.directoryBlock(directory, index: cookie.block)
            if plus && cookie.entry < entries.count {
                filesystem.readAheadInodes(of: entries[cookie.entry...])
            }
            for index in cookie.entry..<max(cookie.entry, entries.count) {
                let item = entries[index]
                let next =
                    index + 1 < entries.count
                    ? DirectoryCookie(block: cookie.block, entry: index + 1)
                    : DirectoryCookie(block: cookie.block + 1, entry: 0)
                let isDot = item.name == [0x2e] || item.name == [0x2e, 0x2e]
                // A child that cannot be read goes without attributes: its LOOKUP then fails
                // alone (EIO), as on the kernel's EROFS, where readdir reads no child inode.
                let entry = plus && !isDot ? try? self.entry(nid: item.nid) : nil
                if let prefetch, let entry, entry.attr.mode & UInt32(S_IFMT) == UInt32(S_IFREG) {
                    prefetch.noteListed(item.nid, in: directory.nid, next: next.offset(blockSize: blockSize))
                }
                if plus && !isDot && item.fileType == 2 { subdirectories.append(item.nid) }
                let appended = list.append(
                    name: item.name, ino: item.nid, type: FUSEOperations.direntType(item.fileType),
                    nextOffset: next.offset(blockSize: blockSize), entry: entry)
                guard appended else {
                    if list.count == 0 { throw Failure(EINVAL) }  // not even one entry fits the buffer
                    return list
                }
            }
            cookie = DirectoryCookie(block: cookie.block + 1, entry: 0)
        }
        if plus { prefetch?.noteListedToEnd(directory.nid) }
        return list
    }

    /// Makes the first READDIRPLUS reply of the directory a walk lists after `directory`, so
    /// that the reader, done with `directory`, finds its next listing made (SiblingPrefetch).
    /// Run by the pushing thread after a push, while the reader reads the files pushed.
    public func prepareListing(after directory: UInt64) {
        guard let prefetch, let (next, size) = prefetch.listingToPrepare(after: directory),
            let inode = try? filesystem.inode(nid: next), inode.kind == .directory,
            let list = try? readDirectory(inode, from: 0, size: size, plus: true)
        else { return }
        prefetch.storePrepared(.init(directory: next, size: size, payload: list.bytes))
    }

    /// EROFS_FT_* to DT_*.
    static func direntType(_ fileType: UInt8) -> UInt32 {
        switch fileType {
        case 1: FUSEDirentType.regular
        case 2: FUSEDirentType.directory
        case 3: FUSEDirentType.characterDevice
        case 4: FUSEDirentType.blockDevice
        case 5: FUSEDirentType.fifo
        case 6: FUSEDirentType.socket
        case 7: FUSEDirentType.symlink
        default: FUSEDirentType.unknown
        }
    }
}

extension FUSEAttr {
    static let zero = FUSEAttr(
        ino: 0, size: 0, blocks: 0, mtime: 0, mtimeNanoseconds: 0, mode: 0, linkCount: 0,
        uid: 0, gid: 0, rdev: 0, blockSize: 0)
}
