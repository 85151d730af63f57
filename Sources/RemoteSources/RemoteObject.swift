import CCurl
#if canImport(Glibc)
import Glibc
#endif

/// Adds authentication to a request just before it is sent (S3 SigV4/SigV2); nil = anonymous.
protocol RequestSigner: Sendable {
    /// `headers` as they will be sent, without Authorization; returns them signed.
    func sign(method: String, headers: [(String, String)], now: time_t) -> [(String, String)]
    /// Called with a 401 response: true when new credentials were obtained (a registry token
    /// renewed) and the request should be sent again.
    func renew(after response: HTTPResponseHead) -> Bool
}

extension RequestSigner {
    func renew(after response: HTTPResponseHead) -> Bool { false }
}

/// Where an object is and how requests for it are made.
struct RemoteEndpoint: Sendable {
    var url: String
    /// The object for messages: no credentials, no query signature.
    var displayName: String
    var followRedirects = false
    var signer: (any RequestSigner)?
    /// The digest of a content-addressed object (an OCI blob): it names the bytes, so reads are
    /// not pinned by ETag (a redirect to blob storage may answer with another one each time) and
    /// the cache is keyed by it.
    var contentDigest: String?

    func request(head: Bool = false, headers: [(String, String)]) -> HTTPRequest {
        let signed = signer?.sign(method: head ? "HEAD" : "GET", headers: headers, now: time(nil)) ?? headers
        return HTTPRequest(url: url, head: head, headers: signed, followRedirects: followRedirects)
    }
}

/// One object on a server, pinned to the version seen when it was opened: every later read
/// carries `If-Match` with that ETag (or `If-Unmodified-Since` with its Last-Modified), so a
/// replaced object fails with `.changed` instead of mixing two versions' bytes.
final class RemoteObject: Sendable {
    let endpoint: RemoteEndpoint
    let transport: HTTPTransport
    let size: UInt64
    let etag: String?
    let lastModified: String?

    var displayName: String { endpoint.displayName }
    var version: ObjectVersion { ObjectVersion(etag: etag, lastModified: lastModified, size: size) }

    /// What names this version of the object in the block cache; nil when the server gives
    /// neither an ETag nor a Last-Modified (then nothing is cached on disk: it could be stale).
    var identity: String? {
        if let digest = endpoint.contentDigest { return "\(digest)\n\(size)" }
        guard let version = etag ?? lastModified else { return nil }
        return "\(displayName)\n\(version)\n\(size)"
    }

    private init(endpoint: RemoteEndpoint, transport: HTTPTransport, size: UInt64, etag: String?, lastModified: String?)
    {
        self.endpoint = endpoint
        self.transport = transport
        self.size = size
        self.etag = etag
        self.lastModified = lastModified
    }

    /// The largest object opened: 16 TiB, what an EROFS image of 4 KiB blocks can address
    /// (32-bit block numbers), and ext4's largest file for the cache.
    static let maximumSize: UInt64 = 1 << 44
    /// The most blocks an object is read in: each block costs bits in memory (the cache's
    /// checked and claimed sets, the digest's seen set), 8 MiB a set at this bound.
    static let maximumBlocks: UInt64 = 1 << 26

