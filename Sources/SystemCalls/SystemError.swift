#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShim
import SystemPackage

/// The one error type for everything that talks to the kernel: what we tried (`operation`),
/// on what (`path`, when there is one), why (`errno`, or a `detail` when the failure is ours
/// rather than the kernel's), and what kind of failure it is, so that a caller can tell a
/// refusal from a broken peer or a corrupt file without reading the message.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable {
        /// The kernel said no: `errno` says why.
        case system
        /// A peer (a worker, the supervisor, a client) did not answer in time.
        case timedOut
        /// A peer sent what the protocol does not allow (an unexpected word, a short message).
        case protocolViolation
        /// A rule of ours refused to act: what was found is not ours, not safe to follow, or
        /// not what was checked before.
        case refused
        /// Stored bytes (a state file, a request journal) that cannot be trusted.
        case corrupt
        /// Anything else of ours that failed; `detail` says what.
        case failed
    }

    public var operation: String
    public var path: String?
    public var errno: Errno?
    public var detail: String?
    public var kind: Kind
    /// What this failure comes from, when it is another error (a decoder's, a peer's).
    public var underlying: (any Error & Sendable)?

    /// `kind` is `.system` with an `errno`, else `.failed`.
    public init(_ operation: String, path: String? = nil, errno: Errno? = nil, detail: String? = nil) {
        self.operation = operation
        self.path = path
        self.errno = errno
        self.detail = detail
        self.kind = errno == nil ? .failed : .system
    }

    /// A failure of ours of `kind`, with what it comes from. Without a `detail`, the
    /// underlying error's description says why.
    public init(
        _ kind: Kind, _ operation: String, path: String? = nil, detail: String? = nil,
        underlying: (any Error & Sendable)? = nil
    ) {
        self.init(operation, path: path, detail: detail ?? underlying.map { "\($0)" })
        self.kind = kind
        self.underlying = underlying
    }

    /// Captures the calling thread's `errno`.
    public static func lastErrno(_ operation: String, path: String? = nil) -> SystemError {
        SystemError(operation, path: path, errno: Errno(rawValue: Glibc.errno))
    }

    /// Equal when everything a caller sees is: the underlying errors are compared by
    /// description.
    public static func == (lhs: SystemError, rhs: SystemError) -> Bool {
        lhs.operation == rhs.operation && lhs.path == rhs.path && lhs.errno == rhs.errno && lhs.detail == rhs.detail
            && lhs.kind == rhs.kind && lhs.underlying.map { "\($0)" } == rhs.underlying.map { "\($0)" }
    }

    public var description: String {
        var text = operation
        if let path { text += " \(path)" }
        let reason = reason
        if !reason.isEmpty { text += ": " + reason }
        return text
    }

    /// Why it failed, without what was tried on what: the detail and the errno's text.
    public var reason: String {
        var causes: [String] = []
        if let detail { causes.append(detail) }
        if let errno { causes.append(String(cString: strerror(errno.rawValue))) }
        return causes.joined(separator: ": ")
    }
}

/// Runs a syscall that returns -1 and sets errno on failure, retrying on EINTR.
@discardableResult
@inlinable
public func retryingOnInterrupt<T: BinaryInteger>(
    _ operation: @autoclosure () -> String,
    path: @autoclosure () -> String? = nil,
    _ body: () -> T
) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw SystemError(operation(), path: path(), errno: Errno(rawValue: code))
    }
}
