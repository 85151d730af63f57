#if canImport(Glibc)
import Glibc
#endif
import CShim
import IOURing
import SystemCalls
import UblkKernel

/// The serving process of a ublk device: one thread per hardware queue, each with its own
/// io_uring (the driver binds a queue to the task that fetched its tags), answering READs
/// from the image. It holds nothing a successor could not rebuild from its arguments and
/// GET_DEV_INFO: that is what lets a supervisor replace it through user recovery later.
public enum UblkDaemon {
    /// Hidden first argument selecting this mode of the mount.erofs binary.
    public static let flag = "--ublk-daemon"

    /// How the daemon joins its device.
    public enum Attach: String, Sendable {
        /// A new device: FETCH every tag, then START_DEV.
        case start
        /// A device whose server died (UBLK_F_USER_RECOVERY): START_USER_RECOVERY, FETCH every
        /// tag, END_USER_RECOVERY. For the supervisor to come.
        case recover
    }

    public struct Settings: Sendable, Equatable {
        public var source: String
        public var deviceID: UInt32
        public var attach: Attach

        public var arguments: [String] { [UblkDaemon.flag, attach.rawValue, String(deviceID), source] }

        public init(source: String, deviceID: UInt32, attach: Attach) {
            self.source = source
            self.deviceID = deviceID
            self.attach = attach
        }

        init?(arguments: [String]) {
            guard arguments.count == 4, arguments[0] == UblkDaemon.flag, let attach = Attach(rawValue: arguments[1]),
                let id = UInt32(arguments[2])
            else { return nil }
            self.init(source: arguments[3], deviceID: id, attach: attach)
        }
    }

    /// The status pipe the mounting process reads: descriptor 3, one line, then closed.
    static let statusDescriptor: Int32 = 3

    public static func main(_ arguments: [String]) -> Int32 {
        guard let settings = Settings(arguments: arguments) else {
            report("failed: bad daemon arguments")
            return 2
        }
        do {
            try serve(settings)
            return 0
        } catch {
            report("failed: \(error)")
            printLog("\(error)")
            return 1
        }
    }

    static func serve(_ settings: Settings) throws(SystemError) {
        signal(SIGPIPE, SIG_IGN)
        let image = open(settings.source, O_RDONLY | O_CLOEXEC)
        guard image >= 0 else { throw .lastErrno("open", path: settings.source) }
        defer { close(image) }
        var status = stat()
        guard fstat(image, &status) == 0 else { throw .lastErrno("fstat", path: settings.source) }
        let control = try UblkControl()
        let info = try control.deviceInfo(settings.deviceID)
        let path = Ublk.characterDevice(settings.deviceID)
        if settings.attach == .recover { try control.startUserRecovery(settings.deviceID) }
        // devtmpfs creates the node as ADD_DEV returns; udev may still be fixing it up.
        var device: Int32 = -1
        for _ in 0..<100 {
            device = open(path, O_RDWR | O_CLOEXEC)
            if device >= 0 || errno != ENOENT { break }
            usleep(20_000)
        }
        guard device >= 0 else { throw .lastErrno("open", path: path) }
        defer { close(device) }

        let size = UInt64(status.st_size)
        let queues = try (0..<info.queueCount).map { (index: UInt16) throws(SystemError) -> UblkQueue in
            try UblkQueue(
                device: device, devicePath: path, queueID: index, depth: Int(info.queueDepth),
                bufferBytes: Int(info.maxIOBufferBytes), image: image, imageSize: size,
                ioctlEncoding: control.ioctlEncoding)
        }
        var armed: [Int32] = [-1, -1]
        guard pipe(&armed) == 0 else { throw .lastErrno("pipe") }
        defer { close(armed[0]); close(armed[1]) }
        var threads: [pthread_t] = []
        for queue in queues {
            queue.armedSignal = armed[1]
            threads.append(try startThread(queue))
        }
        // START_DEV (or END_USER_RECOVERY) waits in the kernel for every FETCH_REQ; wait for
        // our threads first so that a queue that failed to arm fails the start at once.
        for _ in queues {
            var byte: UInt8 = 0
            guard read(armed[0], &byte, 1) == 1 else { throw .lastErrno("read", path: "queue status pipe") }
            guard byte == 1 else {
                throw SystemError(
                    "arm the queues", path: path,
                    detail: queues.compactMap(\.failure).first.map { "\($0)" } ?? "a queue failed")
            }
        }
        switch settings.attach {
        case .start: try control.start(settings.deviceID, serverPID: getpid())
        case .recover: try control.endUserRecovery(settings.deviceID, serverPID: getpid())
        }
        report("ready \(getpid())")
        for thread in threads { pthread_join(thread, nil) }
        if let failure = queues.compactMap(\.failure).first { throw failure }
    }

