import CCurl
import Synchronization
import SystemCalls
#if canImport(Glibc)
import Glibc
#endif

/// How requests go out: TLS trust, timeouts, retries (`-o http.*`). No secret in here.
public struct HTTPSettings: Sendable, Codable, Equatable {
    /// CA bundle to trust instead of the system store (`http.cafile=PATH`).
    public var caFile: String?
    /// Skip certificate and host name checks (`http.insecure_tls`): warned about when used.
    public var insecureTLS = false
    /// Seconds to establish a connection (TCP and TLS).
    public var connectTimeout: Double = 10
    /// Seconds without a received byte before an attempt is abandoned (`http.timeout=S`).
    public var stallTimeout: Double = 30
    /// Attempts after the first on resets, short bodies, stalls, 5xx and 429 (`http.retries=N`).
    public var retries = 4
    /// First backoff before a retry, doubled each time (capped at 2 s).
    public var backoff: Double = 0.1
    /// Idle connections kept for reuse.
    public var maxIdleConnections = 16

    public init() {}
}

/// A request as the transport sends it. `headers` may carry an Authorization header: the
/// transport never prints a request.
struct HTTPRequest {
    var url: String
    var head = false
    var headers: [(String, String)] = []
    var followRedirects = false
    /// A POST body (`application/x-www-form-urlencoded`); nil = GET or HEAD.
    var body: [UInt8]?
}

/// What came back before the body: the status and the headers of the final response
/// (names lowercased).
struct HTTPResponseHead {
    var status: Int
    var headers: [String: String]
}

/// The outcome of one attempt, before any policy: a curl failure, or a response.
enum HTTPAttemptError: Error {
    /// curl failed (connect, TLS, reset, stall, short body): the code and curl's message.
    case transfer(CURLcode, String)
    /// The body callback refused the response after seeing its head.
    case refused
}

/// An HTTP/1.1 client on libcurl easy handles: synchronous, usable from many threads at once.
/// Each call borrows an idle handle (its keep-alive connection comes along) and returns it,
/// so N threads reading at once use N connections and never wait for each other.
final class HTTPTransport: Sendable {
    let settings: HTTPSettings
    /// Idle easy handles, each with its live connection. A handle is used by one thread at a
    /// time: the mutex guards the list only.
    private let idle = Mutex<[HandleBox]>([])

    init(settings: HTTPSettings) {
        self.settings = settings
    }

    deinit {
        for box in idle.withLock({ $0 }) { ccurl_easy_cleanup(box.handle) }
    }

    /// Sends `request`. `onHead` sees the status and headers before any body byte and
    /// returns false to abort the transfer (a 200 to a range request is never downloaded);
    /// `onBody` gets the body in pieces and returns false to abort.
    func perform(
        _ request: HTTPRequest,
        onHead: (HTTPResponseHead) -> Bool,
        onBody: (UnsafeRawBufferPointer) -> Bool
    ) -> Result<HTTPResponseHead, HTTPAttemptError> {
        if let failure = ccurl_load() { return .failure(.transfer(CURLE_FAILED_INIT, String(cString: failure))) }
        let box = idle.withLock { $0.popLast() } ?? HandleBox(settings: settings)
        defer {
            let kept = idle.withLock { list -> Bool in
                guard list.count < settings.maxIdleConnections else { return false }
                list.append(box)
                return true
            }
            if !kept { ccurl_easy_cleanup(box.handle) }
        }
        return withoutActuallyEscaping(onHead) { onHead in
            withoutActuallyEscaping(onBody) { onBody in
                let context = TransferContext(
                    handle: box.handle, stallTimeout: settings.stallTimeout, onHead: onHead, onBody: onBody)
                return box.run(request, context)
            }
        }
    }
}

