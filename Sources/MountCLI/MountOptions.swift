import KernelAttach

/// What `-o` says, split the way mount(8) helpers split it: standard options become flags,
/// our own (`loop`, `nbd.*`, ...) steer the backend, and everything else is EROFS mount data
/// for the kernel (device=, domain_id=, fsid=, dax, user_xattr, acl, cache_strategy=, ...).
public struct MountOptions: Sendable, Equatable {
    public var flags: MountFlags = [.readOnly]
    /// Options passed to the kernel as the mount's data string, in the order given.
    public var kernelData: [String] = []
    /// `-o loop`: use a loop device even where a file-backed mount would work.
    public var forceLoop = false
    /// Options with a backend prefix (`nbd.`, `fuse.`, `oci.`, `s3.`, `http.`, `remote.`), by full name.
    public var backendOptions: [(name: String, value: String?)] = []
    /// Said to the user once parsing is done (e.g. `rw` on a read-only filesystem).
    public var warnings: [String] = []

    public init() {}

    public static func == (lhs: MountOptions, rhs: MountOptions) -> Bool {
        lhs.flags == rhs.flags && lhs.kernelData == rhs.kernelData && lhs.forceLoop == rhs.forceLoop
            && lhs.backendOptions.map { "\($0.name)=\($0.value ?? "")" }
                == rhs.backendOptions.map { "\($0.name)=\($0.value ?? "")" }
    }

    public var kernelDataString: String { kernelData.joined(separator: ",") }

    public func backendOption(_ name: String) -> String?? {
        backendOptions.last { $0.name == name }.map { $0.value }
    }

    static let backendPrefixes = ["nbd.", "fuse.", "ublk.", "oci.", "s3.", "http.", "remote."]

    /// Options that only mean something to mount(8) or fstab; a helper ignores them.
    static let userspaceOnly: Set<String> = [
        "defaults", "quiet", "user", "nouser", "users", "owner", "group", "auto", "noauto", "nofail",
        "_netdev", "async", "loud",
    ]

    static let flagOptions: [String: (set: MountFlags, clear: MountFlags)] = [
        "ro": ([.readOnly], []),
        "nosuid": ([.noSuid], []), "suid": ([], [.noSuid]),
        "nodev": ([.noDev], []), "dev": ([], [.noDev]),
        "noexec": ([.noExec], []), "exec": ([], [.noExec]),
        "noatime": ([.noAtime], [.relAtime, .strictAtime]), "atime": ([], [.noAtime]),
        "nodiratime": ([.noDirAtime], []), "diratime": ([], [.noDirAtime]),
        "relatime": ([.relAtime], [.noAtime, .strictAtime]), "norelatime": ([], [.relAtime]),
        "strictatime": ([.strictAtime], [.noAtime, .relAtime]), "nostrictatime": ([], [.strictAtime]),
        "lazytime": ([.lazyTime], []), "nolazytime": ([], [.lazyTime]),
        "sync": ([.synchronous], []),
        "dirsync": ([.dirSync], []),
        "silent": ([.silent], []),
        "remount": ([.remount], []),
    ]

    /// Adds one `-o` argument (comma-separated; later options override earlier ones).
    public mutating func parse(_ list: String) throws(UsageError) {
        for option in list.split(separator: ",", omittingEmptySubsequences: true).map(String.init) {
            let lowered = option.lowercased()
            if lowered == "rw" {
                // mount(8) passes a lone `-o rw` when the user asked for nothing: not worth a warning.
                if list.lowercased() != "rw" {
                    warnings.append("EROFS is read-only: ignoring `rw`, mounting read-only")
                }
            } else if lowered == "loop" {
                forceLoop = true
            } else if let change = MountOptions.flagOptions[lowered] {
                flags.formUnion(change.set)
                flags.subtract(change.clear)
            } else if MountOptions.userspaceOnly.contains(lowered) || lowered.hasPrefix("x-")
                || lowered.hasPrefix("comment=")
            {
                continue
            } else if MountOptions.backendPrefixes.contains(where: { lowered.hasPrefix($0) }) {
                let parts = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                backendOptions.append((String(parts[0]), parts.count > 1 ? String(parts[1]) : nil))
            } else if lowered.hasPrefix("loop=") || lowered.hasPrefix("offset=") || lowered.hasPrefix("sizelimit=") {
                throw UsageError("option `\(option)` is not supported (loop devices are chosen automatically)")
            } else {
                kernelData.append(option)
            }
        }
    }
}

/// Bad invocation: mount(8)'s exit status 1.
public struct UsageError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