    private static func startThread(_ queue: UblkQueue) throws(SystemError) -> pthread_t {
        let context = Unmanaged.passRetained(queue).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { raw in
                let queue = Unmanaged<UblkQueue>.fromOpaque(raw!).takeRetainedValue()
                queue.run()
                return nil
            }, context)
        guard result == 0 else {
            Unmanaged<UblkQueue>.fromOpaque(context).release()
            throw SystemError("pthread_create", errno: .init(rawValue: result))
        }
        return thread
    }

    /// Whether the status line went out (descriptor 3 is closed then, and may be reused).
    nonisolated(unsafe) static var reported = false

    /// One line to the mounting process, once (main thread only); later calls do nothing.
    static func report(_ line: String) {
        guard !reported else { return }
        reported = true
        let text = line + "\n"
        text.withCString { _ = write(statusDescriptor, $0, strlen($0)) }
        close(statusDescriptor)
    }

    static func printLog(_ text: String) {
        let line = "erofs ublk daemon: \(text)\n"
        line.withCString { _ = write(2, $0, strlen($0)) }
    }
}

/// One hardware queue: its io_uring, its view of the kernel's descriptor array, and one
/// buffer per tag. Created by the main thread, then used only by its own thread.
final class UblkQueue: @unchecked Sendable {
    let device: Int32
    let queueID: UInt16
    let depth: Int
    let bufferBytes: Int
    let image: Int32
    let imageSize: UInt64
    let ring: IOURing
    let descriptors: UnsafeMutableRawBufferPointer
    let buffers: UnsafeMutableRawBufferPointer
    let fetch: UInt32
    let commit: UInt32
    /// Written by this queue's thread before it ends; read after pthread_join.
    var failure: SystemError?
    /// Set before the thread starts; the thread writes 1 (armed) or 0 (failed) to it once.
    var armedSignal: Int32 = -1