/// One easy handle and its error buffer. Not shared: a thread owns it while it is out of the
/// pool.
private final class HandleBox: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    var errorBuffer = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)

    init(settings: HTTPSettings) {
        handle = ccurl_easy_init()
        // Threads: never use signals for timeouts (the default uses SIGALRM around DNS).
        ccurl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        ccurl_setopt_pointer(handle, CURLOPT_PROTOCOLS_STR, "http,https")
        ccurl_setopt_pointer(handle, CURLOPT_REDIR_PROTOCOLS_STR, "http,https")
        ccurl_setopt_long(handle, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1))
        ccurl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, Int(settings.connectTimeout * 1000))
        // A stalled body: curl's own low-speed check averages over several seconds, so a burst
        // then silence is caught late; the progress callback (about once a second while idle)
        // measures the time since the last byte instead.
        ccurl_setopt_long(handle, CURLOPT_NOPROGRESS, 0)
        ccurl_setopt_xferinfo(handle) { context, _, downloaded, _, _ in
            let transfer = Unmanaged<TransferContext>.fromOpaque(context!).takeUnretainedValue()
            return transfer.abandons(downloaded: Int64(downloaded)) ? 1 : 0
        }
        // curl's own receive buffer is 16 KiB: a recv(2) and a body callback per 16 KiB. The
        // curl tool asks for 100 KiB; a range of blocks is larger still.
        ccurl_setopt_long(handle, CURLOPT_BUFFERSIZE, 256 << 10)
        ccurl_setopt_long(handle, CURLOPT_TCP_KEEPALIVE, 1)
        ccurl_setopt_long(handle, CURLOPT_TCP_NODELAY, 1)
        ccurl_setopt_long(handle, CURLOPT_MAXREDIRS, 5)
        ccurl_setopt_pointer(handle, CURLOPT_USERAGENT, "erofs-mount")
        if let caFile = settings.caFile {
            ccurl_setopt_pointer(handle, CURLOPT_CAINFO, caFile)
        }
        if settings.insecureTLS {
            ccurl_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 0)
            ccurl_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 0)
        }
        ccurl_setopt_callback(handle, CURLOPT_WRITEFUNCTION) { data, size, count, context in
            let transfer = Unmanaged<TransferContext>.fromOpaque(context!).takeUnretainedValue()
            let bytes = UnsafeRawBufferPointer(start: data, count: size * count)
            return transfer.body(bytes) ? size * count : 0
        }
        ccurl_setopt_callback(handle, CURLOPT_HEADERFUNCTION) { data, size, count, context in
            let transfer = Unmanaged<TransferContext>.fromOpaque(context!).takeUnretainedValue()
            transfer.headerLine(UnsafeRawBufferPointer(start: data, count: size * count))
            return size * count
        }
    }

    func run(_ request: HTTPRequest, _ context: TransferContext) -> Result<HTTPResponseHead, HTTPAttemptError> {
        var list: UnsafeMutablePointer<curl_slist>?
        for (name, value) in request.headers { list = ccurl_slist_append(list, "\(name): \(value)") }
        // curl adds "Accept: */*"; an empty "Expect:" keeps it from waiting for 100-continue.
        list = ccurl_slist_append(list, "Expect:")
        defer { ccurl_slist_free_all(list) }
        ccurl_setopt_pointer(handle, CURLOPT_URL, request.url)
        ccurl_setopt_pointer(handle, CURLOPT_HTTPHEADER, list)
        ccurl_setopt_long(handle, CURLOPT_NOBODY, request.head ? 1 : 0)
        if !request.head { ccurl_setopt_long(handle, CURLOPT_HTTPGET, 1) }
        if let body = request.body {
            // Copied by curl; HTTPGET above puts the next request of this handle back to GET.
            ccurl_setopt_long(handle, CURLOPT_POSTFIELDSIZE, body.count)
            body.withUnsafeBytes { _ = ccurl_setopt_pointer(handle, CURLOPT_COPYPOSTFIELDS, $0.baseAddress) }
        }
        ccurl_setopt_long(handle, CURLOPT_FOLLOWLOCATION, request.followRedirects ? 1 : 0)
        let unmanaged = Unmanaged.passRetained(context)
        defer { unmanaged.release() }
        ccurl_setopt_pointer(handle, CURLOPT_WRITEDATA, unmanaged.toOpaque())
        ccurl_setopt_pointer(handle, CURLOPT_HEADERDATA, unmanaged.toOpaque())
        ccurl_setopt_pointer(handle, CURLOPT_XFERINFODATA, unmanaged.toOpaque())
        errorBuffer[0] = 0
        let code = errorBuffer.withUnsafeMutableBufferPointer { buffer -> CURLcode in
            ccurl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, buffer.baseAddress)
            let code = ccurl_easy_perform(handle)
            ccurl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, nil)
            return code
        }
        if context.refused { return .failure(.refused) }
        if code == CURLE_ABORTED_BY_CALLBACK, let abandoned = context.abandoned {
            return .failure(.transfer(abandoned.code, abandoned.reason))
        }
        guard code == CURLE_OK else {
            let detail = errorBuffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            return .failure(.transfer(code, detail.isEmpty ? String(cString: ccurl_easy_strerror(code)) : detail))
        }
        // A response without a body (HEAD, 412, 416 with no content) never reached the body
        // callback: give the head to the caller now.
        if !context.headSeen {
            let head = context.makeHead()
            context.headSeen = true
            if !context.onHead(head) { return .failure(.refused) }
        }
        return .success(context.makeHead())
    }
}

