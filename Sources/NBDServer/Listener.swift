#if canImport(Glibc)
import Glibc
#endif
import SystemCalls
import SystemPackage

/// Where a network server listens.
public enum ListenAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: UInt16)

    /// Parses `HOST:PORT`, with `[v6addr]:PORT` for IPv6 literals. An empty host (`:PORT`)
    /// means the IPv4 loopback address: serving every address must be asked for by name
    /// (`0.0.0.0:PORT`, `[::]:PORT`).
    public static func parseTCP(_ text: String) throws(SystemError) -> ListenAddress {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw SystemError("parse address", path: text, detail: "expected HOST:PORT")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return .tcp(host: host.isEmpty ? "127.0.0.1" : host, port: port)
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}

/// A bound, listening socket. A Unix socket's file is placed without replacing anything but a
/// stale socket, and removed at the end only if it is still the one placed.
final class Listener {
    let descriptor: Int32
    /// As bound: a TCP port 0 is replaced by the port the kernel chose.
    let address: ListenAddress
    /// Whether only this host can connect (a Unix socket, or a loopback address).
    let isLocalOnly: Bool
    private var placed: (path: String, device: UInt64, inode: UInt64)?
    private var closed = false

    init(address: ListenAddress) throws(SystemError) {
        switch address {
        case .unix(let path):
            (descriptor, placed) = try Self.listenUnix(path: path)
            self.address = address
            isLocalOnly = true
        case .tcp(let host, let port):
            descriptor = try Self.listenTCP(host: host, port: port)
            (self.address, isLocalOnly) = Self.boundTCPAddress(descriptor, host: host, port: port)
        }
    }

    deinit { close() }

    /// Stops listening (new clients are refused) and removes the socket file if it is ours.
    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(descriptor)
        guard let placed, let status = try? FileStatus.lstat(placed.path) else { return }
        // Someone may have replaced the file since: remove only the socket we placed.
        if status.kind == .socket && status.device == placed.device && status.inode == placed.inode {
            unlink(placed.path)
        }
    }

    /// Binds under a temporary name, listens, then links the socket into place: the path never
    /// exists unconnectable, and link(2) never replaces a file. An existing path is replaced
    /// only when it is a socket no server answers on (left by a server that died).
    private static func listenUnix(path: String) throws(SystemError) -> (Int32, (String, UInt64, UInt64)) {
        let temporary = "\(path).\(String(UInt32.random(in: 0...UInt32.max), radix: 16)).tmp"
        var address = try unixAddress(temporary, naming: path)
        let fd = try retryingOnInterrupt("socket", path: path) {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do throws(SystemError) {
            try retryingOnInterrupt("bind", path: temporary) {
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                    }
                }
            }
            do throws(SystemError) {
                try retryingOnInterrupt("listen", path: temporary) { Glibc.listen(fd, 128) }
                if link(temporary, path) == 0 {
                    unlink(temporary)
                } else {
                    guard errno == EEXIST else { throw .lastErrno("link the socket into place", path: path) }
                    try ensureStaleSocket(path)
                    try retryingOnInterrupt("rename", path: path) { rename(temporary, path) }
                }
            } catch {
                unlink(temporary)
                throw error
            }
            let status = try FileStatus.lstat(path)
            return (fd, (path, status.device, status.inode))
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Throws unless `path` is a socket nobody accepts on.
    private static func ensureStaleSocket(_ path: String) throws(SystemError) {
        let status = try FileStatus.lstat(path)
        guard status.kind == .socket else {
            throw SystemError(
                "listen", path: path, errno: .fileExists,
                detail: "the path exists and is not a socket; not replacing it")
        }
        var address = try unixAddress(path, naming: path)
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { throw .lastErrno("socket", path: path) }
        defer { Glibc.close(probe) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(probe, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if connected == 0 || errno != ECONNREFUSED {
            throw SystemError(
                "listen", path: path, errno: .addressInUse, detail: "another server listens on this socket")
        }
    }

    private static func unixAddress(_ path: String, naming name: String) throws(SystemError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else {
            throw SystemError(
                "bind", path: name,
                detail: "socket path too long (at most \(capacity - 1 - (path.utf8.count - name.utf8.count)) bytes)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        return address
    }

    private static func listenTCP(host: String, port: UInt16) throws(SystemError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var results: UnsafeMutablePointer<addrinfo>?
        // swift-format-ignore: AlwaysUseLowerCamelCase
        let where_ = ListenAddress.tcp(host: host, port: port).description
        let status = getaddrinfo(host, String(port), &hints, &results)
        guard status == 0, let first = results else {
            throw SystemError("getaddrinfo", path: where_, detail: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(results) }
        var lastError = SystemError("bind", path: where_, detail: "no usable address")
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            candidate = info.pointee.ai_next
            let fd = socket(
                info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue),
                info.pointee.ai_protocol)
            if fd < 0 {
                lastError = .lastErrno("socket", path: where_)
                continue
            }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 && Glibc.listen(fd, 128) == 0 {
                return fd
            }
            lastError = .lastErrno("bind", path: where_)
            Glibc.close(fd)
        }
        throw lastError
    }

    /// The address the socket is bound to, and whether it is a loopback one.
    private static func boundTCPAddress(_ fd: Int32, host: String, port: UInt16) -> (ListenAddress, Bool) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return (.tcp(host: host, port: port), false) }
        switch Int32(storage.ss_family) {
        case AF_INET:
            let address = withUnsafeBytes(of: storage) { $0.load(as: sockaddr_in.self) }
            let loopback = UInt32(bigEndian: address.sin_addr.s_addr) >> 24 == 127
            return (.tcp(host: host, port: UInt16(bigEndian: address.sin_port)), loopback)
        case AF_INET6:
            let address = withUnsafeBytes(of: storage) { $0.load(as: sockaddr_in6.self) }
            let bytes = withUnsafeBytes(of: address.sin6_addr) { Array($0) }
            let loopback =
                bytes == [UInt8](repeating: 0, count: 15) + [1]
                || (bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xff && bytes[11] == 0xff && bytes[12] == 127)
            return (.tcp(host: host, port: UInt16(bigEndian: address.sin6_port)), loopback)
        default:
            return (.tcp(host: host, port: port), false)
        }
    }
}
