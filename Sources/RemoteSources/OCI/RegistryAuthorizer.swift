import Foundation
import Synchronization
import SystemCalls

/// A `WWW-Authenticate` challenge: the scheme and its parameters (RFC 9110 11.6.1; values as
/// tokens or quoted strings with `\` escapes).
package struct AuthChallenge: Equatable {
    package var scheme: String
    package var parameters: [String: String]

    /// The first challenge of a header value (registries send one).
    package init?(header: String) {
        let bytes = Array(header.utf8.prefix(8192))
        var index = 0
        func skipSpaces() { while index < bytes.count && (bytes[index] == 0x20 || bytes[index] == 0x09) { index += 1 } }
        func token() -> String {
            let start = index
            while index < bytes.count, bytes[index] > 0x20, bytes[index] != UInt8(ascii: "="),
                bytes[index] != UInt8(ascii: ","), bytes[index] != UInt8(ascii: "\"")
            {
                index += 1
            }
            return String(decoding: bytes[start..<index], as: UTF8.self)
        }
        skipSpaces()
        let scheme = token()
        guard !scheme.isEmpty else { return nil }
        var parameters: [String: String] = [:]
        while index < bytes.count {
            skipSpaces()
            while index < bytes.count && bytes[index] == UInt8(ascii: ",") {
                index += 1
                skipSpaces()
            }
            let name = token().lowercased()
            skipSpaces()
            guard !name.isEmpty, index < bytes.count, bytes[index] == UInt8(ascii: "=") else { break }
            index += 1
            skipSpaces()
            var value: [UInt8] = []
            if index < bytes.count && bytes[index] == UInt8(ascii: "\"") {
                index += 1
                while index < bytes.count && bytes[index] != UInt8(ascii: "\"") {
                    if bytes[index] == UInt8(ascii: "\\") && index + 1 < bytes.count { index += 1 }
                    value.append(bytes[index])
                    index += 1
                }
                guard index < bytes.count else { return nil }
                index += 1
            } else {
                value = Array(token().utf8)
            }
            parameters[name] = String(decoding: value, as: UTF8.self)
        }
        self.scheme = scheme.lowercased()
        self.parameters = parameters
    }
}

/// Authorization for one registry repository, added to each request just before it is sent.
/// Starts anonymous; a 401 tells it what the registry wants:
/// - `Basic`: the credentials go straight to the registry (an htpasswd registry);
/// - `Bearer realm=,service=,scope=`: a token from the realm (asked with Basic credentials, or
///   an identity token as an OAuth2 refresh token, or anonymously), renewed before its
///   `expires_in` runs out and again whenever the registry answers 401 mid-read.
/// The header never leaves this object except on requests to the registry (redirects to other
/// hosts drop it: curl sends a custom Authorization only to the first host).
final class RegistryAuthorizer: RequestSigner {
    let registry: String
    let repository: String
    let credentials: RegistryCredentials?
    let transport: HTTPTransport
    /// Whether credentials may go over plain http (`oci.insecure`).
    let allowPlainHTTP: Bool

    private struct State {
        var header: String?
        var challenge: AuthChallenge?
        /// Monotonic time after which a bearer token is renewed before use.
        var renewAt: Double?
        /// Why the last authentication failed, for the message of the request that then fails.
        var failure: RemoteError?
        var tokensIssued = 0
    }
    private let state = Mutex(State())
    /// Held while a token is fetched, so that threads reading at once fetch one token.
    private let fetching = Mutex(())

    init(
        registry: String, repository: String, credentials: RegistryCredentials?, transport: HTTPTransport,
        allowPlainHTTP: Bool
    ) {
        self.registry = registry
        self.repository = repository
        self.credentials = credentials
        self.transport = transport
        self.allowPlainHTTP = allowPlainHTTP
    }

    var lastFailure: RemoteError? { state.withLock { $0.failure } }

    /// Why the registry still answers 401 or 403 (`name` is what was asked for): the reason
    /// authentication failed, else what the credentials sent were.
    func refusal(status: Int, name: String) -> RemoteError {
        let (failure, header) = state.withLock { ($0.failure, $0.header) }
        if let failure { return failure }
        let detail =
            switch header?.split(separator: " ").first {
            case "Basic": "the registry refused the user name or password"
            case "Bearer": "the registry refused the token: no pull access to \(repository) for these credentials"
            default: "access denied: check the credentials"
            }
        return RemoteError(.denied, name, "\(detail) (HTTP \(status))", status: status)
    }
    var tokensIssued: Int { state.withLock { $0.tokensIssued } }

