#if canImport(Glibc)
import Glibc
#endif
import ImageSources
import Logging
import NBDProtocol
import SystemCalls
import SystemPackage

/// An NBD server for userspace clients (nbdinfo, qemu, nbd-client): the fixed newstyle
/// handshake, then the same transmission loop as kernel mode. Many clients at once, one thread
/// per connection plus its workers, under a cap: connections over it are closed at accept, a
/// handshake has a time limit, a send that makes no progress fails, and a stop shuts down the
/// sockets of connections that do not finish in time.
public final class NetworkServer: @unchecked Sendable {
    public struct Options: Sendable {
        public var exportName: String
        public var exportDescription: String
        public var workersPerConnection: Int
        /// Connections in transmission at once; when all are taken a new client is closed at
        /// accept. Handshakes have `handshakesPerConnection` times as many slots; when those are
        /// taken the one quiet the longest is dropped for the new client. Lowered to what the
        /// descriptor limit allows.
        public var maxConnections: Int
        /// From accept to the end of the handshake.
        public var handshakeTimeout: Duration
        /// How long one send may make no progress (SO_SNDTIMEO) before the connection is
        /// dropped: a client that stops reading its replies frees its workers. Zero: no limit.
        public var sendTimeout: Duration
        /// After `stop()`, how long connections have to answer what they read before their
        /// sockets are shut down.
        public var shutdownGrace: Duration
        /// Credentials for NBD_OPT_STARTTLS; nil: TLS is refused.
        public var tls: TLSContext?
        /// With `tls`: whether clients must use it (`.require`) or may (`.on`).
        public var tlsPolicy: TLSPolicy

        public init(
            exportName: String = "", exportDescription: String = "", workersPerConnection: Int = 4,
            maxConnections: Int = 64, handshakeTimeout: Duration = .seconds(10), sendTimeout: Duration = .seconds(30),
            shutdownGrace: Duration = .seconds(2), tls: TLSContext? = nil, tlsPolicy: TLSPolicy = .require
        ) {
            self.tls = tls
            self.tlsPolicy = tlsPolicy
            self.exportName = exportName
            self.exportDescription = exportDescription
            self.workersPerConnection = workersPerConnection
            self.maxConnections = maxConnections
            self.handshakeTimeout = handshakeTimeout
            self.sendTimeout = sendTimeout
            self.shutdownGrace = shutdownGrace
        }
    }

    public let source: any RandomAccessSource
    /// As bound (a TCP port 0 replaced by the port chosen).
    public var address: ListenAddress { listener.address }
    /// Whether only this host can connect: a Unix socket or a loopback address.
    public var isLocalOnly: Bool { listener.isLocalOnly }
    /// The connection cap in force (`Options.maxConnections`, lowered to fit the descriptor limit).
    public let maxConnections: Int
    /// Handshake slots per transmission slot: enough that an idle flood must open hundreds of
    /// connections within one step of a real client's handshake to drop it.
    public static let handshakesPerConnection = 4
    private let options: Options
    private let logger: Logger
    private let stopSignal: StopSignal
    private let listener: Listener
    private let registry: ConnectionRegistry
    /// When the cap was last reported, so a flood logs one line per interval, not one per client.
    private var lastCapWarning: UInt64 = 0

    /// Binds and listens at once, so errors (address in use, bad path) come before serving and
    /// clients can connect as soon as this returns.
    public init(source: any RandomAccessSource, address: ListenAddress, options: Options = .init(), logger: Logger)
        throws(SystemError)
    {
        self.source = source
        self.options = options
        self.logger = logger
        let allowed = Self.connectionsWithinDescriptorLimit()
        maxConnections = max(1, min(options.maxConnections, allowed))
        if maxConnections < options.maxConnections {
            logger.warning(
                "connection cap lowered to fit the open-file limit (ulimit -n)",
                metadata: [
                    "requested": "\(options.maxConnections)", "cap": "\(maxConnections)",
                ])
        }
        registry = ConnectionRegistry(
            transmissionCapacity: maxConnections, handshakeCapacity: maxConnections * Self.handshakesPerConnection)
        stopSignal = try StopSignal()
        listener = try Listener(address: address)
    }

