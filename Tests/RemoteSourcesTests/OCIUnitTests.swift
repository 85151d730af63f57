import Foundation
import Manifest
import ImageSources
@testable import RemoteSources
import Testing
import Synchronization
import SystemCalls
import SystemPackage

/// Image references as docker and skopeo normalize them (distribution/reference's
/// ParseNormalizedNamed and its test table).
@Suite struct ImageReferenceTests {
    static let digest = "sha256:" + String(repeating: "0123456789abcdef", count: 4)

    @Test(
        arguments: [
            ("ubuntu", "docker.io", "library/ubuntu", "latest", nil),
            ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", nil),
            ("library/ubuntu", "docker.io", "library/ubuntu", "latest", nil),
            ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", nil),
            ("index.docker.io/ubuntu:x", "docker.io", "library/ubuntu", "x", nil),
            ("user/repo", "docker.io", "user/repo", "latest", nil),
            ("docker.io/user/repo/sub", "docker.io", "user/repo/sub", "latest", nil),
            ("localhost/x", "localhost", "x", "latest", nil),
            ("localhost:5000/x:t", "localhost:5000", "x", "t", nil),
            ("myhost:5000/a/b", "myhost:5000", "a/b", "latest", nil),
            ("quay.io/a/b-c_d.e__f---g:v1.0-rc_1", "quay.io", "a/b-c_d.e__f---g", "v1.0-rc_1", nil),
            ("127.0.0.1:5000/foo@\(digest)", "127.0.0.1:5000", "foo", nil, digest),
            ("foo:tag@\(digest)", "docker.io", "library/foo", "tag", digest),
            ("[::1]:5000/foo", "[::1]:5000", "foo", "latest", nil),
            ("Example.COM/foo", "Example.COM", "foo", "latest", nil),
        ] as [(String, String, String, String?, String?)])
    func normalizes(text: String, domain: String, repository: String, tag: String?, digest: String?) throws {
        let reference = try ImageReference(parsing: text)
        #expect(reference.domain == domain)
        #expect(reference.repository == repository)
        #expect(reference.tag == tag)
        #expect(reference.digest == digest)
        #expect(reference.manifestReference == (digest ?? tag!))
    }

    @Test func dockerHubRequestsGoToItsRegistryHost() throws {
        #expect(try ImageReference(parsing: "debian").registryHost == "registry-1.docker.io")
        #expect(try ImageReference(parsing: "localhost/x").registryHost == "localhost")
    }

    @Test(arguments: [
        "", "ubuntu:", ":tag", "Ubuntu", "user/Repo", "a..b", "a___b", "-ab", "ab-", "a//b", "/a", "a/",
        "foo@sha256:abc", "foo@md5:" + String(repeating: "0", count: 32),
        "foo@sha256:" + String(repeating: "A", count: 64),
        "foo:" + String(repeating: "t", count: 129), "foo:-tag", "foo:.tag", "host:99999/foo", "ho_st:5000/foo",
        String(repeating: "0123456789abcdef", count: 4), "foo bar", "foo\u{0}", "é/x",
        "docker.io/" + String(repeating: "a", count: 250),
    ])
    func refuses(text: String) {
        #expect(throws: ImageReference.ParseError.self) { try ImageReference(parsing: text) }
    }
}

/// containerd's platform normalization and `platforms.Only` ordering.
@Suite struct PlatformTests {
    func platform(_ text: String) throws -> Platform { try Platform(parsing: text) }

    @Test func normalizesAsContainerd() throws {
        #expect(try platform("linux/aarch64").normalized == Platform(os: "linux", architecture: "arm64"))
        #expect(try platform("linux/arm64/v8").normalized == Platform(os: "linux", architecture: "arm64"))
        #expect(try platform("linux/arm").normalized == Platform(os: "linux", architecture: "arm", variant: "v7"))
        #expect(try platform("linux/armhf").normalized == Platform(os: "linux", architecture: "arm", variant: "v7"))
        #expect(try platform("linux/armel").normalized == Platform(os: "linux", architecture: "arm", variant: "v6"))
        #expect(try platform("linux/x86_64").normalized == Platform(os: "linux", architecture: "amd64"))
        #expect(try platform("linux/amd64/v1").normalized == Platform(os: "linux", architecture: "amd64"))
        #expect(try platform("linux/i686").normalized == Platform(os: "linux", architecture: "386"))
        #expect(try platform("LINUX/AMD64").normalized == Platform(os: "linux", architecture: "amd64"))
    }

