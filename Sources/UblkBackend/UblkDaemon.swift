#if canImport(Glibc)
import Glibc
#endif
import CShim
import IOURing
import ImageSources
import RemoteSources
import SystemCalls
import SystemPackage
import Supervision
import UblkKernel

/// A serving worker of one ublk device, run by its supervisor (`UblkSupervisor`) as
/// `mount.erofs --ublk-daemon MODE ID SOURCE`: one thread per hardware queue, each with its own
/// io_uring (the driver binds a queue to the task that fetched its tags), answering READs from
/// the image. SOURCE is a `ServedSource` argument: an image path, or a remote description.
///
/// MODE is the supervision protocol's `WorkerMode`: `connect` arms a new device and sends
/// START_DEV; `reattach:ID` takes over a device whose server is gone (START_USER_RECOVERY,
/// FETCH every tag, END_USER_RECOVERY); `standby[:ID]` sets up its rings and buffers, says
/// `prepared` and waits for the supervisor's `reconnect`, then does what `reattach` does. A
/// ublk queue belongs to the task that fetched it, so a live device is never handed from one
/// worker to the next: a hot upgrade stops this worker (SIGUSR2, whose default action ends
/// it) and the kernel requeues what it held (UBLK_F_USER_RECOVERY_REISSUE) for the standby.
///
/// Descriptors: 3, the status pipe (one `DaemonReport` once serving); 4, the control channel
/// (`ControlMessage`); 5, a local image, opened and checked by whoever mounted it (the path is
/// opened only when 5 is closed; a remote image is opened by every worker from its description).
public enum UblkDaemon {
    /// Hidden first argument selecting this mode of the mount.erofs binary.
    public static let flag = "--ublk-daemon"
    static let statusDescriptor: Int32 = 3
    static let controlDescriptor: Int32 = 4
    static let imageDescriptor: Int32 = 5
    /// The method word of a ublk worker's report.
    public static let method = "uring"

    public struct Settings: Sendable, Equatable {
        public var source: String
        public var deviceID: UInt32
        public var mode: WorkerMode

        public var arguments: [String] { [UblkDaemon.flag, mode.argument, String(deviceID), source] }

        public init(source: String, deviceID: UInt32, mode: WorkerMode) {
            self.source = source
            self.deviceID = deviceID
            self.mode = mode
        }

        /// `arguments` as the process got them (argv[0] dropped), the first being `flag`.
        init?(arguments: [String], flag: String = UblkDaemon.flag) {
            guard arguments.count == 4, arguments[0] == flag, let mode = WorkerMode(argument: arguments[1]),
                let id = UInt32(arguments[2])
            else { return nil }
            self.init(source: arguments[3], deviceID: id, mode: mode)
        }
    }

    /// How a worker's exit reads to its supervisor: 0 only when the device ended under it.
    public enum Exit: Int32 {
        case deviceEnded = 0
        case failed = 1
        case badArguments = 2
        /// A standby let go by its supervisor (its channel closed) before serving.
        case released = 3
    }

    public static func main(_ arguments: [String]) -> Int32 {
        guard let settings = Settings(arguments: arguments) else {
            DaemonReport.failed("internal error: bad worker arguments \(arguments)").send(to: statusDescriptor)
            return Exit.badArguments.rawValue
        }
        do {
            return try serve(settings).rawValue
        } catch {
            printLog("/dev/ublkb\(settings.deviceID): \(error)")
            // After the report, descriptor 3 is closed and its number may be reused.
            if !reported { DaemonReport.failed("\(error)").send(to: statusDescriptor) }
            return Exit.failed.rawValue
        }
    }

    /// Whether the status line went out (main thread only).
    nonisolated(unsafe) static var reported = false

    /// The bytes to serve: descriptor 5 when the mount handed one down, else the source opened
    /// here (a path, or a remote object pinned to the version the mount checked).
    static func openImage(_ argument: String) throws(SystemError) -> any RandomAccessSource {
        try ServedSource.openServed(argument: argument, handedDown: imageDescriptor, warn: { printLog("\($0)") })
            .source
    }

