#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// `mount(2)` and `umount2(2)`.
public enum Mount {
    public static func mount(
        source: String, target: String, type: String, flags: MountFlags, data: String
    ) throws(SystemError) {
        let result =
            data.isEmpty
            ? Glibc.mount(source, target, type, flags.rawValue, nil)
            : data.withCString { Glibc.mount(source, target, type, flags.rawValue, $0) }
        if result != 0 {
            throw .lastErrno("mount \(source) on", path: target)
        }
    }

    /// UMOUNT_NOFOLLOW always: a symlink put in the mountpoint's place must not redirect the
    /// unmount to another mount.
    public static func unmount(_ target: String, flags: Int32 = 0) throws(SystemError) {
        try retryingOnInterrupt("umount", path: target) { umount2(target, flags | Int32(UMOUNT_NOFOLLOW)) }
    }
}

/// One line of /proc/self/mountinfo.
public struct MountInfoEntry: Sendable, Equatable {
    public var mountID: Int
    public var major: UInt32
    public var minor: UInt32
    public var root: String
    public var mountPoint: String
    public var options: String
    public var fsType: String
    public var source: String
    public var superOptions: String
}

/// The mount table as the kernel reports it for this process.
public enum MountTable {
    public static func read(_ path: String = "/proc/self/mountinfo") throws(SystemError) -> [MountInfoEntry] {
        try parse(readTextFile(path))
    }

    /// Parses mountinfo text (proc(5)): fields up to the optional ones, " - ", then
    /// fstype, source, super options. Octal escapes (\040 for space) are decoded.
    public static func parse(_ text: String) -> [MountInfoEntry] {
        text.split(separator: "\n").compactMap { line in
            let halves = line.split(separator: " - ", maxSplits: 1, omittingEmptySubsequences: false)
            guard halves.count == 2 else { return nil }
            let head = halves[0].split(separator: " ")
            let tail = halves[1].split(separator: " ", omittingEmptySubsequences: false)
            guard head.count >= 6, tail.count >= 3, let id = Int(head[0]) else { return nil }
            let device = head[2].split(separator: ":")
            guard device.count == 2, let major = UInt32(device[0]), let minor = UInt32(device[1]) else { return nil }
            return MountInfoEntry(
                mountID: id, major: major, minor: minor, root: unescape(head[3]), mountPoint: unescape(head[4]),
                options: String(head[5]), fsType: String(tail[0]), source: unescape(tail[1]),
                superOptions: String(tail[2]))
        }
    }

    /// The last (topmost) mount at `mountPoint`, if any.
    public static func mount(at mountPoint: String) throws(SystemError) -> MountInfoEntry? {
        try read().last { $0.mountPoint == mountPoint }
    }

    static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3,
                let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8)
            {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Reads a whole (small) text file such as those under /proc and /sys.
public func readTextFile(_ path: String) throws(SystemError) -> String {
    let fd = try retryingOnInterrupt("open", path: path) { open(path, O_RDONLY | O_CLOEXEC) }
    defer { close(fd) }
    return try readAll(fd, path: path)
}

/// The rest of an open file, as text.
func readAll(_ fd: Int32, path: String) throws(SystemError) -> String {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let got = try retryingOnInterrupt("read", path: path) {
            chunk.withUnsafeMutableBytes { raw in Glibc.read(fd, raw.baseAddress!, raw.count) }
        }
        if got == 0 { break }
        bytes.append(contentsOf: chunk[..<got])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// mount(2) flags, from linux/mount.h.
public struct MountFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }

    public static let readOnly = MountFlags(rawValue: 1)
    public static let noSuid = MountFlags(rawValue: 2)
    public static let noDev = MountFlags(rawValue: 4)
    public static let noExec = MountFlags(rawValue: 8)
    public static let synchronous = MountFlags(rawValue: 16)
    public static let remount = MountFlags(rawValue: 32)
    public static let dirSync = MountFlags(rawValue: 128)
    public static let noAtime = MountFlags(rawValue: 1024)
    public static let noDirAtime = MountFlags(rawValue: 2048)
    public static let silent = MountFlags(rawValue: 32768)
    public static let relAtime = MountFlags(rawValue: 1 << 21)
    public static let strictAtime = MountFlags(rawValue: 1 << 24)
    public static let lazyTime = MountFlags(rawValue: 1 << 25)
}
