#if canImport(Glibc)
import Glibc
#endif
import CShim
import SystemCalls
import SystemPackage

/// The ioctl way to attach an nbd device, for kernels or setups without the netlink family.
/// The device lives while a thread sits in NBD_DO_IT; when the serving process dies, queued
/// I/O fails (there is no reattach on this path). `disconnect` and `waitUntilFinished` are
/// for one thread at a time; `finished` may be read from any.
public final class NBDIoctlAttachment: @unchecked Sendable {
    public let device: NBDDevice
    /// The open `/dev/nbdN`; NBD_DO_IT and NBD_DISCONNECT go through it. It holds a reference
    /// on the device's configuration: the device is free for others only once it is closed,
    /// which `waitUntilFinished` does after NBD_DO_IT returned.
    private let descriptor: Int32
    // No lock: `descriptorClosed` and `thread` are set while attaching and read by
    // `waitUntilFinished` and deinit, one thread at a time (see above); `outcome` has its own.
    private var descriptorClosed = false
    private var thread: pthread_t?
    private let outcome = DoItOutcome()

    public struct Configuration: Sendable, Equatable {
        public var sizeBytes: UInt64
        public var blockSizeBytes: UInt64
        public var timeoutSeconds: UInt64?
        public var serverFlags: NBDServerFlags

        public init(
            sizeBytes: UInt64, blockSizeBytes: UInt64 = 512, timeoutSeconds: UInt64? = nil, serverFlags: NBDServerFlags
        ) {
            self.sizeBytes = sizeBytes
            self.blockSizeBytes = blockSizeBytes
            self.timeoutSeconds = timeoutSeconds
            self.serverFlags = serverFlags
        }

        /// NBD_SET_SIZE_BLOCKS takes whole blocks.
        func sizeInBlocks() throws(SystemError) -> UInt64 {
            guard (512...65536).contains(blockSizeBytes), blockSizeBytes & (blockSizeBytes - 1) == 0 else {
                throw SystemError(
                    "nbd ioctl setup", errno: .invalidArgument,
                    detail: "block size \(blockSizeBytes) is not a power of two from 512 to 65536")
            }
            guard sizeBytes != 0, sizeBytes % blockSizeBytes == 0 else {
                throw SystemError(
                    "nbd ioctl setup", errno: .invalidArgument,
                    detail: "size \(sizeBytes) is not a non-zero multiple of the block size \(blockSizeBytes)")
            }
            return sizeBytes / blockSizeBytes
        }
    }

    /// Configures `device` with `socket` (the kernel's end) and starts NBD_DO_IT on a thread
    /// of its own. NBD_SET_SOCK comes first: it claims the device for this task, so a device
    /// another process is setting up answers EBUSY before we touch its configuration.
    public static func attach(
        device: NBDDevice, socket: Int32, configuration: Configuration
    ) throws(SystemError) -> NBDIoctlAttachment {
        let blocks = try configuration.sizeInBlocks()
        guard socket >= 0 else {
            throw SystemError(
                "nbd ioctl setup", path: device.path, errno: .badFileDescriptor,
                detail: "socket \(socket) is not a descriptor")
        }
        let path = device.path
        let fd = try retryingOnInterrupt("open", path: path) { open(path, O_RDWR | O_CLOEXEC) }
        do throws(SystemError) {
            func call(_ name: String, _ request: UInt, _ argument: UInt) throws(SystemError) {
                try retryingOnInterrupt(name, path: path) { cshim_ioctl_ulong(fd, request, argument) }
            }
            try call("NBD_SET_SOCK", CSHIM_NBD_SET_SOCK, UInt(bitPattern: Int(socket)))
            do throws(SystemError) {
                try call("NBD_SET_BLKSIZE", CSHIM_NBD_SET_BLKSIZE, UInt(configuration.blockSizeBytes))
                try call("NBD_SET_SIZE_BLOCKS", CSHIM_NBD_SET_SIZE_BLOCKS, UInt(blocks))
                if let timeout = configuration.timeoutSeconds {
                    try call("NBD_SET_TIMEOUT", CSHIM_NBD_SET_TIMEOUT, UInt(timeout))
                }
                try call("NBD_SET_FLAGS", CSHIM_NBD_SET_FLAGS, UInt(configuration.serverFlags.rawValue))
            } catch {
                _ = cshim_ioctl_ulong(fd, CSHIM_NBD_CLEAR_SOCK, 0)  // release our claim
                throw error
            }
            let attachment = NBDIoctlAttachment(device: device, descriptor: fd)
            do {
                try attachment.startDoIt()
            } catch {
                _ = cshim_ioctl_ulong(fd, CSHIM_NBD_CLEAR_SOCK, 0)
                attachment.descriptorClosed = true  // closed just below, not again in deinit
                throw error
            }
            return attachment
        } catch {
            close(fd)
            throw error
        }
    }

