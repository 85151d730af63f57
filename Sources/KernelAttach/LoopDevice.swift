#if canImport(Glibc)
import Glibc
#endif
import CShim
import SystemCalls

/// A loop device bound to a file, set up with LOOP_CTL_GET_FREE and LOOP_CONFIGURE.
public struct LoopDevice: Sendable, Equatable {
    public var index: Int
    public var path: String { "/dev/loop\(index)" }

    public init(index: Int) { self.index = index }

    /// Binds `file` read-only to a free loop device. With `autoclear` the kernel frees the
    /// device when its last opener closes it: the returned descriptor holds it until the
    /// caller's mount does. Another process may take the free device between GET_FREE and
    /// CONFIGURE (EBUSY): then ask for another, a few times.
    public static func attach(file: String, autoclear: Bool = true) throws(SystemError) -> AttachedLoopDevice {
        let backing = try retryingOnInterrupt("open", path: file) { open(file, O_RDONLY | O_CLOEXEC) }
        defer { close(backing) }
        let control = try retryingOnInterrupt("open", path: "/dev/loop-control") {
            open("/dev/loop-control", O_RDWR | O_CLOEXEC)
        }
        defer { close(control) }

        var lastError = SystemError("attach loop device", path: file, detail: "no free loop device")
        for _ in 0..<16 {
            let index = try retryingOnInterrupt("LOOP_CTL_GET_FREE", path: "/dev/loop-control") {
                ioctl(control, UInt(LOOP_CTL_GET_FREE))
            }
            let device = LoopDevice(index: Int(index))
            let fd = open(device.path, O_RDONLY | O_CLOEXEC)
            if fd < 0 {
                lastError = .lastErrno("open", path: device.path)
                if errno == ENOENT || errno == ENXIO { continue }  // udev has not made the node yet
                throw lastError
            }
            var config = loop_config()
            config.fd = UInt32(backing)
            config.info.lo_flags = UInt32(LO_FLAGS_READ_ONLY) | (autoclear ? UInt32(LO_FLAGS_AUTOCLEAR) : 0)
            withUnsafeMutableBytes(of: &config.info.lo_file_name) { name in
                let bytes = Array(file.utf8.prefix(name.count - 1))
                name.copyBytes(from: bytes)
            }
            if cshim_ioctl_ptr(fd, UInt(LOOP_CONFIGURE), &config) == 0 {
                return AttachedLoopDevice(device: device, descriptor: fd)
            }
            lastError = .lastErrno("LOOP_CONFIGURE", path: device.path)
            let code = errno
            close(fd)
            if code != EBUSY { throw lastError }
        }
        throw lastError
    }

    /// LOOP_CLR_FD: frees the device now, or (autoclear) once its last user closes it.
    public func detach() throws(SystemError) {
        let fd = try retryingOnInterrupt("open", path: path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        try retryingOnInterrupt("LOOP_CLR_FD", path: path) { ioctl(fd, UInt(LOOP_CLR_FD)) }
    }

    /// The file bound to this device, or nil when the device is free.
    public var backingFile: String? {
        guard let text = try? readTextFile("/sys/block/loop\(index)/loop/backing_file") else { return nil }
        let trimmed = text.hasSuffix("\n") ? String(text.dropLast()) : text
        return trimmed.isEmpty ? nil : trimmed
    }

    /// Whether the kernel frees the device when its last user closes it.
    public var autoclear: Bool {
        (try? readTextFile("/sys/block/loop\(index)/loop/autoclear"))?.hasPrefix("1") ?? false
    }

    /// Every loop device bound to a file, with that file.
    public static func attached() -> [(device: LoopDevice, backingFile: String)] {
        guard let directory = opendir("/sys/block") else { return [] }
        defer { closedir(directory) }
        var result: [(LoopDevice, String)] = []
        while let dirent = readdir(directory) {
            let name = withUnsafeBytes(of: dirent.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name.hasPrefix("loop"), let index = Int(name.dropFirst(4)) else { continue }
            let device = LoopDevice(index: index)
            if let file = device.backingFile { result.append((device, file)) }
        }
        return result.sorted { $0.0.index < $1.0.index }
    }

    /// The loop device behind a block device number, if it is one.
    public static func device(major: UInt32, minor: UInt32) -> LoopDevice? {
        guard major == 7 else { return nil }  // LOOP_MAJOR
        return BlockDevice.name(major: major, minor: minor).flatMap { BlockDevice.index(of: $0, prefix: "loop") }.map(
            LoopDevice.init)
    }
}

/// A loop device just configured, held open so that autoclear does not free it before the
/// mount takes its own reference. Call `close()` once the mount is done (or failed).
public struct AttachedLoopDevice: Sendable {
    public let device: LoopDevice
    let descriptor: Int32

    public func close() { _ = Glibc.close(descriptor) }
}
