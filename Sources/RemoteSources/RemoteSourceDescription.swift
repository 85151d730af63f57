import ImageSources

#if canImport(Glibc)
import Glibc
#endif

/// An S3 object and how to address it (`s3.*` options). No secret in here.
public struct S3Location: Sendable, Codable, Equatable {
    public var bucket: String
    public var key: String
    /// `scheme://host[:port]`, no path.
    public var endpoint: String
    public var region: String
    /// 4 (default) or 2.
    public var signatureVersion: Int
    /// Virtual-host (`BUCKET.host/KEY`) or path (`host/BUCKET/KEY`) addressing.
    public var pathStyle: Bool

    /// The request URL, the Host header, the path as sent and SigV2's resource.
    var addressing: (url: String, host: String, path: String, resource: String) {
        let schemeEnd = endpoint.range(of: "://")!
        let scheme = endpoint[..<schemeEnd.lowerBound]
        let authority = String(endpoint[schemeEnd.upperBound...])
        let encodedKey = percentEncoded(key, keepSlash: true)
        let resource = "/\(bucket)/\(encodedKey)"
        if pathStyle {
            return ("\(scheme)://\(authority)\(resource)", authority, resource, resource)
        }
        return (
            "\(scheme)://\(bucket).\(authority)/\(encodedKey)", "\(bucket).\(authority)", "/\(encodedKey)", resource
        )
    }
}

/// Where the credentials of a source come from: a description a daemon can be handed (in its
/// state file or argv) without handing it a secret.
public enum CredentialSource: Sendable, Codable, Equatable {
    /// No Authorization header.
    case anonymous
    /// An s3fs-format file: `ACCESS:SECRET` lines, or `BUCKET:ACCESS:SECRET` for one bucket.
    case passwdFile(String)
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` of the environment
    /// given to `open`.
    case environment
    /// Those variables captured by `mount.erofs` into a 0600 file (`KEY=VALUE` lines) under
    /// /run/erofs-mount/credentials, for the daemons it starts (their environment and argv
    /// hold no secret); removed when the mount ends. Only the path is recorded.
    case captured(path: String)
}

/// An image layer in a registry as a mount's daemons open it: what `-o oci.*` chose, and what
/// the mount resolved that to (the image manifest's digest and the layer's), so that a worker
/// started later opens those bytes or fails, whatever the tag points to by then.
public struct OCILocation: Sendable, Codable, Equatable {
    /// Reference (registry, repository, tag or digest), layer choice, platform, `oci.insecure`,
    /// tar index and zinfo paths. Its http and cache settings are not used (the description's).
    public var image: OCISourceDescription
    public var manifestDigest: String?
    public var layerDigest: String?
}

/// The version of an object a mount validated: a daemon that opens the object again serves
/// that version or nothing (never bytes of a replacement the mount did not check).
public struct ObjectVersion: Sendable, Codable, Equatable {
    public var etag: String?
    public var lastModified: String?
    public var size: UInt64
}

/// A remote SOURCE with everything needed to open it again later (in a recovered daemon):
/// location, where credentials come from, HTTP and cache settings. It never holds a secret.
public struct RemoteSourceDescription: Sendable, Codable, Equatable {
    public enum Location: Sendable, Codable, Equatable {
        case http(url: String)
        case s3(S3Location)
        case oci(OCILocation)
    }

    public var location: Location
    public var credentials: CredentialSource
    public var http = HTTPSettings()
    public var cache = CacheSettings()
    /// `remote.verify=full`: fetch and check everything before the mount completes.
    public var verifyFully = false
    /// Set by the mount for its daemons: `open` refuses any other version.
    public var pinnedVersion: ObjectVersion?

    /// The object for messages: an HTTP URL without user info or query, or `s3://BUCKET/KEY`.
    public var displayName: String {
        switch location {
        case .http(let url): return Self.redacted(url)
        case .s3(let s3): return "s3://\(s3.bucket)/\(s3.key)"
        case .oci(let oci):
            return oci.layerDigest.map { "\(oci.image.reference) layer \($0)" } ?? oci.image.reference.description
        }
    }