    @Test func aMissingVariantMatches() throws {
        // An index entry without a variant matches a host that has one, and the other way.
        #expect(try platform("linux/arm64/v8").rank(of: platform("linux/arm64")) == 0)
        #expect(try platform("linux/arm64").rank(of: platform("linux/arm64/v8")) == 0)
        #expect(try platform("linux/arm/v7").rank(of: platform("linux/arm")) == 0)
        #expect(try platform("linux/amd64").rank(of: platform("linux/amd64/v1")) == 0)
    }

    @Test func aHostRunsLowerVariantsAndItsThirtyTwoBitArchitecture() throws {
        let amd64v3 = try platform("linux/amd64/v3")
        #expect(try amd64v3.rank(of: platform("linux/amd64/v2"))! < amd64v3.rank(of: platform("linux/amd64"))!)
        #expect(try amd64v3.rank(of: platform("linux/amd64"))! < amd64v3.rank(of: platform("linux/386"))!)
        #expect(try platform("linux/amd64/v2").rank(of: platform("linux/amd64/v3")) == nil)
        let arm64 = try platform("linux/arm64")
        #expect(try arm64.rank(of: platform("linux/arm/v7")) != nil)
        #expect(try arm64.rank(of: platform("linux/arm/v5")) != nil)
        #expect(try platform("linux/arm/v6").rank(of: platform("linux/arm/v7")) == nil)
        #expect(try platform("linux/amd64").rank(of: platform("linux/arm64")) == nil)
        #expect(try platform("linux/amd64").rank(of: platform("windows/amd64")) == nil)
    }

    @Test func anIndexResolvesToTheBestMatch() throws {
        func entry(_ platform: String?, _ digit: Character) -> Descriptor {
            let parts = platform?.split(separator: "/").map(String.init)
            return Descriptor(
                mediaType: MediaType.ociManifest, digest: "sha256:" + String(repeating: digit, count: 64), size: 1,
                platform: parts.map { .init(os: $0[0], architecture: $0[1], variant: $0.count > 2 ? $0[2] : nil) })
        }
        let index = [entry("linux/386", "1"), entry("linux/amd64", "2"), entry("unknown/unknown", "3")]
        #expect(try ImageDocument.select(index, for: platform("linux/amd64/v3"), name: "x").digest.hasSuffix("2"))
        #expect(try ImageDocument.select([index[0]], for: platform("linux/amd64"), name: "x").digest.hasSuffix("1"))
        #expect(throws: RemoteError.self) { try ImageDocument.select(index, for: platform("linux/arm64"), name: "x") }
        #expect(
            try ImageDocument.select([entry(nil, "4")], for: platform("linux/arm64"), name: "x").digest.hasSuffix("4"))
    }

    @Test(arguments: [
        "linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux/amd 64", "linux/" + String(repeating: "a", count: 65),
    ])
    func refuses(text: String) {
        #expect(throws: RemoteError.self) { try Platform(parsing: text) }
    }
}

/// Manifests and indexes: each accepted shape, and hostile input (mutations of valid documents,
/// random bytes, huge and deep ones) refused with a RemoteError, never a crash.
@Suite struct ImageDocumentTests {
    static let digest = "sha256:" + String(repeating: "ab", count: 32)
    static let manifest = """
        {"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
         "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\(digest)","size":10},
         "layers":[{"mediaType":"application/vnd.erofs.layer.v1","digest":"\(digest)","size":4096}]}
        """
    static let index = """
        {"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
         "manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"\(digest)","size":7,
         "platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}
        """

