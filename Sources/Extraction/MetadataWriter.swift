import Dispatch
import CShim
import EROFSReader
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Restores an object's metadata; shared by the walk and the file workers.
struct MetadataWriter: Sendable {
    let filesystem: EROFSFilesystem
    let rootDescriptor: Int32
    let restoreOwners: Bool

    /// Owner, xattrs, mode (after the owner: chown clears setuid), then times.
    /// Returns the warnings (failed chown, setxattr, chmod, utimensat) it met.
    func apply(_ inode: Inode, descriptor: Int32?, parent: Int32?, name: String?, path: String) throws -> [String] {
        var warnings: [String] = []
        let isSymlink = inode.kind == .symlink
        // Objects without a usable descriptor are reached through /proc/self/fd/<parent>/<name>,
        // which never follows a symlink in the last component with the l* calls.
        let procPath: String? = parent.map { "/proc/self/fd/\($0)/\(name ?? "")" }
        if restoreOwners {
            let result: Int32
            if let descriptor { result = fchown(descriptor, inode.uid, inode.gid) } else {
                result = fchownat(parent ?? rootDescriptor, name ?? "", inode.uid, inode.gid, AT_SYMLINK_NOFOLLOW)
            }
            if result != 0 { warnings.append("chown \(path): \(String(cString: strerror(errno)))") }
        }
        for (attribute, value) in try filesystem.xattrs(inode) {
            let result: Int32 = value.withUnsafeBytes { bytes in
                if let descriptor { return fsetxattr(descriptor, attribute, bytes.baseAddress, bytes.count, 0) }
                return lsetxattr(procPath ?? "", attribute, bytes.baseAddress, bytes.count, 0)
            }
            if result != 0 { warnings.append("setxattr \(attribute) on \(path): \(String(cString: strerror(errno)))") }
        }
        if !isSymlink {
            let mode = mode_t(inode.permissions)
            let result = descriptor.map { fchmod($0, mode) } ?? fchmodat(parent ?? rootDescriptor, name ?? "", mode, 0)
            if result != 0 { warnings.append("chmod \(path): \(String(cString: strerror(errno)))") }
        }
        var times = [timespec](repeating: timespec(), count: 2)
        for index in 0..<2 {
            times[index].tv_sec = Int(truncatingIfNeeded: inode.mtimeSeconds)
            times[index].tv_nsec = Int(inode.mtimeNanoseconds)
        }
        let result: Int32
        if let descriptor { result = futimens(descriptor, times) } else {
            result = utimensat(parent ?? rootDescriptor, name ?? "", times, AT_SYMLINK_NOFOLLOW)
        }
        if result != 0 { warnings.append("utimensat \(path): \(String(cString: strerror(errno)))") }
        return warnings
    }
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
                let failure: any Error & Sendable = (error as? EROFSError) ?? (error as? ExtractionError) ?? ExtractionError(message: "\(error)")
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
