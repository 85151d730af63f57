import CShim
import Dispatch
import EROFSReader
import Synchronization
import SystemCalls
#if canImport(Glibc)
import Glibc
#endif

/// Why an extraction stopped (other than the image being unreadable: that is an EROFSError).
public struct ExtractionError: Error, Sendable {
    public var message: String
    public init(message: String) { self.message = message }
}

/// What `erofs extract` restores of the image's metadata; see ExtractCommand's options.
public struct ExtractPolicy: Sendable {
    public enum Xattrs: Sendable { case none, user, all }

    public var restoreOwners: Bool
    public var samePermissions: Bool
    public var umask: UInt32
    public var devices: Bool
    public var xattrs: Xattrs
    public var capabilities: Bool
    public var rootMetadata: Bool

    public init(
        restoreOwners: Bool, samePermissions: Bool, umask: UInt32, devices: Bool, xattrs: Xattrs, capabilities: Bool,
        rootMetadata: Bool
    ) {
        self.restoreOwners = restoreOwners
        self.samePermissions = samePermissions
        self.umask = umask
        self.devices = devices
        self.xattrs = xattrs
        self.capabilities = capabilities
        self.rootMetadata = rootMetadata
    }

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
public final class Withheld: Sendable {
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
        let key =
            name == "security.capability"
            ? name.description : ByteString(name.bytes.prefix { $0 != UInt8(ascii: ".") }).description + ".*"
        counts.withLock { $0.xattrs[key, default: 0] += 1 }
    }

    public var note: String? {
        let counts = counts.withLock { $0 }
        var parts: [String] = []
        if let first = counts.firstDevice {
            parts.append("\(counts.devices) device node(s), first \(first) (--devices)")
        }
        if counts.setIDModes > 0 {
            parts.append("setuid/setgid on \(counts.setIDModes) object(s) (--same-permissions, --same-owner)")
        }
        for (key, count) in counts.xattrs.sorted(by: { $0.key < $1.key }) {
            parts.append("\(count) \(key) xattr(s) (\(key == "security.capability" ? "--capabilities" : "--xattrs"))")
        }
        guard !parts.isEmpty else { return nil }
        return "not restored, by default or by request: " + parts.joined(separator: "; ")
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
    func apply(_ inode: Inode, descriptor: Int32?, parent: Int32?, name: ByteString?, path: ByteString) throws
        -> [String]
    {
        var warnings: [String] = []
        let isSymlink = inode.kind == .symlink
        let name = name ?? ""
        // Objects without a usable descriptor are reached through /proc/self/fd/<parent>/<name>,
        // which never follows a symlink in the last component with the l* calls.
        let procPath: ByteString? = parent.map { ByteString("/proc/self/fd/\($0)/") + name }
        var ownerRestored = false
        if policy.restoreOwners {
            let result: Int32
            if let descriptor {
                result = fchown(descriptor, inode.uid, inode.gid)
            } else {
                result = name.withCString {
                    fchownat(parent ?? rootDescriptor, $0, inode.uid, inode.gid, AT_SYMLINK_NOFOLLOW)
                }
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
            let result =
                descriptor.map { fchmod($0, mode) } ?? chmodNode(named: name, in: parent ?? rootDescriptor, mode)
            if result != 0 { warnings.append("chmod \(path): \(String(cString: strerror(errno)))") }
        }
        var times = [timespec](repeating: timespec(), count: 2)
        for index in 0..<2 {
            times[index].tv_sec = Int(truncatingIfNeeded: inode.mtimeSeconds)
            times[index].tv_nsec = Int(inode.mtimeNanoseconds)
        }
        let result: Int32
        if let descriptor {
            result = futimens(descriptor, times)
        } else {
            result = name.withCString { utimensat(parent ?? rootDescriptor, $0, times, AT_SYMLINK_NOFOLLOW) }
        }
        if result != 0 { warnings.append("utimensat \(path): \(String(cString: strerror(errno)))") }
        return warnings
    }
}

/// chmod of a node without a descriptor of its own (FIFO, socket, device), never through a
/// symlink: fchmodat cannot refuse one (AT_SYMLINK_NOFOLLOW needs fchmodat2, Linux 6.6), and
/// whoever can write in the parent could swap the node for a symlink to a file of root's
/// between its mknod and this chmod. The node is pinned by an O_PATH descriptor taken without
/// following a symlink, its type checked, and changed through that descriptor.
func chmodNode(named name: ByteString, in parent: Int32, _ mode: mode_t) -> Int32 {
    let node = name.withCString { openat(parent, $0, cshim_O_PATH | O_NOFOLLOW | O_CLOEXEC) }
    guard node >= 0 else { return -1 }
    defer { close(node) }
    var status = stat()
    guard fstat(node, &status) == 0 else { return -1 }
    guard [S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK].contains(status.st_mode & S_IFMT) else {
        errno = ELOOP
        return -1
    }
    return chmod("/proc/self/fd/\(node)", mode)
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
                let failure: any Error & Sendable =
                    (error as? EROFSError) ?? (error as? ExtractionError) ?? ExtractionError(message: "\(error)")
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