/// The per-transfer state the C callbacks reach through their context pointer.
private final class TransferContext {
    let handle: UnsafeMutableRawPointer
    let stallTimeout: Double
    let onHead: (HTTPResponseHead) -> Bool
    let onBody: (UnsafeRawBufferPointer) -> Bool
    var headers: [String: String] = [:]
    var headSeen = false
    var refused = false
    /// When the last byte (header or body) arrived, or the transfer started.
    var lastByte = monotonicSeconds()
    /// Bytes (headers and body) since `windowStart`: a trickle keeps `lastByte` fresh.
    var windowStart = monotonicSeconds()
    var windowBytes = 0
    /// Body bytes handed to `onBody`: what curl downloads beyond them it discards (the body
    /// of a redirect it follows).
    var delivered: Int64 = 0
    /// Why the progress callback stopped the transfer, and the code it is reported with.
    var abandoned: (code: CURLcode, reason: String)?
    /// Less than this in a whole `stallTimeout` is a trickle, not a transfer.
    static let minimumBytesPerWindow = 1024
    /// A discarded body past this is a server wasting our time.
    static let discardLimit: Int64 = 1 << 20

    init(
        handle: UnsafeMutableRawPointer, stallTimeout: Double, onHead: @escaping (HTTPResponseHead) -> Bool,
        onBody: @escaping (UnsafeRawBufferPointer) -> Bool
    ) {
        self.handle = handle
        self.stallTimeout = stallTimeout
        self.onHead = onHead
        self.onBody = onBody
    }

    /// Whether to stop the transfer (and why, in `abandoned`): no byte for `stallTimeout`; less
    /// than 1 KiB in a whole `stallTimeout` (a server sending a byte a second would otherwise
    /// hold a read for days); or over 1 MiB of a body curl discards (a redirect's, endless).
    func abandons(downloaded: Int64) -> Bool {
        let now = monotonicSeconds()
        if now - lastByte > stallTimeout {
            abandoned = (CURLE_OPERATION_TIMEDOUT, "no data for \(stallTimeout) s")
        } else if now - windowStart >= stallTimeout {
            if windowBytes < Self.minimumBytesPerWindow {
                abandoned = (CURLE_OPERATION_TIMEDOUT, "\(windowBytes) bytes in \(stallTimeout) s: too slow to use")
            }
            windowStart = now
            windowBytes = 0
        }
        if abandoned == nil && downloaded - delivered > Self.discardLimit {
            abandoned = (CURLE_TOO_MANY_REDIRECTS, "a redirect's body over \(Self.discardLimit >> 20) MiB")
        }
        return abandoned != nil
    }

    func makeHead() -> HTTPResponseHead {
        HTTPResponseHead(status: ccurl_response_code(handle), headers: headers)
    }

    /// Header lines of every response (redirects, 100 Continue) come here; a status line
    /// starts a new response, so only the final response's headers remain.
    func headerLine(_ bytes: UnsafeRawBufferPointer) {
        lastByte = monotonicSeconds()
        windowBytes += bytes.count
        let line = String(decoding: bytes, as: UTF8.self)
        if line.hasPrefix("HTTP/") {
            headers = [:]
            return
        }
        guard let (name, value) = HTTPHeaderField.parse(line) else { return }
        headers[name] = value
    }

    func body(_ bytes: UnsafeRawBufferPointer) -> Bool {
        lastByte = monotonicSeconds()
        windowBytes += bytes.count
        delivered += Int64(bytes.count)
        if !headSeen {
            headSeen = true
            if !onHead(makeHead()) {
                refused = true
                return false
            }
        }
        if !onBody(bytes) {
            refused = true
            return false
        }
        return true
    }
}

/// One `name: value` header line of a response, as RFC 9110 5.5 allows it: a field whose value
/// holds a control character (CR, LF or NUL inside the line, or any other but HTAB) is dropped,
/// as if the server had not sent it, so that nothing a server sends goes on into a request
/// header (an ETag into If-Match), a state file or a log line with such bytes.
package enum HTTPHeaderField {
    /// The lower-cased name and the value without surrounding spaces; nil for a line that is
    /// not a usable field.
    package static func parse(_ line: String) -> (name: String, value: String)? {
        guard let colon = line.firstIndex(of: ":") else { return nil }
        let name = line[..<colon].lowercased()
        let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t\r\n")
        guard !name.isEmpty,
            name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f }),
            value.unicodeScalars.allSatisfy({ $0 == "\t" || !$0.isControlCharacter })
        else { return nil }
        return (name, value)
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var slice = Substring(self)
        while let first = slice.first, set.contains(first) { slice.removeFirst() }
        while let last = slice.last, set.contains(last) { slice.removeLast() }
        return String(slice)
    }
}
