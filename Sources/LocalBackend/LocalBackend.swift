#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import Logging
import SystemCalls
import SystemPackage

/// Mounts an image with the kernel's own EROFS: a block device directly, a regular file
/// file-backed (Linux 6.12+), or through a read-only, autoclearing loop device when the kernel
/// refuses a file (ENOTBLK) or `-o loop` asks for one. The kernel opens extra devices
/// (`-o device=PATH`) the way it opened the image: regular files for a file-backed mount, block
/// devices otherwise; so a block device among them makes the image go through a loop device,
/// and for a block-device mount each regular file among them is given a loop device too.
public struct LocalBackend: Sendable {
    public struct Request: Sendable {
        public var source: String
        public var mountPoint: String
        public var flags: MountFlags
        public var data: String
        public var forceLoop: Bool
        /// -f: check and prepare everything, mount nothing.
        public var fake: Bool

        public init(source: String, mountPoint: String, flags: MountFlags, data: String, forceLoop: Bool, fake: Bool) {
            self.source = source
            self.mountPoint = mountPoint
            self.flags = flags
            self.data = data
            self.forceLoop = forceLoop
            self.fake = fake
        }
    }

    public enum Outcome: Sendable, Equatable {
        case blockDevice, fileBacked, loopDevice(String), fake
    }

    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    public func mount(_ request: Request) throws(MountFailure) -> Outcome {
        let image = try ImageProbe.probe(request.source)
        try MountPoint.check(request.mountPoint)
        if request.fake { return .fake }

        let extraDevices = try ExtraDevices(mountData: request.data)
        switch image.kind {
        case .blockDevice:
            try kernelMount(request.source, request, extraDevices)
            return .blockDevice
        case .regularFile where !request.forceLoop && !extraDevices.anyBlockDevice:
            do {
                try Mount.mount(
                    source: request.source, target: request.mountPoint, type: "erofs",
                    flags: request.flags, data: request.data)
                return .fileBacked
            } catch  where error.errno == .notBlockDevice {
                logger.debug("file-backed mount refused (ENOTBLK); using a loop device")
            } catch {
                throw MountFailure("cannot mount \(request.source) on \(request.mountPoint)", cause: error)
            }
            fallthrough
        case .regularFile:
            let loop: AttachedLoopDevice
            do { loop = try LoopDevice.attach(file: request.source) } catch {
                throw MountFailure("cannot set up a loop device for \(request.source)", cause: error)
            }
            // Closing our descriptor after a failed mount lets autoclear free the device.
            defer { loop.close() }
            logger.debug("attached \(request.source) to \(loop.device.path)")
            try kernelMount(loop.device.path, request, extraDevices)
            return .loopDevice(loop.device.path)
        }
    }

    /// Mounts a block device; extra devices that are regular files get loop devices first.
    private func kernelMount(_ device: String, _ request: Request, _ extraDevices: ExtraDevices) throws(MountFailure) {
        var loops: [AttachedLoopDevice] = []
        // The mount holds the loop devices; our descriptors go (autoclear) whatever happens.
        defer { for loop in loops { loop.close() } }
        var data = request.data
        if extraDevices.anyRegularFile {
            var options: [String] = []
            for option in request.data.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
                guard let path = ExtraDevices.path(in: option), extraDevices.regularFiles.contains(path) else {
                    options.append(option)
                    continue
                }
                let loop: AttachedLoopDevice
                do { loop = try LoopDevice.attach(file: path) } catch {
                    throw MountFailure("cannot set up a loop device for extra device \(path)", cause: error)
                }
                loops.append(loop)
                logger.debug("attached extra device \(path) to \(loop.device.path)")
                options.append("device=" + loop.device.path)
            }
            data = options.joined(separator: ",")
        }
        do {
            try Mount.mount(
                source: device, target: request.mountPoint, type: "erofs",
                flags: request.flags, data: data)
        } catch {
            throw MountFailure("cannot mount \(device) on \(request.mountPoint)", cause: error)
        }
    }
}

/// The `device=PATH` options of the mount data, sorted by what they name.
struct ExtraDevices {
    var regularFiles: Set<String> = []
    var anyBlockDevice = false
    var anyRegularFile: Bool { !regularFiles.isEmpty }

    init(mountData: String) throws(MountFailure) {
        for option in mountData.split(separator: ",") {
            guard let path = ExtraDevices.path(in: String(option)) else { continue }
            let status: FileStatus
            do { status = try FileStatus.stat(path) } catch {
                throw MountFailure("cannot use extra device \(path)", cause: error)
            }
            switch status.kind {
            case .block: anyBlockDevice = true
            case .file: regularFiles.insert(path)
            default: throw MountFailure("extra device \(path) is neither a regular file nor a block device")
            }
        }
    }

    static func path(in option: String) -> String? {
        option.hasPrefix("device=") ? String(option.dropFirst("device=".count)) : nil
    }
}

public enum MountPoint {
    /// The mountpoint must exist and be a directory.
    public static func check(_ path: String) throws(MountFailure) {
        let status: FileStatus
        do { status = try FileStatus.stat(path) } catch {
            if error.errno == .noSuchFileOrDirectory {
                throw MountFailure("mountpoint \(path) does not exist")
            }
            throw MountFailure("cannot use mountpoint \(path)", cause: error)
        }
        guard status.kind == .dir else { throw MountFailure("mountpoint \(path) is not a directory") }
    }
}
