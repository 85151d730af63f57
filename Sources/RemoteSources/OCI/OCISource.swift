import Crypto
import Foundation
import ImageSources
import SystemCalls
import SystemPackage

/// An image layer in an OCI registry, as `-o oci.*` describes it: everything needed to open it
/// again later (in a recovered daemon) except credentials, which are looked up again (Docker's
/// config.json, its credential helpers) or handed over separately, never stored here.
public struct OCISourceDescription: Sendable, Codable, Equatable {
    public enum Layer: Sendable, Codable, Equatable {
        /// The only layer (an image with more than one needs oci.layer or oci.blob).
        case only
        case index(Int)
        case digest(String)
    }

    public var reference: ImageReference
    public var layer: Layer = .only
    /// nil: the host's.
    public var platform: Platform?
    /// Plain http to the registry (`oci.insecure`, as in erofs-utils).
    public var insecure = false
    /// `oci.tarindex=PATH`: an EROFS tar index (mkfs.erofs --tar=i) for a tar or gzip-tar layer.
    public var tarIndex: String?
    /// `oci.zinfo=PATH`: gzip checkpoints (AWS SOCI zinfo v2) for a gzip-tar layer.
    public var zinfo: String?
    public var http = HTTPSettings()
    public var cache = CacheSettings()

    public var displayName: String { reference.description }

    /// The keys of this kind of source.
    public static func owns(_ key: String) -> Bool { key.hasPrefix("oci.") }

    /// Reads SOURCE as an image reference when any `oci.` option is given (nil otherwise);
    /// `http.*` and `remote.*` apply too. `oci.username=`/`oci.password=` come back separately
    /// (with a warning: they are visible in the process list).
    public static func parse(
        source: String, options: [(key: String, value: String?)], warn: (String) -> Void
    ) throws(RemoteError) -> (OCISourceDescription, RegistryCredentials?)? {
        guard options.contains(where: { owns($0.key) }) else { return nil }
        func bad(_ message: String) -> RemoteError { RemoteError(.configuration, "-o", message) }
        let reference: ImageReference
        do throws(ImageReference.ParseError) { reference = try ImageReference(parsing: source) } catch {
            throw RemoteError(.configuration, source, "invalid image reference: \(error.reason)")
        }
        var description = OCISourceDescription(reference: reference)
        var username: String?
        var password: String?
        var layerGiven: String?
        for (key, value) in options {
            if try RemoteSourceDescription.applyTransportOption(
                key, value, http: &description.http, cache: &description.cache)
            {
                continue
            }
            func required() throws(RemoteError) -> String {
                guard let value, !value.isEmpty else { throw bad("\(key) needs a value") }
                return value
            }
            switch key {
            case "oci.layer":
                let text = try required()
                guard let index = Int(text), index >= 0, index < 1 << 20 else {
                    throw bad("oci.layer=\(text): a layer index, 0 for the first")
                }
                if let layerGiven, layerGiven != key { throw bad("oci.layer and oci.blob are mutually exclusive") }
                layerGiven = key
                description.layer = .index(index)
            case "oci.blob":
                var digest = try required()
                if !digest.contains(":") { digest = "sha256:" + digest }
                guard ImageReference.isValidDigest(digest) else {
                    throw bad("oci.blob=\(digest.prefix(80)): sha256: and 64 lower-case hex digits")
                }
                if let layerGiven, layerGiven != key { throw bad("oci.layer and oci.blob are mutually exclusive") }
                layerGiven = key
                description.layer = .digest(digest)
            case "oci.platform": description.platform = try Platform(parsing: try required())
            case "oci.username": username = try required()
            case "oci.password": password = value ?? ""
            case "oci.insecure":
                guard value == nil || value == "1" || value == "true" else { throw bad("oci.insecure takes no value") }
                description.insecure = true
            case "oci.tarindex": description.tarIndex = try required()
            case "oci.zinfo": description.zinfo = try required()
            default:
                throw bad(
                    "unknown option \(key) for an image in a registry (oci.blob, oci.layer, oci.platform, oci.username, oci.password, oci.insecure, oci.tarindex, oci.zinfo, http.*, remote.*)"
                )
            }
        }
        if description.zinfo != nil && description.tarIndex == nil {
            throw bad("oci.zinfo needs oci.tarindex (the index the zinfo's tar belongs to)")
        }
        var credentials: RegistryCredentials?
        if username != nil || password != nil {
            guard let username, let password else { throw bad("oci.username and oci.password go together") }
            warn(
                "oci.username/oci.password are visible to other users in the process list: prefer docker login (~/.docker/config.json) or a credential helper"
            )
            credentials = .basic(username: username, password: password)
        }
        return (description, credentials)
    }

