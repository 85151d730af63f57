#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// A sysfs attribute's text without its trailing newline, or nil when it cannot be read.
public func sysfsAttribute(_ path: String) -> String? {
    guard var text = try? readTextFile(path) else { return nil }
    while text.hasSuffix("\n") { text.removeLast() }
    return text
}

/// The request queue of a block device in sysfs (`/sys/block/NAME/queue`): the settings the
/// nbd and ublk backends tune once their device is in service, as a loop device has them.
public struct BlockQueue: Sendable {
    /// The device's sysfs directory (`/sys/block/nbd0`).
    public let devicePath: String

    public init(devicePath: String) { self.devicePath = devicePath }

    /// `/sys/block/NAME`'s queue for a device node name (`nbd0`, `ublkb3`).
    public init(device name: String, sysfsBlock: String = "/sys/block") {
        self.init(devicePath: "\(sysfsBlock)/\(name)")
    }

    /// BLK_DEF_MAX_SECTORS (2560 sectors): what a loop device, and nbd on 6.12, get.
    public static let preferredMaxRequestKiB: UInt32 = 1280

    /// One queue attribute without its trailing newline, or nil when it cannot be read.
    public func attribute(_ name: String) -> String? { sysfsAttribute("\(devicePath)/queue/\(name)") }

    /// Writes one queue attribute.
    public func setAttribute(_ name: String, to value: String) throws(SystemError) {
        let path = "\(devicePath)/queue/\(name)"
        let fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
        guard fd >= 0 else { throw .lastErrno("open", path: path) }
        defer { close(fd) }
        let text = Array((value + "\n").utf8)
        let written = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == text.count else { throw .lastErrno("write \(value)", path: path) }
    }

    /// The I/O scheduler in use (`scheduler` shows it in brackets).
    public var scheduler: String? {
        guard let line = attribute("scheduler"), let open = line.firstIndex(of: "["),
            let close = line[open...].firstIndex(of: "]")
        else { return nil }
        return String(line[line.index(after: open)..<close])
    }

    /// Selects the I/O scheduler (`none`, `mq-deadline`, ...). The switch freezes the queue
    /// until the requests in flight are answered: only while the device is served.
    public func setScheduler(_ name: String) throws(SystemError) { try setAttribute("scheduler", to: name) }

    /// No I/O scheduler, as a loop device: the kernel gives a single-queue device mq-deadline,
    /// which hands every request to a kblockd worker first (one more context switch per read).
    public func turnOffScheduler() throws(SystemError) {
        if let current = scheduler, current != "none" { try setScheduler("none") }
    }

    /// Raises `max_sectors_kb` to `preferred`, or to the driver's ceiling (`max_hw_sectors_kb`)
    /// where that is lower, when it is below; returns what it wrote (nil: nothing to do, or
    /// unreadable).
    @discardableResult
    public func raiseMaxRequestKiB(to preferred: UInt32 = preferredMaxRequestKiB) throws(SystemError) -> UInt32? {
        guard let current = attribute("max_sectors_kb").flatMap({ UInt32($0) }),
            let ceiling = attribute("max_hw_sectors_kb").flatMap({ UInt32($0) }), current < min(ceiling, preferred)
        else { return nil }
        try setAttribute("max_sectors_kb", to: String(min(ceiling, preferred)))
        return min(ceiling, preferred)
    }
}
