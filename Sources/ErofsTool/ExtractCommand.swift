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
/// bytes from the image to the syscall. What of an image's metadata is restored is
/// `ExtractPolicy`: by default only what is safe from a stranger's image, even as root.
struct ExtractCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Extract an image into a new or empty directory.",
        discussion: """
            By default the result is safe to make from a stranger's image, even as root: owners are \
            restored only as root (as tar does), modes lose setuid and setgid and have the umask \
            applied (the sticky bit stays), device nodes are not created, only user.* xattrs are \
            restored, and DEST keeps its own owner and mode. The options below restore \
            more; with all of them, as root, the tree is the image's exactly. What was left out is \
            summed up in one note on standard error. Exit status: 0 done, 1 failure \
            (a refused DEST, a damaged image, a failed write: extraction stops there, \
            what was written stays), 2 done \
            with warnings (an object whose metadata could \
            not be restored, a name that is not a safe path component).
            """)

    @Argument(help: "The EROFS image.") var image: String
    @Argument(
        help: ArgumentHelp(
            "Destination directory. Created if missing (0700 while extracting, then 0777 minus the umask); an existing one must be empty, else nothing is changed and the exit status is 1.",
            valueName: "dest"))
    var directory: String
    @OptionGroup var extraDevices: ExtraDeviceOptions
    @Flag(inversion: .prefixedNo, help: "Restore owners (uid, gid) from the image. Default: yes as root, no otherwise.")
    var sameOwner: Bool?
    @Flag(help: .hidden) var noOwners = false
    @Flag(
        inversion: .prefixedNo,
        help: "Restore modes exactly, setuid and setgid included (those only where the owner was restored too). Without: setuid and setgid are cleared and the umask applied.")
    var samePermissions = false
    @Flag(help: "Create character and block device nodes (needs CAP_MKNOD). Default: skip them.")
    var devices = false
    @Flag(
        inversion: .prefixedNo,
        help: "Restore every xattr (trusted.*, security.* such as SELinux labels, system.posix_acl_*) except security.capability. --no-xattrs: none. Default: user.* only.")
    var xattrs: Bool?
    @Flag(help: "Restore file capabilities (security.capability). Default: no.")
    var capabilities = false
    @Flag(help: "Give DEST the image root's owner, mode, times and xattrs (under the options above). Default: DEST keeps its own.")
    var rootMetadata = false

    func run() throws {
        let filesystem: EROFSFilesystem
        do { filesystem = try extraDevices.open(image) } catch { throw failing(error) }
        let destination = try RawArguments.bytes(of: directory)
        let creationMask = umask(0)
        umask(creationMask)
        let policy = ExtractPolicy(
            restoreOwners: !noOwners && (sameOwner ?? (geteuid() == 0)), samePermissions: samePermissions,
            umask: UInt32(creationMask), devices: devices,
            xattrs: xattrs.map { $0 ? .all : .none } ?? .user, capabilities: capabilities, rootMetadata: rootMetadata)
        let (rootDescriptor, created) = try ExtractCommand.openDestination(destination)
        defer { close(rootDescriptor) }
        var extractor = Extractor(filesystem: filesystem, rootDescriptor: rootDescriptor, policy: policy)
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
        // A directory we made gets what `mkdir DEST` would have given it.
        if created && !rootMetadata && fchmod(rootDescriptor, 0o777 & ~creationMask) != 0 {
            extractor.warnings.append("chmod \(destination): \(String(cString: strerror(errno)))")
        }
        if let note = extractor.withheld.note { FileHandleStandardError.write("erofs: note: \(note)\n") }
        for warning in extractor.warnings.prefix(20) { FileHandleStandardError.write("erofs: warning: \(warning)\n") }
        if extractor.warnings.count > 20 { FileHandleStandardError.write("erofs: \(extractor.warnings.count - 20) more warnings\n") }
        if !extractor.warnings.isEmpty { throw ExitCode(2) }
    }

    /// Opens DEST, creating it (0700) when missing; an existing DEST that is not an empty
    /// directory is refused before anything is written. Returns the descriptor and whether we
    /// made the directory.
    static func openDestination(_ destination: ByteString) throws(ExitCode) -> (Int32, created: Bool) {
        func fail(_ message: String) -> ExitCode {
            FileHandleStandardError.write("erofs: \(destination): \(message)\n")
            return ExitCode(1)
        }
        let created = destination.withCString { mkdir($0, 0o700) } == 0
        if !created && errno != EEXIST { throw fail("cannot create: \(String(cString: strerror(errno)))") }
        let descriptor = destination.withCString { open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard descriptor >= 0 else { throw fail("cannot open: \(String(cString: strerror(errno)))") }
        if !created, let entry = firstEntry(ofDirectory: descriptor) {
            let message: String
            switch entry {
            case .success(let name): message = "not empty (it holds \(name)); extract writes only into a new or empty directory"
            case .failure(let failure): message = "cannot read: \(String(cString: strerror(failure.code)))"
            }
            close(descriptor)
            throw fail(message)
        }
        return (descriptor, created)
    }

    struct ReadFailure: Error { var code: Int32 }

    /// The first name in an open directory other than "." and "..", nil when there is none.
    static func firstEntry(ofDirectory descriptor: Int32) -> Result<ByteString, ReadFailure>? {
        // fdopendir takes its descriptor: give it its own.
        let own = openat(descriptor, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard own >= 0, let stream = fdopendir(own) else {
            let failure = ReadFailure(code: errno)
            if own >= 0 { close(own) }
            return .failure(failure)
        }
        defer { closedir(stream) }
        while true {
            errno = 0
            guard let entry = readdir(stream) else { return errno == 0 ? nil : .failure(ReadFailure(code: errno)) }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { ByteString($0.prefix { $0 != 0 }) }
            if name != "." && name != ".." { return .success(name) }
        }
    }
}

struct ExtractionError: Error {
    var message: String
}

/// What `erofs extract` restores of the image's metadata; see ExtractCommand's options.
struct ExtractPolicy: Sendable {
    enum Xattrs: Sendable { case none, user, all }

    var restoreOwners: Bool
    var samePermissions: Bool
    var umask: UInt32
    var devices: Bool
    var xattrs: Xattrs
    var capabilities: Bool
    var rootMetadata: Bool

    /// The mode to give an object whose image mode is `permissions`: setuid and setgid need
    /// --same-permissions and the image's owner (kept with someone else's owner, they would
    /// run as the extracting user); without --same-permissions the umask applies, as tar does.
    func mode(_ permissions: UInt32, ownerRestored: Bool) -> UInt32 {
        guard samePermissions else { return permissions & 0o1777 & ~umask }
        return ownerRestored ? permissions & 0o7777 : permissions & 0o1777
    }

    func restores(xattr name: ByteString) -> Bool {
        if name == "security.capability" { return capabilities }
        switch xattrs {
        case .none: return false
        case .user: return name.bytes.starts(with: "user.".utf8)
        case .all: return true
        }
    }
}

/// Counts of what the policy left out, shared by the walk and the file workers, for one note
/// at the end (a warning per object would drown the real ones).
final class Withheld: Sendable {
    private struct Counts {
        var devices = 0
        var firstDevice: ByteString?
        var setIDModes = 0
        var xattrs: [String: Int] = [:]
    }
    private let counts = Mutex(Counts())

    func device(_ path: ByteString) {
        counts.withLock {
            $0.devices += 1
            if $0.firstDevice == nil { $0.firstDevice = path }
        }
    }

    func setIDMode() { counts.withLock { $0.setIDModes += 1 } }

    func xattr(_ name: ByteString) {
        // By namespace (and security.capability by itself): a summary, not a list.
        let key = name == "security.capability" ? name.description : ByteString(name.bytes.prefix { $0 != UInt8(ascii: ".") }).description + ".*"
        counts.withLock { $0.xattrs[key, default: 0] += 1 }
    }

    var note: String? {
        let counts = counts.withLock { $0 }
        var parts: [String] = []
        if let first = counts.firstDevice {
            parts.append("\(counts.devices) device node(s), first \(first) (--devices)")
        }
        if counts.setIDModes > 0 { parts.append("setuid/setgid on \(counts.setIDModes) object(s) (--same-permissions, --same-owner)") }
        for (key, count) in counts.xattrs.sorted(by: { $0.key < $1.key }) {
            parts.append("\(count) \(key) xattr(s) (\(key == "security.capability" ? "--capabilities" : "--xattrs"))")
        }
        guard !parts.isEmpty else { return nil }
        return "not restored, by default or by request: " + parts.joined(separator: "; ")
    }
}

struct Extractor {
    let filesystem: EROFSFilesystem
    let rootDescriptor: Int32
    let policy: ExtractPolicy
    /// First extracted path (relative to the root) of each multiply linked inode.
    var linkedPaths: [UInt64: ByteString] = [:]
    var warnings: [String] = []
    var activeDirectories: Set<UInt64> = []
    /// Regular files' data and metadata are written by worker threads while this walk goes on.
    let fileJobs = FileJobs(inFlight: 32)
    let metadata: MetadataWriter
    var withheld: Withheld { metadata.withheld }

    init(filesystem: EROFSFilesystem, rootDescriptor: Int32, policy: ExtractPolicy) {
        self.filesystem = filesystem
        self.rootDescriptor = rootDescriptor
        self.policy = policy
        metadata = MetadataWriter(filesystem: filesystem, rootDescriptor: rootDescriptor, policy: policy, withheld: Withheld())
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
        if (inode.kind == .characterDevice || inode.kind == .blockDevice) && !policy.devices {
            withheld.device(path)
            return
        }
        if inode.kind != .directory && inode.linkCount > 1 {
            if let first = linkedPaths[inode.nid] {
                let relative = ByteString(first.bytes.dropFirst())
                let linked = relative.withCString { from in name.withCString { linkat(rootDescriptor, from, parent, $0, 0) } }
                guard linked == 0 else { throw failure("link", path) }
                return
            }
            linkedPaths[inode.nid] = path
        }
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
            guard name.withCString({ mknodat(parent, $0, type | 0o600, device) }) == 0 else { throw failure("mknod", path) }
        case .fifo:
            guard name.withCString({ mknodat(parent, $0, S_IFIFO | 0o600, 0) }) == 0 else { throw failure("mkfifo", path) }
        case .socket:
            guard name.withCString({ mknodat(parent, $0, S_IFSOCK | 0o600, 0) }) == 0 else { throw failure("mknod (socket)", path) }
        }
        try applyMetadata(inode, descriptor: nil, parent: parent, name: name, path: path)
    }

    mutating func applyMetadata(_ inode: Inode, descriptor: Int32?, parent: Int32?, name: ByteString?, path: ByteString) throws {
        // DEST itself keeps its own metadata unless asked.
        if path == "/" && !policy.rootMetadata { return }
        warnings += try metadata.apply(inode, descriptor: descriptor, parent: parent, name: name, path: path)
    }
}

