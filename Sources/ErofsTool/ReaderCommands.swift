import ArgumentParser
import EROFSFormat
import EROFSReader
import ImageManifest
import Manifest
import SystemCalls
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

/// Standard output in 64 KiB writes, not one per line.
struct OutputBuffer {
    private var bytes: [UInt8] = []

    mutating func append(_ line: [UInt8]) throws(ExitCode) {
        bytes += line
        if bytes.count >= 1 << 16 { try flush() }
    }

    mutating func flush() throws(ExitCode) {
        try writeStandardOutput(bytes)
        bytes.removeAll(keepingCapacity: true)
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

/// Arguments are bytes too, but ArgumentParser sees Strings, decoded with U+FFFD in place of
/// bytes that are not UTF-8. This finds the bytes of the argument that decoded to `parsed`.
enum RawArguments {
    static func bytes(of parsed: String) throws(ExitCode) -> ByteString {
        guard parsed.unicodeScalars.contains("\u{FFFD}") else { return ByteString(parsed) }
        var candidates: Set<ByteString> = []
        for index in 1..<Int(CommandLine.argc) {
            guard let argument = CommandLine.unsafeArgv[index] else { continue }
            let raw = ByteString(
                UnsafeBufferPointer(start: argument, count: strlen(argument)).map { UInt8(bitPattern: $0) })
            // Compared as UTF-8 bytes: String's == would equate canonically equivalent forms.
            if String(decoding: raw.bytes, as: UTF8.self).utf8.elementsEqual(parsed.utf8) { candidates.insert(raw) }
        }
        guard candidates.count == 1, let raw = candidates.first else {
            FileHandleStandardError.write(
                "erofs: cannot tell which argument is \(parsed): \(candidates.count) arguments decode to it\n")
            throw ExitCode(1)
        }
        return raw
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
                print(
                    "device \(index + 1): tag \(JSONText.quoted(slot.tagText)) blocks \(slot.blocks) mapped_blkaddr \(slot.mappedBlockAddress) (\(given))"
                )
            }
        }
    }
}

/// `erofs ls [-l] [--recursive] [--json [--sha256]] IMAGE [PATH]`.
struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List a directory of an image; --recursive --json --sha256 prints the corpus manifest format.",
        discussion: """
            Names are bytes and need not be UTF-8. On a terminal (or with -b) names and symlink \
            targets are printed as GNU ls -b does: C escapes (\\n, \\t, ...) and three-digit \
            octal for control characters and bytes that are not UTF-8, \\\\ for a backslash, \
            "\\ " for a space. Otherwise they are written as they are, one per line (with -0, \
            each ended by a NUL instead, so any name is unambiguous). In JSON, \
            valid UTF-8 is written as itself (control characters as JSON escapes) and each byte \
            that is not UTF-8 as \\udcXX, the lone surrogate Python's surrogateescape decodes \
            it to (os.fsencode(json.loads(...)) gives the bytes back); `erofs walk` writes names \
            the same way. Entries are sorted by name bytes. PATH is taken as bytes too.
            """)

    @Flag(name: .short, help: "Long listing: mode, links, owner, size, mtime.") var long = false
    @Flag(help: "Descend into subdirectories (any depth; a directory reached twice is an error).") var recursive = false
    @Flag(
        name: [.customShort("b"), .customLong("escape")],
        help: "Escape names as on a terminal (the default there), also into a pipe or file.")
    var escape = false
    @Flag(
        name: [.customShort("0"), .customLong("zero")],
        help: "End each line with NUL instead of newline, names unescaped (unless -b): for xargs -0 and the like.")
    var zero = false
    @Flag(help: "JSON lines in the corpus manifest format.") var json = false
    @Flag(help: "With --json: include each regular file's SHA-256 (reads all data).") var sha256 = false
    @Argument(help: "The EROFS image.") var image: String
    @Argument(help: "Path inside the image.") var path: String = "/"
    @OptionGroup var extraDevices: ExtraDeviceOptions

    func run() throws {
        do {
            let filesystem = try extraDevices.open(image)
            let pathBytes = try RawArguments.bytes(of: path)
            let start = try filesystem.lookup(path: pathBytes)
            let base = pathBytes.bytes.split(separator: UInt8(ascii: "/")).reduce(ByteString("/")) {
                $0.appending(component: ByteString($1))
            }
            let escaping = escape || (!zero && isatty(1) == 1)
            let terminator: UInt8 = zero ? 0 : 0x0a
            var output = OutputBuffer()
            func text(_ bytes: ByteString) -> [UInt8] { escaping ? Array(bytes.escaped.utf8) : bytes.bytes }
            func emit(_ entryPath: ByteString, _ inode: Inode) throws {
                if json {
                    try output.append(
                        Array(try filesystem.manifestEntry(path: entryPath, inode: inode, sha256: sha256).jsonLine.utf8)
                            + [0x0a])
                    return
                }
                let name =
                    recursive
                    ? entryPath
                    : ByteString(entryPath.bytes.split(separator: UInt8(ascii: "/")).last ?? [UInt8(ascii: "/")])
                if long {
                    let kind: Character =
                        switch inode.kind {
                        case .directory: "d"
                        case .symlink: "l"
                        case .characterDevice: "c"
                        case .blockDevice: "b"
                        case .fifo: "p"
                        case .socket: "s"
                        case .file: "-"
                        }
                    var line = Array(
                        "\(kind)\(String(inode.permissions, radix: 8)) \(inode.linkCount) \(inode.uid) \(inode.gid) \(inode.size) \(inode.mtimeSeconds).\(nanoseconds(inode.mtimeNanoseconds)) "
                            .utf8)
                    line += text(name)
                    if inode.kind == .symlink {
                        line += Array(" -> ".utf8) + text(ByteString(try filesystem.readLink(inode)))
                    }
                    try output.append(line + [terminator])
                } else {
                    try output.append(text(name) + [terminator])
                }
            }
            if recursive {
                // Streamed in the manifest's order (the paths' bytes), so memory does not grow
                // with the tree; a directory reached twice stops the walk.
                var traversal = TreeTraversal(filesystem, from: start, path: base, order: .paths)
                while let event = try traversal.next() {
                    if case .enter(let inode) = event { try emit(traversal.path, inode) }
                }
            } else {
                var entries: [(ByteString, Inode)] = []
                if start.kind == .directory {
                    for entry in try filesystem.readDirectory(start)
                    where entry.name != [0x2e] && entry.name != [0x2e, 0x2e] {
                        let child = try filesystem.inode(nid: entry.nid)
                        entries.append((base.appending(component: entry.nameBytes), child))
                    }
                } else {
                    entries.append((base, start))
                }
                for (entryPath, inode) in entries.sorted(by: { $0.0 < $1.0 }) { try emit(entryPath, inode) }
            }
            try output.flush()
        } catch let error as EROFSError {
            throw failing(error)
        }
    }

    private func nanoseconds(_ value: UInt32) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, 9 - digits.count)) + digits
    }
}

