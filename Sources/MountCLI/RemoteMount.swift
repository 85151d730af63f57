#if canImport(Glibc)
import Glibc
#endif
import LocalBackend
import EROFSReader
import ImageManifest
import ImageSources
import Logging
import RemoteSources

/// A remote SOURCE (`http(s)://URL`, `BUCKET/KEY` with `s3.*`, an image reference with
/// `oci.*`) made ready for a mount
/// daemon, before anything is set up: the object opened and its superblock checked (an object
/// shorter than its superblock says is refused), everything fetched and decoded with
/// `remote.verify=full`, the version pinned, and credentials from the environment captured into
/// a root-only file so that the daemon's argv and environment hold none.
struct RemoteMount {
    /// What the daemon is handed (its argument holds no secret).
    var served: ServedSource
    var probe: ImageProbe

    var displayName: String { served.displayName }

    /// The remote description of `source` and the `-o` options, or nil for a local source,
    /// with the registry credentials of `oci.username=`/`oci.password=` (never in the
    /// description). Bad options are usage errors (exit 1).
    static func description(
        source: String, options: MountOptions, environment: [String: String]
    ) throws(UsageError) -> (description: RemoteSourceDescription, registry: RegistryCredentials?)? {
        let pairs = options.backendOptions.filter { RemoteSourceDescription.owns($0.name) }.map {
            (key: $0.name, value: $0.value)
        }
        do throws(RemoteError) {
            // remote.verify is mount.erofs's (the erofs tool has no mount to complete).
            let verify = pairs.last { $0.key == "remote.verify" }?.value
            if let (image, registry) = try OCISourceDescription.parse(
                source: source, options: pairs.filter { $0.key != "remote.verify" },
                warn: { printError("warning: \($0)") })
            {
                guard verify == nil || verify == "full" || verify == "none" else {
                    throw RemoteError(.configuration, "-o", "remote.verify: full or none")
                }
                var description = RemoteSourceDescription(oci: image)
                description.verifyFully = verify == "full"
                return (description, registry)
            }
            return try RemoteSourceDescription.parse(source: source, options: pairs, environment: environment).map {
                ($0, nil)
            }
        } catch {
            throw UsageError(error.description)
        }
    }

    /// Opens, checks and (unless `fake`) captures credentials. Any failure is one line (exit 32)
    /// and leaves nothing behind.
    /// An image layer's registry credentials are resolved here, once (`registry`, else
    /// config.json or its credential helper), and captured for the daemons as the AWS ones are.
    static func prepare(
        _ description: RemoteSourceDescription, registry given: RegistryCredentials?, environment: [String: String],
        fake: Bool, logger: Logger
    ) throws(MountFailure) -> RemoteMount {
        let warn = { (message: String) in logger.warning("\(message)") }
        let source: any RandomAccessSource
        let pinned: RemoteSourceDescription
        var registry = given
        do {
            if case .oci(let oci) = description.location, registry == nil {
                registry = try DockerConfig.credentials(for: oci.image.reference.domain, environment: environment)
            }
            (source, pinned) = try description.openPinned(environment: environment, registry: registry, warn: warn)
        } catch {
            throw MountFailure(error.description)
        }
        let probe = try ImageProbe.probe(source: source)
        if description.verifyFully { try verify(source) }
        if fake { return RemoteMount(served: .remote(pinned), probe: probe) }
        do {
            let handed =
                if case .oci = pinned.location {
                    try CapturedCredentials.capture(pinned, registry: registry)
                } else {
                    try CapturedCredentials.capture(pinned, environment: environment)
                }
            return RemoteMount(served: .remote(handed.description), probe: probe)
        } catch {
            throw MountFailure(error.description)
        }
    }

    /// `remote.verify=full`: every byte fetched (into the block cache, each block checked by
    /// it), then every inode, directory, xattr and file decoded; progress on a terminal.
    static func verify(_ source: any RandomAccessSource) throws(MountFailure) {
        let progress = TerminalProgress(label: "\(source.displayName): fetching", total: source.size)
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while offset < source.size {
            let got: Int
            do { got = try source.read(into: buffer, at: offset) } catch {
                progress.abandon()
                throw MountFailure("remote.verify=full: \(source.displayName): \(error.detail ?? error.description)")
            }
            guard got > 0 else { break }
            offset += UInt64(got)
            progress.update(offset)
        }
        progress.finish()
        do {
            let filesystem = try EROFSFilesystem(source: source)
            try filesystem.walk { (path, inode) throws(EROFSError) in
                _ = try filesystem.manifestEntry(path: path, inode: inode, sha256: false)
            }
        } catch {
            throw MountFailure("remote.verify=full: \(source.displayName): \(error)")
        }
    }
}
