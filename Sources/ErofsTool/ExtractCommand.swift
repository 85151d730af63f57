import ArgumentParser
import EROFSReader
import Extraction
#if canImport(Glibc)
import Glibc
#endif

/// `erofs extract IMAGE DIR`: restores the tree under DIR (the work is `Extractor`, in the
/// Extraction library).
struct ExtractCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Extract an image into a directory: contents, modes, owners, times, xattrs, links, devices.",
        discussion: """
            A directory reached twice (a second name for it, or a cycle) stops the extraction with an error naming \
            the path. Any depth works with at most 128 directory descriptors open. Holes stay holes. Before each \
            regular file, the data written so far (holes not counted) is checked against the free space the \
            destination had at the start; beyond it the extraction stops, unless --ignore-free-space.
            """)

    @Argument(help: "The EROFS image.") var image: String
    @Argument(help: "Destination directory (created if missing; must be empty).") var directory: String
    @OptionGroup var extraDevices: ExtraDeviceOptions
    @Flag(help: "Do not restore owners (default when not root).") var noOwners = false
    @Flag(help: "Extract even when the files' data (holes not counted: sparse files stay sparse) exceeds the free space of the destination's filesystem.")
    var ignoreFreeSpace = false

    func run() throws {
        let filesystem: EROFSFilesystem
        do { filesystem = try extraDevices.open(image) } catch { throw failing(error) }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            FileHandleStandardError.write("erofs: cannot create \(directory): errno \(errno)\n")
            throw ExitCode(1)
        }
        let rootDescriptor = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootDescriptor >= 0 else {
            FileHandleStandardError.write("erofs: cannot open \(directory): errno \(errno)\n")
            throw ExitCode(1)
        }
        defer { close(rootDescriptor) }
        var extractor = Extractor(
            filesystem: filesystem, rootDescriptor: rootDescriptor, destinationName: directory,
            options: .init(restoreOwners: !noOwners && geteuid() == 0, ignoreFreeSpace: ignoreFreeSpace))
        let warnings: [String]
        do {
            warnings = try extractor.run()
        } catch let error as EROFSError {
            throw failing(error)
        } catch let error as ExtractionError {
            FileHandleStandardError.write("erofs: \(error.message)\n")
            throw ExitCode(1)
        }
        for warning in warnings.prefix(20) { FileHandleStandardError.write("erofs: warning: \(warning)\n") }
        if warnings.count > 20 { FileHandleStandardError.write("erofs: \(warnings.count - 20) more warnings\n") }
        if !warnings.isEmpty { throw ExitCode(2) }
    }
}