/// `erofs cat IMAGE PATH`: a regular file's contents on stdout.
struct CatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cat",
        abstract: "Print a file of an image (its holes stay holes when standard output is a regular file).")

    @Argument(help: "The EROFS image.") var image: String
    @Argument(help: "Path of a regular file inside the image (bytes: need not be UTF-8).") var path: String
    @OptionGroup var extraDevices: ExtraDeviceOptions

    func run() throws {
        do {
            let filesystem = try extraDevices.open(image)
            let pathBytes = try RawArguments.bytes(of: path)
            let inode = try filesystem.lookup(path: pathBytes)
            guard inode.kind == .file else {
                throw EROFSError(.notFound, "not a regular file", path: pathBytes.description, nid: inode.nid)
            }
            // Holes stay holes in a regular file (seeked over, the size set at the end); a pipe
            // or terminal gets the zeros it asked for, 1 MiB at a time.
            let output = StandardOutputFile()
            var failure: ExitCode?
            try filesystem.forEachRun(of: inode) { (_, run: DataRun) throws(EROFSError) in
                guard failure == nil else { return }
                do throws(ExitCode) {
                    switch run {
                    case .data(let chunk): try writeStandardOutput(chunk)
                    case .hole(let length): try output.skip(length)
                    }
                } catch { failure = error }
            }
            if failure == nil {
                do throws(ExitCode) { try output.finish() } catch { failure = error }
            }
            if let failure { throw failure }
        } catch let error as EROFSError {
            throw failing(error)
        }
    }
}

/// Standard output as the destination of a file that may have holes.
struct StandardOutputFile {
    /// A regular file written at its offset (not O_APPEND): holes can be seeked over.
    let seekable: Bool
    private static let zeros = [UInt8](repeating: 0, count: 1 << 20)

    init() {
        var status = stat()
        let flags = fcntl(1, F_GETFL)
        seekable = fstat(1, &status) == 0 && status.st_mode & S_IFMT == S_IFREG && flags >= 0 && flags & O_APPEND == 0
    }

    /// `length` bytes of zeros: a seek on a regular file, written zeros elsewhere.
    func skip(_ length: UInt64) throws(ExitCode) {
        if seekable {
            guard length <= UInt64(Int64.max), lseek(1, off_t(length), SEEK_CUR) >= 0 else {
                FileHandleStandardError.write(
                    "erofs: seek on standard output failed: \(String(cString: strerror(errno)))\n")
                throw ExitCode(1)
            }
            return
        }
        var left = length
        while left > 0 {
            let count = Int(min(left, UInt64(StandardOutputFile.zeros.count)))
            try writeStandardOutput(
                count == StandardOutputFile.zeros.count
                    ? StandardOutputFile.zeros : Array(StandardOutputFile.zeros.prefix(count)))
            left -= UInt64(count)
        }
    }

    /// Extends the file over a final hole (never shortens what was already there).
    func finish() throws(ExitCode) {
        guard seekable else { return }
        var status = stat()
        let position = lseek(1, 0, SEEK_CUR)
        guard position >= 0, fstat(1, &status) == 0 else { return }
        if status.st_size < position && ftruncate(1, position) != 0 {
            FileHandleStandardError.write(
                "erofs: truncate of standard output failed: \(String(cString: strerror(errno)))\n")
            throw ExitCode(1)
        }
    }
}

/// `erofs verify IMAGE`: reads every inode, directory, xattr and all data; names the first corruption.
struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Read and decode everything in an image; exit non-zero at the first corruption.")

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