    @Test func acceptsBothFamiliesAndNoMediaType() throws {
        guard
            case .manifest(_, let layers) = try ImageDocument.decode(
                Array(Self.manifest.utf8), contentType: nil, name: "m")
        else { Issue.record("not a manifest"); return }
        #expect(layers.count == 1 && layers[0].size == 4096)
        guard case .index(let entries) = try ImageDocument.decode(Array(Self.index.utf8), contentType: nil, name: "i")
        else { Issue.record("not an index"); return }
        #expect(entries[0].platform?.variant == "v8")
        // No mediaType: the Content-Type, else the shape decides.
        let bare = Self.manifest.replacingOccurrences(
            of: #""mediaType":"application/vnd.oci.image.manifest.v1+json","#, with: "")
        #expect(throws: Never.self) { try ImageDocument.decode(Array(bare.utf8), contentType: nil, name: "m") }
        #expect(throws: Never.self) {
            try ImageDocument.decode(
                Array(bare.utf8), contentType: MediaType.ociManifest + "; charset=utf-8", name: "m")
        }
        #expect(LayerFormat(mediaType: "application/vnd.oci.image.layer.v1.tar+zstd") == .zstdTar)
        #expect(LayerFormat(mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip") == .gzipTar)
        #expect(LayerFormat(mediaType: nil) == .erofs(known: false))
    }

    @Test(arguments: [
        #"{"schemaVersion":1,"fsLayers":[]}"#,
        #"{"schemaVersion":2,"layers":[],"manifests":[]}"#,
        #"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","layers":[]}"#,
        #"{"schemaVersion":2,"layers":[{"digest":"sha512:00","size":1}]}"#,
        #"{"schemaVersion":2,"layers":[{"digest":"\#(digest)","size":-1}]}"#,
        #"{"schemaVersion":2,"layers":[{"digest":"\#(digest)","size":1e400}]}"#,
        #"{"schemaVersion":2,"layers":[{"digest":"\#(digest)"}]}"#,
        #"{"schemaVersion":2,"layers":{"digest":"x"}}"#,
        "[]", "null", "", "\u{FEFF}{",
    ])
    func refusesMalformed(text: String) {
        #expect(throws: RemoteError.self) { try ImageDocument.decode(Array(text.utf8), contentType: nil, name: "x") }
    }

    @Test func refusesHugeAndDeepDocuments() {
        let huge = [UInt8](repeating: 0x20, count: ImageDocument.maximumSize + 1)
        #expect(throws: RemoteError.self) { try ImageDocument.decode(huge, contentType: nil, name: "x") }
        let deep = Array((String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)).utf8)
        #expect(throws: RemoteError.self) { try ImageDocument.decode(deep, contentType: nil, name: "x") }
    }

    /// 20,000 mutations (byte flips, truncations, splices of the two documents): each decodes
    /// or throws a RemoteError, and whatever decodes has only sha256 digests and sizes >= 0.
    @Test func survivesMutations() throws {
        var generator = SystemRandomNumberGenerator()
        let seeds = [Array(Self.manifest.utf8), Array(Self.index.utf8)]
        for round in 0..<20_000 {
            var bytes = seeds[round % 2]
            switch round % 4 {
            case 0:
                for _ in 0..<Int.random(in: 1...8, using: &generator) {
                    bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(
                        in: 0...255, using: &generator)
                }
            case 1: bytes.removeLast(Int.random(in: 1..<bytes.count, using: &generator))
            case 2:
                let other = seeds[(round + 1) % 2]
                let cut = Int.random(in: 0..<bytes.count, using: &generator)
                bytes = Array(bytes[..<cut]) + other[Int.random(in: 0..<other.count, using: &generator)...]
            default:
                let at = Int.random(in: 0..<bytes.count, using: &generator)
                bytes.insert(contentsOf: bytes[at..<min(bytes.count, at + 40)], at: at)
            }
            do {
                switch try ImageDocument.decode(bytes, contentType: nil, name: "x") {
                case .index(let entries):
                    #expect(entries.allSatisfy { ImageReference.isValidDigest($0.digest) && $0.size >= 0 })
                case .manifest(let config, let layers):
                    #expect(layers.allSatisfy { ImageReference.isValidDigest($0.digest) && $0.size >= 0 })
                    #expect(config.map { ImageReference.isValidDigest($0.digest) } ?? true)
                }
            } catch {}
        }
    }
}