    /// The `-o` keys for `--help` (erofs and mount.erofs), one per line, indented by two.
    public static let optionsHelp = """
          http.cafile=PATH        trust this CA bundle, not the system store
          http.insecure_tls       skip certificate checks (warned about)
          http.timeout=S          give up an attempt after S s without a byte,
                                  or with less than 1 KiB in S s (30);
                                  http.connect_timeout=S (10)
          http.retries=N          retries on resets, short bodies, 5xx (4)
          s3.endpoint=URL         AWS_ENDPOINT_URL, else AWS for the region
          s3.region=R             AWS_REGION, else us-east-1
          s3.sig=4|2              signature version: 4 (erofs-utils: 2)
          s3.urlstyle=vhost|path  vhost; path for IP/localhost endpoints
          s3.passwd_file=PATH     s3fs format: ACCESS:SECRET lines, or
                                  BUCKET:ACCESS:SECRET; else AWS_ACCESS_KEY_ID,
                                  AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN;
                                  else anonymous
          remote.cache=DIR|none   block cache (/var/cache/erofs-mount)
          remote.cache_size=N     its limit (4G); unused objects go first
          remote.block_size=N     cache block, the smallest fetch (64K)
          remote.readahead=N      largest sequential readahead (16M)
          remote.verify=full      (mount.erofs) fetch and decode everything
                                  before the mount completes
        """

    /// The option keys this layer owns (`-o KEY=VALUE`); others belong to the caller.
    public static func owns(_ key: String) -> Bool {
        key.hasPrefix("http.") || key.hasPrefix("s3.") || key.hasPrefix("remote.") || key.hasPrefix("oci.")
    }

    /// Reads SOURCE and the remote options: an `http://` or `https://` URL is an HTTP source;
    /// with any `s3.` option (or an `s3://` prefix) SOURCE is `BUCKET/KEY`. Returns nil for a
    /// local source (and then no remote option may be given).
    public static func parse(
        source: String, options: [(key: String, value: String?)], environment: [String: String]
    ) throws(RemoteError) -> RemoteSourceDescription? {
        func bad(_ message: String) -> RemoteError { RemoteError(.configuration, "-o", message) }
        let lowered = source.lowercased()
        let isHTTP = lowered.hasPrefix("http://") || lowered.hasPrefix("https://")
        let isS3 = lowered.hasPrefix("s3://") || options.contains { $0.key.hasPrefix("s3.") }
        guard isHTTP || isS3 else {
            if let stray = options.first(where: { owns($0.key) }) {
                throw bad(
                    "\(stray.key) is for remote sources (an http(s):// URL, or BUCKET/KEY with s3.* options); \(source) is a local path"
                )
            }
            return nil
        }
        if isHTTP && isS3 { throw bad("s3.* options take SOURCE as BUCKET/KEY, not a URL") }
        var http = HTTPSettings()
        var cache = CacheSettings()
        var verifyFully = false
        var s3 = (
            endpoint: environment["AWS_ENDPOINT_URL_S3"] ?? environment["AWS_ENDPOINT_URL"],
            region: environment["AWS_REGION"] ?? environment["AWS_DEFAULT_REGION"],
            sig: 4, style: String?.none, passwd: String?.none
        )
        for (key, value) in options where owns(key) {
            if try applyTransportOption(key, value, http: &http, cache: &cache) { continue }
            func required() throws(RemoteError) -> String {
                guard let value, !value.isEmpty else { throw bad("\(key) needs a value") }
                return value
            }
            switch key {
            case "remote.verify":
                guard value == "full" || value == "none" else { throw bad("remote.verify: full or none") }
                verifyFully = value == "full"
            case "s3.endpoint": s3.endpoint = try required()
            case "s3.region": s3.region = try required()
            case "s3.sig":
                guard value == "2" || value == "4" else { throw bad("s3.sig: 2 or 4") }
                s3.sig = value == "2" ? 2 : 4
            case "s3.urlstyle":
                guard value == "vhost" || value == "path" else { throw bad("s3.urlstyle: vhost or path") }
                s3.style = value
            case "s3.passwd_file": s3.passwd = try required()
            default: throw bad("unknown option \(key)")
            }
        }
        if isHTTP {
            // user:password@ would sit in the process list, state files and a daemon's argv.
            let authority = source.split(separator: "/", omittingEmptySubsequences: false).dropFirst(2).first ?? ""
            if authority.contains("@") {
                throw RemoteError(
                    .configuration, redacted(source),
                    "credentials in the URL are not accepted (they would show in the process list)")
            }
            return RemoteSourceDescription(
                location: .http(url: source), credentials: .anonymous, http: http, cache: cache,
                verifyFully: verifyFully)
        }
        var path = Substring(source)
        if lowered.hasPrefix("s3://") { path = path.dropFirst(5) }
        guard let slash = path.firstIndex(of: "/"), slash != path.startIndex, path.index(after: slash) != path.endIndex
        else {
            throw bad("an S3 SOURCE is BUCKET/KEY, not \(source)")
        }
        let bucket = String(path[..<slash])
        let key = String(path[path.index(after: slash)...])
        let region = s3.region ?? "us-east-1"
        var endpoint = s3.endpoint ?? "https://s3.\(region).amazonaws.com"
        if !endpoint.contains("://") { endpoint = "https://" + endpoint }
        while endpoint.hasSuffix("/") { endpoint.removeLast() }
        let authority = endpoint[endpoint.range(of: "://")!.upperBound...]
        guard !authority.isEmpty, !authority.contains("/"), !authority.contains("@"), !authority.contains("?") else {
            throw bad("s3.endpoint: scheme://host[:port], not \(endpoint)")
        }
        // Virtual-host addressing needs a DNS name under which BUCKET.host resolves: not an IP
        // address or localhost, and not a bucket name with dots over TLS.
        let host = authority.split(separator: ":").first.map(String.init) ?? ""
        let ipOrLocal = host == "localhost" || host.allSatisfy { $0.isNumber || $0 == "." } || authority.hasPrefix("[")
        let pathStyle = s3.style.map { $0 == "path" } ?? (ipOrLocal || bucket.contains("."))
        let location = S3Location(
            bucket: bucket, key: key, endpoint: endpoint, region: region, signatureVersion: s3.sig, pathStyle: pathStyle
        )
        let credentials: CredentialSource =
            if let passwd = s3.passwd { .passwdFile(passwd) } else if environment["AWS_ACCESS_KEY_ID"] != nil {
                .environment
            } else { .anonymous }
        return RemoteSourceDescription(
            location: .s3(location), credentials: credentials, http: http, cache: cache, verifyFully: verifyFully)
    }

