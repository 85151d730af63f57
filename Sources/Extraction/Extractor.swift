import EROFSReader
import SystemCalls
#if canImport(Glibc)
import Glibc
#endif

/// Restores an image's tree under an open directory. Every object is created relative to an
/// open descriptor of its parent (openat/mkdirat/symlinkat/mknodat, O_NOFOLLOW, O_EXCL), and
/// names are checked first, so nothing in the image can make us write outside the destination.
///
/// Hostile shapes stay bounded: the walk is `TreeTraversal` (an explicit stack; a directory
/// reached twice is refused), at most `openDirectories` directory descriptors are held
/// however deep the tree (shallower ones are closed and reopened through ".." on the way back,
/// checked to be the directory made), holes are seeked over, never written, and the data to
/// write (holes not counted) must fit the destination's free space.
public struct Extractor {
    let filesystem: EROFSFilesystem
    let rootDescriptor: Int32
    let policy: ExtractPolicy
    /// Extract even when the files' data (holes not counted) exceeds the free space.
    let ignoreFreeSpace: Bool
    /// Directory descriptors held open at once (the root's not counted).
    let openDirectories: Int
    let destinationName: String
    /// First extracted path (relative to the root) of each multiply linked inode.
    var linkedPaths: [UInt64: ByteString] = [:]
    var warnings: [String] = []
    /// Regular files' data and metadata are written by worker threads while the walk goes on.
    let fileJobs: FileJobs
    let metadata: MetadataWriter
    /// What the policy left out, for one note at the end.
    public var withheld: Withheld { metadata.withheld }
    /// The directories from the root to where the walk is; only the deepest ones are open.
    var directories: [OpenDirectory] = []
    /// directories[lowestOpen...] are open (and directories[0], the root, always).
    var lowestOpen = 1
    /// Bytes of file data (holes not counted) the destination had room for at the start, and
    /// how many have been written or queued.
    var freeSpace: UInt64 = .max
    var dataQueued: UInt64 = 0

    struct OpenDirectory {
        var descriptor: Int32
        /// (st_dev, st_ino) of the directory made, to check a reopened one is the same.
        var identity: (UInt64, UInt64)
        var inode: Inode
    }

    /// `rootDescriptor`: the destination directory (not closed here); `destinationName` names
    /// it in messages.
    /// `filesInFlight`: regular files written concurrently by worker threads (each holds a
    /// descriptor).
    public init(
        filesystem: EROFSFilesystem, rootDescriptor: Int32, destinationName: String, policy: ExtractPolicy,
        ignoreFreeSpace: Bool = false, openDirectories: Int = 128, filesInFlight: Int = 32
    ) {
        self.filesystem = filesystem
        self.rootDescriptor = rootDescriptor
        self.destinationName = destinationName
        self.policy = policy
        self.ignoreFreeSpace = ignoreFreeSpace
        self.openDirectories = max(1, openDirectories)
        fileJobs = FileJobs(inFlight: max(1, filesInFlight))
        metadata = MetadataWriter(
            filesystem: filesystem, rootDescriptor: rootDescriptor, policy: policy, withheld: Withheld())
    }

    /// Extracts the whole tree; returns the warnings (objects skipped or metadata not restored),
    /// throws EROFSError or ExtractionError at the first failure. No file job outlives it.
    public mutating func run() throws -> [String] {
        defer {
            fileJobs.waitForAll()
            for directory in directories.dropFirst() where directory.descriptor >= 0 { close(directory.descriptor) }
            directories.removeAll()
        }
        if !ignoreFreeSpace {
            var status = statvfs()
            if fstatvfs(rootDescriptor, &status) == 0 { freeSpace = UInt64(status.f_bavail) &* UInt64(status.f_frsize) }
        }
        let root = try filesystem.inode(nid: filesystem.rootNid)
        // Names with '/' are skipped with a warning below, like every unsafe name.
        var traversal = TreeTraversal(filesystem, from: root, givesNamesWithSlash: true)
        while let event = try traversal.next() {
            switch event {
            case .enter(let inode) where traversal.depth == 0:
                guard inode.kind == .directory else {
                    throw EROFSError(.corrupt, "root inode is not a directory", path: "/", nid: inode.nid)
                }
                directories = [OpenDirectory(descriptor: rootDescriptor, identity: (0, 0), inode: inode)]
            case .enter(let inode):
                guard let name = Extractor.safeName(traversal.name) else {
                    warnings.append(
                        "skipped unsafe name \(ByteString(traversal.name)) in \(parentPath(traversal.path))")
                    if inode.kind == .directory { traversal.skipChildren() }
                    continue
                }
                try extract(inode, name: name, path: traversal.path)
            case .leave(let inode):
                try leaveDirectory(inode, path: traversal.path)
            }
        }
        warnings += try fileJobs.finish()
        return warnings
    }

