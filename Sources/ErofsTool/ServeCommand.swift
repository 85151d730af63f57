#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import ImageSources
import Logging
import NBDProtocol
import NBDServer
import SystemCalls

/// `erofs serve IMAGE (--unix PATH | --tcp HOST:PORT)`: serves the image read-only over NBD until
/// SIGTERM or SIGINT, then lets connections finish their in-flight replies (shutting down the
/// sockets of those that do not within two seconds) and removes the socket it placed.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve an image read-only over NBD (fixed newstyle, multi-conn) until SIGTERM/SIGINT.",
        discussion: """
            --tcp :PORT listens on 127.0.0.1 only; name an address (0.0.0.0:PORT, [::]:PORT) to \
            serve other hosts; without required TLS a warning says that they need no credentials. \
            TLS is NBD's STARTTLS (clients: nbds:// URIs). --unix refuses a PATH that exists, \
            unless it is a socket no server answers on, and removes only its own socket.
            """)

    @Argument(help: "The image file (or block device) to serve.")
    var image: String

    @Option(name: .customLong("unix"), help: "Listen on this Unix socket path.")
    var unixPath: String?

    @Option(name: .customLong("tcp"), help: "Listen on HOST:PORT ([ADDR]:PORT for IPv6; :PORT is 127.0.0.1:PORT).")
    var tcpAddress: String?

    @Option(name: .customLong("export-name"), help: "The export's name (the empty name reaches it too).")
    var exportName: String = ""

    @Option(name: .customLong("description"), help: "The export's description, shown to clients (default: none).")
    var exportDescription: String = ""

    @Option(name: .customLong("workers"), help: "Worker threads per connection.")
    var workers: Int = 4

    @Option(
        name: .customLong("max-connections"),
        help:
            "Connections in transmission at once (more are closed at accept); 4 times as many handshakes, the quietest dropped for a newcomer."
    )
    var maxConnections: Int = 64

    @Option(name: .customLong("handshake-timeout"), help: "Seconds a client has to finish the NBD handshake.")
    var handshakeTimeout: Double = 10

    @Option(
        name: .customLong("send-timeout"),
        help: "Seconds a reply may wait for the client to read before the connection is dropped (0: forever).")
    var sendTimeout: Double = 30

    @Option(
        name: .customLong("tls"),
        help:
            "off, on (clients may use TLS) or require (default with credentials: every option but STARTTLS is refused before TLS)."
    )
    var tlsPolicy: TLSPolicy?

    @Option(name: .customLong("tls-certificate"), help: "PEM certificate chain for TLS (with --tls-key).")
    var tlsCertificate: String?

    @Option(name: .customLong("tls-key"), help: "PEM private key of --tls-certificate.")
    var tlsKey: String?

    @Option(name: .customLong("tls-psk"), help: "Pre-shared keys for TLS, IDENTITY:HEXKEY lines (psktool's format).")
    var tlsPSK: String?

    @Flag(name: .customLong("verbose"), help: "Log every connection and refused request.")
    var verbose = false

    func validate() throws {
        guard (unixPath == nil) != (tcpAddress == nil) else {
            throw ValidationError("give exactly one of --unix PATH and --tcp HOST:PORT")
        }
        guard (1...256).contains(workers) else { throw ValidationError("--workers must be between 1 and 256") }
        guard (1...65536).contains(maxConnections) else {
            throw ValidationError("--max-connections must be between 1 and 65536")
        }
        guard handshakeTimeout > 0 && handshakeTimeout <= 86400 else {
            throw ValidationError("--handshake-timeout must be above 0 and at most 86400 seconds")
        }
        guard sendTimeout >= 0 && sendTimeout <= 86400 else {
            throw ValidationError("--send-timeout must be between 0 and 86400 seconds")
        }
        guard (tlsCertificate == nil) == (tlsKey == nil) else {
            throw ValidationError("give --tls-certificate and --tls-key together")
        }
        let credentials = tlsCertificate != nil || tlsPSK != nil
        switch tlsPolicy {
        case .off where credentials: throw ValidationError("--tls=off with TLS credentials: drop them or the option")
        case .on, .require:
            guard credentials else {
                throw ValidationError("--tls=\(tlsPolicy!) needs --tls-certificate and --tls-key, or --tls-psk")
            }
        default: break
        }
    }

    /// The policy in force: `require` whenever credentials are given and --tls says nothing.
    private var effectiveTLSPolicy: TLSPolicy {
        tlsPolicy ?? (tlsCertificate != nil || tlsPSK != nil ? .require : .off)
    }

    func run() throws {
        // Block the stop signals before any thread exists, so every thread inherits the mask
        // and sigwait below is the one place they arrive.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGTERM)
        sigaddset(&stopSignals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)

        var logger = Logger(label: "erofs.serve")
        logger.logLevel = verbose ? .debug : .info
        let address: ListenAddress = if let unixPath { .unix(path: unixPath) } else { try .parseTCP(tcpAddress ?? "") }
        let source = try FileSource(path: image)
        let tls =
            effectiveTLSPolicy == .off
            ? nil : try TLSContext(certificateFile: tlsCertificate, keyFile: tlsKey, pskFile: tlsPSK)
        if tls != nil { for exposed in TLSContext.exposedSecrets([tlsKey, tlsPSK]) { logger.warning("\(exposed)") } }
        let server = try NetworkServer(
            source: source, address: address,
            options: .init(
                exportName: exportName, exportDescription: exportDescription, workersPerConnection: workers,
                maxConnections: maxConnections, handshakeTimeout: .seconds(handshakeTimeout),
                sendTimeout: .seconds(sendTimeout),
                tls: tls, tlsPolicy: effectiveTLSPolicy),
            logger: logger)
        logger.info(
            "serving",
            metadata: [
                "image": "\(image)", "size": "\(source.size)", "address": "\(server.address)",
                "max-connections": "\(server.maxConnections)",
                "tls": "\(effectiveTLSPolicy)",
            ])
        if !server.isLocalOnly && effectiveTLSPolicy != .require {
            let what = effectiveTLSPolicy == .off ? "without TLS" : "with TLS optional"
            logger.warning("serving \(server.address) \(what): any host that reaches it can read the image")
        }

        let outcome = ServeOutcome()
        let serving = try JoinableThread {
            do throws(SystemError) { try server.serve() } catch { outcome.set(error) }
            // Wake the main thread if serving ended on its own (a listener failure).
            kill(getpid(), SIGTERM)
        }
        var received: Int32 = 0
        sigwait(&stopSignals, &received)
        logger.info("stopping", metadata: ["signal": "\(received)"])
        server.stop()
        serving.join()
        if let error = outcome.error { throw error }
    }
}

/// The serving thread's error, handed to the main thread.
private final class ServeOutcome: @unchecked Sendable {
    private var stored: SystemError?
    private var lock = pthread_mutex_t()
    init() { pthread_mutex_init(&lock, nil) }
    func set(_ error: SystemError) {
        pthread_mutex_lock(&lock)
        stored = error
        pthread_mutex_unlock(&lock)
    }
    var error: SystemError? {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        return stored
    }
}

extension TLSPolicy: ExpressibleByArgument {}