    /// Applies an `http.*` or `remote.*` option (shared by every remote source kind); false for
    /// any other key.
    static func applyTransportOption(
        _ key: String, _ value: String?, http: inout HTTPSettings, cache: inout CacheSettings
    )
        throws(RemoteError) -> Bool
    {
        func bad(_ message: String) -> RemoteError { RemoteError(.configuration, "-o", message) }
        func required() throws(RemoteError) -> String {
            guard let value, !value.isEmpty else { throw bad("\(key) needs a value") }
            return value
        }
        func seconds() throws(RemoteError) -> Double {
            let text = try required()
            guard let number = Double(text), number > 0, number <= 3600 else {
                throw bad("\(key)=\(text): seconds, > 0")
            }
            return number
        }
        switch key {
        case "http.cafile": http.caFile = try required()
        case "http.insecure_tls":
            guard value == nil else { throw bad("http.insecure_tls takes no value") }
            http.insecureTLS = true
        case "http.timeout": http.stallTimeout = try seconds()
        case "http.connect_timeout": http.connectTimeout = try seconds()
        case "http.retries":
            guard let count = Int(try required()), (0...20).contains(count) else {
                throw bad("http.retries: 0 to 20")
            }
            http.retries = count
        case "remote.cache":
            let text = try required()
            cache.directory = text == "none" ? nil : text
            if text != "none" && !text.hasPrefix("/") { throw bad("remote.cache: an absolute directory, or none") }
        case "remote.cache_size":
            cache.limit = UInt64(try byteCount(key, try required(), range: 1 << 20...(1 << 50)))
        case "remote.block_size":
            let size = try byteCount(key, try required(), range: 4096...(16 << 20))
            guard size & (size - 1) == 0 else { throw bad("remote.block_size: a power of two") }
            cache.blockSize = size
        case "remote.readahead": cache.maxReadahead = try byteCount(key, try required(), range: 0...(256 << 20))
        default: return false
        }
        return true
    }

