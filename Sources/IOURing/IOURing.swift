#if canImport(Glibc)
import Glibc
#endif
import CShim
import SystemCalls

// io_uring through the raw system calls rather than liburing: the ublk backend needs four
// things (setup, enter, the two rings, URING_CMD SQEs of 128 bytes) and one thread per ring,
// which is ~200 lines here. liburing would add a system-library target and a run-time
// dependency on every host (Debian ships liburing2 2.3, whose inline helpers predate several
// URING_CMD fields), for helpers we would wrap again anyway. The layout below is the stable
// kernel ABI of include/uapi/linux/io_uring.h.

/// One io_uring instance: its descriptor and its mapped rings, released on deinit. Used by one
/// thread at a time (the ublk driver requires the thread that fetched a tag to commit it).
public final class IOURing {
    /// struct io_uring_params is 120 bytes: sq_entries at 0, cq_entries 4, flags 8, features 20,
    /// sq_off (struct io_sqring_offsets, 40 bytes) at 40, cq_off at 80.
    enum Params {
        static let size = 120
        static let sqEntries = 0, cqEntries = 4, flags = 8, features = 20, sqOffsets = 40, cqOffsets = 80
    }
    public struct SetupFlags: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// IORING_SETUP_SQE128: 128-byte SQEs, which URING_CMD needs for an 80-byte payload.
        public static let sqe128 = SetupFlags(rawValue: 1 << 10)
    }
    public enum Opcode: UInt8 {
        case nop = 0
        case uringCommand = 46  // IORING_OP_URING_CMD
    }
    static let offSQRing: Int64 = 0, offCQRing: Int64 = 0x800_0000, offSQEs: Int64 = 0x1000_0000
    static let enterGetEvents: UInt32 = 1 << 0

    public struct Completion: Sendable, Equatable {
        public var userData: UInt64
        public var result: Int32
        public var flags: UInt32
    }

    public let descriptor: Int32
    public let sqeSize: Int
    let sqRing: UnsafeMutableRawBufferPointer
    let cqRing: UnsafeMutableRawBufferPointer
    let sqes: UnsafeMutableRawBufferPointer
    let sqHead, sqTail, cqHead, cqTail: UnsafeMutableRawPointer
    let sqMask, cqMask: UInt32
    let sqArray: UnsafeMutablePointer<UInt32>
    let cqes: UnsafeMutableRawPointer
    public let entries: UInt32
    /// SQEs written but not yet handed to the kernel.
    var pending: UInt32 = 0
    var localTail: UInt32

    public init(entries: UInt32, flags: SetupFlags = []) throws(SystemError) {
        var params = [UInt8](repeating: 0, count: Params.size)
        params.withUnsafeMutableBytes { $0.storeBytes(of: flags.rawValue, toByteOffset: Params.flags, as: UInt32.self) }
        let fd = params.withUnsafeMutableBytes { cshim_io_uring_setup(entries, $0.baseAddress) }
        guard fd >= 0 else { throw .lastErrno("io_uring_setup") }
        func field(_ offset: Int) -> UInt32 {
            params.withUnsafeBytes { $0.load(fromByteOffset: offset, as: UInt32.self) }
        }
        let sqEntries = field(Params.sqEntries)
        let cqEntries = field(Params.cqEntries)
        // io_sqring_offsets: head, tail, ring_mask, ring_entries, flags, dropped, array.
        let sq = Params.sqOffsets
        let cq = Params.cqOffsets
        // io_cqring_offsets: head, tail, ring_mask, ring_entries, overflow, cqes.
        let sqSize = Int(field(sq + 24)) + Int(sqEntries) * 4
        let cqSize = Int(field(cq + 20)) + Int(cqEntries) * 16
        let sqeSize = flags.contains(.sqe128) ? 128 : 64
        func map(_ length: Int, _ offset: Int64) -> UnsafeMutableRawBufferPointer? {
            let address = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, off_t(offset))
            guard let address, address != MAP_FAILED else { return nil }
            return UnsafeMutableRawBufferPointer(start: address, count: length)
        }
        guard let sqRing = map(sqSize, Self.offSQRing) else {
            let e = SystemError.lastErrno("mmap io_uring SQ ring"); close(fd); throw e
        }
        guard let cqRing = map(cqSize, Self.offCQRing) else {
            let e = SystemError.lastErrno("mmap io_uring CQ ring"); munmap(sqRing.baseAddress, sqRing.count); close(fd);
            throw e
        }
        guard let sqes = map(Int(sqEntries) * sqeSize, Self.offSQEs) else {
            let e = SystemError.lastErrno("mmap io_uring SQEs")
            munmap(sqRing.baseAddress, sqRing.count); munmap(cqRing.baseAddress, cqRing.count); close(fd); throw e
        }
        self.descriptor = fd
        self.sqeSize = sqeSize
        self.sqRing = sqRing
        self.cqRing = cqRing
        self.sqes = sqes
        self.entries = sqEntries
        sqHead = sqRing.baseAddress! + Int(field(sq))
        sqTail = sqRing.baseAddress! + Int(field(sq + 4))
        sqMask = sqRing.load(fromByteOffset: Int(field(sq + 8)), as: UInt32.self)
        sqArray = (sqRing.baseAddress! + Int(field(sq + 24))).assumingMemoryBound(to: UInt32.self)
        cqHead = cqRing.baseAddress! + Int(field(cq))
        cqTail = cqRing.baseAddress! + Int(field(cq + 4))
        cqMask = cqRing.load(fromByteOffset: Int(field(cq + 8)), as: UInt32.self)
        cqes = cqRing.baseAddress! + Int(field(cq + 20))
        localTail = cshim_load_acquire_u32(sqTail)
    }

    deinit {
        munmap(sqes.baseAddress, sqes.count)
        munmap(cqRing.baseAddress, cqRing.count)
        munmap(sqRing.baseAddress, sqRing.count)
        close(descriptor)
    }

    /// Fills the next SQE (zeroed first) with `fill`, which gets its raw bytes; false when the
    /// submission ring is full (submit first).
    @discardableResult
    public func prepare(_ fill: (UnsafeMutableRawBufferPointer) -> Void) -> Bool {
        let head = cshim_load_acquire_u32(sqHead)
        guard localTail &- head < entries else { return false }
        let index = localTail & sqMask
        let sqe = UnsafeMutableRawBufferPointer(rebasing: sqes[Int(index) * sqeSize..<Int(index + 1) * sqeSize])
        sqe.initializeMemory(as: UInt8.self, repeating: 0)
        fill(sqe)
        sqArray[Int(index)] = index
        localTail &+= 1
        pending += 1
        return true
    }

    /// Prepares a URING_CMD on `fd`: `command` is the 32-bit cmd_op, `payload` goes to the
    /// SQE's command area (16 bytes in a 64-byte SQE, 80 in a 128-byte one).
    @discardableResult
    public func prepareCommand(fd: Int32, command: UInt32, userData: UInt64, payload: UnsafeRawBufferPointer) -> Bool {
        precondition(payload.count <= sqeSize - 48, "URING_CMD payload larger than the SQE's command area")
        return prepare { sqe in
            sqe.storeBytes(of: Opcode.uringCommand.rawValue, toByteOffset: 0, as: UInt8.self)
            sqe.storeBytes(of: fd, toByteOffset: 4, as: Int32.self)
            sqe.storeBytes(of: command, toByteOffset: 8, as: UInt32.self)
            sqe.storeBytes(of: userData, toByteOffset: 32, as: UInt64.self)
            UnsafeMutableRawBufferPointer(rebasing: sqe[48..<48 + payload.count]).copyMemory(from: payload)
        }
    }

    /// Hands the prepared SQEs to the kernel and waits until `waitFor` completions are ready.
    /// EINTR is retried.
    public func submit(waitFor: UInt32 = 0) throws(SystemError) {
        cshim_store_release_u32(sqTail, localTail)
        while true {
            let result = cshim_io_uring_enter(descriptor, pending, waitFor, waitFor > 0 ? Self.enterGetEvents : 0)
            if result >= 0 {
                pending -= min(pending, UInt32(result))
                return
            }
            if errno == EINTR { continue }
            throw .lastErrno("io_uring_enter")
        }
    }

    /// Whether a completion is waiting in the ring (no system call).
    public var hasCompletions: Bool { cshim_load_acquire_u32(cqTail) != cqHead.load(as: UInt32.self) }

    /// Takes every completion now in the ring, oldest first.
    public func reap(_ body: (Completion) -> Void) {
        var head = cqHead.load(as: UInt32.self)
        let tail = cshim_load_acquire_u32(cqTail)
        while head != tail {
            let cqe = cqes + Int(head & cqMask) * 16
            body(
                Completion(
                    userData: cqe.load(as: UInt64.self), result: cqe.load(fromByteOffset: 8, as: Int32.self),
                    flags: cqe.load(fromByteOffset: 12, as: UInt32.self)))
            head &+= 1
        }
        cshim_store_release_u32(cqHead, head)
    }

    /// Submits one command and waits for its completion (control paths).
    public func run(fd: Int32, command: UInt32, payload: UnsafeRawBufferPointer) throws(SystemError) -> Int32 {
        guard prepareCommand(fd: fd, command: command, userData: 0x5eed, payload: payload) else {
            throw SystemError("io_uring_enter", detail: "submission ring full")
        }
        var result: Int32?
        while result == nil {
            try submit(waitFor: 1)
            reap { if $0.userData == 0x5eed { result = $0.result } }
        }
        return result!
    }
}