    /// Scans for a free device and attaches to the first one it can claim. Devices that look
    /// in use are skipped; one that another process claims first (EBUSY), or that netlink
    /// owns (EINVAL), is passed over too.
    public static func attachToFreeDevice(
        socket: Int32, configuration: Configuration, sysfsBlock: String = "/sys/block"
    ) throws(SystemError) -> NBDIoctlAttachment {
        var skipped: [String] = []
        for device in NBDDevice.all(sysfsBlock: sysfsBlock) {
            if let reason = device.reasonInUse {
                skipped.append("nbd\(device.index) \(reason)")
                continue
            }
            do {
                return try attach(device: device, socket: socket, configuration: configuration)
            } catch  where error.operation == "NBD_SET_SOCK" && error.errno == .resourceBusy {
                skipped.append("nbd\(device.index) being set up by another task")
            } catch  where error.operation == "NBD_SET_SOCK" && error.errno == .invalidArgument {
                // The kernel refuses ioctls on a device CONNECTed over netlink meanwhile.
                skipped.append("nbd\(device.index) refused NBD_SET_SOCK (bound over netlink?)")
            }
        }
        throw SystemError(
            "find a free nbd device", path: sysfsBlock, errno: Errno(rawValue: ENODEV),
            detail: skipped.isEmpty ? "no nbd devices (is the nbd module loaded?)" : skipped.joined(separator: "; "))
    }

    private init(device: NBDDevice, descriptor: Int32) {
        self.device = device
        self.descriptor = descriptor
    }

    /// Result of NBD_DO_IT, filled in by its thread when it returns.
    final class DoItOutcome: @unchecked Sendable {
        private var mutex = pthread_mutex_t()
        private var condition = pthread_cond_t()
        private var result: Result<Void, SystemError>?

        init() {
            pthread_mutex_init(&mutex, nil)
            pthread_cond_init(&condition, nil)
        }

        deinit {
            pthread_cond_destroy(&condition)
            pthread_mutex_destroy(&mutex)
        }

        func finish(_ value: Result<Void, SystemError>) {
            pthread_mutex_lock(&mutex)
            result = value
            pthread_cond_broadcast(&condition)
            pthread_mutex_unlock(&mutex)
        }

        func wait() -> Result<Void, SystemError> {
            pthread_mutex_lock(&mutex)
            defer { pthread_mutex_unlock(&mutex) }
            while true {
                if let result { return result }
                pthread_cond_wait(&condition, &mutex)
            }
        }

        var current: Result<Void, SystemError>? {
            pthread_mutex_lock(&mutex)
            defer { pthread_mutex_unlock(&mutex) }
            return result
        }
    }

    private func startDoIt() throws(SystemError) {
        // The thread owns a retained reference until NBD_DO_IT returns.
        let context = Unmanaged.passRetained(self).toOpaque()
        var handle = pthread_t()
        let code = pthread_create(
            &handle, nil,
            { raw in
                let attachment = Unmanaged<NBDIoctlAttachment>.fromOpaque(raw!).takeRetainedValue()
                attachment.runDoIt()
                return nil
            }, context)
        guard code == 0 else {
            Unmanaged<NBDIoctlAttachment>.fromOpaque(context).release()
            throw SystemError("pthread_create for NBD_DO_IT", path: device.path, errno: Errno(rawValue: code))
        }
        thread = handle
    }

    /// Blocks in NBD_DO_IT until the device disconnects, then clears the socket as nbd-client
    /// does so the device can be reused.
    private func runDoIt() {
        let result: Result<Void, SystemError>
        if cshim_ioctl_ulong(descriptor, CSHIM_NBD_DO_IT, 0) == -1 {
            let error = SystemError.lastErrno("NBD_DO_IT", path: device.path)
            result = .failure(error)
        } else {
            result = .success(())
        }
        _ = cshim_ioctl_ulong(descriptor, CSHIM_NBD_CLEAR_SOCK, 0)
        outcome.finish(result)
    }

    /// Whether NBD_DO_IT has returned (nil while the device is served).
    public var finished: Result<Void, SystemError>? { outcome.current }

    /// NBD_DISCONNECT: the kernel sends NBD_CMD_DISC, and NBD_DO_IT returns once the server
    /// closes its end. A server that does not close within `grace` is cut off with
    /// NBD_CLEAR_SOCK (as nbd-client does), so this never waits on the server forever.
    public func disconnect(grace: Duration = .seconds(5)) throws(SystemError) -> Result<Void, SystemError> {
        guard outcome.current == nil else { return waitUntilFinished() }
        try retryingOnInterrupt("NBD_DISCONNECT", path: device.path) {
            cshim_ioctl_ulong(descriptor, CSHIM_NBD_DISCONNECT, 0)
        }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: grace)
        while outcome.current == nil && clock.now < deadline { usleep(10_000) }
        if outcome.current == nil {
            try retryingOnInterrupt("NBD_CLEAR_SOCK", path: device.path) {
                cshim_ioctl_ulong(descriptor, CSHIM_NBD_CLEAR_SOCK, 0)
            }
        }
        return waitUntilFinished()
    }

    /// Waits for NBD_DO_IT to return, joins its thread and closes the device, which frees it
    /// (its `pid` file goes away). Call it from one thread.
    public func waitUntilFinished() -> Result<Void, SystemError> {
        let result = outcome.wait()
        if let handle = thread {
            pthread_join(handle, nil)
            thread = nil
        }
        if !descriptorClosed {
            close(descriptor)
            descriptorClosed = true
        }
        return result
    }

    deinit {
        // The last reference may go on the NBD_DO_IT thread itself: detach rather than join.
        if let handle = thread { pthread_detach(handle) }
        if !descriptorClosed { close(descriptor) }
    }
}
