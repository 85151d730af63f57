import ArgumentParser
import EROFSFormat
import EROFSReader
import Manifest
#if canImport(Glibc)
import Glibc
#endif

/// Prints a reader error to stderr and exits non-zero (no stack trace, the error says where).
func failing(_ error: EROFSError) -> ExitCode {
    FileHandleStandardError.write("erofs: \(error)\n")
    return ExitCode(1)
}

enum FileHandleStandardError {
    static func write(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

/// Writes bytes to stdout, all of them.
func writeStandardOutput(_ bytes: [UInt8]) throws(ExitCode) {
    var written = 0
    while written < bytes.count {
        let result = bytes.withUnsafeBytes { Glibc.write(1, $0.baseAddress! + written, $0.count - written) }
        if result < 0 {
            if errno == EINTR { continue }
            FileHandleStandardError.write("erofs: write to standard output failed: errno \(errno)\n")
            throw ExitCode(1)
        }
        written += result
    }
}

/// `--device PATH`, repeatable: the image's extra devices in slot order, like the kernel's
/// `-o device=PATH`.
struct ExtraDeviceOptions: ParsableArguments {
    @Option(
        name: .customLong("device"),
        help: ArgumentHelp(
            "An extra device (blob) of a multi-device image; repeat in device-table order, as with mount -o device=. Without any, data on extra devices is read from the image itself at the devices' unified addresses (blobs concatenated onto the image).",
            valueName: "path"))
    var paths: [String] = []

    @Option(
        name: .customShort("o"),
        help: ArgumentHelp(
            "Remote source options, comma-separated, repeatable (see 'Remote sources' in erofs --help).",
            valueName: "options"))
    var remoteOptions: [String] = []

    func open(_ image: String) throws(EROFSError) -> EROFSFilesystem {
        try openImage(image, devicePaths: paths, options: remoteOptions)
    }
}

/// `erofs inspect IMAGE [--json]`: the superblock, features and counts.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect", abstract: "Show an image's superblock, features and inode/block counts.")

    @Argument(help: "The EROFS image.") var image: String
    @OptionGroup var extraDevices: ExtraDeviceOptions
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let filesystem: EROFSFilesystem
        do { filesystem = try extraDevices.open(image) } catch { throw failing(error) }
        let block = filesystem.superblock
        let compat = CompatFeatures.names.filter { block.featureCompat.contains($0.0) }.map(\.1)
        let incompat = IncompatFeatures.names.filter { block.featureIncompat.contains($0.0) }.map(\.1)
        let uuid = Hex.encode(block.uuid)
        var fields: [(String, String, Bool)] = [
            ("block_size", "\(block.blockSize)", false),
            ("blocks", "\(block.blocks)", false),
            ("inodes", "\(block.inodeCount)", false),
            ("root_nid", "\(block.rootNid)", false),
            ("meta_blkaddr", "\(block.metaBlockAddress)", false),
            ("xattr_blkaddr", "\(block.xattrBlockAddress)", false),
            ("build_time", "\(block.epoch &+ UInt64(block.buildTime))", false),
            ("uuid", uuid, true),
            ("volume_name", block.volumeName, true),
            ("extra_devices", "\(block.extraDevices)", false),
            ("packed_nid", "\(block.packedNid)", false),
            ("metabox_nid", "\(block.metaboxNid)", false),
            ("xattr_prefixes", "\(block.xattrPrefixCount)", false),
            ("image_bytes", "\(filesystem.source.size)", false),
        ]
        let compression = filesystem.compressionDescription
        fields.append(("compression", compression.algorithms.joined(separator: ","), true))
        if let lzma = compression.lzmaDictionarySize { fields.append(("lzma_dict_size", "\(lzma)", false)) }
        if let window = compression.deflateWindowBits { fields.append(("deflate_window_bits", "\(window)", false)) }
        if let window = compression.zstdWindowLog { fields.append(("zstd_window_log", "\(window)", false)) }
        if json {
            var members = fields.map { "\(JSONText.quoted($0.0)): \($0.2 ? JSONText.quoted($0.1) : $0.1)" }
            members.append("\"compat_features\": [\(compat.map(JSONText.quoted).joined(separator: ", "))]")
            members.append("\"incompat_features\": [\(incompat.map(JSONText.quoted).joined(separator: ", "))]")
            let slots = filesystem.deviceTable.slots.map { slot in
                "{\"tag\": \(JSONText.quoted(slot.tagText)), \"blocks\": \(slot.blocks), \"mapped_blkaddr\": \(slot.mappedBlockAddress)}"
            }
            members.append("\"devices\": [\(slots.joined(separator: ", "))]")
            print("{" + members.joined(separator: ", ") + "}")
        } else {
            for (name, value, _) in fields { print("\(name): \(value)") }
            print("compat_features: \(compat.joined(separator: " "))")
            print("incompat_features: \(incompat.joined(separator: " "))")
            for (index, slot) in filesystem.deviceTable.slots.enumerated() {
                let given = index < filesystem.devices.count ? filesystem.devices[index].displayName : "not given"
                print("device \(index + 1): tag \(JSONText.quoted(slot.tagText)) blocks \(slot.blocks) mapped_blkaddr \(slot.mappedBlockAddress) (\(given))")
            }
        }
    }
}