    /// Opens the object: resolves the credentials, checks the object with one ranged GET and
    /// sets up its block cache. `warn` receives one-line warnings (insecure TLS, a readable
    /// passwd file, a cache that could not be used).
    public func open(environment: [String: String], warn: (String) -> Void) throws(RemoteError) -> RemoteSource {
        if http.insecureTLS {
            warn(
                "\(displayName): http.insecure_tls: the server's certificate is not checked; anyone on the path can serve other bytes"
            )
        }
        let transport = HTTPTransport(settings: http)
        let endpoint: RemoteEndpoint
        switch location {
        case .http(let url):
            endpoint = RemoteEndpoint(url: url, displayName: displayName, followRedirects: true, signer: nil)
        case .oci:
            throw RemoteError(.configuration, displayName, "an image layer is opened with openPinned")
        case .s3(let s3):
            let addressing = s3.addressing
            let signer = try resolveCredentials(s3, environment: environment, warn: warn).map {
                S3Signer(
                    credentials: $0, version: s3.signatureVersion, region: s3.region, host: addressing.host,
                    canonicalURI: addressing.path, resource: addressing.resource)
            }
            endpoint = RemoteEndpoint(url: addressing.url, displayName: displayName, signer: signer)
        }
        let (object, firstBytes) = try RemoteObject.open(
            endpoint: endpoint, transport: transport, probe: cache.blockSize)
        if let pinnedVersion, pinnedVersion != object.version {
            throw RemoteError(
                .changed, displayName,
                "the object changed since it was mounted (\(pinnedVersion.etag ?? pinnedVersion.lastModified ?? "?"), \(pinnedVersion.size) bytes; now \(object.version.etag ?? object.version.lastModified ?? "?"), \(object.size) bytes)"
            )
        }
        return RemoteSource.cached(object: object, firstBytes: firstBytes, cache: cache, warn: warn)
    }

    /// Opens any kind of source, and returns it with this description pinned to what was
    /// opened: an object's version, or an image's manifest and layer digests (so that a daemon
    /// recovered after the tag moved still reads the layer the mount checked, or fails).
    /// `registry` is what an OCI source authenticates with (already resolved by the caller);
    /// nil: the credentials this description names.
    public func openPinned(
        environment: [String: String], registry: RegistryCredentials? = nil, warn: (String) -> Void
    ) throws(RemoteError) -> (source: any RandomAccessSource, pinned: RemoteSourceDescription) {
        var pinned = self
        guard case .oci(var oci) = location else {
            let source = try open(environment: environment, warn: warn)
            pinned.pinnedVersion = source.version
            return (source, pinned)
        }
        var image = oci.image
        image.http = http
        image.cache = cache
        if let manifestDigest = oci.manifestDigest, let layerDigest = oci.layerDigest {
            image.reference.digest = manifestDigest
            image.layer = .digest(layerDigest)
        }
        var credentials = registry
        switch (registry, self.credentials) {
        case (nil, .captured(let path)): credentials = try CapturedCredentials.registryCredentials(path)
        case (nil, .environment):
            credentials = try DockerConfig.credentials(
                for: image.reference.domain, environment: environment)
        default: break
        }
        let layer = try image.open(credentials: credentials, environment: [:], warn: warn)
        oci.manifestDigest = layer.manifestDigest
        oci.layerDigest = layer.layer.digest
        pinned.location = .oci(oci)
        return (layer, pinned)
    }