/// Restores an object's metadata under the policy; shared by the walk and the file workers.
struct MetadataWriter: Sendable {
    let filesystem: EROFSFilesystem
    let rootDescriptor: Int32
    let policy: ExtractPolicy
    let withheld: Withheld

    /// Owner, xattrs (after the owner: chown clears security.capability), mode (after the
    /// owner: chown clears setuid), then times. Returns the warnings (failed chown, setxattr,
    /// chmod, utimensat) it met.
    func apply(_ inode: Inode, descriptor: Int32?, parent: Int32?, name: ByteString?, path: ByteString) throws -> [String] {
        var warnings: [String] = []
        let isSymlink = inode.kind == .symlink
        let name = name ?? ""
        // Objects without a usable descriptor are reached through /proc/self/fd/<parent>/<name>,
        // which never follows a symlink in the last component with the l* calls.
        let procPath: ByteString? = parent.map { ByteString("/proc/self/fd/\($0)/") + name }
        var ownerRestored = false
        if policy.restoreOwners {
            let result: Int32
            if let descriptor { result = fchown(descriptor, inode.uid, inode.gid) } else {
                result = name.withCString { fchownat(parent ?? rootDescriptor, $0, inode.uid, inode.gid, AT_SYMLINK_NOFOLLOW) }
            }
            if result != 0 { warnings.append("chown \(path): \(String(cString: strerror(errno)))") }
            ownerRestored = result == 0
        }
        for (attribute, value) in try filesystem.xattrs(inode) {
            guard policy.restores(xattr: attribute) else {
                withheld.xattr(attribute)
                continue
            }
            let result: Int32 = attribute.withCString { attribute in
                value.withUnsafeBytes { bytes in
                    if let descriptor { return fsetxattr(descriptor, attribute, bytes.baseAddress, bytes.count, 0) }
                    return (procPath ?? "").withCString { lsetxattr($0, attribute, bytes.baseAddress, bytes.count, 0) }
                }
            }
            if result != 0 { warnings.append("setxattr \(attribute) on \(path): \(String(cString: strerror(errno)))") }
        }
        if !isSymlink {
            let permissions = policy.mode(inode.permissions, ownerRestored: ownerRestored)
            if inode.permissions & 0o6000 & ~permissions != 0 { withheld.setIDMode() }
            let mode = mode_t(permissions)
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