    /// Resolves the reference to one layer, checks it and opens it: the layer blob itself
    /// (EROFS), or the tar index followed by the tar (read straight, or inflated from the gzip
    /// blob at the zinfo's checkpoints). `credentials` nil: Docker's config is consulted.
    public func open(
        credentials given: RegistryCredentials?, environment: [String: String], warn: (String) -> Void
    ) throws(RemoteError) -> OCILayerSource {
        if http.insecureTLS {
            warn("\(displayName): http.insecure_tls: the registry's certificate is not checked")
        }
        if insecure {
            warn("\(displayName): oci.insecure: plain http, anyone on the path can read and change the traffic")
        }
        var credentials = given
        if credentials == nil {
            credentials = try DockerConfig.credentials(for: reference.domain, environment: environment)
        }
        let transport = HTTPTransport(settings: http)
        let registry = RegistryClient(
            reference: reference, transport: transport, credentials: credentials, insecure: insecure)
        let (manifestDigest, layer) = try registry.resolveLayer(choice: self.layer, platform: platform ?? .host)
        let format = LayerFormat(mediaType: layer.mediaType)
        let blobName = "\(displayName) layer \(layer.digest)"
        switch (format, tarIndex, zinfo) {
        case (.zstdTar, _, _):
            throw RemoteError(
                .configuration, blobName,
                "zstd-compressed tar layers (\(layer.mediaType ?? "")) are not supported (no random access into zstd yet)"
            )
        case (.erofs(let known), nil, _):
            let blob = try registry.openBlob(layer, name: blobName, cache: cache, warn: warn)
            try Self.checkEROFS(blob, mediaType: layer.mediaType, known: known, name: blobName)
            return OCILayerSource(
                source: blob, layer: layer, reference: reference, manifestDigest: manifestDigest, blob: blob)
        case (.erofs, .some, _):
            throw RemoteError(
                .configuration, blobName,
                "oci.tarindex is for tar and gzip-tar layers; this layer is \(layer.mediaType ?? "without a media type") (EROFS)"
            )
        case (.tar, nil, _), (.gzipTar, nil, _):
            throw RemoteError(
                .configuration, blobName,
                "a \(format == .tar ? "tar" : "gzip tar") layer is read through an EROFS tar index: give oci.tarindex=PATH (mkfs.erofs --tar=i\(format == .tar ? "" : " --gzinfo=ZINFO")) \(format == .tar ? "" : "and oci.zinfo=ZINFO")"
            )
        case (.tar, .some(let indexPath), let zinfo):
            if zinfo != nil {
                throw RemoteError(.configuration, blobName, "oci.zinfo is for gzip layers; this layer is a plain tar")
            }
            let blob = try registry.openBlob(layer, name: blobName, cache: cache, warn: warn)
            let index = try Self.openIndex(indexPath)
            return OCILayerSource(
                source: ConcatenatedSource([index, blob], displayName: blobName), layer: layer, reference: reference,
                manifestDigest: manifestDigest, blob: blob)
        case (.gzipTar, .some(let indexPath), nil):
            throw RemoteError(
                .configuration, blobName,
                "a gzip tar layer needs oci.zinfo=PATH too (mkfs.erofs --tar=i --gzinfo=PATH makes it with \(indexPath))"
            )
        case (.gzipTar, .some(let indexPath), .some(let zinfoPath)):
            let blob = try registry.openBlob(layer, name: blobName, cache: cache, warn: warn)
            let index = try Self.openIndex(indexPath)
            let tar = try GzipIndexedSource(compressed: blob, zinfoPath: zinfoPath)
            return OCILayerSource(
                source: ConcatenatedSource([index, tar], displayName: blobName), layer: layer, reference: reference,
                manifestDigest: manifestDigest, blob: blob)
        }
    }

    private static func openIndex(_ path: String) throws(RemoteError) -> FileSource {
        do { return try FileSource(path: path) } catch {
            throw RemoteError(.configuration, path, "cannot open the tar index: \(error)")
        }
    }