    /// Opens the object with one ranged GET of its first `probe` bytes (a block), which tells
    /// the size (Content-Range), the version (ETag, Last-Modified) and that the server honours
    /// Range. Returns the object and those first bytes.
    static func open(endpoint: RemoteEndpoint, transport: HTTPTransport, probe: Int) throws(RemoteError) -> (
        RemoteObject, [UInt8]
    ) {
        var bytes = [UInt8](repeating: 0, count: probe)
        let reading = RangeRead(
            endpoint: endpoint, transport: transport, pin: [], expectedTotal: nil, expectedETag: nil)
        let outcome = try bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(RemoteError) in try reading.read(into: [buffer], at: 0, progress: { _ in }) }
        }.get()
        guard outcome.total > 0 else {
            throw RemoteError(.protocolViolation, endpoint.displayName, "the object is empty")
        }
        // The size sizes the block cache's map and the bitmaps kept per block: a hostile total
        // must not.
        guard outcome.total <= maximumSize else {
            throw RemoteError(
                .protocolViolation, endpoint.displayName,
                "the server says the object is \(outcome.total) bytes: more than 16 TiB, the most an image is read from"
            )
        }
        guard outcome.total / UInt64(probe) <= maximumBlocks else {
            throw RemoteError(
                .configuration, endpoint.displayName,
                "the object is \(outcome.total) bytes: more than \(maximumBlocks) blocks of remote.block_size=\(probe) (a larger remote.block_size reads it)"
            )
        }
        bytes.removeSubrange(outcome.filled...)
        let etag = endpoint.contentDigest == nil ? outcome.head.headers["etag"] : nil
        let object = RemoteObject(
            endpoint: endpoint, transport: transport, size: outcome.total, etag: etag,
            lastModified: endpoint.contentDigest == nil ? outcome.head.headers["last-modified"] : nil)
        return (object, bytes)
    }

    /// Reads the bytes at `offset` into `parts`, one after the other (the range must lie inside
    /// the object), calling `progress` with the number of bytes filled so far as they arrive.
    func read(into parts: [UnsafeMutableRawBufferPointer], at offset: UInt64, progress: (Int) -> Void)
        throws(RemoteError)
    {
        precondition(offset + UInt64(parts.reduce(0) { $0 + $1.count }) <= size)
        var pin: [(String, String)] = []
        // If-Match needs a strong ETag (RFC 9110 13.1.1); a weak one pins by date instead.
        if let etag, !etag.hasPrefix("W/") {
            pin.append(("If-Match", etag))
        } else if let lastModified {
            pin.append(("If-Unmodified-Since", lastModified))
        }
        let reading = RangeRead(
            endpoint: endpoint, transport: transport, pin: pin, expectedTotal: size, expectedETag: etag)
        _ = try reading.read(into: parts, at: offset, progress: progress)
    }
}

