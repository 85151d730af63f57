#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import Logging
import SystemCalls
import SystemPackage

/// Mounts an image with the kernel's own EROFS: a block device directly, a regular file
/// file-backed (Linux 6.12+), or through a read-only, autoclearing loop device when the kernel
/// refuses a file (ENOTBLK) or `-o loop` asks for one.
public struct LocalBackend: Sendable {
    public struct Request: Sendable {
        public var source: String
        public var mountPoint: String
        public var flags: UInt
        public var data: String
        public var forceLoop: Bool
        /// -f: check and prepare everything, mount nothing.
        public var fake: Bool

        public init(source: String, mountPoint: String, flags: UInt, data: String, forceLoop: Bool, fake: Bool) {
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

        switch image.kind {
        case .blockDevice:
            try kernelMount(request.source, request)
            return .blockDevice
        case .regularFile where !request.forceLoop:
            do {
                try Mount.mount(source: request.source, target: request.mountPoint, type: "erofs",
                                flags: request.flags, data: request.data)
                return .fileBacked
            } catch where error.errno == .notBlockDevice {
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
            try kernelMount(loop.device.path, request)
            return .loopDevice(loop.device.path)
        }
    }

    private func kernelMount(_ device: String, _ request: Request) throws(MountFailure) {
        do {
            try Mount.mount(source: device, target: request.mountPoint, type: "erofs",
                            flags: request.flags, data: request.data)
        } catch {
            throw MountFailure("cannot mount \(device) on \(request.mountPoint)", cause: error)
        }
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