    func sign(method: String, headers: [(String, String)], now: time_t) -> [(String, String)] {
        let (header, expiring, challenge) = state.withLock { state in
            (state.header, state.renewAt.map { monotonicSeconds() >= $0 } ?? false, state.challenge)
        }
        var current = header
        if expiring, let challenge {
            // Renewed ahead of expiry; if that fails the old token is tried and a 401 renews again.
            fetching.withLock { _ in
                let stillExpiring = state.withLock { $0.renewAt.map { monotonicSeconds() >= $0 } ?? false }
                if stillExpiring { _ = authenticate(challenge) }
            }
            current = state.withLock { $0.header }
        }
        guard let current else { return headers }
        return headers + [("Authorization", current)]
    }

    func renew(after response: HTTPResponseHead) -> Bool {
        guard let value = response.headers["www-authenticate"], let challenge = AuthChallenge(header: value) else {
            state.withLock {
                $0.failure = RemoteError(
                    .denied, registry, "access denied (HTTP 401 without a WWW-Authenticate challenge)", status: 401)
            }
            return false
        }
        let sent = state.withLock { $0.header }
        return fetching.withLock { _ in
            // Another thread may have renewed while this one waited: use its result.
            if state.withLock({ $0.header }) != sent { return true }
            return authenticate(challenge)
        }
    }

    /// Answers `challenge`; true when there is a new Authorization header to try.
    private func authenticate(_ challenge: AuthChallenge) -> Bool {
        switch challenge.scheme {
        case "basic":
            guard case .basic(let username, let password) = credentials else {
                fail(
                    RemoteError(
                        .denied, registry,
                        credentials == nil
                            ? "the registry wants a user name and password (docker login, or -o oci.username=,oci.password=)"
                            : "the registry wants Basic auth, and the credentials found are an identity token",
                        status: 401))
                return false
            }
            let header = basicHeader(username, password)
            // The same Basic credentials refused again: they are wrong.
            if state.withLock({ $0.header }) == header {
                fail(
                    RemoteError(
                        .denied, registry, "the registry refused the user name or password (HTTP 401)", status: 401))
                return false
            }
            state.withLock {
                $0.header = header
                $0.challenge = challenge
                $0.renewAt = nil
            }
            return true
        case "bearer":
            do {
                let token = try fetchToken(challenge)
                state.withLock {
                    $0.header = "Bearer " + token.value
                    $0.challenge = challenge
                    // Renewed when 80% of its life has passed (a token is good for at least a second).
                    $0.renewAt = monotonicSeconds() + max(1, token.lifetime * 0.8)
                    $0.failure = nil
                    $0.tokensIssued += 1
                }
                return true
            } catch {
                fail(error)
                return false
            }
        default:
            fail(
                RemoteError(
                    .denied, registry, "unsupported authentication scheme \(challenge.scheme.prefix(40))", status: 401))
            return false
        }
    }

    private func fail(_ error: RemoteError) { state.withLock { $0.failure = error } }

    /// Distribution's token flow: GET REALM?service=&scope= with Basic credentials (or none),
    /// or a POST with `grant_type=refresh_token` for an identity token (docker's OAuth2 flow).
    private func fetchToken(_ challenge: AuthChallenge) throws(RemoteError) -> (value: String, lifetime: Double) {
        guard let realm = challenge.parameters["realm"], !realm.isEmpty else {
            throw RemoteError(.denied, registry, "a Bearer challenge without a realm", status: 401)
        }
        let lowered = realm.lowercased()
        guard lowered.hasPrefix("https://") || lowered.hasPrefix("http://") else {
            throw RemoteError(.denied, registry, "the token realm is not an http(s) URL", status: 401)
        }
        let realmName = RemoteSourceDescription.redacted(realm)
        if lowered.hasPrefix("http://") && credentials != nil && !allowPlainHTTP {
            throw RemoteError(
                .denied, realmName, "the token realm is plain http: not sending credentials (oci.insecure allows it)")
        }
        // The registry's scope when it gives one, else pull access to our repository.
        let scope = challenge.parameters["scope"] ?? "repository:\(repository):pull"
        var query = [("scope", scope)]
        if let service = challenge.parameters["service"] { query.insert(("service", service), at: 0) }
        func encoded(_ pairs: [(String, String)]) -> String {
            pairs.map { "\($0.0)=\(percentEncoded($0.1, keepSlash: false))" }.joined(separator: "&")
        }
        var request = HTTPRequest(url: realm, followRedirects: true)
        switch credentials {
        case .identityToken(let token):
            let form =
                query + [("grant_type", "refresh_token"), ("refresh_token", token), ("client_id", "erofs-mount")]
            request.body = Array(encoded(form).utf8)
            request.headers = [("Content-Type", "application/x-www-form-urlencoded")]
        default:
            request.url = realm + (realm.contains("?") ? "&" : "?") + encoded(query)
            if case .basic(let username, let password) = credentials {
                request.headers = [("Authorization", basicHeader(username, password))]
            }
        }
        let (head, body) = try SmallFetch.perform(request, transport: transport, name: realmName, limit: 1 << 20)
        guard head.status == 200 else {
            // OAuth2 refuses a bad grant with 400 and an `error` code (RFC 6749 5.2):
            // an expired or revoked refresh token is `invalid_grant`.
            if case .identityToken = credentials, [400, 401, 403].contains(head.status) {
                let code = oauthErrorCode(body).map { " \($0)" } ?? ""
                throw RemoteError(
                    .denied, realmName,
                    "the token server refused the identity token (HTTP \(head.status)\(code)): log in again (docker login)",
                    status: head.status)
            }
            if head.status == 401 || head.status == 403 {
                throw RemoteError(
                    .denied, realmName,
                    credentials == nil
                        ? "the token server refused anonymous access (HTTP \(head.status)): log in (docker login) or give oci.username/oci.password"
                        : "the token server refused the credentials (HTTP \(head.status)): wrong user name or password",
                    status: head.status)
            }
            throw RangeRead.statusError(head.status, [], realmName)
        }
        guard let reply = TokenReply(body) else {
            throw RemoteError(.protocolViolation, realmName, "the token server's answer has no usable token")
        }
        return (reply.token, reply.lifetime)
    }
}

