import Foundation

/// Media types of manifests, indexes and layers (OCI image-spec and Docker's schema 2).
public enum MediaType {
    public static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let ociIndex = "application/vnd.oci.image.index.v1+json"
    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    public static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    public static let erofsLayer = "application/vnd.erofs.layer.v1"
    /// What a manifest request accepts (indexes first: a multi-platform tag resolves through one).
    static let acceptedManifests = [ociIndex, dockerManifestList, ociManifest, dockerManifest]
}

/// A content descriptor: what a manifest says about a blob or a child manifest.
public struct Descriptor: Sendable, Equatable, Decodable {
    public var mediaType: String?
    public var digest: String
    public var size: Int64
    public var platform: PlatformJSON?

    public struct PlatformJSON: Sendable, Equatable, Decodable {
        public var os: String?
        public var architecture: String?
        public var variant: String?
    }
}

/// The layer formats a mount can read, from a layer's media type.
public enum LayerFormat: Sendable, Equatable {
    /// `application/vnd.erofs.layer.v1[+...]`, or a type we do not know (then the bytes must be
    /// EROFS).
    case erofs(known: Bool)
    case tar
    case gzipTar
    case zstdTar

    init(mediaType: String?) {
        switch mediaType ?? "" {
        case "application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar",
            "application/vnd.oci.image.layer.nondistributable.v1.tar":
            self = .tar
        case "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip":
            self = .gzipTar
        case "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar.zstd":
            self = .zstdTar
        case let type where type.hasPrefix(MediaType.erofsLayer): self = .erofs(known: true)
        default: self = .erofs(known: false)
        }
    }
}

/// A manifest or an index as fetched: which one it is, and its descriptors. Decoding is strict
/// about what is used (digests, sizes) and ignores the rest, as the spec asks.
public enum ImageDocument: Sendable, Equatable {
    case index([Descriptor])
    case manifest(config: Descriptor?, layers: [Descriptor])

    /// The largest manifest or index read (containerd's limit).
    public static let maximumSize = 4 << 20

    private struct Wire: Decodable {
        var schemaVersion: Int?
        var mediaType: String?
        var manifests: [Descriptor]?
        var layers: [Descriptor]?
        var config: Descriptor?
    }

    /// Decodes `body`; `contentType` is the response's Content-Type, used when the document has
    /// no `mediaType` of its own. Errors are one line naming `name`.
    public static func decode(_ body: [UInt8], contentType: String?, name: String) throws(RemoteError) -> ImageDocument
    {
        func bad(_ message: String) -> RemoteError { RemoteError(.protocolViolation, name, message) }
        guard body.count <= maximumSize else { throw bad("the manifest is larger than \(maximumSize) bytes") }
        let wire: Wire
        do {
            wire = try JSONDecoder().decode(Wire.self, from: Data(body))
        } catch {
            throw bad("not a valid image manifest or index (JSON: \(Self.describe(error)))")
        }
        if wire.schemaVersion == 1 {
            throw bad("Docker schema 1 manifests are not supported (push the image again with a current client)")
        }
        // The media type is what comes before any parameter; an empty Content-Type (or one
        // of parameters only) declares none.
        let declared =
            wire.mediaType
            ?? contentType.map { $0.prefix { $0 != ";" }.trimmingCharacters(in: " ") }.flatMap { $0.isEmpty ? nil : $0 }
        let isIndex: Bool
        switch declared {
        case MediaType.ociIndex, MediaType.dockerManifestList: isIndex = true
        case MediaType.ociManifest, MediaType.dockerManifest: isIndex = false
        default:
            // No usable type: the shape decides (OCI allows a manifest without mediaType).
            switch (wire.manifests != nil, wire.layers != nil) {
            case (true, false): isIndex = true
            case (false, true): isIndex = false
            default: throw bad("neither an image manifest nor an index (media type \(declared ?? "none"))")
            }
        }
        if isIndex {
            guard let manifests = wire.manifests, wire.layers == nil else {
                throw bad("an index without a \"manifests\" list")
            }
            for descriptor in manifests { try check(descriptor, name: name) }
            return .index(manifests)
        }
        guard let layers = wire.layers, wire.manifests == nil else { throw bad("a manifest without a \"layers\" list") }
        for descriptor in layers { try check(descriptor, name: name) }
        if let config = wire.config { try check(config, name: name) }
        return .manifest(config: wire.config, layers: layers)
    }

    private static func check(_ descriptor: Descriptor, name: String) throws(RemoteError) {
        guard ImageReference.isValidDigest(descriptor.digest) else {
            throw RemoteError(
                .protocolViolation, name,
                "descriptor digest \(descriptor.digest.prefix(80)) is not sha256:HEX (other algorithms are not verified, so not read)"
            )
        }
        guard descriptor.size >= 0 else {
            throw RemoteError(.protocolViolation, name, "descriptor \(descriptor.digest) has a negative size")
        }
    }

    private static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context),
            DecodingError.keyNotFound(_, let context), DecodingError.dataCorrupted(let context):
            let path = context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
            return path.isEmpty ? context.debugDescription : "\(path): \(context.debugDescription)"
        default:
            return "\(error)"
        }
    }

    /// The best manifest of an index for `platform` (containerd's ordering: the platform itself,
    /// then what it also runs); entries without a platform are skipped when any has one.
    public static func select(_ manifests: [Descriptor], for platform: Platform, name: String) throws(RemoteError)
        -> Descriptor
    {
        var best: (rank: Int, descriptor: Descriptor)?
        for descriptor in manifests {
            guard let wire = descriptor.platform, let os = wire.os, let architecture = wire.architecture else {
                continue
            }
            let candidate = Platform(os: os, architecture: architecture, variant: wire.variant)
            if let rank = platform.rank(of: candidate), rank < (best?.rank ?? .max) { best = (rank, descriptor) }
        }
        if let best { return best.descriptor }
        if manifests.count == 1 && manifests[0].platform == nil { return manifests[0] }
        let offered = manifests.compactMap { descriptor -> String? in
            guard let wire = descriptor.platform, let os = wire.os, let architecture = wire.architecture else {
                return nil
            }
            return Platform(os: os, architecture: architecture, variant: wire.variant).description
        }
        throw RemoteError(
            .notFound, name,
            "no manifest for platform \(platform) (the index has: \(offered.isEmpty ? "none with a platform" : offered.joined(separator: ", "))); choose one with -o oci.platform=OS/ARCH[/VARIANT]"
        )
    }
}
