#if canImport(Glibc)
import Glibc
#endif
import CShim
import SystemCalls
import SystemPackage

/// Where netlink datagrams go and come from. The real one is `NetlinkSocket`; tests put a
/// recorder with canned replies here.
public protocol NetlinkTransport: AnyObject {
    /// The port id the kernel assigned to this socket (nl_pid), which replies carry.
    var portID: UInt32 { get }
    func send(_ datagram: [UInt8]) throws(SystemError)
    /// One whole datagram (possibly several messages).
    func receive() throws(SystemError) -> [UInt8]
}

/// An AF_NETLINK socket, close-on-exec, bound to a kernel-assigned port id, with extended
/// acks and capped acks turned on. One user at a time: a request and its replies must not
/// interleave with another's.
public final class NetlinkSocket: NetlinkTransport {
    public let descriptor: Int32
    public let portID: UInt32
    private let protocolName: String

    /// Opens a socket for `netlinkProtocol` (NETLINK_GENERIC by default).
    public init(protocol netlinkProtocol: Int32 = 16, name: String = "NETLINK_GENERIC") throws(SystemError) {
        protocolName = name
        let fd = try retryingOnInterrupt("socket \(name)") {
            socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkProtocol)
        }
        do throws(SystemError) {
            var address = sockaddr_nl()
            address.nl_family = sa_family_t(AF_NETLINK)
            _ = try Self.withSockaddr(&address) { pointer, size throws(SystemError) in
                try retryingOnInterrupt("bind \(name)") { bind(fd, pointer, size) }
            }
            var length = socklen_t(MemoryLayout<sockaddr_nl>.size)
            _ = try Self.withSockaddr(&address) { pointer, _ throws(SystemError) in
                try retryingOnInterrupt("getsockname \(name)") { getsockname(fd, pointer, &length) }
            }
            // Extended acks carry the kernel's error text; capped acks keep errors small. Both
            // are best effort: old kernels lack them and still answer.
            Self.setOption(fd, Self.Option.extendedAck, 1)
            Self.setOption(fd, Self.Option.capAck, 1)
            descriptor = fd
            portID = address.nl_pid
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(descriptor) }

    enum Option {
        static let solNetlink: Int32 = 270  // SOL_NETLINK
        static let addMembership: Int32 = 1
        static let dropMembership: Int32 = 2
        static let capAck: Int32 = 10
        static let extendedAck: Int32 = 11
    }

    @discardableResult
    private static func setOption(_ fd: Int32, _ option: Int32, _ value: Int32) -> Int32 {
        var value = value
        return setsockopt(fd, Option.solNetlink, option, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    private static func withSockaddr<R>(
        _ address: inout sockaddr_nl, _ body: (UnsafeMutablePointer<sockaddr>, socklen_t) throws(SystemError) -> R
    ) throws(SystemError) -> R {
        let result: Result<R, SystemError> = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                do throws(SystemError) {
                    return .success(try body(socketAddress, socklen_t(MemoryLayout<sockaddr_nl>.size)))
                } catch { return .failure(error) }
            }
        }
        return try result.get()
    }

    /// Subscribes to a multicast group (NETLINK_ADD_MEMBERSHIP), e.g. nbd's `nbd_mc_group`.
    public func joinMulticastGroup(_ group: UInt32) throws(SystemError) {
        var value = group
        try retryingOnInterrupt("NETLINK_ADD_MEMBERSHIP \(group)") {
            setsockopt(
                descriptor, Option.solNetlink, Option.addMembership, &value, socklen_t(MemoryLayout<UInt32>.size))
        }
    }

    public func send(_ datagram: [UInt8]) throws(SystemError) {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)  // nl_pid 0: the kernel
        let sent = try Self.withSockaddr(&address) { pointer, size throws(SystemError) in
            try retryingOnInterrupt("sendto \(protocolName)") {
                datagram.withUnsafeBytes { sendto(descriptor, $0.baseAddress, $0.count, 0, pointer, size) }
            }
        }
        guard sent == datagram.count else {
            throw SystemError("sendto \(protocolName)", detail: "sent \(sent) of \(datagram.count) bytes")
        }
    }

    /// Receives one datagram into a buffer sized by peeking at its real length
    /// (MSG_PEEK|MSG_TRUNC), so no reply is ever cut to a guessed buffer size.
    public func receive() throws(SystemError) -> [UInt8] {
        let length = try retryingOnInterrupt("recv \(protocolName) (peek)") {
            recv(descriptor, nil, 0, Int32(MSG_PEEK | MSG_TRUNC))
        }
        var buffer = [UInt8](repeating: 0, count: max(length, 1))
        let got = try retryingOnInterrupt("recv \(protocolName)") {
            buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_TRUNC)) }
        }
        // Larger than peeked: another reader took the peeked datagram and this one was cut.
        guard got <= buffer.count else {
            throw SystemError(
                "recv \(protocolName)", errno: .messageTooLong,
                detail: "a \(got)-byte datagram arrived in a \(buffer.count)-byte buffer (two readers on one socket?)")
        }
        return Array(buffer[..<got])
    }

    /// Waits until a datagram is ready or `milliseconds` pass (-1: forever). False on timeout.
    public func waitReadable(milliseconds: Int32) throws(SystemError) -> Bool {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        let ready = try retryingOnInterrupt("poll \(protocolName)") { poll(&entry, 1, milliseconds) }
        return ready > 0
    }
}