/// The WWW-Authenticate parser, on Distribution's and Docker Hub's challenges and hostile ones.
@Suite struct AuthChallengeTests {
    @Test func parsesBearerAndBasic() throws {
        let bearer = try #require(
            AuthChallenge(
                header:
                    #"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#
            ))
        #expect(bearer.scheme == "bearer")
        #expect(bearer.parameters["realm"] == "https://auth.docker.io/token")
        #expect(bearer.parameters["scope"] == "repository:library/debian:pull")
        let basic = try #require(AuthChallenge(header: #"Basic realm="a \"quoted\" realm""#))
        #expect(basic.scheme == "basic" && basic.parameters["realm"] == #"a "quoted" realm"#)
        let tokens = try #require(AuthChallenge(header: "Bearer realm=x , service=y"))
        #expect(tokens.parameters == ["realm": "x", "service": "y"])
    }

    @Test func survivesHostileHeaders() {
        #expect(AuthChallenge(header: "") == nil)
        #expect(AuthChallenge(header: #"Bearer realm="unterminated"#) == nil)
        for _ in 0..<5_000 {
            let bytes = (0..<Int.random(in: 0...80)).map { _ in UInt8.random(in: 0x20...0x7e) }
            _ = AuthChallenge(header: String(decoding: bytes, as: UTF8.self))
        }
        _ = AuthChallenge(header: "Bearer " + String(repeating: "a=b,", count: 100_000))
    }
}

/// The zinfo reader and the inflating source, on ../shared/oci's tree.tar.gz and the zinfo
/// mkfs.erofs 1.9.3 made for it, and on hostile zinfo files.
@Suite struct GzipIndexTests {
    static let zinfo = OCIData.shared + "/tree.zinfo"

    func parse(_ bytes: [UInt8], compressedSize: UInt64 = 10_703_895) throws -> GzipCheckpoints {
        try GzipCheckpoints(
            fileSize: UInt64(bytes.count), header: Array(bytes.prefix(12)), compressedSize: compressedSize,
            entry: { index in
                let start = 12 + index * GzipCheckpoints.entrySize
                return Array(bytes[min(start, bytes.count)..<min(start + 17, bytes.count)])
            }, name: "zinfo")
    }

    /// Random reads (and a sequential pass) of the inflated stream equal the tar's bytes.
    @Test func readsEqualTheUncompressedTar() throws {
        let compressed = try FileSource(path: OCIData.shared + "/tree.tar.gz")
        let source = try GzipIndexedSource(compressed: compressed, zinfoPath: Self.zinfo)
        let tar = try FileSource(path: OCIData.tar)
        #expect(source.size == tar.size)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let offset = UInt64.random(in: 0..<source.size, using: &generator)
            let count = Int.random(in: 1...300_000, using: &generator)
            #expect(try source.read(count: count, at: offset) == tar.read(count: count, at: offset), "at \(offset)")
        }
        var offset: UInt64 = 0
        while offset < source.size {
            #expect(try source.read(count: 1 << 20, at: offset) == tar.read(count: 1 << 20, at: offset))
            offset += 1 << 20
        }
    }

    @Test func acceptsTheRealZinfo() throws {
        let bytes = [UInt8](FileManager.default.contents(atPath: Self.zinfo)!)
        let checkpoints = try parse(bytes)
        #expect(checkpoints.checkpoints.count == 13 && checkpoints.spanSize == 4 << 20)
        #expect(checkpoints.checkpoints[0] == .init(inBit: 80, out: 0, windowOffset: 29))
    }

    /// Every mutation of the header and checkpoint fields, truncations and count lies: a
    /// RemoteError or checkpoints that are in order and inside the blob, never a crash or an
    /// allocation the file's size does not pay for.
    @Test func refusesHostileZinfo() throws {
        let real = [UInt8](FileManager.default.contents(atPath: Self.zinfo)!)
        var generator = SystemRandomNumberGenerator()
        let fieldBytes =
            Array(0..<12) + (0..<13).flatMap { entry in (0..<17).map { 12 + entry * GzipCheckpoints.entrySize + $0 } }
        for round in 0..<5_000 {
            var bytes = real
            if round % 10 == 0 {
                bytes.removeLast(Int.random(in: 1..<bytes.count, using: &generator))
            } else {
                for _ in 0..<Int.random(in: 1...4, using: &generator) {
                    bytes[fieldBytes.randomElement(using: &generator)!] = UInt8.random(in: 0...255, using: &generator)
                }
            }
            if let checkpoints = try? parse(bytes) {
                let points = checkpoints.checkpoints
                #expect(points.first?.out == 0)
                #expect(zip(points, points.dropFirst()).allSatisfy { $0.out < $1.out && $0.inBit < $1.inBit })
                #expect(points.allSatisfy { $0.inBit >> 3 <= 10_703_895 })
            }
        }
        // A last checkpoint whose output offset leaves no room for the size computed from it
        // (was: an arithmetic overflow trap when the source was made).
        var far = real
        let lastOut = 12 + 12 * GzipCheckpoints.entrySize + 8
        withUnsafeBytes(of: (UInt64.max - 1).littleEndian) { far.replaceSubrange(lastOut..<(lastOut + 8), with: $0) }
        #expect { try parse(far) } throws: { "\($0)".contains("past 16 TiB of output") }
        // A header announcing 2^32-1 checkpoints in a 12-byte file.
        #expect(throws: RemoteError.self) { try parse([0xff, 0xff, 0xff, 0xff] + [UInt8](repeating: 0, count: 8)) }
        #expect(throws: RemoteError.self) { try parse([]) }
        #expect(throws: RemoteError.self) { try parse(real, compressedSize: 1000) }
    }
}

