#if canImport(Glibc)
import Glibc
#endif
import CShim
import Synchronization
import SystemCalls

/// The channel between the supervisor and one serving worker: a SOCK_SEQPACKET socketpair, one
/// byte per message (five for `device`), with a descriptor attached where the message carries
/// one. Messages are few and tiny, so the supervisor stays a handful of syscalls. The "link" is
/// the backend's kernel link: nbd's socket, a /dev/fuse or /dev/ublkcN descriptor.
public enum ControlMessage: Equatable, Sendable {
    /// Worker → supervisor: the standby has opened the source and waits for a device.
    case prepared
    /// Supervisor → a standby started before the device was known (with the first worker):
    /// the device's index.
    case device(UInt32)
    /// Supervisor → standby: serve this link, the kernel's live connection handed over by the
    /// previous worker (hot upgrade; the kernel never sees a change).
    case serveLink(CarriedDescriptor)
    /// Supervisor → standby: the link is dead; give the device a new one (nbd: RECONFIGURE).
    case reconnect
    /// Worker → supervisor: stopped at a request boundary with every reply sent; here is the
    /// live link for the next worker.
    case handOff(CarriedDescriptor)
    /// Worker → supervisor, before its report: a copy of the link it serves. Held by the
    /// supervisor, it keeps the kernel's link alive when the worker dies.
    case serving(CarriedDescriptor)
    /// Supervisor → standby: the serving worker died; go on serving its live socket from where
    /// the request journal says it stopped.
    case resume(CarriedDescriptor)
    /// Worker → supervisor after `serving`, and supervisor → standby before `resume`: the open
    /// file description of the image the worker sends big replies from, whose position counts
    /// the progress of such a reply; -1 (no descriptor) when there is none.
    case replyFile(CarriedDescriptor)
    /// Standby → supervisor, answering `resume`: serving (`true`), or the journal cannot be
    /// trusted (`false`; the standby closed the link and waits for `reconnect`).
    case resumed(Bool)

    public var code: UInt8 {
        switch self {
        case .prepared: UInt8(ascii: "P")
        case .device: UInt8(ascii: "I")
        case .serveLink: UInt8(ascii: "S")
        case .reconnect: UInt8(ascii: "R")
        case .handOff: UInt8(ascii: "H")
        case .serving: UInt8(ascii: "K")
        case .resume: UInt8(ascii: "J")
        case .replyFile: UInt8(ascii: "D")
        case .resumed(let done): done ? UInt8(ascii: "Y") : UInt8(ascii: "N")
        }
    }

    // A sender names a descriptor it keeps owning: these build the words from its number.
    public static func serveLink(_ fd: Int32) -> ControlMessage { .serveLink(.borrowed(fd)) }
    public static func handOff(_ fd: Int32) -> ControlMessage { .handOff(.borrowed(fd)) }
    public static func serving(_ fd: Int32) -> ControlMessage { .serving(.borrowed(fd)) }
    public static func resume(_ fd: Int32) -> ControlMessage { .resume(.borrowed(fd)) }
    public static func replyFile(_ fd: Int32) -> ControlMessage { .replyFile(.borrowed(fd)) }

    public var descriptor: Int32 {
        switch self {
        case .serveLink(let fd), .handOff(let fd), .serving(let fd), .resume(let fd), .replyFile(let fd): fd.rawValue
        case .prepared, .reconnect, .resumed, .device: -1
        }
    }

    /// Bytes after the code: the index of `device`, little-endian.
    public var payload: [UInt8] {
        guard case .device(let index) = self else { return [] }
        return withUnsafeBytes(of: index.littleEndian) { Array($0) }
    }

    /// Parses a word whose descriptor, if any, stays the caller's.
    public init?(code: UInt8, payload: ArraySlice<UInt8> = [], descriptor: Int32) {
        self.init(code: code, payload: payload, carrying: descriptor >= 0 ? .borrowed(descriptor) : nil)
    }

    /// Parses a word; `carried` is the descriptor that came with it.
    init?(code: UInt8, payload: ArraySlice<UInt8> = [], carrying carried: CarriedDescriptor?) {
        if code == UInt8(ascii: "I") {
            guard payload.count == 4, carried == nil else { return nil }
            self = .device(payload.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            return
        }
        guard payload.isEmpty else { return nil }
        let none = CarriedDescriptor.borrowed(-1)
        let descriptor = carried ?? none
        switch (code, carried != nil) {
        case (UInt8(ascii: "P"), false): self = .prepared
        case (UInt8(ascii: "R"), false): self = .reconnect
        case (UInt8(ascii: "S"), true): self = .serveLink(descriptor)
        case (UInt8(ascii: "H"), true): self = .handOff(descriptor)
        case (UInt8(ascii: "K"), true): self = .serving(descriptor)
        case (UInt8(ascii: "J"), true): self = .resume(descriptor)
        case (UInt8(ascii: "D"), _): self = .replyFile(descriptor)
        case (UInt8(ascii: "Y"), false): self = .resumed(true)
        case (UInt8(ascii: "N"), false): self = .resumed(false)
        default: return nil
        }
    }
}

public struct ControlChannel: Sendable {
    public let descriptor: Int32

