#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShim
import SystemPackage

/// The one error type for everything that talks to the kernel: what we tried (`operation`),
/// on what (`path`, when there is one), and why (`errno`, or a `detail` when the failure is
/// ours rather than the kernel's).
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    public var operation: String
    public var path: String?
    public var errno: Errno?
    public var detail: String?

    public init(_ operation: String, path: String? = nil, errno: Errno? = nil, detail: String? = nil) {
        self.operation = operation
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    /// Captures the calling thread's `errno`.
    public static func lastErrno(_ operation: String, path: String? = nil) -> SystemError {
        SystemError(operation, path: path, errno: Errno(rawValue: Glibc.errno))
    }

    public var description: String {
        var text = operation
        if let path { text += " \(path)" }
        var causes: [String] = []
        if let detail { causes.append(detail) }
        if let errno { causes.append(String(cString: strerror(errno.rawValue))) }
        if !causes.isEmpty { text += ": " + causes.joined(separator: ": ") }
        return text
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
