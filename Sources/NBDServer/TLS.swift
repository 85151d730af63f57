#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import SystemCalls
import SystemPackage

/// The server's TLS credentials (OpenSSL): an X.509 certificate chain and its key, pre-shared
/// keys (the `identity:hexkey` lines of nbdkit's and GnuTLS psktool's files), or both.
/// TLS 1.2 and later, no session resumption.
public final class TLSContext: @unchecked Sendable {
    fileprivate let context: OpaquePointer
    /// Identity to key, from the PSK file.
    fileprivate let keys: [String: [UInt8]]

    public init(certificateFile: String?, keyFile: String?, pskFile: String?) throws(SystemError) {
        keys = try pskFile.map { path throws(SystemError) in try Self.readKeys(path) } ?? [:]
        guard let context = SSL_CTX_new(TLS_server_method()) else { throw openSSLError("SSL_CTX_new") }
        self.context = context
        _ = cshim_ssl_ctx_set_min_tls12(context)
        _ = cshim_ssl_ctx_set_write_modes(context)
        _ = cshim_ssl_ctx_disable_session_cache(context)
        _ = SSL_CTX_set_num_tickets(context, 0)
        if let certificateFile, let keyFile {
            guard SSL_CTX_use_certificate_chain_file(context, certificateFile) == 1 else {
                throw openSSLError("load the TLS certificate", path: certificateFile)
            }
            guard SSL_CTX_use_PrivateKey_file(context, keyFile, SSL_FILETYPE_PEM) == 1 else {
                throw openSSLError("load the TLS key", path: keyFile)
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw openSSLError("check the TLS key against the certificate", path: keyFile)
            }
        }
        if !keys.isEmpty {
            // TLS 1.2 needs the PSK suites named; TLS 1.3 uses the callback with its SHA-256 suites.
            _ = SSL_CTX_set_cipher_list(context, "DEFAULT:PSK")
            _ = cshim_ssl_ctx_set_app_data(context, Unmanaged.passUnretained(self).toOpaque())
            SSL_CTX_set_psk_server_callback(context, pskServerCallback)
        }
    }

    deinit { SSL_CTX_free(context) }

    /// The secret files among `paths` that other users may read or write (the reason each),
    /// for a warning: a key anyone on the machine can read authenticates anyone.
    public static func exposedSecrets(_ paths: [String?]) -> [String] {
        paths.compactMap { path in
            var status = stat()
            guard let path, stat(path, &status) == 0, status.st_mode & 0o077 != 0 else { return nil }
            return
                "\(path): mode \(String(status.st_mode & 0o777, radix: 8)): other users can read the secret (chmod 600 it)"
        }
    }

    /// The key of `identity`, if the PSK file has it.
    fileprivate func key(for identity: String) -> [UInt8]? { keys[identity] }