    init(
        device: Int32, devicePath: String, queueID: UInt16, depth: Int, bufferBytes: Int, image: Int32,
        imageSize: UInt64,
        ioctlEncoding: Bool
    ) throws(SystemError) {
        self.device = device
        self.queueID = queueID
        self.depth = depth
        self.bufferBytes = bufferBytes
        self.image = image
        self.imageSize = imageSize
        self.ring = try IOURing(entries: UInt32(depth))
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let length = (depth * IODescriptor.size + page - 1) / page * page
        let offset = off_t(Int(queueID) * Ublk.descriptorAreaStride)
        guard let array = mmap(nil, length, PROT_READ, MAP_SHARED | MAP_POPULATE, device, offset), array != MAP_FAILED
        else {
            throw .lastErrno("mmap the descriptors of queue \(queueID)", path: devicePath)
        }
        descriptors = UnsafeMutableRawBufferPointer(start: array, count: length)
        // Anonymous memory is only backed once a read of that size lands in it.
        guard let memory = mmap(nil, depth * bufferBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            memory != MAP_FAILED
        else {
            let error = SystemError.lastErrno("mmap the buffers of queue \(queueID)")
            munmap(array, length)
            throw error
        }
        buffers = UnsafeMutableRawBufferPointer(start: memory, count: depth * bufferBytes)
        fetch = ioctlEncoding ? Ublk.IOCommand.fetchRequest.ioctlEncoded : Ublk.IOCommand.fetchRequest.rawValue
        commit =
            ioctlEncoding
            ? Ublk.IOCommand.commitAndFetchRequest.ioctlEncoded : Ublk.IOCommand.commitAndFetchRequest.rawValue
    }

    deinit {
        munmap(buffers.baseAddress, buffers.count)
        munmap(descriptors.baseAddress, descriptors.count)
    }

    func buffer(_ tag: Int) -> UnsafeMutableRawPointer { buffers.baseAddress! + tag * bufferBytes }

    private func queueCommand(_ command: UInt32, tag: Int, result: Int32) {
        let payload = IOCommandPayload(
            queueID: queueID, tag: UInt16(tag), result: result,
            bufferAddress: UInt64(UInt(bitPattern: buffer(tag))))
        // Never full: each tag has at most one command in the ring, and it holds `depth`.
        let queued = payload.withBytes {
            ring.prepareCommand(fd: device, command: command, userData: UInt64(tag), payload: $0)
        }
        precondition(queued, "io_uring submission ring full")
    }

    func run() {
        func signalArmed(_ armed: Bool) {
            var byte: UInt8 = armed ? 1 : 0
            _ = write(armedSignal, &byte, 1)
        }
        for tag in 0..<depth { queueCommand(fetch, tag: tag, result: 0) }
        do { try ring.submit() } catch {
            failure = error
            signalArmed(false)
            return
        }
        signalArmed(true)
        var live = depth
        while live > 0 {
            do {
                // As the nbd daemon does: most requests follow the last within a millisecond,
                // and catching them awake saves a sleep and a wakeup each (task work raised
                // while we spin is run on our next system call, the poll's clock_gettime).
                try ring.submit()
                if !ring.hasCompletions && !poll(microseconds: UblkQueue.pollMicroseconds) {
                    try ring.submit(waitFor: 1)
                }
            } catch {
                failure = error
                return
            }
            ring.reap { completion in
                let tag = Int(completion.userData)
                guard completion.result == Ublk.resultOK, tag < depth else {
                    // ABORT: the device is stopping, this tag is not fetched again. Anything
                    // else negative is the driver refusing the command: stop serving the tag.
                    if completion.result != Ublk.resultAbort {
                        UblkDaemon.printLog("queue \(queueID) tag \(tag): command failed (\(completion.result))")
                    }
                    live -= 1
                    return
                }
                let request = IODescriptor(array: descriptors.baseAddress!, tag: tag)
                queueCommand(commit, tag: tag, result: answer(request, into: buffer(tag)))
            }
        }
    }

    static let pollMicroseconds: Int64 = 1000

    /// Spins until a completion arrives or `microseconds` pass; whether one arrived.
    private func poll(microseconds: Int64) -> Bool {
        var start = timespec()
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        while !ring.hasCompletions {
            clock_gettime(CLOCK_MONOTONIC, &now)
            if (now.tv_sec - start.tv_sec) * 1_000_000 + (now.tv_nsec - start.tv_nsec) / 1000 >= microseconds {
                return false
            }
        }
        return true
    }

    /// The result of one request: bytes read, or a negative errno.
    func answer(_ request: IODescriptor, into buffer: UnsafeMutableRawPointer) -> Int32 {
        switch request.operation {
        case .read?:
            let length = Int(request.sectorCount) * 512
            let (offset, overflow) = request.startSector.multipliedReportingOverflow(by: 512)
            guard !overflow, length <= bufferBytes, offset <= imageSize, UInt64(length) <= imageSize - offset else {
                return -EIO
            }
            var done = 0
            while done < length {
                let got = pread(image, buffer + done, length - done, off_t(offset) + off_t(done))
                if got < 0 && errno == EINTR { continue }
                // Short: the image shrank under us. Errors, never zeros.
                guard got > 0 else { return -EIO }
                done += got
            }
            return Int32(length)
        case .flush?: return 0
        case .write?, .writeSame?, .writeZeroes?: return -EROFS
        case .discard?, nil: return -EOPNOTSUPP
        }
    }
}