    /// Each connection holds one descriptor: the transmitting ones, the handshakes, and the
    /// handshakes dropped for newer ones until their thread notices must all fit beside the
    /// server's own descriptors.
    private static func connectionsWithinDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else {
            return .max
        }
        return (Int(clamping: limit.rlim_cur) - 64) / (1 + 2 * handshakesPerConnection)
    }

    private var export: ExportDescription {
        ExportDescription(name: options.exportName, description: options.exportDescription, size: source.size)
    }

    /// Accepts and serves clients until `stop()`; then closes the listener, gives connections
    /// `shutdownGrace` to answer what they read, shuts down the sockets of those still busy
    /// (a client that reads no replies, a half-sent request), waits for every connection
    /// thread, and removes a Unix socket file it placed.
    public func serve() throws(SystemError) {
        defer {
            listener.close()
            if !registry.waitUntilEmpty(deadline: monotonicMicroseconds() + options.shutdownGrace.microseconds) {
                logger.info("shutting down connections still busy", metadata: ["count": "\(registry.count)"])
                registry.shutdownAll()
                _ = registry.waitUntilEmpty(deadline: .max)
            }
        }
        signal(SIGPIPE, SIG_IGN)
        while true {
            var fds = [
                pollfd(fd: listener.descriptor, events: Int16(POLLIN), revents: 0),
                pollfd(fd: stopSignal.descriptor, events: Int16(POLLIN), revents: 0),
            ]
            _ = try retryingOnInterrupt("poll", path: address.description) { poll(&fds, 2, -1) }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            let client = accept(listener.descriptor, nil, nil)
            if client < 0 {
                switch errno {
                case EINTR, EAGAIN, ECONNABORTED, EPROTO: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // Out of resources: say so, back off, keep serving the connections we have.
                    logger.warning(
                        "accept failed",
                        metadata: ["error": "\(SystemError.lastErrno("accept", path: address.description))"])
                    usleep(100_000)
                    continue
                default:
                    throw .lastErrno("accept", path: address.description)
                }
            }
            admit(client)
        }
    }

    /// Gives `client` a handshake slot and a thread, or closes it at once when every
    /// transmission slot is taken.
    private func admit(_ client: Int32) {
        _ = fcntl(client, F_SETFD, FD_CLOEXEC)
        if case .tcp = address {
            var one: Int32 = 1
            setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        if options.sendTimeout > .zero {
            let microseconds = options.sendTimeout.microseconds
            var timeout = timeval(tv_sec: Int(microseconds / 1_000_000), tv_usec: Int(microseconds % 1_000_000))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        guard case .admitted(let id) = registry.admit(client) else {
            close(client)
            let now = monotonicMicroseconds()
            if now - lastCapWarning >= 10_000_000 {
                lastCapWarning = now
                logger.warning(
                    "connection cap reached: closing new connections", metadata: ["cap": "\(maxConnections)"])
            }
            return
        }
        do {
            _ = try JoinableThread { [self] in
                pthread_detach(pthread_self())
                serveConnection(client, id: id)
                registry.remove(id)
            }
        } catch {
            registry.remove(id)
            logger.warning("cannot start a connection thread", metadata: ["error": "\(error)"])
        }
    }

    /// Ends `serve()`: no new clients; connections finish the requests they read, then close.
    public func stop() { stopSignal.raise() }

    private func serveConnection(_ socket: Int32, id: Int) {
        var logger = logger
        logger[metadataKey: "connection"] = "\(id)"
        let reader = MessageReader(socket: socket, stop: stopSignal)
        defer { reader.tls?.close() }
        var transmitting = false
        do {
            reader.deadline = monotonicMicroseconds() + options.handshakeTimeout.microseconds
            guard let structured = try negotiate(reader: reader, id: id, logger: logger) else { return }
            reader.deadline = nil
            transmitting = true
            let loop = TransmissionLoop(
                reader: reader, source: source, structuredReplies: structured,
                configuration: .init(workers: options.workersPerConnection), logger: logger)
            let end = try loop.run()
            logger.debug("connection ended", metadata: ["end": "\(end)"])
        } catch {
            // A client leaving early (EPIPE, ECONNRESET) is ordinary, and so is a handshake that
            // never finishes (timed out, dropped for a newcomer): a flood of those must not
            // flood the log. A transmitting connection's failure is worth a line.
            let vanished = error.errno == .brokenPipe || error.errno == .connectionReset
            logger.log(
                level: vanished || !transmitting ? .debug : .info, "connection closed", metadata: ["reason": "\(error)"]
            )
        }
    }

    /// Runs the handshake; returns whether structured replies were negotiated, or nil when the
    /// connection ends without entering transmission.
    private func negotiate(reader: MessageReader, id: Int, logger: Logger) throws(SystemError) -> Bool? {
        var negotiator = HandshakeNegotiator(export: export, tls: options.tls == nil ? .off : options.tlsPolicy)
        var writer = ReplyWriter(socket: reader.socket)
        try writer.send(negotiator.greeting)
        guard let flagBytes = try reader.readBytes(4, atBoundary: true, what: "NBD client flags") else { return nil }
        registry.progressed(id)
        do {
            try negotiator.receiveClientFlags(flagBytes.reduce(0) { $0 << 8 | UInt32($1) })
        } catch {
            throw SystemError("NBD handshake", detail: "\(error)")
        }
        while true {
            guard let headerBytes = try reader.readBytes(OptionRequestHeader.size, atBoundary: true, what: "NBD option")
            else {
                return nil
            }
            let header: OptionRequestHeader
            do { header = try OptionRequestHeader(decoding: headerBytes) } catch {
                throw SystemError("NBD handshake", detail: "\(error)")
            }
            guard header.length <= NBDLimits.maximumOptionLength else {
                throw SystemError(
                    "NBD handshake",
                    detail:
                        "\(header.option) carries \(header.length) bytes, over the limit of \(NBDLimits.maximumOptionLength)"
                )
            }
            let data =
                header.length == 0
                ? [] : (try reader.readBytes(Int(header.length), atBoundary: false, what: "NBD option data") ?? [])
            registry.progressed(id)
            let step = negotiator.handle(option: header.option, data: data)
            logger.debug("NBD option", metadata: ["option": "\(header.option)", "outcome": "\(step.outcome)"])
            // The transmission slot is taken before the client hears it may transmit: once it
            // has, a newcomer must find the slot taken.
            if step.outcome == .transmit && !registry.enterTransmission(id) {
                logger.info("connection closed: every transmission slot was taken during its handshake")
                return nil
            }
            if !step.reply.isEmpty { try writer.send(step.reply) }
            switch step.outcome {
            case .awaitOption: continue
            case .close: return nil
            case .transmit: return negotiator.structuredReplies
            case .startTLS:
                guard let tls = options.tls, let deadline = reader.deadline else { return nil }
                // The client waits for our TLS handshake: bytes after STARTTLS are an attack
                // (injected before the encryption starts), never to be read as options.
                guard !reader.hasBufferedBytes else {
                    throw SystemError(
                        "NBD handshake", detail: "client sent data after STARTTLS before the TLS handshake")
                }
                let session = try tls.accept(reader.socket, deadline: deadline, sendTimeout: options.sendTimeout)
                reader.tls = session
                writer = ReplyWriter(socket: reader.socket, tls: session)
                negotiator.tlsEstablished()
                logger.debug("TLS established")
            }
        }
    }
}

extension Duration {
    /// Whole microseconds, at least 0.
    var microseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return 0 }
        return UInt64(seconds) * 1_000_000 + UInt64(max(0, attoseconds) / 1_000_000_000_000)
    }
}
