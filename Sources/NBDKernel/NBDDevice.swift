#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import SystemCalls
import SystemPackage

/// One nbd device, `/dev/nbdN`, and what sysfs says about it.
public struct NBDDevice: Sendable, Hashable {
    public var index: UInt32
    /// The sysfs root, replaceable for tests.
    public var sysfsBlock: String

    public init(index: UInt32, sysfsBlock: String = "/sys/block") {
        self.index = index
        self.sysfsBlock = sysfsBlock
    }

    public var path: String { "/dev/nbd\(index)" }
    public var sysfsPath: String { "\(sysfsBlock)/nbd\(index)" }

    /// Every nbd device sysfs lists, by index.
    public static func all(sysfsBlock: String = "/sys/block") -> [NBDDevice] {
        guard let directory = opendir(sysfsBlock) else { return [] }
        defer { closedir(directory) }
        return directoryEntryNames(directory).compactMap { name in
            guard name.hasPrefix("nbd"), let index = UInt32(name.dropFirst(3)) else { return nil }
            return NBDDevice(index: index, sysfsBlock: sysfsBlock)
        }.sorted { $0.index < $1.index }
    }

    /// The pid of the task that started the device (`pid`, present only while it runs). After
    /// a RECONFIGURE it still names the first server, which may be dead.
    public var serverPID: Int32? {
        attribute("pid").flatMap { Int32($0) }
    }

    /// The backend identifier given at CONNECT (`backend`; kernels from 5.14). Nil when the
    /// file is absent or empty.
    public var backendIdentifier: String? {
        attribute("backend").flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Whether this kernel keeps backend identifiers (the `backend` file exists): older kernels
    /// silently ignore BACKEND_IDENTIFIER.
    public var hasBackendIdentifierSupport: Bool {
        access(sysfsPath + "/backend", F_OK) == 0
    }

    /// Capacity in 512-byte sectors (`size`); 0 until the device is started.
    public var sizeSectors: UInt64? {
        attribute("size").flatMap { UInt64($0) }
    }

    /// Requests in flight (`inflight`: reads and writes).
    public var inflightRequests: (reads: UInt64, writes: UInt64)? {
        guard let text = attribute("inflight") else { return nil }
        let fields = text.split(separator: " ").compactMap { UInt64($0) }
        return fields.count == 2 ? (fields[0], fields[1]) : nil
    }

    /// Devices stacked on this one (`holders/`: dm, md...).
    public var holders: [String] {
        guard let directory = opendir(sysfsPath + "/holders") else { return [] }
        defer { closedir(directory) }
        return directoryEntryNames(directory)
    }

    /// In service: started (pid present) with its capacity set.
    public var isInService: Bool {
        serverPID != nil && (sizeSectors ?? 0) != 0
    }

    /// Why the device looks taken, or nil when it looks free. Looking free is no promise:
    /// another process can claim it a moment later, which the claim itself detects (EBUSY).
    public var reasonInUse: String? {
        if let pid = serverPID { return "served by pid \(pid)" }
        if let identifier = backendIdentifier { return "bound to backend \(identifier)" }
        if let size = sizeSectors, size != 0 { return "has a size (\(size) sectors)" }
        if let inflight = inflightRequests, inflight.reads != 0 || inflight.writes != 0 {
            return "has requests in flight"
        }
        let holders = holders
        if !holders.isEmpty { return "held by \(holders.joined(separator: ", "))" }
        return nil
    }

    /// Polls sysfs until the device is in service, or throws ETIMEDOUT with what was seen.
    /// The capacity appears only once the device started: mount after this, not before.
    public func waitUntilInService(
        timeout: Duration, pollInterval: Duration = .milliseconds(10)
    ) throws(SystemError) {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while !isInService {
            guard clock.now < deadline else {
                throw SystemError(
                    "wait for nbd device", path: path, errno: .timedOut,
                    detail: "not in service after \(timeout) (pid \(serverPID.map(String.init) ?? "absent"), "
                        + "size \(sizeSectors.map(String.init) ?? "unreadable") sectors)")
            }
            let (seconds, attoseconds) = pollInterval.components
            var pause = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
            var remaining = timespec()
            while nanosleep(&pause, &remaining) == -1 && errno == EINTR { pause = remaining }
        }
    }

    /// The device's request queue in sysfs (scheduler, request size).
    public var queue: BlockQueue { BlockQueue(devicePath: sysfsPath) }

    /// One sysfs attribute without its trailing newline, or nil when it cannot be read.
    func attribute(_ name: String) -> String? { sysfsAttribute("\(sysfsPath)/\(name)") }
}