    static func serve(_ settings: Settings) throws(SystemError) -> Exit {
        signal(SIGPIPE, SIG_IGN)
        let id = settings.deviceID
        let image = try openImage(settings.source)
        let control = try UblkControl()
        let info = try control.deviceInfo(id)
        let path = Ublk.characterDevice(id)
        // Only where the device asks for write buffers (NEED_GET_DATA, set at ADD_DEV): see
        // UblkQueue.mapping. A device an older binary made is served from the buffers.
        // A local image only: a remote one has no file to map.
        let mapping =
            info.flags.contains(.needGetData)
            ? image.localFileDescriptor.flatMap { ImageMapping($0.rawValue, size: image.size) } : nil
        // Rings and buffers first: a standby has them ready before the device needs it.
        let queues = try (0..<info.queueCount).map { (index: UInt16) throws(SystemError) -> UblkQueue in
            try UblkQueue(
                queueID: index, depth: Int(info.queueDepth), bufferBytes: Int(info.maxIOBufferBytes), image: image,
                mapping: mapping, ioctlEncoding: control.ioctlEncoding)
        }
        var recovering = false
        switch settings.mode {
        case .connect: break
        case .reattach: recovering = true
        case .standby:
            guard try waitForTurn(ControlChannel(descriptor: controlDescriptor), device: id) else { return .released }
            recovering = true
        }
        if recovering { try control.startUserRecovery(id, waitingUpTo: 30) }
        // devtmpfs creates the node as ADD_DEV returns; udev may still be fixing it up.
        var device: Int32 = -1
        for _ in 0..<100 {
            device = open(path, O_RDWR | O_CLOEXEC)
            if device >= 0 || errno != ENOENT { break }
            usleep(20_000)
        }
        guard device >= 0 else { throw .lastErrno("open", path: path) }
        defer { close(device) }
        for queue in queues { try queue.attach(device: device, path: path) }

        var armed: [Int32] = [-1, -1]
        guard closeOnExecPipe(&armed) else { throw .lastErrno("pipe") }
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
        if recovering {
            try control.endUserRecovery(id, serverPID: getpid())
        } else {
            try control.start(id, serverPID: getpid())
        }
        reported = true
        DaemonReport.ready(index: Int(id), method: method, pid: getpid()).send(to: statusDescriptor)
        for thread in threads { pthread_join(thread, nil) }
        if let failure = queues.compactMap(\.failure).first { throw failure }
        return .deviceEnded
    }

