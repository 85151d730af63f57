#if canImport(Glibc)
import Glibc
#endif
import ImageSources
import Logging
import NBDProtocol
import SystemCalls
import SystemPackage

/// Where a network server listens.
public enum ListenAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: UInt16)

    /// Parses `HOST:PORT`, with `[v6addr]:PORT` for IPv6 literals.
    public static func parseTCP(_ text: String) throws(SystemError) -> ListenAddress {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw SystemError("parse address", path: text, detail: "expected HOST:PORT")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case let .unix(path): "unix:\(path)"
        case let .tcp(host, port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}

/// An NBD server for userspace clients (nbdinfo, qemu, nbd-client): the fixed newstyle
/// handshake, then the same transmission loop as kernel mode. Many clients at once, one thread
/// per connection plus its workers.
public final class NetworkServer: @unchecked Sendable {
    public struct Options: Sendable {
        public var exportName: String
        public var exportDescription: String
        public var workersPerConnection: Int

        public init(exportName: String = "", exportDescription: String = "", workersPerConnection: Int = 4) {
            self.exportName = exportName
            self.exportDescription = exportDescription
            self.workersPerConnection = workersPerConnection
        }
    }

    public let source: any RandomAccessSource
    public let address: ListenAddress
    private let options: Options
    private let logger: Logger
    private let stopSignal: StopSignal
    private var listener: Int32 = -1

    private let connections = ConditionLock()
    private var activeConnections = 0
    private var nextConnectionID = 0

    /// Binds and listens at once, so errors (address in use, bad path) come before serving and
    /// clients can connect as soon as this returns. A Unix socket is bound under a temporary
    /// name and renamed into place after listen(2): its path never exists unconnectable.
    public init(source: any RandomAccessSource, address: ListenAddress, options: Options = .init(), logger: Logger) throws(SystemError) {
        self.source = source
        self.address = address
        self.options = options
        self.logger = logger
        stopSignal = try StopSignal()
        listener = try Self.listen(on: address)
    }

    deinit {
        if listener >= 0 { close(listener) }
    }

    private var export: ExportDescription {
        ExportDescription(name: options.exportName, description: options.exportDescription, size: source.size)
    }

    /// Accepts and serves clients until `stop()`; then waits for every connection to finish its
    /// in-flight replies, closes the listener and removes a Unix socket file.
    public func serve() throws(SystemError) {
        defer {
            connections.withLock { while activeConnections > 0 { connections.wait() } }
            close(listener)
            listener = -1
            if case let .unix(path) = address { unlink(path) }
        }
        signal(SIGPIPE, SIG_IGN)
        while true {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopSignal.descriptor, events: Int16(POLLIN), revents: 0)]
            _ = try retryingOnInterrupt("poll", path: address.description) { poll(&fds, 2, -1) }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            let client = accept(listener, nil, nil)
            if client < 0 {
                switch errno {
                case EINTR, EAGAIN, ECONNABORTED, EPROTO: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // Out of resources: say so, back off, keep serving the connections we have.
                    logger.warning("accept failed", metadata: ["error": "\(SystemError.lastErrno("accept", path: address.description))"])
                    usleep(100_000)
                    continue
                default:
                    throw .lastErrno("accept", path: address.description)
                }
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            if case .tcp = address {
                var one: Int32 = 1
                setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            let id = connections.withLock { () -> Int in
                activeConnections += 1
                nextConnectionID += 1
                return nextConnectionID
            }
            do {
                _ = try JoinableThread { [self] in
                    serveConnection(client, id: id)
                    connections.withLock {
                        activeConnections -= 1
                        connections.broadcast()
                    }
                }
            } catch {
                close(client)
                connections.withLock { activeConnections -= 1 }
                logger.warning("cannot start a connection thread", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Ends `serve()`: no new clients; connections finish the requests they read, then close.
    public func stop() { stopSignal.raise() }

    private func serveConnection(_ socket: Int32, id: Int) {
        pthread_detach(pthread_self())
        var logger = logger
        logger[metadataKey: "connection"] = "\(id)"
        defer { close(socket) }
        let reader = MessageReader(socket: socket, stop: stopSignal)
        do {
            guard let structured = try negotiate(reader: reader, logger: logger) else { return }
            let loop = TransmissionLoop(
                reader: reader, source: source, structuredReplies: structured,
                configuration: .init(workers: options.workersPerConnection), logger: logger)
            let end = try loop.run()
            logger.debug("connection ended", metadata: ["end": "\(end)"])
        } catch {
            // A client leaving early (EPIPE, ECONNRESET) is ordinary; anything else is worth a line.
            let vanished = error.errno == .brokenPipe || error.errno == .connectionReset
            logger.log(level: vanished ? .debug : .info, "connection closed", metadata: ["reason": "\(error)"])
        }
    }

    /// Runs the handshake; returns whether structured replies were negotiated, or nil when the
    /// connection ends without entering transmission.
    private func negotiate(reader: MessageReader, logger: Logger) throws(SystemError) -> Bool? {
        var negotiator = HandshakeNegotiator(export: export)
        let writer = ReplyWriter(socket: reader.socket)
        try writer.send(negotiator.greeting)
        guard let flagBytes = try reader.readBytes(4, atBoundary: true, what: "NBD client flags") else { return nil }
        do {
            try negotiator.receiveClientFlags(flagBytes.reduce(0) { $0 << 8 | UInt32($1) })
        } catch {
            throw SystemError("NBD handshake", detail: "\(error)")
        }
        while true {
            guard let headerBytes = try reader.readBytes(OptionRequestHeader.size, atBoundary: true, what: "NBD option") else {
                return nil
            }
            let header: OptionRequestHeader
            do { header = try OptionRequestHeader(decoding: headerBytes) } catch {
                throw SystemError("NBD handshake", detail: "\(error)")
            }
            guard header.length <= NBDLimits.maximumOptionLength else {
                throw SystemError(
                    "NBD handshake",
                    detail: "\(header.option) carries \(header.length) bytes, over the limit of \(NBDLimits.maximumOptionLength)")
            }
            let data = header.length == 0 ? [] : (try reader.readBytes(Int(header.length), atBoundary: false, what: "NBD option data") ?? [])
            let step = negotiator.handle(option: header.option, data: data)
            logger.debug("NBD option", metadata: ["option": "\(header.option)", "outcome": "\(step.outcome)"])
            if !step.reply.isEmpty { try writer.send(step.reply) }
            switch step.outcome {
            case .awaitOption: continue
            case .close: return nil
            case .transmit: return negotiator.structuredReplies
            }
        }
    }

    private static func listen(on address: ListenAddress) throws(SystemError) -> Int32 {
        switch address {
        case let .unix(path):
            return try listenUnix(path: path)
        case let .tcp(host, port):
            return try listenTCP(host: host, port: port)
        }
    }

    private static func listenUnix(path: String) throws(SystemError) -> Int32 {
        let temporary = "\(path).\(getpid()).tmp"
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard temporary.utf8.count < capacity else {
            throw SystemError("bind", path: path, detail: "socket path too long (at most \(capacity - 1 - (temporary.utf8.count - path.utf8.count)) bytes)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in temporary.utf8.enumerated() { raw[index] = byte }
        }
        let fd = try retryingOnInterrupt("socket", path: path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do throws(SystemError) {
            unlink(temporary)
            try retryingOnInterrupt("bind", path: temporary) {
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
            }
            try retryingOnInterrupt("listen", path: temporary) { Glibc.listen(fd, 128) }
            do throws(SystemError) {
                try retryingOnInterrupt("rename", path: path) { rename(temporary, path) }
            } catch {
                unlink(temporary)
                throw error
            }
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    private static func listenTCP(host: String, port: UInt16) throws(SystemError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var results: UnsafeMutablePointer<addrinfo>?
        let where_ = "\(host):\(port)"
        let status = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &results)
        guard status == 0, let first = results else {
            throw SystemError("getaddrinfo", path: where_, detail: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(results) }
        var lastError = SystemError("bind", path: where_, detail: "no usable address")
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            candidate = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), info.pointee.ai_protocol)
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
            close(fd)
        }
        throw lastError
    }
}