    private func resolveCredentials(_ s3: S3Location, environment: [String: String], warn: (String) -> Void)
        throws(RemoteError) -> S3Credentials?
    {
        switch credentials {
        case .anonymous:
            return nil
        case .environment:
            guard let access = environment["AWS_ACCESS_KEY_ID"], let secret = environment["AWS_SECRET_ACCESS_KEY"],
                !access.isEmpty, !secret.isEmpty
            else {
                throw RemoteError(
                    .configuration, "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY")
            }
            return S3Credentials(
                accessKey: access, secretKey: secret,
                sessionToken: environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 })
        case .passwdFile(let path):
            return try Self.readPasswdFile(path, bucket: s3.bucket, warn: warn)
        case .captured(let path):
            var copy = self
            copy.credentials = .environment
            return try copy.resolveCredentials(s3, environment: try CapturedCredentials.read(path), warn: warn)
        }
    }

    /// s3fs's format: `ACCESS:SECRET` (any bucket) or `BUCKET:ACCESS:SECRET` lines; `#`
    /// comments. A line for the bucket wins over a default line. Messages name the file and
    /// line, never a key.
    static func readPasswdFile(_ path: String, bucket: String, warn: (String) -> Void) throws(RemoteError)
        -> S3Credentials
    {
        let descriptor = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw RemoteError(.configuration, path, "cannot open the passwd file: \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        var status = stat()
        if fstat(descriptor, &status) == 0 && status.st_mode & 0o077 != 0 {
            warn("\(path): the passwd file is readable by other users (chmod 600 it)")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let got = read(descriptor, &chunk, chunk.count)
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { break }
            bytes += chunk[..<got]
        }
        var fallback: S3Credentials?
        for (number, line) in String(decoding: bytes, as: UTF8.self).split(
            separator: "\n", omittingEmptySubsequences: false
        ).enumerated() {
            let text = line.trimmingCharacters(in: " \t\r")
            if text.isEmpty || text.hasPrefix("#") { continue }
            let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            switch fields.count {
            case 2 where !fields[0].isEmpty && !fields[1].isEmpty:
                if fallback == nil { fallback = S3Credentials(accessKey: fields[0], secretKey: fields[1]) }
            case 3 where !fields[1].isEmpty && !fields[2].isEmpty:
                if fields[0] == bucket { return S3Credentials(accessKey: fields[1], secretKey: fields[2]) }
            default:
                throw RemoteError(
                    .configuration, path, "line \(number + 1): expected ACCESS:SECRET or BUCKET:ACCESS:SECRET")
            }
        }
        guard let fallback else { throw RemoteError(.configuration, path, "no credentials for bucket \(bucket)") }
        return fallback
    }

    /// `scheme://host/path` of a URL: user info, query and fragment dropped (they may carry
    /// credentials or signatures).
    static func redacted(_ url: String) -> String {
        var text = Substring(url)
        if let cut = text.firstIndex(where: { $0 == "?" || $0 == "#" }) { text = text[..<cut] }
        guard let schemeEnd = text.range(of: "://") else { return String(text) }
        let rest = text[schemeEnd.upperBound...]
        let authorityEnd = rest.firstIndex(of: "/") ?? rest.endIndex
        if let at = rest[..<authorityEnd].lastIndex(of: "@") {
            return String(text[..<schemeEnd.upperBound]) + String(rest[rest.index(after: at)...])
        }
        return String(text)
    }
}

extension RemoteSourceDescription {
    /// An image layer in a registry (`-o oci.*`); its transport and cache settings are this
    /// description's. Credentials: `.environment` (Docker's config.json of the environment
    /// given to `open`), `.captured` (a mount's daemons), or `.anonymous`.
    public init(oci image: OCISourceDescription) {
        self.init(
            location: .oci(OCILocation(image: image)), credentials: .environment, http: image.http, cache: image.cache)
    }
}

/// `123`, `64K`, `8M`, `4G` (powers of 1024).
func byteCount(_ key: String, _ text: String, range: ClosedRange<Int>) throws(RemoteError) -> Int {
    var digits = Substring(text)
    var scale = 1
    switch digits.last?.uppercased() {
    case "K": scale = 1 << 10
    case "M": scale = 1 << 20
    case "G": scale = 1 << 30
    default: break
    }
    if scale > 1 { digits = digits.dropLast() }
    guard let number = Int(digits), number >= 0, number <= Int.max / scale, range.contains(number * scale) else {
        throw RemoteError(
            .configuration, "-o",
            "\(key)=\(text): a byte count (K, M, G suffixes) from \(range.lowerBound) to \(range.upperBound)")
    }
    return number * scale
}

extension Substring {
    func range(of needle: String) -> Range<Index>? {
        var index = startIndex
        while index < endIndex {
            if self[index...].hasPrefix(needle) { return index..<self.index(index, offsetBy: needle.count) }
            index = self.index(after: index)
        }
        return nil
    }
}

extension String {
    func range(of needle: String) -> Range<Index>? { self[...].range(of: needle) }
}

extension RemoteSource {
    /// A source over `object` with its disk cache (keyed by the object's identity), or memory
    /// only when there is no cache directory, no identity, or the cache cannot be used.
    static func cached(object: RemoteObject, firstBytes: [UInt8], cache: CacheSettings, warn: (String) -> Void)
        -> RemoteSource
    {
        var store: any BlockStore = MemoryBlockStore(blockSize: cache.blockSize, capacity: cache.memoryLimit)
        if let directory = cache.directory {
            if let identity = object.identity {
                do {
                    store = try DiskBlockStore(
                        identity: identity, objectSize: object.size, blockSize: cache.blockSize,
                        budget: CacheBudget(directory: directory, limit: cache.limit))
                } catch {
                    warn("\(error): reading without the disk cache")
                }
            } else {
                warn(
                    "\(object.displayName): the server sends neither ETag nor Last-Modified: the object cannot be pinned, and is not cached on disk"
                )
            }
        }
        return RemoteSource(object: object, store: store, firstBytes: firstBytes, maxReadahead: cache.maxReadahead)
    }
}