    /// Reads `identity:hexkey` lines; a malformed line is an error naming it.
    private static func readKeys(_ path: String) throws(SystemError) -> [String: [UInt8]] {
        let file = try FileDescriptor.open(path: path, .readOnly)
        defer { try? file.close() }
        let bytes = try file.read(exactly: (1 << 20) + 1, at: 0, path: path)
        guard bytes.count <= 1 << 20 else { throw SystemError("read", path: path, detail: "a PSK file over 1 MiB") }
        var keys: [String: [UInt8]] = [:]
        for (index, line) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated()
        where !line.isEmpty {
            let malformed = SystemError("read", path: path, detail: "line \(index + 1) is not IDENTITY:HEXKEY")
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex,
                let identity = String(validating: line[..<colon], as: UTF8.self)
            else { throw malformed }
            let hex = Array(line[(colon + 1)...])
            guard !hex.isEmpty, hex.count % 2 == 0, hex.count <= 2 * 256 else { throw malformed }
            var key: [UInt8] = []
            for pair in stride(from: 0, to: hex.count, by: 2) {
                guard let high = hexValue(hex[pair]), let low = hexValue(hex[pair + 1]) else { throw malformed }
                key.append(high << 4 | low)
            }
            keys[identity] = key
        }
        guard !keys.isEmpty else { throw SystemError("read", path: path, detail: "no keys in the PSK file") }
        return keys
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// Runs the server side of the TLS handshake on `socket` (made non-blocking for good) until
    /// `deadline` (CLOCK_MONOTONIC microseconds).
    func accept(_ socket: Int32, deadline: UInt64, sendTimeout: Duration) throws(SystemError) -> TLSSession {
        _ = fcntl(socket, F_SETFL, fcntl(socket, F_GETFL) | O_NONBLOCK)
        guard let ssl = SSL_new(context) else { throw openSSLError("SSL_new") }
        guard SSL_set_fd(ssl, socket) == 1 else {
            SSL_free(ssl)
            throw openSSLError("SSL_set_fd")
        }
        while true {
            ERR_clear_error()
            let result = SSL_accept(ssl)
            if result == 1 { break }
            let code = SSL_get_error(ssl, result)
            let failure: SystemError? =
                switch code {
                case SSL_ERROR_WANT_READ: wait(socket, for: Int16(POLLIN), until: deadline)
                case SSL_ERROR_WANT_WRITE: wait(socket, for: Int16(POLLOUT), until: deadline)
                case SSL_ERROR_SYSCALL where errno != 0: SystemError("TLS handshake", errno: Errno(rawValue: errno))
                default: openSSLError("TLS handshake")
                }
            if let failure {
                SSL_free(ssl)
                throw failure
            }
        }
        return TLSSession(ssl: ssl, socket: socket, sendTimeout: sendTimeout.microseconds)
    }
}

/// The PSK lookup OpenSSL calls during a handshake (TLS 1.2, and TLS 1.3 through OpenSSL's
/// compatibility path): the key of the client's identity, or 0 to refuse it.
private let pskServerCallback:
    @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<UInt8>?, UInt32) -> UInt32 = {
        ssl, identity, destination, capacity in
        guard let ssl, let identity, let destination, let context = SSL_get_SSL_CTX(ssl),
            let owner = cshim_ssl_ctx_get_app_data(context)
        else { return 0 }
        let tls = Unmanaged<TLSContext>.fromOpaque(owner).takeUnretainedValue()
        guard let key = tls.key(for: String(cString: identity)), key.count <= Int(capacity) else { return 0 }
        key.withUnsafeBufferPointer { destination.update(from: $0.baseAddress!, count: key.count) }
        return UInt32(key.count)
    }

/// Polls `socket` for `events` until `deadline`; nil when ready, else why not.
private func wait(_ socket: Int32, for events: Int16, until deadline: UInt64) -> SystemError? {
    while true {
        let now = monotonicMicroseconds()
        guard now < deadline else {
            return SystemError("TLS handshake", errno: .timedOut, detail: "the handshake time limit passed")
        }
        var descriptor = pollfd(fd: socket, events: events, revents: 0)
        let ready = poll(&descriptor, 1, Int32(clamping: (deadline - now + 999) / 1000))
        if ready > 0 { return nil }
        if ready < 0 && errno != EINTR { return .lastErrno("poll", path: "TLS handshake") }
    }
}

/// OpenSSL's queued errors for this thread, as one error.
private func openSSLError(_ operation: String, path: String? = nil) -> SystemError {
    var reasons: [String] = []
    while case let code = ERR_get_error(), code != 0 {
        var text = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &text, text.count)
        reasons.append(String(cString: text))
    }
    return SystemError(
        operation, path: path, detail: reasons.isEmpty ? "OpenSSL failed" : reasons.joined(separator: "; "))
}

/// One connection's TLS state over its non-blocking socket. OpenSSL objects are not safe for
/// concurrent calls, so the reading thread and the writing workers take turns under a lock;
/// neither holds it while waiting for the socket.
final class TLSSession: @unchecked Sendable {
    private let ssl: OpaquePointer
    let socket: Int32
    private let lock = ConditionLock()
    /// How long a write may wait for the socket (0: forever).
    private let sendTimeout: UInt64
    /// The last read needs the socket writable (TLS sends while reading, rarely).
    private(set) var readWantsWrite = false
    private var closed = false

    fileprivate init(ssl: OpaquePointer, socket: Int32, sendTimeout: UInt64) {
        self.ssl = ssl
        self.socket = socket
        self.sendTimeout = sendTimeout
    }

    deinit { SSL_free(ssl) }

