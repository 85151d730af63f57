#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import Logging
import SystemCalls
import SystemPackage

/// `mount.erofs -u TARGET`: unmounts and releases what the mount set up.
public struct Unmounter: Sendable {
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    public struct Result: Sendable, Equatable {
        public var mountPoint: String
        public var source: String
        /// A loop device that autoclear did not free and we released.
        public var releasedLoopDevice: String?
    }

    /// `target` is a mountpoint, or (as umount(8) allows) the mounted image or device.
    public func unmount(_ target: String) throws(MountFailure) -> Result {
        let canonical = canonicalPath(target)
        let table: [MountInfoEntry]
        do { table = try MountTable.read() } catch {
            throw MountFailure("cannot read the mount table", cause: error)
        }
        let bySource = { (entry: MountInfoEntry) -> Bool in
            entry.source == canonical
                || LoopDevice.device(major: entry.major, minor: entry.minor)?.backingFile == canonical
        }
        guard let entry = table.last(where: { $0.mountPoint == canonical }) ?? table.last(where: bySource) else {
            throw MountFailure("\(target) is not mounted")
        }
        let mountPoint = entry.mountPoint
        guard entry.fsType == "erofs" || entry.fsType.hasPrefix("fuse.erofs") || entry.fsType == "fuse" && entry.source.contains("erofs") else {
            throw MountFailure("\(target) is not an EROFS mount (it is \(entry.fsType) from \(entry.source))")
        }
        do { try Mount.unmount(mountPoint) } catch {
            throw MountFailure("cannot unmount \(mountPoint)", cause: error)
        }
        var result = Result(mountPoint: mountPoint, source: entry.source)
        if let loop = LoopDevice.device(major: entry.major, minor: entry.minor) {
            result.releasedLoopDevice = try releaseIfUnused(loop)
        }
        if let index = nbdIndex(entry.source), let state = try? StateStore().load(device: index) {
            // Mounted elsewhere too (a bind mount, another namespace's view): the device stays.
            if let others = try? MountTable.read(), others.contains(where: { $0.source == entry.source }) {
                logger.info("\(entry.source) is still mounted elsewhere; it stays attached")
                return result
            }
            let problems = NBDTeardown(logger: logger).release(state)
            if !problems.isEmpty {
                throw MountFailure("unmounted \(mountPoint), but: \(problems.joined(separator: "; "))")
            }
        }
        return result
    }

    /// Autoclear frees a loop device once its last user is gone, possibly a moment after the
    /// unmount; one set up for autoclear (by us or by mount(8)) that stays bound and is mounted
    /// nowhere else is released here. Loop devices set up by hand (no autoclear) are left alone.
    private func releaseIfUnused(_ loop: LoopDevice) throws(MountFailure) -> String? {
        for _ in 0..<50 {
            if loop.backingFile == nil { return nil }
            usleep(10_000)
        }
        guard loop.autoclear else { return nil }
        let stillMounted = (try? MountTable.read())?.contains { $0.source == loop.path } ?? true
        guard !stillMounted else { return nil }
        do { try loop.detach() } catch {
            // Freed meanwhile.
            if error.errno == .noSuchAddressOrDevice || error.errno == .operationNotSupportedByDevice { return nil }
            throw MountFailure("unmounted, but cannot release \(loop.path)", cause: error)
        }
        logger.debug("released \(loop.path)")
        return loop.path
    }
}

/// N of a path /dev/nbdN, else nil.
public func nbdIndex(_ path: String) -> Int? {
    guard path.hasPrefix("/dev/nbd") else { return nil }
    return Int(path.dropFirst("/dev/nbd".count))
}

/// The absolute, symlink-free form of `path` when it exists (as /proc/self/mountinfo shows
/// mountpoints), else `path` unchanged.
public func canonicalPath(_ path: String) -> String {
    guard let resolved = realpath(path, nil) else { return path }
    defer { free(resolved) }
    return String(cString: resolved)
}
