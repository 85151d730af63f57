#if canImport(Glibc)
import Glibc
#endif
import CShim
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
    case serveLink(Int32)
    /// Supervisor → standby: the link is dead; give the device a new one (nbd: RECONFIGURE).
    case reconnect
    /// Worker → supervisor: stopped at a request boundary with every reply sent; here is the
    /// live link for the next worker.
    case handOff(Int32)
    /// Worker → supervisor, before its report: a copy of the link it serves. Held by the
    /// supervisor, it keeps the kernel's link alive when the worker dies.
    case serving(Int32)
    /// Supervisor → standby: the serving worker died; go on serving its live socket from where
    /// the request journal says it stopped.
    case resume(Int32)
    /// Worker → supervisor after `serving`, and supervisor → standby before `resume`: the open
    /// file description of the image the worker sends big replies from, whose position counts
    /// the progress of such a reply; -1 (no descriptor) when there is none.
    case replyFile(Int32)
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

    public var descriptor: Int32 {
        switch self {
        case .serveLink(let fd), .handOff(let fd), .serving(let fd), .resume(let fd), .replyFile(let fd): fd
        case .prepared, .reconnect, .resumed, .device: -1
        }
    }

    /// Bytes after the code: the index of `device`, little-endian.
    public var payload: [UInt8] {
        guard case .device(let index) = self else { return [] }
        return withUnsafeBytes(of: index.littleEndian) { Array($0) }
    }

    public init?(code: UInt8, payload: ArraySlice<UInt8> = [], descriptor: Int32) {
        if code == UInt8(ascii: "I") {
            guard payload.count == 4, descriptor < 0 else { return nil }
            self = .device(payload.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            return
        }
        guard payload.isEmpty else { return nil }
        switch (code, descriptor >= 0) {
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
        guard sent == bytes.count else { throw SystemError("send on the worker control channel", detail: "short send") }
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
                throw SystemError("wait on the worker control channel", detail: "no message within \(timeout) s")
            }
        }
        var bytes = [UInt8](repeating: 0, count: 8)
        var received: Int32 = -1
        let got = try retryingOnInterrupt("receive on the worker control channel") {
            bytes.withUnsafeMutableBytes { cshim_recv_fd(descriptor, $0.baseAddress, $0.count, &received) }
        }
        if received >= 0 { _ = fcntl(received, F_SETFD, FD_CLOEXEC) }
        guard got >= 1 else {
            if received >= 0 { Glibc.close(received) }
            return nil
        }
        guard let message = ControlMessage(code: bytes[0], payload: bytes[1..<got], descriptor: received) else {
            if received >= 0 { Glibc.close(received) }
            throw SystemError("receive on the worker control channel", detail: "unexpected message \(bytes[..<got])")
        }
        return message
    }

    public func close() { _ = Glibc.close(descriptor) }
}