    /// An EROFS layer must start like an EROFS image (superblock magic at 1024): a layer of
    /// an unknown type is accepted only then, and a mislabelled one says so.
    private static func checkEROFS(_ blob: RemoteSource, mediaType: String?, known: Bool, name: String)
        throws(RemoteError)
    {
        let magic: [UInt8]
        do { magic = try blob.read(count: 4, at: 1024) } catch {
            throw RemoteError(.transient, name, "\(error)")
        }
        guard magic == [0xE2, 0xE1, 0xF5, 0xE0] else {
            throw RemoteError(
                .configuration, name,
                known
                    ? "the layer's media type says EROFS, but its bytes are not an EROFS image"
                    : "the layer's media type \(mediaType ?? "(none)") is not one this tool reads (EROFS, or tar/gzip tar with oci.tarindex), and its bytes are not EROFS"
            )
        }
    }
}

/// The opened layer: the source the filesystem is read from, and what was resolved (for
/// messages and `--list`).
public final class OCILayerSource: RandomAccessSource {
    public let source: any RandomAccessSource
    public let layer: Descriptor
    public let reference: ImageReference
    /// The digest of the image manifest the layer was found in (the platform's, under an
    /// index): with the layer's digest, what a mount pins.
    public let manifestDigest: String
    let blob: RemoteSource

    init(
        source: any RandomAccessSource, layer: Descriptor, reference: ImageReference, manifestDigest: String,
        blob: RemoteSource
    ) {
        self.source = source
        self.layer = layer
        self.reference = reference
        self.manifestDigest = manifestDigest
        self.blob = blob
    }

    public var size: UInt64 { source.size }
    public var displayName: String { "\(reference) layer \(layer.digest)" }
    public var localFileDescriptor: FileDescriptor? { nil }
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        try source.read(into: buffer, at: offset)
    }
    public func fileRange(at offset: UInt64, count: Int) -> FileRange? { source.fileRange(at: offset, count: count) }
    public func readAhead(at offset: UInt64, count: Int) { source.readAhead(at: offset, count: count) }

    /// Counters of the blob's requests (tests, benchmarks).
    public var blobRequests: Int { blob.statistics.withLock { $0.requests } }
}

/// Talks the Distribution API for one repository: manifests (by tag or digest, through an
/// index to a platform's manifest) and blobs.
struct RegistryClient {
    let reference: ImageReference
    let transport: HTTPTransport
    let authorizer: RegistryAuthorizer
    let base: String

    init(reference: ImageReference, transport: HTTPTransport, credentials: RegistryCredentials?, insecure: Bool) {
        self.reference = reference
        self.transport = transport
        self.base = "\(insecure ? "http" : "https")://\(reference.registryHost)/v2/\(reference.repository)"
        self.authorizer = RegistryAuthorizer(
            registry: reference.domain, repository: reference.repository, credentials: credentials,
            transport: transport, allowPlainHTTP: insecure)
    }

    /// GETs a manifest or index by tag or digest, checking its digest against `pinned` (and its
    /// size against `size`) when known.
    func fetchDocument(_ manifestReference: String, pinned: String?, size: Int64?) throws(RemoteError) -> (
        digest: String, document: ImageDocument
    ) {
        let name = "\(reference.domain)/\(reference.repository)@\(manifestReference)"
        let request = HTTPRequest(
            url: "\(base)/manifests/\(manifestReference)",
            headers: [("Accept", MediaType.acceptedManifests.joined(separator: ", "))], followRedirects: true)
        let (head, body) = try SmallFetch.perform(
            request, transport: transport, name: name, limit: ImageDocument.maximumSize, signer: authorizer)
        try check(head, name: name, what: "manifest")
        if let size, Int64(body.count) != size {
            throw RemoteError(
                .protocolViolation, name, "the manifest is \(body.count) bytes; its descriptor says \(size)")
        }
        let actual = "sha256:" + hex(SHA256.hash(data: body))
        if let pinned, actual != pinned {
            throw RemoteError(
                .protocolViolation, name, "the manifest's digest is \(actual), not \(pinned): refusing it")
        }
        return (actual, try ImageDocument.decode(body, contentType: head.headers["content-type"], name: name))
    }