/// A token server's answer: `token` (or OAuth2's `access_token`) and its lifetime.
package struct TokenReply: Equatable {
    /// Printable ASCII without spaces: it goes into an Authorization header as it is.
    package var token: String
    /// Seconds, 0 to a day; the spec's default 60 when `expires_in` is missing.
    package var lifetime: Double

    package init?(_ body: [UInt8]) {
        struct Wire: Decodable {
            var token: String?
            var accessToken: String?
            var expiresIn: Double?
            enum CodingKeys: String, CodingKey {
                case token
                case accessToken = "access_token"
                case expiresIn = "expires_in"
            }
        }
        guard let wire = try? JSONDecoder().decode(Wire.self, from: Data(body)),
            let token = wire.token ?? wire.accessToken, !token.isEmpty,
            token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f })
        else { return nil }
        self.token = token
        let lifetime = wire.expiresIn ?? 60
        self.lifetime = lifetime.isNaN ? 60 : min(max(lifetime, 0), 86400)
    }
}

/// The `error` code of an OAuth2 error answer, when it is a plain code (letters and `_`, as the
/// RFC's are): the server's bytes go into our one line only in that shape.
package func oauthErrorCode(_ body: [UInt8]) -> String? {
    struct Reply: Decodable { var error: String }
    guard let code = try? JSONDecoder().decode(Reply.self, from: Data(body)).error, (1...64).contains(code.utf8.count),
        code.utf8.allSatisfy({ $0 == UInt8(ascii: "_") || (0x61...0x7a).contains($0) })
    else { return nil }
    return code
}

private func basicHeader(_ username: String, _ password: String) -> String {
    "Basic " + Data("\(username):\(password)".utf8).base64EncodedString()
}

/// A GET (or POST) whose whole body is wanted and small: manifests, tokens. Transient failures
/// are retried as range reads are; the body is refused past `limit` bytes.
enum SmallFetch {
    static func perform(
        _ request: HTTPRequest, transport: HTTPTransport, name: String, limit: Int, signer: (any RequestSigner)? = nil
    ) throws(RemoteError) -> (HTTPResponseHead, [UInt8]) {
        var attempt = 0
        var renewed = false
        while true {
            var sent = request
            if let signer { sent.headers = signer.sign(method: "GET", headers: request.headers, now: time(nil)) }
            var body: [UInt8] = []
            var tooLarge = false
            let result = transport.perform(
                sent, onHead: { _ in true },
                onBody: { bytes in
                    guard body.count + bytes.count <= limit else {
                        tooLarge = true
                        return false
                    }
                    body.append(contentsOf: bytes)
                    return true
                })
            if tooLarge { throw RemoteError(.protocolViolation, name, "the answer is larger than \(limit) bytes") }
            let failure: RemoteError
            switch result {
            case .success(let head):
                if head.status == 401 && !renewed, let signer, signer.renew(after: head) {
                    renewed = true
                    continue
                }
                guard head.status == 408 || head.status == 429 || head.status >= 500 else { return (head, body) }
                failure = RangeRead.statusError(head.status, [], name)
            case .failure(.refused):
                throw RemoteError(.protocolViolation, name, "transfer aborted")
            case .failure(.transfer(let code, let message)):
                failure = RangeRead.transferError(code, message, name)
            }
            guard failure.kind == .transient || failure.kind == .timeout, attempt < transport.settings.retries else {
                throw failure
            }
            usleep(UInt32(min(2, transport.settings.backoff * Double(1 << attempt)) * 1_000_000))
            attempt += 1
        }
    }
}