/// One ranged read with the retry policy: resets, short bodies, stalls, 5xx and 429 are retried
/// with exponential backoff, resuming after the bytes already received (the pin guarantees
/// they belong to the same version); everything else fails at once with one clear line.
package struct RangeRead {
    let endpoint: RemoteEndpoint
    let transport: HTTPTransport
    let pin: [(String, String)]
    /// The size known from the open; nil while opening (any total is accepted and returned).
    let expectedTotal: UInt64?
    let expectedETag: String?

    struct Outcome {
        var total: UInt64
        var filled: Int
        var head: HTTPResponseHead
    }

    /// Reads into `parts` one after the other; the body goes straight from curl's buffer into
    /// them. Opening (no expected total) may fill less than asked: `filled` says how much.
    func read(into parts: [UnsafeMutableRawBufferPointer], at offset: UInt64, progress: (Int) -> Void)
        throws(RemoteError) -> Outcome
    {
        let name = endpoint.displayName
        var wanted = parts.reduce(0) { $0 + $1.count }
        var filled = 0
        // Where the next body byte goes: parts[part], at inPart (advances with `filled`).
        var part = 0
        var inPart = 0
        var attempt = 0
        var renewed = false
        var total = expectedTotal
        while true {
            let start = offset + UInt64(filled)
            let request = endpoint.request(
                headers: [("Range", "bytes=\(start)-\(start + UInt64(wanted - filled) - 1)")] + pin)
            var violation: RemoteError?
            var errorBody: [UInt8] = []
            // An error's body is kept to 64 KiB and the transfer then cut: a server that
            // never ends one must not hold us.
            var errorBodyCut = false
            var status = 0
            let result = transport.perform(
                request,
                onHead: { head in
                    status = head.status
                    guard head.status == 206 else {
                        if head.status == 200 {
                            violation = RemoteError(
                                .protocolViolation, name,
                                "the server answered a range request with the whole object (200, not 206): it does not support Range requests, which reading an image lazily needs",
                                status: 200)
                            return false
                        }
                        return true
                    }
                    switch ContentRange(head.headers["content-range"]) {
                    case .none:
                        violation = RemoteError(
                            .protocolViolation, name,
                            "206 without a valid Content-Range (\(head.headers["content-range"] ?? "none"))",
                            status: 206)
                        return false
                    case .some(let range):
                        if let known = total, range.total != known {
                            violation = RemoteError(
                                .changed, name,
                                "the object's size changed from \(known) to \(range.total) bytes since it was opened",
                                status: 206)
                            return false
                        }
                        if let expectedETag, let etag = head.headers["etag"], etag != expectedETag {
                            violation = RemoteError(
                                .changed, name,
                                "the object changed since it was opened (ETag \(expectedETag), now \(etag))",
                                status: 206)
                            return false
                        }
                        if total == nil {
                            // Opening: the object may be shorter than the probe.
                            total = range.total
                            wanted = Int(min(UInt64(wanted), range.total > offset ? range.total - offset : 0))
                        }
                        let end = start + UInt64(wanted - filled) - 1
                        guard range.first == start, range.last == end else {
                            violation = RemoteError(
                                .protocolViolation, name,
                                "asked for bytes \(start)-\(end), the server sent \(range.first)-\(range.last) (Content-Range)",
                                status: 206)
                            return false
                        }
                        return true
                    }
                },
                onBody: { bytes in
                    guard status == 206 else {
                        errorBody.append(contentsOf: bytes.prefix(max(0, 65536 - errorBody.count)))
                        errorBodyCut = errorBody.count == 65536
                        return !errorBodyCut
                    }
                    guard bytes.count <= wanted - filled else {
                        violation = RemoteError(
                            .protocolViolation, name, "the server sent more bytes than the range it announced",
                            status: 206)
                        return false
                    }
                    var taken = 0
                    while taken < bytes.count {
                        while inPart == parts[part].count {
                            part += 1
                            inPart = 0
                        }
                        let length = min(bytes.count - taken, parts[part].count - inPart)
                        (parts[part].baseAddress! + inPart).copyMemory(
                            from: bytes.baseAddress! + taken, byteCount: length)
                        inPart += length
                        taken += length
                    }
                    filled += bytes.count
                    progress(filled)
                    return true
                })
            if let violation { throw violation }
            let failure: RemoteError
            switch result {
            case .success(let head):
                if head.status == 401 && !renewed, let signer = endpoint.signer, signer.renew(after: head) {
                    // An expired registry token: renewed once per read, then sent again.
                    renewed = true
                    continue
                }
                if head.status == 206 {
                    if filled == wanted { return Outcome(total: total ?? 0, filled: filled, head: head) }
                    failure = RemoteError(.transient, name, "short body: \(filled) of \(wanted) bytes", status: 206)
                } else if head.status == 416 && expectedTotal == nil {
                    // Opening an empty object: no byte 0 to read.
                    if ContentRange.unsatisfiedTotal(head.headers["content-range"]) == 0 {
                        return Outcome(total: 0, filled: 0, head: head)
                    }
                    failure = RemoteError(
                        .protocolViolation, name, "416 Range Not Satisfiable for the first byte", status: 416)
                } else {
                    failure = Self.statusError(head.status, errorBody, name)
                }
            case .failure(.refused) where errorBodyCut:
                failure = Self.statusError(status, errorBody, name)
            case .failure(.refused):
                failure = RemoteError(.protocolViolation, name, "transfer aborted")
            case .failure(.transfer(let code, let message)):
                failure = Self.transferError(code, message, name)
            }
            guard failure.kind == .transient || failure.kind == .timeout, attempt < transport.settings.retries else {
                throw failure
            }
            let delay = min(2, transport.settings.backoff * Double(1 << attempt))
            attempt += 1
            usleep(UInt32(delay * 1_000_000))
        }
    }

    /// One line for a status that is not 206: S3's XML `<Code>`/`<Message>` when there is one
    /// (never anything else from the body: it can echo the request).
    package static func statusError(_ status: Int, _ body: [UInt8], _ name: String) -> RemoteError {
        let text = String(decoding: body, as: UTF8.self)
        var detail = ""
        if let code = xmlElement("Code", in: text) {
            detail = ": \(code)"
            if let message = xmlElement("Message", in: text) { detail += " (\(message))" }
        }
        // S3's answer to a request signed for another region (400) or sent to another
        // region's endpoint (301) names the bucket's region.
        if ["AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"].contains(
            xmlElement("Code", in: text)), let region = xmlElement("Region", in: text),
            !region.isEmpty,
            region.utf8.allSatisfy({ $0 == UInt8(ascii: "-") || ($0 < 128 && isalnum(Int32($0)) != 0) })
        {
            return RemoteError(
                .denied, name, "wrong region: the bucket is in \(region) (-o s3.region=\(region)) (HTTP \(status))",
                status: status)
        }
        switch status {
        case 401, 403:
            return RemoteError(
                .denied, name, "access denied (HTTP \(status)\(detail)): check the credentials, region and permissions",
                status: status)
        case 404:
            return RemoteError(.notFound, name, "no such object (HTTP 404\(detail))", status: status)
        case 412:
            return RemoteError(
                .changed, name,
                "the object changed since it was opened (HTTP 412 on If-Match): not mixing two versions", status: status
            )
        case 416:
            return RemoteError(
                .changed, name, "range not satisfiable (HTTP 416): the object is shorter than when it was opened",
                status: status)
        case 408, 429, 500...599:
            return RemoteError(.transient, name, "HTTP \(status)\(detail)", status: status)
        default:
            return RemoteError(.http, name, "unexpected HTTP \(status)\(detail)", status: status)
        }
    }

    static func transferError(_ code: CURLcode, _ message: String, _ name: String) -> RemoteError {
        switch code {
        case CURLE_OPERATION_TIMEDOUT:
            return RemoteError(.timeout, name, "timed out: \(message)")
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY:
            return RemoteError(.unreachable, name, "cannot resolve the host: \(message)")
        case CURLE_COULDNT_CONNECT:
            // Refused or unreachable: retried (a restarting server), then reported.
            return RemoteError(.transient, name, "cannot connect: \(message)")
        case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CONNECT_ERROR:
            return RemoteError(.unreachable, name, "TLS: \(message) (trust a CA with -o http.cafile=PATH)")
        case CURLE_UNSUPPORTED_PROTOCOL, CURLE_URL_MALFORMAT, CURLE_FAILED_INIT:
            return RemoteError(.configuration, name, message)
        case CURLE_TOO_MANY_REDIRECTS:
            return RemoteError(.http, name, message)
        default:
            // Resets, short bodies (CURLE_PARTIAL_FILE), empty replies, send/receive errors.
            return RemoteError(.transient, name, message)
        }
    }
}

