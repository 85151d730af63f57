#if canImport(Glibc)
import Glibc
#endif
import SystemCalls
import SystemPackage

/// Why a remote object could not be read. `description` is one line for the user: it names the
/// object without credentials or signatures (`displayName`) and the cause.
public struct RemoteError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Bad `-o` options, SOURCE or credentials file: nothing was sent.
        case configuration
        /// DNS, connection refused, TLS failure: the server was never reached.
        case unreachable
        /// No byte within the stall timeout.
        case timeout
        /// Connection reset, short body, 5xx: retried, and still failing after the last retry.
        case transient
        /// 401/403: credentials refused (wrong secret, wrong region, not allowed).
        case denied
        /// 404.
        case notFound
        /// The object changed since it was opened (412 on If-Match, or a different size).
        case changed
        /// The server broke HTTP Range semantics: 200 to a range request, a wrong Content-Range,
        /// 416 inside the object, more bytes than asked.
        case protocolViolation
        /// Any other status.
        case http
        /// The block cache failed (its directory, its files).
        case cache
    }

    public var kind: Kind
    /// The object, without credentials or query signatures.
    public var displayName: String
    public var message: String
    /// The HTTP status when one was received.
    public var status: Int?

    public init(_ kind: Kind, _ displayName: String, _ message: String, status: Int? = nil) {
        self.kind = kind
        self.displayName = displayName
        self.message = message
        self.status = status
    }

    public var description: String { "\(displayName): \(message)" }

    /// The same failure as the SystemError that `RandomAccessSource.read` throws (EIO, or the
    /// errno a caller can act on), keeping the one-line message.
    public var systemError: SystemError {
        let code: Errno =
            switch kind {
            case .timeout: .timedOut
            case .denied: .permissionDenied
            case .notFound: .noSuchFileOrDirectory
            case .unreachable: Errno(rawValue: EHOSTUNREACH)
            case .changed: .staleNFSFileHandle
            default: .ioError
            }
        return SystemError("read", path: displayName, errno: code, detail: message)
    }
}
