import ArgumentParser
import Dispatch
import EROFSReader
import CShim
import Synchronization
import SystemCalls
#if canImport(Glibc)
import Glibc
#endif

/// `erofs extract IMAGE DIR`: restores the tree under DIR. Every object is created relative to
/// an open descriptor of its parent (openat/mkdirat/symlinkat/mknodat, O_NOFOLLOW, O_EXCL), and
/// names are checked first, so nothing in the image can make us write outside DIR. Names are
/// bytes from the image to the syscall.
struct ExtractCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Extract an image into a directory: contents, modes, owners, times, xattrs, links, devices.")

    @Argument(help: "The EROFS image.") var image: String
    @Argument(help: "Destination directory (created if missing; must be empty).") var directory: String
    @OptionGroup var extraDevices: ExtraDeviceOptions
    @Flag(help: "Do not restore owners (default when not root).") var noOwners = false

    func run() throws {
        let filesystem: EROFSFilesystem
        do { filesystem = try extraDevices.open(image) } catch { throw failing(error) }
        let destination = try RawArguments.bytes(of: directory)
        if destination.withCString({ mkdir($0, 0o700) }) != 0 && errno != EEXIST {
            FileHandleStandardError.write("erofs: cannot create \(destination): errno \(errno)\n")
            throw ExitCode(1)
        }
        let rootDescriptor = destination.withCString { open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard rootDescriptor >= 0 else {
            FileHandleStandardError.write("erofs: cannot open \(destination): errno \(errno)\n")
            throw ExitCode(1)
        }
        defer { close(rootDescriptor) }
        var extractor = Extractor(filesystem: filesystem, rootDescriptor: rootDescriptor, restoreOwners: !noOwners && geteuid() == 0)
        // Whatever happens, no file job outlives the command.
        defer { extractor.fileJobs.waitForAll() }
        do {
            let root = try filesystem.inode(nid: filesystem.rootNid)
            try extractor.extractDirectory(root, descriptor: rootDescriptor, path: "/")
            extractor.warnings += try extractor.fileJobs.finish()
        } catch let error as EROFSError {
            throw failing(error)
        } catch let error as ExtractionError {
            FileHandleStandardError.write("erofs: \(error.message)\n")
            throw ExitCode(1)
        }
        for warning in extractor.warnings.prefix(20) { FileHandleStandardError.write("erofs: warning: \(warning)\n") }
        if extractor.warnings.count > 20 { FileHandleStandardError.write("erofs: \(extractor.warnings.count - 20) more warnings\n") }
        if !extractor.warnings.isEmpty { throw ExitCode(2) }
    }
}

struct ExtractionError: Error {
    var message: String
}

struct Extractor {
    let filesystem: EROFSFilesystem
    let rootDescriptor: Int32
    let restoreOwners: Bool
    /// First extracted path (relative to the root) of each multiply linked inode.
    var linkedPaths: [UInt64: ByteString] = [:]
    var warnings: [String] = []
    var activeDirectories: Set<UInt64> = []
    /// Regular files' data and metadata are written by worker threads while this walk goes on.
    let fileJobs = FileJobs(inFlight: 32)
    let metadata: MetadataWriter

    init(filesystem: EROFSFilesystem, rootDescriptor: Int32, restoreOwners: Bool) {
        self.filesystem = filesystem
        self.rootDescriptor = rootDescriptor
        self.restoreOwners = restoreOwners
        metadata = MetadataWriter(filesystem: filesystem, rootDescriptor: rootDescriptor, restoreOwners: restoreOwners)
    }

    /// A name from the image that is safe as one path component, or nil.
    static func safeName(_ name: [UInt8]) -> ByteString? {
        guard !name.isEmpty, name.count <= 255, !name.contains(0x2f), !name.contains(0),
            name != [0x2e], name != [0x2e, 0x2e]
        else { return nil }
        return ByteString(name)
    }

    func failure(_ operation: String, _ path: ByteString) -> ExtractionError {
        Extractor.failure(operation, path)
    }

    static func failure(_ operation: String, _ path: ByteString) -> ExtractionError {
        ExtractionError(message: "\(operation) \(path) failed: \(String(cString: strerror(errno)))")
    }