/// `erofs ls [-l] [--recursive] [--json [--sha256]] IMAGE [PATH]`.
struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List a directory of an image; --recursive --json --sha256 prints the corpus manifest format.")

    @Flag(name: .short, help: "Long listing: mode, links, owner, size, mtime.") var long = false
    @Flag(help: "Descend into subdirectories.") var recursive = false
    @Flag(help: "JSON lines in the corpus manifest format.") var json = false
    @Flag(help: "With --json: include each regular file's SHA-256 (reads all data).") var sha256 = false
    @Argument(help: "The EROFS image.") var image: String
    @Argument(help: "Path inside the image.") var path: String = "/"
    @OptionGroup var extraDevices: ExtraDeviceOptions

    func run() throws {
        do {
            let filesystem = try extraDevices.open(image)
            let start = try filesystem.lookup(path: path)
            let base = "/" + path.split(separator: "/").joined(separator: "/")
            var entries: [(String, Inode)] = []
            if recursive {
                // Walk below `base` only.
                try collect(filesystem, base, start, &entries, seen: [])
            } else if start.kind == .directory {
                for entry in try filesystem.readDirectory(start) where entry.name != [0x2e] && entry.name != [0x2e, 0x2e] {
                    let child = try filesystem.inode(nid: entry.nid)
                    entries.append(((base == "/" ? "" : base) + "/" + entry.nameString, child))
                }
            } else {
                entries.append((base, start))
            }
            if json {
                var manifest: [ManifestEntry] = []
                for (entryPath, inode) in entries {
                    manifest.append(try filesystem.manifestEntry(path: entryPath, inode: inode, sha256: sha256))
                }
                try writeStandardOutput(Array(manifest.sortedByPath().manifestText.utf8))
                return
            }
            for (entryPath, inode) in entries.sorted(by: { JSONText.codePointOrder($0.0, $1.0) }) {
                let name = recursive ? entryPath : String(entryPath.split(separator: "/").last ?? "/")
                if long {
                    let kind: Character = switch inode.kind {
                    case .directory: "d"
                    case .symlink: "l"
                    case .characterDevice: "c"
                    case .blockDevice: "b"
                    case .fifo: "p"
                    case .socket: "s"
                    case .file: "-"
                    }
                    var line = "\(kind)\(String(inode.permissions, radix: 8)) \(inode.linkCount) \(inode.uid) \(inode.gid) \(inode.size) \(inode.mtimeSeconds).\(nanoseconds(inode.mtimeNanoseconds)) \(name)"
                    if inode.kind == .symlink { line += " -> " + String(decoding: try filesystem.readLink(inode), as: UTF8.self) }
                    print(line)
                } else {
                    print(name)
                }
            }
        } catch let error as EROFSError {
            throw failing(error)
        }
    }

    private func nanoseconds(_ value: UInt32) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, 9 - digits.count)) + digits
    }

    private func collect(
        _ filesystem: EROFSFilesystem, _ path: String, _ inode: Inode, _ entries: inout [(String, Inode)], seen: Set<UInt64>
    ) throws(EROFSError) {
        entries.append((path, inode))
        guard inode.kind == .directory else { return }
        guard !seen.contains(inode.nid) else { throw EROFSError(.corrupt, "directory cycle", path: path, nid: inode.nid) }
        let seenHere = seen.union([inode.nid])
        for entry in try filesystem.readDirectory(inode) where entry.name != [0x2e] && entry.name != [0x2e, 0x2e] {
            guard !entry.name.contains(0x2f) else {
                throw EROFSError(.corrupt, "directory entry name contains '/'", path: path, nid: inode.nid)
            }
            let child = try filesystem.inode(nid: entry.nid)
            try collect(filesystem, (path == "/" ? "" : path) + "/" + entry.nameString, child, &entries, seen: seenHere)
        }
    }
}

/// `erofs cat IMAGE PATH`: a regular file's contents on stdout.
struct CatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cat", abstract: "Print a file of an image.")

    @Argument(help: "The EROFS image.") var image: String
    @Argument(help: "Path of a regular file inside the image.") var path: String
    @OptionGroup var extraDevices: ExtraDeviceOptions

    func run() throws {
        do {
            let filesystem = try extraDevices.open(image)
            let inode = try filesystem.lookup(path: path)
            guard inode.kind == .file else { throw EROFSError(.notFound, "not a regular file", path: path, nid: inode.nid) }
            var failure: ExitCode?
            try filesystem.forEachChunk(of: inode) { (chunk: [UInt8]) throws(EROFSError) in
                guard failure == nil else { return }
                do throws(ExitCode) { try writeStandardOutput(chunk) } catch { failure = error }
            }
            if let failure { throw failure }
        } catch let error as EROFSError {
            throw failing(error)
        }
    }
}

/// `erofs verify IMAGE`: reads every inode, directory, xattr and all data; names the first corruption.
struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Read and decode everything in an image; exit non-zero at the first corruption.")

    @Argument(help: "The EROFS image.") var image: String
    @OptionGroup var extraDevices: ExtraDeviceOptions

    func run() throws {
        do {
            let filesystem = try extraDevices.open(image)
            var count = 0
            var bytes: UInt64 = 0
            try filesystem.walk { (path, inode) throws(EROFSError) in
                _ = try filesystem.manifestEntry(path: path, inode: inode, sha256: false)
                count += 1
                if inode.kind == .file { bytes &+= inode.size }
            }
            print("\(image): OK, \(count) paths, \(bytes) bytes of file data")
        } catch {
            throw failing(error)
        }
    }
}
