/// The backend `-t erofs.SUBTYPE` selects.
public enum BackendKind: String, Sendable, CaseIterable {
    /// A kernel mount of the file (file-backed, or through a loop device) or block device.
    case local
    /// A userspace daemon serves the image to the kernel's nbd driver.
    case nbd
    /// A FUSE filesystem on this project's EROFS reader.
    case fuse
    /// A userspace daemon serves the image to the kernel's ublk driver over io_uring.
    case ublk
}

/// A parsed `mount.erofs` command line. Options may come before or after the operands, as
/// mount(8) passes them after (`mount.erofs IMG DIR -o ro -s`), and `--` ends options.
public struct MountCommandLine: Sendable, Equatable {
    public enum Mode: String, Sendable {
        case mount, unmount, reattach, upgrade, disconnect, list, help, version
    }

    public var mode: Mode = .mount
    /// nil: chosen from the source (local for files and block devices).
    public var backend: BackendKind?
    public var options = MountOptions()
    /// 0 (quiet) to 9 (verbose); 2 shows warnings and errors.
    public var debugLevel = 2
    public var source: String?
    /// The mountpoint, or for -u/--reattach/--disconnect the thing to act on.
    public var target: String?
    /// -f: do everything but the mount(2) itself.
    public var fake = false
    /// -v
    public var verbose = false
    /// -s: tolerate options this helper does not know (all unknown options already go to the kernel).
    public var sloppy = false
    /// -n: do not write /etc/mtab (there is none to write nowadays).
    public var noMtab = false
    /// -N NS: mount in that mount namespace (a path such as /proc/PID/ns/mnt, or a PID).
    public var namespace: String?

    public init() {}