    /// Whether OpenSSL holds received bytes that the socket no longer shows as readable.
    var hasPendingBytes: Bool { lock.withLock { SSL_has_pending(ssl) == 1 } }

    /// As recv(2) with MSG_DONTWAIT: bytes read, 0 at the end of the stream, or -1 with errno
    /// (EAGAIN: nothing yet; EPROTO: the peer broke TLS).
    func receive(into destination: UnsafeMutableRawPointer, count: Int) -> Int {
        lock.withLock {
            ERR_clear_error()
            let got = SSL_read(ssl, destination, Int32(clamping: count))
            readWantsWrite = false
            if got > 0 { return Int(got) }
            switch SSL_get_error(ssl, got) {
            case SSL_ERROR_WANT_READ:
                errno = EAGAIN
            case SSL_ERROR_WANT_WRITE:
                readWantsWrite = true
                errno = EAGAIN
            case SSL_ERROR_ZERO_RETURN:
                return 0
            case SSL_ERROR_SYSCALL:
                if errno == 0 { return 0 }  // closed without close_notify: the end, as for TCP
            default:
                errno = EPROTO
            }
            return -1
        }
    }

    /// Writes what `vectors` hold, in order. TLS has no gathering write, and a reply header
    /// alone would cost a record of its own: small pieces are gathered into full records in a
    /// staging buffer, and the bulk of a large piece (READ data) goes to OpenSSL in place.
    func send(_ vectors: UnsafeBufferPointer<iovec>) -> SystemError? {
        let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.recordSize, alignment: 16)
        defer { staging.deallocate() }
        var staged = 0
        for vector in vectors where vector.iov_len > 0 {
            guard let base = vector.iov_base else { continue }
            // Top the staging buffer up from this piece first, so records stay full.
            let taken = min(vector.iov_len, Self.recordSize - staged)
            (staging.baseAddress! + staged).copyMemory(from: base, byteCount: taken)
            staged += taken
            guard taken < vector.iov_len || staged == Self.recordSize else { continue }
            if let error = send(UnsafeRawBufferPointer(rebasing: staging[..<staged])) { return error }
            staged = 0
            let rest = vector.iov_len - taken
            if rest >= Self.recordSize {
                if let error = send(UnsafeRawBufferPointer(start: base + taken, count: rest)) { return error }
            } else if rest > 0 {
                staging.baseAddress!.copyMemory(from: base + taken, byteCount: rest)
                staged = rest
            }
        }
        return staged == 0 ? nil : send(UnsafeRawBufferPointer(rebasing: staging[..<staged]))
    }

    /// The largest TLS record's payload.
    static let recordSize = 16 << 10

    /// Writes all of `bytes`, waiting for the socket as needed; a wait longer than the send
    /// timeout fails as a plain socket's SO_SNDTIMEO would.
    func send(_ bytes: UnsafeRawBufferPointer) -> SystemError? {
        var offset = 0
        while offset < bytes.count {
            let (written, code) = lock.withLock { () -> (Int32, Int32) in
                ERR_clear_error()
                let written = SSL_write(ssl, bytes.baseAddress! + offset, Int32(clamping: bytes.count - offset))
                return (written, written > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, written))
            }
            if written > 0 {
                offset += Int(written)
                continue
            }
            let events: Int16
            switch code {
            case SSL_ERROR_WANT_WRITE: events = Int16(POLLOUT)
            case SSL_ERROR_WANT_READ: events = Int16(POLLIN)
            case SSL_ERROR_SYSCALL where errno != 0: return SystemError("send reply", errno: Errno(rawValue: errno))
            default: return openSSLError("send reply")
            }
            var descriptor = pollfd(fd: socket, events: events, revents: 0)
            let ready = poll(&descriptor, 1, sendTimeout == 0 ? -1 : Int32(clamping: sendTimeout / 1000))
            if ready == 0 { return ReplyWriter.sendTimedOut("send reply") }
            if ready < 0 && errno != EINTR { return .lastErrno("poll", path: "send reply") }
        }
        return nil
    }

    /// Sends close_notify if the socket takes it at once; the caller closes the socket.
    func close() {
        lock.withLock {
            guard !closed else { return }
            closed = true
            ERR_clear_error()
            _ = SSL_shutdown(ssl)
        }
    }
}