/// A content-addressed blob is hashed once every block has been read: bytes that do not match
/// the digest fail every later read; matching ones are marked verified.
@Suite(.requires(.pythonModule("http.server"))) struct BlobDigestTests {
    func open(_ url: String, digest: String) throws -> RemoteSource {
        let endpoint = RemoteEndpoint(url: url, displayName: url, followRedirects: true, contentDigest: digest)
        var settings = HTTPSettings()
        settings.retries = 0
        let (object, first) = try RemoteObject.open(
            endpoint: endpoint, transport: HTTPTransport(settings: settings), probe: 64 << 10)
        var cache = CacheSettings()
        cache.directory = nil
        return RemoteSource.cached(object: object, firstBytes: first, cache: cache) { _ in }
    }

    func waitForCheck(_ source: RemoteSource, until done: () -> Bool) {
        let deadline = Date().addingTimeInterval(10)
        while !done() && Date() < deadline { usleep(20_000) }
    }

    @Test func aBlobIsVerifiedOnceWholeAndAMismatchFailsLaterReads() throws {
        let directory = try scratchDirectory("digest")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let bytes = randomBytes(1 << 20 | 123)
        try Data(bytes).write(to: URL(fileURLWithPath: directory + "/blob"))
        let server = try TestServer.rangeServer(root: directory)
        let url = "http://127.0.0.1:\(server.port)/blob"
        let right = "sha256:" + hex(sha256Digest(bytes))

        let good = try open(url, digest: right)
        #expect(try good.read(count: bytes.count, at: 0) == bytes)
        waitForCheck(good) { good.digestVerified }
        #expect(good.digestVerified)

        let bad = try open(url, digest: "sha256:" + String(repeating: "0", count: 64))
        #expect(try bad.read(count: bytes.count, at: 0) == bytes)
        waitForCheck(bad) { (try? bad.read(count: 1, at: 0)) == nil }
        #expect {
            _ = try bad.read(count: 1, at: 0)
        } throws: { "\($0)".contains("not its digest") }
        #expect(!bad.digestVerified)
    }
}

private func sha256Digest(_ bytes: [UInt8]) -> [UInt8] {
    var hasher = Manifest.SHA256()
    hasher.update(bytes)
    return hasher.finalize()
}

