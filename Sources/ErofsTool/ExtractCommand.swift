import ArgumentParser
import EROFSReader
import Extraction
import RemoteSources
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
            not be restored, a name that is not a safe path component). \
            A directory reached twice (a second name for it, or a cycle) stops the extraction with \
            an error naming the path. Any depth works with at most 128 directory descriptors open. \
            Holes stay holes. Before each regular file, the data written so far (holes not counted) \
            is checked against the free space DEST had at the start; beyond it the extraction \
            stops, unless --ignore-free-space.
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
        help:
            "Restore modes exactly, setuid and setgid included (those only where the owner was restored too). Without: setuid and setgid are cleared and the umask applied."
    )
    var samePermissions = false
    @Flag(help: "Create character and block device nodes (needs CAP_MKNOD). Default: skip them.")
    var devices = false
    @Flag(
        inversion: .prefixedNo,
        help:
            "Restore every xattr (trusted.*, security.* such as SELinux labels, system.posix_acl_*) except security.capability. --no-xattrs: none. Default: user.* only."
    )
    var xattrs: Bool?
    @Flag(help: "Restore file capabilities (security.capability). Default: no.")
    var capabilities = false
    @Flag(
        help:
            "Give DEST the image root's owner, mode, times and xattrs (under the options above). Default: DEST keeps its own."
    )
    var rootMetadata = false
    @Flag(
        help:
            "Extract even when the files' data (holes not counted: sparse files stay sparse) exceeds the free space of the destination's filesystem."
    )
    var ignoreFreeSpace = false

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
        var extractor = Extractor(
            filesystem: filesystem, rootDescriptor: rootDescriptor, destinationName: destination.description,
            policy: policy,
            ignoreFreeSpace: ignoreFreeSpace)
        var warnings: [String]
        // A remote image: how much has been fetched, on a terminal.
        let progress = (filesystem.source as? RemoteSource).flatMap { FetchProgress($0, label: "fetched") }
        do {
            // Ended before any message, so that none lands on the progress line.
            defer { progress?.stop() }
            warnings = try extractor.run()
        } catch let error as EROFSError {
            throw failing(error)
        } catch let error as ExtractionError {
            FileHandleStandardError.write("erofs: \(error.message)\n")
            throw ExitCode(1)
        }
        // A directory we made gets what `mkdir DEST` would have given it.
        if created && !rootMetadata && fchmod(rootDescriptor, 0o777 & ~creationMask) != 0 {
            warnings.append("chmod \(destination): \(String(cString: strerror(errno)))")
        }
        if let note = extractor.withheld.note { FileHandleStandardError.write("erofs: note: \(note)\n") }
        for warning in warnings.prefix(20) { FileHandleStandardError.write("erofs: warning: \(warning)\n") }
        if warnings.count > 20 { FileHandleStandardError.write("erofs: \(warnings.count - 20) more warnings\n") }
        if !warnings.isEmpty { throw ExitCode(2) }
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
        // Not through a symlink: one planted in a shared directory (/tmp/out -> an empty
        // directory of root's) would steer root's writes.
        let descriptor = destination.withCString { open($0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard descriptor >= 0 else {
            let cause = errno
            var status = stat()
            if destination.withCString({ lstat($0, &status) }) == 0 && status.st_mode & S_IFMT == S_IFLNK {
                throw fail("a symlink: not followed (name the directory itself)")
            }
            errno = cause
            throw fail("cannot open: \(String(cString: strerror(errno)))")
        }
        if !created, let entry = firstEntry(ofDirectory: descriptor) {
            let message: String
            switch entry {
            case .success(let name):
                message = "not empty (it holds \(name)); extract writes only into a new or empty directory"
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