/// `Content-Range: bytes FIRST-LAST/TOTAL`, parsed strictly (decimal digits only, FIRST <=
/// LAST < TOTAL).
package struct ContentRange: Equatable {
    package var first: UInt64
    package var last: UInt64
    package var total: UInt64

    package init?(_ header: String?) {
        guard let header, header.hasPrefix("bytes ") else { return nil }
        let rest = header.dropFirst(6)
        guard let dash = rest.firstIndex(of: "-"), let slash = rest.firstIndex(of: "/"), dash < slash,
            let first = Self.number(rest[..<dash]), let last = Self.number(rest[rest.index(after: dash)..<slash]),
            let total = Self.number(rest[rest.index(after: slash)...]),
            first <= last, last < total
        else { return nil }
        self.first = first
        self.last = last
        self.total = total
    }

    /// TOTAL of `bytes */TOTAL` (a 416's Content-Range).
    package static func unsatisfiedTotal(_ header: String?) -> UInt64? {
        guard let header, header.hasPrefix("bytes */") else { return nil }
        return number(header.dropFirst(8))
    }

    static func number(_ text: Substring) -> UInt64? {
        guard !text.isEmpty, text.count <= 19, text.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt64(text)
    }
}

/// The text of the first `<name>...</name>` in `xml` (at most 200 characters), if present.
package func xmlElement(_ name: String, in xml: String) -> String? {
    let bytes = Array(xml.utf8)
    guard let start = find(Array("<\(name)>".utf8), in: bytes, from: 0),
        let end = find(Array("</\(name)>".utf8), in: bytes, from: start + name.utf8.count + 2)
    else { return nil }
    return String(decoding: bytes[(start + name.utf8.count + 2)..<end].prefix(200), as: UTF8.self)
}

private func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
    guard needle.count <= haystack.count else { return nil }
    var index = from
    while index + needle.count <= haystack.count {
        if haystack[index..<(index + needle.count)].elementsEqual(needle) { return index }
        index += 1
    }
    return nil
}
