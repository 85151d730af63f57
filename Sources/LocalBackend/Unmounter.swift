#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import Logging
import SystemCalls
import SystemPackage

/// `mount.erofs -u TARGET`: unmounts and releases a loop device the mount set up. What a
/// userspace backend set up (an nbd device, a FUSE or ublk daemon) its backend releases, found
/// by the `Result`'s filesystem type and device number.
public struct Unmounter: Sendable {
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    public struct Result: Sendable, Equatable {
        public var mountPoint: String
        public var source: String
        /// A loop device that autoclear did not free and we released.
        public var releasedLoopDevice: String?
        /// What was unmounted: its filesystem type and device number (a FUSE mount's daemon is
        /// found by them).
        public var fsType = ""
        public var major: UInt32 = 0
        public var minor: UInt32 = 0
    }

    /// `target` is a mountpoint, or (as umount(8) allows) the mounted image or device. With
    /// `namespace`, only finding and unmounting the mount happens there; what the mount set up
    /// (loop or nbd device, daemon, state) is released from our own namespace, found by the
    /// mount's device number, never by a name the other namespace could have chosen.
    public func unmount(_ target: String, in namespace: MountNamespace? = nil) throws(MountFailure) -> Result {
        let entry: MountInfoEntry
        if let namespace {
            let outcome: Swift.Result<MountInfoEntry, MountFailure>
            do {
                outcome = try namespace.run { () throws(MountFailure) in try detach(target, table: namespace.mountTable)
                }
            } catch {
                throw MountFailure("cannot unmount \(target) in mount namespace \(namespace.name)", cause: error)
            }
            entry = try outcome.get()
        } else {
            entry = try detach(target, table: { () throws(SystemError) in try MountTable.read() })
        }
        var result = Result(mountPoint: entry.mountPoint, source: entry.source)
        (result.fsType, result.major, result.minor) = (entry.fsType, entry.major, entry.minor)
        if let loop = LoopDevice.device(major: entry.major, minor: entry.minor) {
            result.releasedLoopDevice = try releaseIfUnused(loop, major: entry.major, minor: entry.minor)
        }
        return result
    }

    /// Finds TARGET in `table` and unmounts it, if it is an EROFS mount.
    private func detach(_ target: String, table: () throws(SystemError) -> [MountInfoEntry]) throws(MountFailure)
        -> MountInfoEntry
    {
        let canonical = canonicalPath(target)
        let mounts: [MountInfoEntry]
        do { mounts = try table() } catch {
            throw MountFailure("cannot read the mount table", cause: error)
        }
        // A device given as TARGET is matched by its number; an image by the source of its
        // file-backed mount or by the loop device on it. (Whatever matched must then be EROFS.)
        let device = (try? FileStatus.stat(canonical)).flatMap {
            $0.kind == .block ? ($0.rdevMajor, $0.rdevMinor) : nil
        }
        let bySource = { (entry: MountInfoEntry) -> Bool in
            if let device { return (entry.major, entry.minor) == device }
            return entry.source == canonical
                || LoopDevice.device(major: entry.major, minor: entry.minor)?.backingFile == canonical
        }
        guard let entry = mounts.last(where: { $0.mountPoint == canonical }) ?? mounts.last(where: bySource) else {
            throw MountFailure("\(target) is not mounted")
        }
        guard Self.isOurs(entry) else {
            throw MountFailure("\(target) is not an EROFS mount (it is \(entry.fsType) from \(entry.source))")
        }
        do { try Mount.unmount(entry.mountPoint) } catch {
            throw MountFailure("cannot unmount \(entry.mountPoint)", cause: error)
        }
        return entry
    }

    /// A kernel EROFS mount, or a FUSE one of type erofs that root mounted (an unprivileged
    /// user's FUSE mount may call itself anything, and its source may say anything).
    static func isOurs(_ entry: MountInfoEntry) -> Bool {
        if entry.fsType == "erofs" { return true }
        return entry.fsType == "fuse.erofs" && entry.superOptions.split(separator: ",").contains("user_id=0")
    }

    /// Autoclear frees a loop device once its last user is gone, possibly a moment after the
    /// unmount; one set up for autoclear (by us or by mount(8)) that stays bound and is mounted
    /// nowhere else is released here. Loop devices set up by hand (no autoclear) are left alone.
    private func releaseIfUnused(_ loop: LoopDevice, major: UInt32, minor: UInt32) throws(MountFailure) -> String? {
        // Someone else may hold it open a moment longer (a probing blkid or udev): autoclear
        // then frees it when they close it, so that is waited for too, up to 5 s.
        var waited = 0
        while true {
            if loop.backingFile == nil { return nil }
            guard loop.autoclear else { return nil }
            if waited >= 50, case .free = BlockDevice.claim(path: loop.path, major: major, minor: minor) { break }
            if waited >= 500 { return nil }
            usleep(10_000)
            waited += 1
        }
        do { try loop.detach() } catch {
            // Freed meanwhile.
            if error.errno == .noSuchAddressOrDevice || error.errno == .operationNotSupportedByDevice { return nil }
            throw MountFailure("unmounted, but cannot release \(loop.path)", cause: error)
        }
        logger.debug("released \(loop.path)")
        return loop.path
    }
}

/// The absolute, symlink-free form of `path` when it exists (as /proc/self/mountinfo shows
/// mountpoints), else `path` unchanged.
public func canonicalPath(_ path: String) -> String {
    guard let resolved = realpath(path, nil) else { return path }
    defer { free(resolved) }
    return String(cString: resolved)
}