    /// Extracts the children of `directory` into the open `descriptor`, then its own metadata.
    mutating func extractDirectory(_ directory: Inode, descriptor: Int32, path: ByteString) throws {
        guard activeDirectories.insert(directory.nid).inserted else {
            throw EROFSError(.corrupt, "directory cycle", path: path.description, nid: directory.nid)
        }
        defer { activeDirectories.remove(directory.nid) }
        for entry in try filesystem.readDirectory(directory) where entry.name != [0x2e] && entry.name != [0x2e, 0x2e] {
            guard let name = Extractor.safeName(entry.name) else {
                warnings.append("skipped unsafe name \(entry.nameBytes) in \(path)")
                continue
            }
            let childPath = path.appending(component: name)
            let child = try filesystem.inode(nid: entry.nid)
            try extract(child, name: name, into: descriptor, path: childPath)
        }
        try applyMetadata(directory, descriptor: descriptor, parent: nil, name: nil, path: path)
    }

    mutating func extract(_ inode: Inode, name: ByteString, into parent: Int32, path: ByteString) throws {
        if inode.kind != .directory && inode.linkCount > 1 {
            if let first = linkedPaths[inode.nid] {
                let relative = ByteString(first.bytes.dropFirst())
                let linked = relative.withCString { from in name.withCString { linkat(rootDescriptor, from, parent, $0, 0) } }
                guard linked == 0 else { throw failure("link", path) }
                return
            }
            linkedPaths[inode.nid] = path
        }
        let mode = mode_t(inode.permissions)
        switch inode.kind {
        case .directory:
            guard name.withCString({ mkdirat(parent, $0, 0o700) }) == 0 else { throw failure("mkdir", path) }
            let descriptor = name.withCString { openat(parent, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            guard descriptor >= 0 else { throw failure("open", path) }
            defer { close(descriptor) }
            try extractDirectory(inode, descriptor: descriptor, path: path)
            return
        case .file:
            // Created here, so that the walk's order holds (hard links, directory times);
            // filled, finished and closed by a worker.
            let descriptor = name.withCString { openat(parent, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
            guard descriptor >= 0 else { throw failure("create", path) }
            let (filesystem, metadata) = (self.filesystem, self.metadata)
            do {
                try fileJobs.submit {
                    defer { close(descriptor) }
                    var offset: Int64 = 0
                    var writeFailed = false
                    try filesystem.forEachChunk(of: inode) { chunk throws(EROFSError) in
                        if writeFailed { return }
                        let written = chunk.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, off_t(offset)) }
                        if written != chunk.count { writeFailed = true }
                        offset += Int64(chunk.count)
                    }
                    if writeFailed { throw Extractor.failure("write", path) }
                    // Only a file that ends in a hole needs its size set: one syscall less per file.
                    if UInt64(offset) != inode.size, ftruncate(descriptor, off_t(inode.size)) != 0 {
                        throw Extractor.failure("truncate", path)
                    }
                    return try metadata.apply(inode, descriptor: descriptor, parent: nil, name: nil, path: path)
                }
            } catch {
                close(descriptor)
                throw error
            }
            return
        case .symlink:
            let target = ByteString(try filesystem.readLink(inode))
            guard !target.bytes.contains(0) else { throw EROFSError(.corrupt, "symlink target contains NUL", path: path.description, nid: inode.nid) }
            let made = target.withCString { target in name.withCString { symlinkat(target, parent, $0) } }
            guard made == 0 else { throw failure("symlink", path) }
        case .characterDevice, .blockDevice:
            let type: mode_t = inode.kind == .characterDevice ? S_IFCHR : S_IFBLK
            // glibc's makedev encoding (a macro Swift cannot import).
            let major = UInt64(inode.deviceMajor), minor = UInt64(inode.deviceMinor)
            let device = dev_t((major & 0xfff) << 8 | (major & ~0xfff) << 32 | (minor & 0xff) | (minor & ~0xff) << 12)
            guard name.withCString({ mknodat(parent, $0, type | mode, device) }) == 0 else { throw failure("mknod", path) }
        case .fifo:
            guard name.withCString({ mknodat(parent, $0, S_IFIFO | mode, 0) }) == 0 else { throw failure("mkfifo", path) }
        case .socket:
            guard name.withCString({ mknodat(parent, $0, S_IFSOCK | mode, 0) }) == 0 else { throw failure("mknod (socket)", path) }
        }
        try applyMetadata(inode, descriptor: nil, parent: parent, name: name, path: path)
    }

    mutating func applyMetadata(_ inode: Inode, descriptor: Int32?, parent: Int32?, name: ByteString?, path: ByteString) throws {
        warnings += try metadata.apply(inode, descriptor: descriptor, parent: parent, name: name, path: path)
    }
}

/// Restores an object's metadata; shared by the walk and the file workers.
struct MetadataWriter: Sendable {
    let filesystem: EROFSFilesystem
    let rootDescriptor: Int32
    let restoreOwners: Bool

    /// Owner, xattrs, mode (after the owner: chown clears setuid), then times.
    /// Returns the warnings (failed chown, setxattr, chmod, utimensat) it met.
    func apply(_ inode: Inode, descriptor: Int32?, parent: Int32?, name: ByteString?, path: ByteString) throws -> [String] {
        var warnings: [String] = []
        let isSymlink = inode.kind == .symlink
        let name = name ?? ""
        // Objects without a usable descriptor are reached through /proc/self/fd/<parent>/<name>,
        // which never follows a symlink in the last component with the l* calls.
        let procPath: ByteString? = parent.map { ByteString("/proc/self/fd/\($0)/") + name }
        if restoreOwners {
            let result: Int32
            if let descriptor { result = fchown(descriptor, inode.uid, inode.gid) } else {
                result = name.withCString { fchownat(parent ?? rootDescriptor, $0, inode.uid, inode.gid, AT_SYMLINK_NOFOLLOW) }
            }
            if result != 0 { warnings.append("chown \(path): \(String(cString: strerror(errno)))") }
        }
        for (attribute, value) in try filesystem.xattrs(inode) {
            let result: Int32 = value.withUnsafeBytes { bytes in
                if let descriptor { return fsetxattr(descriptor, attribute, bytes.baseAddress, bytes.count, 0) }
                return (procPath ?? "").withCString { lsetxattr($0, attribute, bytes.baseAddress, bytes.count, 0) }
            }
            if result != 0 { warnings.append("setxattr \(attribute) on \(path): \(String(cString: strerror(errno)))") }
        }
        if !isSymlink {
            let mode = mode_t(inode.permissions)
            let result = descriptor.map { fchmod($0, mode) } ?? name.withCString { fchmodat(parent ?? rootDescriptor, $0, mode, 0) }
            if result != 0 { warnings.append("chmod \(path): \(String(cString: strerror(errno)))") }
        }
        var times = [timespec](repeating: timespec(), count: 2)
        for index in 0..<2 {
            times[index].tv_sec = Int(truncatingIfNeeded: inode.mtimeSeconds)
            times[index].tv_nsec = Int(inode.mtimeNanoseconds)
        }
        let result: Int32
        if let descriptor { result = futimens(descriptor, times) } else {
            result = name.withCString { utimensat(parent ?? rootDescriptor, $0, times, AT_SYMLINK_NOFOLLOW) }
        }
        if result != 0 { warnings.append("utimensat \(path): \(String(cString: strerror(errno)))") }
        return warnings
    }
}

/// Jobs (one regular file each) on the global concurrent queue, at most `inFlight` pending, so
/// decoding and writing files overlaps the walk and each other (one thread per core).
final class FileJobs: Sendable {
    private let group = DispatchGroup()
    private let slots: DispatchSemaphore
    private struct State {
        var warnings: [String] = []
        var failure: (any Error & Sendable)?
    }
    private let state = Mutex(State())

    init(inFlight: Int) { slots = DispatchSemaphore(value: inFlight) }

    /// Queues `job` (it returns warnings), waiting while `inFlight` jobs are pending; throws the
    /// failure of an earlier job instead, so that the walk stops at the first one.
    func submit(_ job: @escaping @Sendable () throws -> [String]) throws {
        if let failure = state.withLock({ $0.failure }) { throw failure }
        slots.wait()
        group.enter()
        DispatchQueue.global(qos: .userInitiated).async { [self] in
            defer {
                slots.signal()
                group.leave()
            }
            do {
                let warnings = try job()
                if !warnings.isEmpty { state.withLock { $0.warnings += warnings } }
            } catch {
                let failure: any Error & Sendable = (error as? EROFSError) ?? (error as? ExtractionError) ?? ExtractionError(message: "\(error)")
                state.withLock { if $0.failure == nil { $0.failure = failure } }
            }
        }
    }

    func waitForAll() { group.wait() }

    /// Waits for every job; their warnings, or the first failure.
    func finish() throws -> [String] {
        waitForAll()
        let (warnings, failure) = state.withLock { ($0.warnings, $0.failure) }
        if let failure { throw failure }
        return warnings
    }
}