    public init(descriptor: Int32) { self.descriptor = descriptor }

    /// A connected pair: the first end for the supervisor, the second for the worker.
    public static func pair() throws(SystemError) -> (supervisor: ControlChannel, worker: ControlChannel) {
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            throw .lastErrno("socketpair (worker control)")
        }
        return (ControlChannel(descriptor: ends[0]), ControlChannel(descriptor: ends[1]))
    }

    public func send(_ message: ControlMessage) throws(SystemError) {
        let bytes = [message.code] + message.payload
        let sent = try retryingOnInterrupt("send on the worker control channel") {
            bytes.withUnsafeBytes { cshim_send_fd(descriptor, $0.baseAddress, $0.count, message.descriptor) }
        }
        guard sent == bytes.count else {
            throw SystemError(.protocolViolation, "send on the worker control channel", detail: "short send")
        }
    }

    /// The next message, waiting at most `timeout` seconds (nil: forever). Returns nil when the
    /// peer closed its end (it exited).
    public func receive(timeout: Double? = nil) throws(SystemError) -> ControlMessage? {
        if let timeout {
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            let ready = try retryingOnInterrupt("poll the worker control channel") {
                poll(&poller, 1, Int32(timeout * 1000))
            }
            guard ready > 0 else {
                throw SystemError(
                    .timedOut, "wait on the worker control channel", detail: "no message within \(timeout) s")
            }
        }
        var bytes = [UInt8](repeating: 0, count: 8)
        var received: Int32 = -1
        let got = try retryingOnInterrupt("receive on the worker control channel") {
            bytes.withUnsafeMutableBytes { cshim_recv_fd(descriptor, $0.baseAddress, $0.count, &received) }
        }
        if received >= 0 { _ = fcntl(received, F_SETFD, FD_CLOEXEC) }
        // Ours from here: closed with the message unless the receiver takes it, and at once
        // when the word is not one we know.
        let carried = received >= 0 ? CarriedDescriptor(owning: received) : nil
        guard got >= 1 else { return nil }
        guard let message = ControlMessage(code: bytes[0], payload: bytes[1..<got], carrying: carried) else {
            throw SystemError(
                .protocolViolation, "receive on the worker control channel",
                detail: "unexpected message \(bytes[..<got])")
        }
        return message
    }

    public func close() { _ = Glibc.close(descriptor) }
}

/// The descriptor a control word carries. One received is the receiver's: it is closed when
/// the last reference to the word goes, unless `take()` claimed it, so no path through a
/// receiver (an unexpected word, a thrown error, a word it ignores) leaks the kernel's link.
/// One being sent is `borrowed`: the sender keeps owning it and nothing here closes it.
public final class CarriedDescriptor: Sendable, Equatable, CustomStringConvertible {
    /// The descriptor; -1 once an owned one is taken. The mutex guards it: a word may be
    /// looked at from the thread that received it and dropped on another.
    private let state: Mutex<Int32>
    private let owned: Bool

    init(owning fd: Int32) {
        state = Mutex(fd)
        owned = true
    }

    private init(borrowing fd: Int32) {
        state = Mutex(fd)
        owned = false
    }

    public static func borrowed(_ fd: Int32) -> CarriedDescriptor { CarriedDescriptor(borrowing: fd) }

    /// The number, still open (or -1 when taken): for a look, or to pass on while owned here.
    public var rawValue: Int32 { state.withLock { $0 } }

    /// Claims the descriptor: the caller closes it from now on (an owner type, or by hand).
    public func take() -> Int32 {
        state.withLock { fd in
            defer { if owned { fd = -1 } }
            return fd
        }
    }

    /// Closes an owned descriptor now (a link the peer must see die before it acts).
    public func close() {
        guard owned else { return }
        let fd = take()
        if fd >= 0 { Glibc.close(fd) }
    }

    public static func == (lhs: CarriedDescriptor, rhs: CarriedDescriptor) -> Bool { lhs.rawValue == rhs.rawValue }

    public var description: String { "fd \(rawValue)" }

    deinit {
        guard owned else { return }
        let fd = state.withLock { $0 }
        if fd >= 0 { Glibc.close(fd) }
    }
}
