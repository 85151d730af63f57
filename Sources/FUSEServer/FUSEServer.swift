#if canImport(Glibc)
import Glibc
#endif
import CShim
import EROFSReader
import FUSEProtocol
import Logging
import Synchronization
import SystemCalls

/// The serving loop over a /dev/fuse connection: N threads, each on its own channel (a clone
/// of the connection's descriptor, FUSE_DEV_IOC_CLONE), each reading a request, answering it
/// and reading the next. Everything a thread needs is the image and its descriptor, so a
/// future supervisor can hand the descriptor to a replacement process.
public final class FUSEServer: Sendable {
    public struct Settings: Sendable {
        public var threads: Int
        public init(threads: Int) { self.threads = max(1, threads) }
    }

    let operations: FUSEOperations
    let logger: Logger
    let settings: Settings
    /// Readiness: called once INIT has been answered and every thread runs (the mount side
    /// waits for it; INIT may be answered by the first thread while later ones start).
    private struct Readiness {
        var initialized = false
        var threadsStarted = false
        var callback: (@Sendable () -> Void)?

        /// The callback, once both have happened (and only once).
        mutating func take() -> (@Sendable () -> Void)? {
            guard initialized && threadsStarted else { return nil }
            defer { callback = nil }
            return callback
        }
    }
    private let readiness: Mutex<Readiness>
    /// Reads from a file's start, for the pushing thread (nil: prefetch off).
    private let pushes: PushQueue?

    /// Request buffers: the kernel wants room for its largest request (a WRITE of max_write
    /// bytes, which we set to 4 KiB, or a 64 KiB SETXATTR), and at least 8 KiB.
    static let bufferSize = 128 * 1024 + 4096

    public init(
        operations: FUSEOperations, settings: Settings, logger: Logger, onInitialized: (@Sendable () -> Void)? = nil
    ) {
        self.operations = operations
        self.settings = settings
        self.logger = logger
        readiness = Mutex(Readiness(callback: onInitialized))
        pushes = operations.prefetch == nil ? nil : PushQueue()
    }

    /// Serves the connection on `device` (an open /dev/fuse descriptor attached to a mount)
    /// until the kernel ends it (unmount, abort). Returns then; throws when a worker channel
    /// cannot be set up.
    public func serve(device: Int32) throws(SystemError) {
        var channels: [Int32] = [device]
        defer { for channel in channels.dropFirst() { close(channel) } }
        for _ in 1..<settings.threads {
            channels.append(try FUSEServer.cloneChannel(of: device))
        }
        var threads: [JoinableThread] = []
        for channel in channels.dropFirst() {
            threads.append(try JoinableThread { [self] in self.run(channel: channel) })
        }
        // The thread that pushes small files after a read (SiblingPrefetch), on a channel of
        // its own; it stops once the workers have.
        var pusher: JoinableThread?
        if let pushes {
            pusher = try JoinableThread { [self] in
                pushes.serve { place in
                    for message in operations.prefetchNotifications(from: place) { send(message, on: device) }
                }
            }
        }
        defer {
            pushes?.stop()
            pusher?.join()
        }
        readiness.withLock {
            $0.threadsStarted = true; return $0.take()
        }?()
        run(channel: device)
        for thread in threads { thread.join() }
    }

    /// A new descriptor on the same connection with its own processing queue.
    public static func cloneChannel(of device: Int32) throws(SystemError) -> Int32 {
        let clone = open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard clone >= 0 else { throw .lastErrno("open", path: "/dev/fuse") }
        var source = UInt32(bitPattern: device)
        guard cshim_ioctl_ptr(clone, UInt(fuseDevIocClone), &source) == 0 else {
            let error = SystemError.lastErrno("ioctl FUSE_DEV_IOC_CLONE", path: "/dev/fuse")
            close(clone)
            throw error
        }
        return clone
    }

    /// One worker: read, answer, repeat, until the connection is gone (ENODEV).
    func run(channel: Int32) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: FUSEServer.bufferSize, alignment: 8)
        defer { buffer.deallocate() }
        while true {
            let count = read(channel, buffer.baseAddress, buffer.count)
            if count < 0 {
                switch errno {
                case EINTR, EAGAIN:
                    continue
                case ENOENT:
                    // The request was interrupted before we read it.
                    continue
                case ENODEV:
                    return  // unmounted or aborted: the connection is over
                default:
                    logger.error("read /dev/fuse: \(String(cString: strerror(errno)))")
                    return
                }
            }
            let request: FUSERequest
            do {
                request = try FUSERequest(decoding: UnsafeRawBufferPointer(rebasing: buffer[..<count]))
            } catch {
                logger.error("\(error)")
                if let unique = error.unique {
                    send(.message(FUSEReply.error(unique: unique, errno: EIO)), on: channel)
                }
                continue
            }
            let response = operations.respond(to: request)
            // The files after one read from its start go to the page cache before its answer
            // (SiblingPrefetch, PushQueue).
            if let pushes, let place = operations.prefetchPlace(for: request) { pushes.pushAndWait(place) }
            send(response, on: channel)
            if request.header.opcode == .initialize {
                readiness.withLock {
                    $0.initialized = true; return $0.take()
                }?()
            }
        }
    }

    private func send(_ response: FUSEResponse, on channel: Int32) {
        let result: Int
        switch response {
        case .none:
            return
        case .message(let bytes):
            result = bytes.withUnsafeBytes { write(channel, $0.baseAddress, $0.count) }
        case .data(let header, let payload):
            result = header.withUnsafeBytes { head in
                payload.withUnsafeBytes { body in
                    var vectors = [
                        iovec(iov_base: UnsafeMutableRawPointer(mutating: head.baseAddress), iov_len: head.count),
                        iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count),
                    ]
                    return writev(channel, &vectors, body.count == 0 ? 1 : 2)
                }
            }
        }
        // ENOENT: the request was interrupted and the kernel dropped it; nobody waits.
        if result < 0 && errno != ENOENT && errno != ENODEV {
            logger.error("write /dev/fuse: \(String(cString: strerror(errno)))")
        }
    }
}