    public static func parse(_ arguments: [String]) throws(UsageError) -> MountCommandLine {
        var line = MountCommandLine()
        var operands: [String] = []
        var modes: [(Mode, String)] = []
        var index = 0

        func value(for option: String) throws(UsageError) -> String {
            index += 1
            guard index < arguments.count else { throw UsageError("option `\(option)` needs a value") }
            return arguments[index]
        }

        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" {
                operands.append(contentsOf: arguments[(index + 1)...])
                break
            }
            if argument.hasPrefix("--") {
                let (name, inline) = splitLong(argument)
                switch name {
                case "--help": modes.append((.help, name))
                case "--version": modes.append((.version, name))
                case "--reattach": modes.append((.reattach, name))
                case "--upgrade": modes.append((.upgrade, name))
                case "--disconnect": modes.append((.disconnect, name))
                case "--list": modes.append((.list, name))
                case "--options":
                    let list = if let inline { inline } else { try value(for: name) }
                    try line.options.parse(list)
                case "--types":
                    let type = if let inline { inline } else { try value(for: name) }
                    try line.setType(type)
                default:
                    throw UsageError("unknown option `\(argument)`")
                }
                if inline != nil && name != "--options" && name != "--types" {
                    throw UsageError("option `\(name)` takes no value")
                }
            } else if argument.hasPrefix("-") && argument.count > 1 {
                // Short options, possibly clustered (-fnv) or with an attached value (-oro).
                var letters = Array(argument.dropFirst())
                while !letters.isEmpty {
                    let letter = letters.removeFirst()
                    let attached = String(letters)
                    func optionValue() throws(UsageError) -> String {
                        defer { letters = [] }
                        return attached.isEmpty ? try value(for: "-\(letter)") : attached
                    }
                    switch letter {
                    case "h": modes.append((.help, "-h"))
                    case "V": modes.append((.version, "-V"))
                    case "u": modes.append((.unmount, "-u"))
                    case "f": line.fake = true
                    case "n": line.noMtab = true
                    case "s": line.sloppy = true
                    case "v": line.verbose = true
                    case "o": try line.options.parse(try optionValue())
                    case "t": try line.setType(try optionValue())
                    case "N": line.namespace = try optionValue()
                    case "d":
                        let text = try optionValue()
                        guard let level = Int(text), (0...9).contains(level) else {
                            throw UsageError("invalid debug level `\(text)` (expected 0 to 9)")
                        }
                        line.debugLevel = level
                    default:
                        throw UsageError("unknown option `-\(letter)`")
                    }
                }
            } else {
                operands.append(argument)
            }
            index += 1
        }

        let distinct = Set(modes.map(\.0))
        if distinct.contains(.help) { line.mode = .help; return line }
        if distinct.contains(.version) { line.mode = .version; return line }
        if distinct.count > 1 {
            throw UsageError(
                "conflicting options: \(modes.map(\.1).joined(separator: " and ")) cannot be used together")
        }
        line.mode = distinct.first ?? .mount
        if line.verbose { line.debugLevel = max(line.debugLevel, 4) }
        try line.takeOperands(operands)
        try line.checkConsistency()
        return line
    }

    private static func splitLong(_ argument: String) -> (String, String?) {
        guard let equals = argument.firstIndex(of: "=") else { return (argument, nil) }
        return (String(argument[..<equals]), String(argument[argument.index(after: equals)...]))
    }

    mutating func setType(_ type: String) throws(UsageError) {
        let parts = type.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts[0] == "erofs" else {
            throw UsageError("unsupported filesystem type `\(type)` (this helper mounts erofs only)")
        }
        guard parts.count == 2 else { backend = nil; return }
        switch parts[1] {
        case "local": backend = .local
        case "nbd": backend = .nbd
        case "fuse": backend = .fuse
        case "ublk": backend = .ublk
        case "fanotify":
            throw UsageError(
                "filesystem subtype `\(parts[1])` is not built into this mount.erofs (subtypes: local, nbd, fuse, ublk)"
            )
        default:
            throw UsageError("invalid filesystem subtype `\(parts[1])` (subtypes: local, nbd, fuse, ublk)")
        }
    }

    mutating func takeOperands(_ operands: [String]) throws(UsageError) {
        switch mode {
        case .mount:
            guard operands.count >= 1 else { throw UsageError("missing argument: SOURCE") }
            guard operands.count >= 2 else { throw UsageError("missing argument: MOUNTPOINT") }
            guard operands.count == 2 else { throw UsageError("unexpected argument: \(operands[2])") }
            source = operands[0]
            target = operands[1]
        case .unmount, .reattach, .upgrade, .disconnect:
            guard operands.count >= 1 else { throw UsageError("missing argument: TARGET") }
            guard operands.count == 1 else { throw UsageError("unexpected argument: \(operands[1])") }
            target = operands[0]
        case .list:
            guard operands.isEmpty else { throw UsageError("unexpected argument: \(operands[0])") }
        case .help, .version:
            break
        }
    }

    func checkConsistency() throws(UsageError) {
        if namespace != nil, [.list, .disconnect, .reattach, .upgrade].contains(mode) {
            // Refused, not ignored: an nbd device, its daemons and its state belong to no mount
            // namespace, and another namespace's /run or mount table must not choose them.
            throw UsageError(
                "-N applies to mounting and -u only: for --\(mode.rawValue), name the device (/dev/nbdN) from this namespace"
            )
        }
        guard mode == .mount else { return }
        if options.forceLoop, let backend, backend != .local {
            throw UsageError("conflicting options: `-o loop` needs the local backend, not -t erofs.\(backend.rawValue)")
        }
        let prefixes = Set(options.backendOptions.map { String($0.name.prefix { $0 != "." }) })
        if prefixes.contains("nbd"), let backend, backend != .nbd {
            throw UsageError("conflicting options: nbd.* options need -t erofs.nbd, not -t erofs.\(backend.rawValue)")
        }
        if prefixes.contains("fuse"), backend != .fuse {
            throw UsageError("conflicting options: fuse.* options need -t erofs.fuse")
        }
        if prefixes.contains("ublk"), backend != .ublk {
            throw UsageError("conflicting options: ublk.* options need -t erofs.ublk")
        }
        if options.forceLoop && !prefixes.isDisjoint(with: ["nbd", "fuse", "ublk", "oci", "s3", "http", "remote"]) {
            throw UsageError(
                "conflicting options: `-o loop` cannot be combined with \(prefixes.sorted().joined(separator: ", ")) options"
            )
        }
        if options.backendOption("oci.blob") != nil && options.backendOption("oci.layer") != nil {
            throw UsageError("conflicting options: oci.blob and oci.layer cannot be set together")
        }
    }
}