    /// A standby's wait: `prepared`, then the supervisor's word. True on `reconnect` (the
    /// serving worker is gone: recover the device); false when the supervisor let us go.
    static func waitForTurn(_ channel: ControlChannel, device id: UInt32) throws(SystemError) -> Bool {
        do { try channel.send(.prepared) } catch {
            // The supervisor let us go before we were ready (it stopped, or replaced us).
            if error.errno?.rawValue == EPIPE || error.errno?.rawValue == ECONNRESET { return false }
            throw error
        }
        while true {
            switch try channel.receive() {
            case nil: return false
            case .reconnect?: return true
            case .device?: continue  // we were given the device on the command line
            case .resume?:
                // Nothing to resume: a ublk queue cannot change hands while its server lives.
                // (A descriptor a word carries closes with the word, unless taken.)
                try channel.send(.resumed(false))
            case .replyFile?:
                continue
            case .serveLink?:
                throw SystemError(
                    .refused, "take over \(Ublk.blockDevice(id))",
                    detail: "a live ublk device cannot be handed to another process")
            case let other?:
                throw SystemError(.protocolViolation, "wait for the supervisor", detail: "unexpected message \(other)")
            }
        }
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

    static func printLog(_ text: String) {
        let line = "erofs-ublk-worker[\(getpid())]: \(text)\n"
        line.withCString { _ = write(2, $0, strlen($0)) }
    }
}

/// One hardware queue: its io_uring, its view of the kernel's descriptor array, and one
/// buffer per tag. Created and attached by the main thread, then used only by its own thread:
/// no lock, the thread's start and pthread_join order the accesses (`failure` below).
final class UblkQueue: @unchecked Sendable {
    /// /dev/ublkcN and its descriptor array, from `attach`.
    var device: Int32 = -1
    var descriptors: UnsafeMutableRawBufferPointer?
    let queueID: UInt16
    let depth: Int
    let bufferBytes: Int
    /// Read by every queue thread at once (a `RandomAccessSource` allows it).
    let image: any RandomAccessSource
    let ring: IOURing
    let buffers: UnsafeMutableRawBufferPointer
    /// The image mapped read-only, on a device that asks for write buffers on demand
    /// (UBLK_F_NEED_GET_DATA). A READ is committed with the address of its bytes there, and the
    /// driver copies them from the image's page cache into the request: one copy, as a loop
    /// device makes, where a pread into the tag's buffer made two (the pread's, then the
    /// driver's). The committed address is also where the driver would copy the tag's next
    /// WRITE, and it retries a copy it cannot make forever (ublk_start_io): NEED_GET_DATA makes
    /// it ask for a buffer first, and gets the tag's own.
    let mapping: ImageMapping?
    let ioctlEncoding: Bool
    /// Written by this queue's thread before it ends; read after pthread_join.
    var failure: SystemError?
    /// Set before the thread starts; the thread writes 1 (armed) or 0 (failed) to it once.
    var armedSignal: Int32 = -1

    init(
        queueID: UInt16, depth: Int, bufferBytes: Int, image: any RandomAccessSource, mapping: ImageMapping?,
        ioctlEncoding: Bool
    ) throws(SystemError) {
        self.queueID = queueID
        self.mapping = mapping
        self.ioctlEncoding = ioctlEncoding
        self.depth = depth
        self.bufferBytes = bufferBytes
        self.image = image
        self.ring = try IOURing(entries: UInt32(depth))
        // Anonymous memory is only backed once a read of that size lands in it.
        guard let memory = mmap(nil, depth * bufferBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            memory != MAP_FAILED
        else {
            throw .lastErrno("mmap the buffers of queue \(queueID)")
        }
        buffers = UnsafeMutableRawBufferPointer(start: memory, count: depth * bufferBytes)
    }

    /// Maps the queue's descriptor array of the opened /dev/ublkcN (the driver lets only the
    /// process that serves the device map it).
    func attach(device: Int32, path: String) throws(SystemError) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let length = (depth * IODescriptor.size + page - 1) / page * page
        let offset = off_t(Int(queueID) * Ublk.descriptorAreaStride)
        guard let array = mmap(nil, length, PROT_READ, MAP_SHARED | MAP_POPULATE, device, offset), array != MAP_FAILED
        else {
            throw .lastErrno("mmap the descriptors of queue \(queueID)", path: path)
        }
        self.device = device
        descriptors = UnsafeMutableRawBufferPointer(start: array, count: length)
    }

    deinit {
        munmap(buffers.baseAddress, buffers.count)
        if let descriptors { munmap(descriptors.baseAddress, descriptors.count) }
    }

    func buffer(_ tag: Int) -> UnsafeMutableRawPointer { buffers.baseAddress! + tag * bufferBytes }

    /// Queues `command` for `tag`; `address` is where the driver copies a READ's data from
    /// and the next WRITE's data to (the tag's buffer unless given).
    private func queueCommand(_ command: Ublk.IOCommand, tag: Int, result: Int32, address: UnsafeRawPointer? = nil) {
        let payload = IOCommandPayload(
            queueID: queueID, tag: UInt16(tag), result: result,
            bufferAddress: UInt64(UInt(bitPattern: address ?? UnsafeRawPointer(buffer(tag)))))
        let opcode = ioctlEncoding ? command.ioctlEncoded : command.rawValue
        // Never full: each tag has at most one command in the ring, and it holds `depth`.
        let queued = payload.withBytes {
            ring.prepareCommand(fd: device, command: opcode, userData: UInt64(tag), payload: $0)
        }
        precondition(queued, "io_uring submission ring full")
    }