/// Docker's config.json lookup: which entry a registry gets, in docker's order, and the
/// helper's answers; nothing is read when no file exists.
@Suite struct DockerConfigTests {
    func lookup(
        _ json: String, _ domain: String, helper: @escaping (String, String) -> RegistryCredentials? = { _, _ in nil }
    )
        throws -> RegistryCredentials?
    {
        let directory = try scratchDirectory("docker-config-unit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try json.write(toFile: directory + "/config.json", atomically: true, encoding: .utf8)
        return try DockerConfig.credentials(for: domain, environment: ["DOCKER_CONFIG": directory]) { name, server in
            helper(name, server)
        }
    }

    @Test func findsTheEntryForTheRegistry() throws {
        let auth = Data("u:p:with:colons".utf8).base64EncodedString()
        #expect(
            try lookup(#"{"auths": {"https://index.docker.io/v1/": {"auth": "\#(auth)"}}}"#, "docker.io")
                == .basic(username: "u", password: "p:with:colons"))
        #expect(try lookup(#"{"auths": {"reg.example:5000": {"auth": "\#(auth)"}}}"#, "reg.example:5000") != nil)
        #expect(try lookup(#"{"auths": {"reg.example:5000": {"auth": "\#(auth)"}}}"#, "reg.example") == nil)
        #expect(
            try lookup(#"{"auths": {"https://reg.example/v1/": {"identitytoken": "tok"}}}"#, "reg.example")
                == .identityToken("tok"))
        #expect(throws: RemoteError.self) { try lookup(#"{"auths": {"r.io": {"auth": "not base64!"}}}"#, "r.io") }
        #expect(throws: RemoteError.self) { try lookup("{not json", "r.io") }
    }

    @Test func credentialHelpersComeFirstThenAuthsThenTheStore() throws {
        var asked: [(String, String)] = []
        let helper = { (name: String, server: String) -> RegistryCredentials? in
            asked.append((name, server))
            return .basic(username: name, password: "x")
        }
        let auth = Data("a:b".utf8).base64EncodedString()
        let config =
            #"{"credHelpers": {"r.io": "one"}, "auths": {"r.io": {"auth": "\#(auth)"}, "s.io": {"auth": "\#(auth)"}}, "credsStore": "store"}"#
        #expect(try lookup(config, "r.io", helper: helper) == .basic(username: "one", password: "x"))
        #expect(try lookup(config, "s.io", helper: helper) == .basic(username: "a", password: "b"))
        #expect(try lookup(config, "t.io", helper: helper) == .basic(username: "store", password: "x"))
        #expect(try lookup(#"{"credsStore": "store"}"#, "docker.io", helper: helper) != nil)
        #expect(asked.map(\.0) == ["one", "store", "store"])
        #expect(asked.last?.1 == "https://index.docker.io/v1/")
    }

    @Test func aMissingHelperOrConfigIsSaidOrIgnored() throws {
        #expect(try DockerConfig.credentials(for: "r.io", environment: ["DOCKER_CONFIG": "/nonexistent"]) == nil)
        #expect(throws: RemoteError.self) { try DockerConfig.runCredentialHelper("no-such-helper-here", "r.io") }
        #expect(throws: RemoteError.self) { try DockerConfig.runCredentialHelper("../x", "r.io") }
    }
}

/// A tar index followed by its tar, read as one device: a read-ahead hint reaches each part it
/// covers, at the part's own offsets.
@Suite struct ConcatenatedSourceTests {
    final class Part: RandomAccessSource, @unchecked Sendable {
        let size: UInt64
        let hints = Mutex<[Range<UInt64>]>([])
        init(size: UInt64) { self.size = size }
        var displayName: String { "part" }
        var localFileDescriptor: FileDescriptor? { nil }
        func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
            let count = Int(min(UInt64(buffer.count), size - min(size, offset)))
            buffer.baseAddress?.initializeMemory(as: UInt8.self, repeating: 0, count: count)
            return count
        }
        func readAhead(at offset: UInt64, count: Int) {
            hints.withLock { $0.append(offset..<(offset + UInt64(count))) }
        }
    }

    @Test func aHintReachesEachPartItCovers() {
        let index = Part(size: 1000)
        let tar = Part(size: 5000)
        let device = ConcatenatedSource([index, tar], displayName: "layer")
        device.readAhead(at: 900, count: 300)  // across the seam
        device.readAhead(at: 2000, count: 100_000)  // past the end: cut at it
        device.readAhead(at: 6000, count: 10)  // beyond: nothing
        #expect(index.hints.withLock { $0 } == [900..<1000])
        #expect(tar.hints.withLock { $0 } == [0..<200, 1000..<5000])
    }
}