    /// A failed status as one line; a 401 after renewal says why authentication failed.
    private func check(_ head: HTTPResponseHead, name: String, what: String) throws(RemoteError) {
        switch head.status {
        case 200: return
        case 401, 403:
            throw authorizer.refusal(status: head.status, name: name)
        case 404:
            throw RemoteError(.notFound, name, "no such \(what) (HTTP 404)", status: 404)
        default:
            throw RangeRead.statusError(head.status, [], name)
        }
    }

    /// Follows the reference to the chosen layer: index -> platform -> manifest -> layer.
    /// Returns the manifest's digest (of the bytes received) with the layer.
    func resolveLayer(choice: OCISourceDescription.Layer, platform: Platform) throws(RemoteError) -> (
        manifestDigest: String, layer: Descriptor
    ) {
        var (manifestDigest, document) = try fetchDocument(
            reference.manifestReference, pinned: reference.digest, size: nil)
        var manifestName = reference.description
        if case .index(let manifests) = document {
            let chosen = try ImageDocument.select(manifests, for: platform, name: manifestName)
            (manifestDigest, document) = try fetchDocument(chosen.digest, pinned: chosen.digest, size: chosen.size)
            manifestName = "\(reference.domain)/\(reference.repository)@\(chosen.digest)"
            if case .index = document {
                throw RemoteError(.protocolViolation, manifestName, "an index inside an index is not followed")
            }
        }
        guard case .manifest(let config, let layers) = document else { preconditionFailure() }
        if let config, reference.digest != nil {
            // Pinned: the config is part of what the digest promises; check it too.
            try verifyConfig(config)
        }
        guard !layers.isEmpty else {
            throw RemoteError(.protocolViolation, manifestName, "the image has no layers: nothing to mount")
        }
        switch choice {
        case .only:
            guard layers.count == 1 else {
                throw RemoteError(
                    .configuration, manifestName,
                    "the image has \(layers.count) layers: choose one with -o oci.layer=N (0 to \(layers.count - 1)) or oci.blob=DIGEST"
                )
            }
            return (manifestDigest, layers[0])
        case .index(let index):
            guard index < layers.count else {
                throw RemoteError(
                    .configuration, manifestName,
                    "oci.layer=\(index): the image has \(layers.count) layer\(layers.count == 1 ? "" : "s") (0 to \(layers.count - 1))"
                )
            }
            return (manifestDigest, layers[index])
        case .digest(let digest):
            guard let layer = layers.first(where: { $0.digest == digest }) else {
                throw RemoteError(.notFound, manifestName, "oci.blob=\(digest): no layer with that digest in the image")
            }
            return (manifestDigest, layer)
        }
    }

    private func verifyConfig(_ config: Descriptor) throws(RemoteError) {
        let name = "\(reference.domain)/\(reference.repository)@\(config.digest)"
        guard config.size <= ImageDocument.maximumSize else {
            throw RemoteError(
                .protocolViolation, name, "the image config is larger than \(ImageDocument.maximumSize) bytes")
        }
        let request = HTTPRequest(url: "\(base)/blobs/\(config.digest)", followRedirects: true)
        let (head, body) = try SmallFetch.perform(
            request, transport: transport, name: name, limit: ImageDocument.maximumSize, signer: authorizer)
        try check(head, name: name, what: "config blob")
        let actual = "sha256:" + hex(SHA256.hash(data: body))
        guard actual == config.digest, Int64(body.count) == config.size else {
            throw RemoteError(
                .protocolViolation, name, "the image config does not match its digest and size: refusing it")
        }
    }

    /// The layer blob as a cached, lazily read source; its size must be the descriptor's.
    func openBlob(_ layer: Descriptor, name: String, cache: CacheSettings, warn: (String) -> Void)
        throws(RemoteError) -> RemoteSource
    {
        let endpoint = RemoteEndpoint(
            url: "\(base)/blobs/\(layer.digest)", displayName: name, followRedirects: true, signer: authorizer,
            contentDigest: layer.digest)
        let (object, firstBytes) = try RemoteObject.open(
            endpoint: endpoint, transport: transport, probe: cache.blockSize)
        guard Int64(object.size) == layer.size else {
            throw RemoteError(
                .protocolViolation, name, "the blob is \(object.size) bytes; the manifest says \(layer.size)")
        }
        return RemoteSource.cached(object: object, firstBytes: firstBytes, cache: cache, warn: warn)
    }
}
