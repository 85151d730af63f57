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
    public private(set) var displayName: String
    public private(set) var message: String
    /// The HTTP status when one was received.
    public var status: Int?

    /// `message` and `displayName` carry servers' bytes (an S3 error's `<Message>`, a media
    /// type, a digest, a header): they are kept to one printable line of bounded length here,
    /// so that no server can split a log line or send escape sequences to a terminal.
    public init(_ kind: Kind, _ displayName: String, _ message: String, status: Int? = nil) {
        self.kind = kind
        self.displayName = displayName.printableLine(limit: Self.maximumNameBytes)
        self.message = message.printableLine(limit: Self.maximumMessageBytes)
        self.status = status
    }

    static let maximumNameBytes = 1024
    static let maximumMessageBytes = 2048

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

extension String {
    /// One line of printable text: control characters (C0, DEL, C1) as `\n`, `\t`, `\r` or
    /// `\u{XX}`, and cut to at most `limit` UTF-8 bytes (between two scalars, `...` at the
    /// end). Text that needs neither is returned as it is.
    func printableLine(limit: Int) -> String {
        if utf8.count <= limit && !unicodeScalars.contains(where: \.isControlCharacter) { return self }
        var out = String.UnicodeScalarView()
        var bytes = 0
        for scalar in unicodeScalars {
            let piece: String
            switch scalar {
            case "\n": piece = "\\n"
            case "\t": piece = "\\t"
            case "\r": piece = "\\r"
            case _ where scalar.isControlCharacter: piece = "\\u{" + String(scalar.value, radix: 16) + "}"
            default: piece = String(scalar)
            }
            guard bytes + piece.utf8.count <= limit - 3 else {
                out.append(contentsOf: "...".unicodeScalars)
                return String(out)
            }
            bytes += piece.utf8.count
            out.append(contentsOf: piece.unicodeScalars)
        }
        return String(out)
    }
}

extension Unicode.Scalar {
    /// C0, DEL or C1: what must not reach a terminal or a log line from a server.
    var isControlCharacter: Bool { value < 0x20 || (0x7f...0x9f).contains(value) }
}
