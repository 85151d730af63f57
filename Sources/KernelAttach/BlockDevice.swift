#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// Block devices by number, as the kernel knows them.
public enum BlockDevice {
    /// Whether a block device is held exclusively: a mounted filesystem holds its device so, in
    /// every mount namespace and for as long as any mount of it (a bind mount, a namespace's
    /// copy, a lazily detached one) lives. An O_EXCL open is the kernel's own answer.
    public enum Claim: Sendable {
        case free
        /// Mounted somewhere, or claimed by another exclusive user (dm, md...).
        case held
        case failed(SystemError)
    }

    /// `path` must be the device `major:minor` (checked on the open descriptor: a node put in
    /// its place proves nothing). The open is an open like any other: when it is the last, its
    /// close may release a device set to go on last close (nbd's disconnect-on-close, loop's
    /// autoclear), which is what a caller asking whether the device is free is about to do.
    public static func claim(path: String, major: UInt32, minor: UInt32) -> Claim {
        let fd = open(path, O_RDONLY | O_EXCL | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 {
            if errno == EBUSY { return .held }
            return .failed(.lastErrno("open", path: path))
        }
        defer { close(fd) }
        guard let status = try? FileStatus.stat("/proc/self/fd/\(fd)"), status.kind == .block,
            status.rdevMajor == major, status.rdevMinor == minor
        else {
            return .failed(SystemError("open", path: path, detail: "not the block device \(major):\(minor)"))
        }
        return .free
    }

    /// The kernel's name of block device `major:minor` (`nbd3`, `loop0`, `sda1`), from sysfs.
    public static func name(major: UInt32, minor: UInt32) -> String? {
        guard let text = try? readTextFile("/sys/dev/block/\(major):\(minor)/uevent") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("DEVNAME=") {
            return String(line.dropFirst("DEVNAME=".count))
        }
        return nil
    }

    /// N of a kernel device name `PREFIXN` (`loop3`, `nbd12`): digits only, no partition.
    public static func index(of name: String, prefix: String) -> Int? {
        guard name.hasPrefix(prefix) else { return nil }
        let digits = name.dropFirst(prefix.count)
        guard !digits.isEmpty, digits.count <= 7, digits.allSatisfy({ ("0"..."9").contains($0) }) else { return nil }
        return Int(digits)
    }
}
