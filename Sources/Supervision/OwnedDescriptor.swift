#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// A descriptor with one owner, closed when the owner goes unless handed on with `take()`.
/// What the supervisor receives (a worker's link, its reply file) is held in one, so that no
/// path out of a hand-over leaves a copy of the kernel's link open.
public struct OwnedDescriptor: ~Copyable {
    public let rawValue: Int32

    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    /// Gives the descriptor up without closing it.
    public consuming func take() -> Int32 {
        let value = rawValue
        discard self
        return value
    }

    /// Closes it now rather than where the owner goes (an order the kernel sees matters).
    public consuming func close() {}

    deinit { if rawValue >= 0 { Glibc.close(rawValue) } }
}

/// Two owned descriptors made together: a pipe (`first` reads, `second` writes) or a
/// socketpair. Each closes when it goes, unless consumed into another owner (frozen: other
/// modules take one end and let the other go).
@frozen public struct DescriptorPair: ~Copyable {
    public var first: OwnedDescriptor
    public var second: OwnedDescriptor

    /// A pipe, both ends close-on-exec.
    public static func pipe() throws(SystemError) -> DescriptorPair {
        var ends: [Int32] = [-1, -1]
        guard closeOnExecPipe(&ends) else { throw .lastErrno("pipe") }
        return DescriptorPair(first: OwnedDescriptor(ends[0]), second: OwnedDescriptor(ends[1]))
    }

    /// A connected AF_UNIX socketpair of `type` (SOCK_STREAM, SOCK_SEQPACKET), close-on-exec;
    /// `operation` names it in the error.
    public static func socketPair(type: __socket_type, _ operation: String = "socketpair") throws(SystemError)
        -> DescriptorPair
    {
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(type.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
            throw .lastErrno(operation)
        }
        return DescriptorPair(first: OwnedDescriptor(ends[0]), second: OwnedDescriptor(ends[1]))
    }
}