    /// A name from the image that is safe as one path component, or nil.
    public static func safeName(_ name: [UInt8]) -> ByteString? {
        guard !name.isEmpty, name.count <= 255, !name.contains(0x2f), !name.contains(0),
            name != [0x2e], name != [0x2e, 0x2e]
        else { return nil }
        return ByteString(name)
    }

    static func failure(_ operation: String, _ path: ByteString) -> ExtractionError {
        ExtractionError(message: "\(operation) \(path) failed: \(String(cString: strerror(errno)))")
    }

    private func parentPath(_ path: ByteString) -> ByteString {
        guard let slash = path.bytes.lastIndex(of: 0x2f), slash != 0 else { return "/" }
        return ByteString(path.bytes[..<slash])
    }

    // MARK: Directories

    /// Applies the directory's metadata once everything in it exists, then closes it; the parent
    /// becomes the working directory again, reopened through ".." if it had been closed.
    private mutating func leaveDirectory(_ inode: Inode, path: ByteString) throws {
        let top = directories.count - 1
        let descriptor = directories[top].descriptor
        // DEST itself keeps its own metadata unless asked.
        if top > 0 || policy.rootMetadata {
            warnings += try metadata.apply(inode, descriptor: descriptor, parent: nil, name: nil, path: path)
        }
        guard top > 0 else { return }
        if lowestOpen == top && top > 1 {
            let parent = openat(descriptor, "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard parent >= 0 else { throw Extractor.failure("reopen", parentPath(path)) }
            directories[top - 1].descriptor = parent
            lowestOpen = top - 1
            guard identity(of: parent) == directories[top - 1].identity else {
                throw ExtractionError(
                    message: "\(parentPath(path)) in \(destinationName) was replaced during the extraction")
            }
        }
        close(descriptor)
        directories.removeLast()
    }

    private func identity(of descriptor: Int32) -> (UInt64, UInt64) {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { return (.max, .max) }
        return (UInt64(status.st_dev), UInt64(status.st_ino))
    }

    /// Makes `name` in the working directory and makes it the working directory; closes the
    /// shallowest open one when more than `openDirectories` would be open.
    private mutating func enterDirectory(_ inode: Inode, name: ByteString, path: ByteString) throws {
        let parent = directories[directories.count - 1].descriptor
        guard name.withCString({ mkdirat(parent, $0, 0o700) }) == 0 else { throw Extractor.failure("mkdir", path) }
        let descriptor = name.withCString { openat(parent, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard descriptor >= 0 else { throw Extractor.failure("open", path) }
        directories.append(OpenDirectory(descriptor: descriptor, identity: identity(of: descriptor), inode: inode))
        if directories.count - lowestOpen > openDirectories {
            close(directories[lowestOpen].descriptor)
            directories[lowestOpen].descriptor = -1
            lowestOpen += 1
        }
    }

    // MARK: Objects

    private mutating func extract(_ inode: Inode, name: ByteString, path: ByteString) throws {
        let parent = directories[directories.count - 1].descriptor
        if (inode.kind == .characterDevice || inode.kind == .blockDevice) && !policy.devices {
            withheld.device(path)
            return
        }
        if inode.kind != .directory && inode.linkCount > 1 {
            if let first = linkedPaths[inode.nid] {
                try link(first, to: name, in: parent, path: path)
                return
            }
            linkedPaths[inode.nid] = path
        }
        switch inode.kind {
        case .directory:
            try enterDirectory(inode, name: name, path: path)
            return
        case .file:
            try extractFile(inode, name: name, parent: parent, path: path)
            return
        case .symlink:
            let target = ByteString(try filesystem.readLink(inode))
            guard !target.bytes.contains(0) else {
                throw EROFSError(.corrupt, "symlink target contains NUL", path: path.description, nid: inode.nid)
            }
            let made = target.withCString { target in name.withCString { symlinkat(target, parent, $0) } }
            guard made == 0 else { throw Extractor.failure("symlink", path) }
        case .characterDevice, .blockDevice:
            let type: mode_t = inode.kind == .characterDevice ? S_IFCHR : S_IFBLK
            // glibc's makedev encoding (a macro Swift cannot import).
            let major = UInt64(inode.deviceMajor)
            let minor = UInt64(inode.deviceMinor)
            let device = dev_t((major & 0xfff) << 8 | (major & ~0xfff) << 32 | (minor & 0xff) | (minor & ~0xff) << 12)
            guard name.withCString({ mknodat(parent, $0, type | 0o600, device) }) == 0 else {
                throw Extractor.failure("mknod", path)
            }
        case .fifo:
            guard name.withCString({ mknodat(parent, $0, S_IFIFO | 0o600, 0) }) == 0 else {
                throw Extractor.failure("mkfifo", path)
            }
        case .socket:
            guard name.withCString({ mknodat(parent, $0, S_IFSOCK | 0o600, 0) }) == 0 else {
                throw Extractor.failure("mknod (socket)", path)
            }
        }
        warnings += try metadata.apply(inode, descriptor: nil, parent: parent, name: name, path: path)
    }

    /// A hard link to the first extracted path of the inode. That path is resolved one
    /// component at a time without following a symlink: linkat would follow one in a
    /// directory component, and whoever can write in DEST could swap a directory for a symlink
    /// and have root link a file from anywhere on the filesystem into the tree.
    private func link(_ first: ByteString, to name: ByteString, in parent: Int32, path: ByteString) throws {
        var directory = rootDescriptor
        defer { if directory != rootDescriptor { close(directory) } }
        var components = first.bytes.split(separator: 0x2f).map { ByteString($0) }
        let from = components.removeLast()
        for component in components {
            let next = component.withCString {
                openat(directory, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            guard next >= 0 else { throw Extractor.failure("link (open \(component))", path) }
            if directory != rootDescriptor { close(directory) }
            directory = next
        }
        let linked = from.withCString { from in name.withCString { linkat(directory, from, parent, $0, 0) } }
        guard linked == 0 else { throw Extractor.failure("link", path) }
    }

    /// Creates the file here (so that the walk's order holds: hard links, directory times); a
    /// worker fills it, seeking over holes, sets its size, metadata, and closes it.
    private mutating func extractFile(_ inode: Inode, name: ByteString, parent: Int32, path: ByteString) throws {
        guard inode.size <= UInt64(Int64.max) else {
            throw EROFSError(.corrupt, "file size \(inode.size) beyond 2^63", path: path.description, nid: inode.nid)
        }
        let stored = try filesystem.storedLength(of: inode)
        dataQueued &+= stored
        if dataQueued > freeSpace {
            throw ExtractionError(
                message:
                    "not enough space: \(path) would bring the data written to \(dataQueued) bytes (holes not counted), \(destinationName) had \(freeSpace) bytes free; --ignore-free-space to extract anyway"
            )
        }
        let descriptor = name.withCString {
            openat(parent, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
        guard descriptor >= 0 else { throw Extractor.failure("create", path) }
        let (filesystem, metadata) = (self.filesystem, self.metadata)
        do {
            try fileJobs.submit {
                defer { close(descriptor) }
                var writeFailed = false
                try filesystem.forEachRun(of: inode) { (offset, run) throws(EROFSError) in
                    guard !writeFailed, case .data(let chunk) = run else { return }
                    writeFailed = !Extractor.writeAll(chunk, to: descriptor, at: offset)
                }
                if writeFailed { throw Extractor.failure("write", path) }
                // Sets the size past a final hole (and is cheap when nothing is missing).
                guard ftruncate(descriptor, off_t(inode.size)) == 0 else { throw Extractor.failure("truncate", path) }
                return try metadata.apply(inode, descriptor: descriptor, parent: nil, name: nil, path: path)
            }
        } catch {
            close(descriptor)
            throw error
        }
    }

    /// pwrite until every byte is written (short writes happen on signals, near a full disk).
    static func writeAll(_ bytes: [UInt8], to descriptor: Int32, at offset: UInt64) -> Bool {
        bytes.withUnsafeBytes { buffer in
            var done = 0
            while done < buffer.count {
                let written = pwrite(
                    descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else { return false }
                done += written
            }
            return true
        }
    }
}