    func run() {
        func signalArmed(_ armed: Bool) {
            var byte: UInt8 = armed ? 1 : 0
            _ = write(armedSignal, &byte, 1)
        }
        for tag in 0..<depth { queueCommand(.fetchRequest, tag: tag, result: 0) }
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
                if completion.result == Ublk.resultNeedGetData, tag < depth {
                    // A WRITE wants a buffer for its data (answered EROFS once it has one).
                    queueCommand(.needGetData, tag: tag, result: 0)
                    return
                }
                guard completion.result == Ublk.resultOK, tag < depth else {
                    // ABORT: the device is stopping, this tag is not fetched again. Anything
                    // else negative is the driver refusing the command: stop serving the tag.
                    if completion.result != Ublk.resultAbort {
                        UblkDaemon.printLog("queue \(queueID) tag \(tag): command failed (\(completion.result))")
                    }
                    live -= 1
                    return
                }
                let request = IODescriptor(array: descriptors!.baseAddress!, tag: tag)
                let (result, address) = answer(request, into: buffer(tag))
                queueCommand(.commitAndFetchRequest, tag: tag, result: result, address: address)
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

    /// The result of one request (bytes read, or a negative errno), and where a READ's bytes
    /// are: in `mapping`, else (nil) in `buffer`, which a pread filled.
    func answer(_ request: IODescriptor, into buffer: UnsafeMutableRawPointer) -> (Int32, UnsafeRawPointer?) {
        switch request.operation {
        case .read?:
            let length = Int(request.sectorCount) * 512
            let (offset, overflow) = request.startSector.multipliedReportingOverflow(by: 512)
            guard !overflow, length <= bufferBytes, offset <= image.size, UInt64(length) <= image.size - offset else {
                return (-EIO, nil)
            }
            if let mapping {
                // Cut short since it was mapped: whole pages past the end fail the driver's
                // copy (EIO), but the rest of a partial last page would read as zeros.
                var now = stat()
                guard fstat(mapping.descriptor, &now) == 0, UInt64(now.st_size) >= offset + UInt64(length) else {
                    return (-EIO, nil)
                }
                return (Int32(length), mapping.base + Int(offset))
            }
            var done = 0
            while done < length {
                let got: Int
                do {
                    got = try image.read(
                        into: UnsafeMutableRawBufferPointer(start: buffer + done, count: length - done),
                        at: offset + UInt64(done))
                } catch {
                    UblkDaemon.printLog("\(image.displayName): read of \(length) bytes at \(offset): \(error)")
                    return (-EIO, nil)
                }
                // Short: the image shrank under us. Errors, never zeros.
                guard got > 0 else { return (-EIO, nil) }
                done += got
            }
            return (Int32(length), nil)
        case .flush?: return (0, nil)
        case .write?, .writeSame?, .writeZeroes?: return (-EROFS, nil)
        case .discard?, nil: return (-EOPNOTSUPP, nil)
        }
    }
}

/// A read-only shared mapping of the whole image, unmapped when the last queue lets it go.
final class ImageMapping: @unchecked Sendable {
    let base: UnsafeRawPointer
    let size: Int
    /// The mapped file's descriptor, borrowed from the image source, which outlives the queues.
    let descriptor: Int32

    /// nil where the image cannot be mapped (empty, or a file system without mmap): the
    /// queues then pread into their buffers.
    init?(_ descriptor: Int32, size: UInt64) {
        guard size > 0, size <= UInt64(Int.max),
            let address = mmap(nil, Int(size), PROT_READ, MAP_SHARED, descriptor, 0), address != MAP_FAILED
        else { return nil }
        base = UnsafeRawPointer(address)
        self.size = Int(size)
        self.descriptor = descriptor
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), size) }
}
