import Foundation
import Manifest
import Testing
import TestSupport

/// Debian's docker-registry (CNCF Distribution 2.8) on loopback, started by a test, with its
/// storage in a scratch directory; Basic auth from an htpasswd file when `user` is given.
final class TestRegistry: @unchecked Sendable {
    let directory: String
    let server: TestServer
    var port: Int { server.port }
    var host: String { "127.0.0.1:\(port)" }

    init(user: (name: String, password: String)? = nil) throws {
        directory = try scratchDirectory("registry")
        let port = TestServer.freePort()
        var config = """
            version: 0.1
            log: {level: error, accesslog: {disabled: true}}
            storage: {filesystem: {rootdirectory: \(directory)/storage}, delete: {enabled: true}}
            http: {addr: 127.0.0.1:\(port)}

            """
        if let user {
            let result = try runProgram(
                "/usr/bin/htpasswd", ["-Bbc", directory + "/htpasswd", user.name, user.password])
            guard result.status == 0 else { throw ServerError("htpasswd: \(result.standardError)") }
            config += "auth: {htpasswd: {realm: test, path: \(directory)/htpasswd}}\n"
        }
        try config.write(toFile: directory + "/config.yml", atomically: true, encoding: .utf8)
        server = try TestServer("/usr/bin/docker-registry", ["serve", directory + "/config.yml"], port: port)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    /// Writes an OCI layout of `layers` (path, media type) — one image, or with `platforms` an
    /// index with one single-layer image per platform — and pushes it as REPO:TAG: with skopeo,
    /// or (`raw`) with the Distribution API as it is (skopeo gzips uncompressed tar layers).
    func push(
        _ layers: [(path: String, mediaType: String)], as repository: String, tag: String = "v1",
        platforms: [String] = [], credentials: String? = nil, raw: Bool = false
    ) throws {
        let layout = directory + "/layout-\(repository.replacingOccurrences(of: "/", with: "_"))-\(tag)"
        var arguments = [TestServer.serversDirectory + "/oci_layout.py", layout, tag]
        for platform in platforms { arguments += ["--platform", platform] }
        arguments += layers.map { "\($0.path):\($0.mediaType)" }
        var result = try runProgram("/usr/bin/python3", arguments)
        guard result.status == 0 else { throw ServerError("oci_layout.py: \(result.standardError)") }
        if raw {
            result = try runProgram(
                "/usr/bin/python3",
                [TestServer.serversDirectory + "/oci_layout.py", "--push", layout, tag, "http://\(host)/\(repository)"])
        } else {
            // --all: every platform of an index (skopeo copies only the host's otherwise).
            var copy = ["copy", "-q", "--all", "--dest-tls-verify=false"]
            if let credentials { copy += ["--dest-creds", credentials] }
            result = try runProgram(
                "/usr/bin/skopeo", copy + ["oci:\(layout):\(tag)", "docker://\(host)/\(repository):\(tag)"])
        }
        guard result.status == 0 else { throw ServerError("push: \(result.standardError)") }
    }

    /// The manifest (or index) of REPO:REF as the registry stores it: its digest and JSON.
    func manifest(_ repository: String, _ reference: String) throws -> (digest: String, json: [String: Any]) {
        let result = try runProgram(
            "/usr/bin/curl",
            [
                "-sfi", "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
                "http://\(host)/v2/\(repository)/manifests/\(reference)",
            ])
        let parts = result.standardOutput.components(separatedBy: "\r\n\r\n")
        let digest = parts[0].components(separatedBy: "\r\n").first {
            $0.lowercased().hasPrefix("docker-content-digest:")
        }
        .map { $0.split(separator: " ").last.map(String.init) ?? "" }
        let json = try JSONSerialization.jsonObject(with: Data(parts[1].utf8)) as! [String: Any]
        return (digest ?? "", json)
    }
}

/// `erofs` with options, in an environment of its own (DOCKER_CONFIG, PATH for helpers).
func runErofs(_ arguments: [String], environment: [String: String] = [:]) throws -> ProcessResult {
    let settings =
        ["DOCKER_CONFIG=/nonexistent"].filter { _ in environment["DOCKER_CONFIG"] == nil }
        + environment.map { "\($0.key)=\($0.value)" }
    return try runProgram("/usr/bin/env", settings + [builtProductsDirectory() + "/erofs"] + arguments)
}

/// The lines of stderr that are not warnings.
func errorLines(_ result: ProcessResult) -> [String] {
    result.standardError.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("erofs: warning:") }
}

/// The `ls --recursive --json --sha256` walk of a registry layer equals `manifest`.
func expectLayerWalk(
    _ reference: String, _ options: String, equals manifestPath: String, environment: [String: String] = [:],
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let result = try runErofs(
        ["ls", "--recursive", "--json", "--sha256", "-o", "oci.insecure,remote.cache=none," + options, reference],
        environment: environment)
    #expect(result.status == 0, "\(reference) \(options): \(result.standardError)", sourceLocation: sourceLocation)
    let expected = try String(contentsOfFile: manifestPath, encoding: .utf8)
    let difference = manifestDifference(actual: result.standardOutput, expected: expected)
    #expect(difference == nil, "\(reference) \(options): \(difference ?? "")", sourceLocation: sourceLocation)
}

let ociRequirements: [ConditionTrait] = [
    .requires(.program("docker-registry")), .requires(.program("skopeo")), .requires(.program("htpasswd")),
]

/// The shared tar/gzip-tar layer data (../shared/oci) and a few corpus images as layers.
enum OCIData {
    static var shared: String { Corpus.locate()!.directory + "/../oci" }
    static let erofsType = "application/vnd.erofs.layer.v1"
    static let corpusNames = ["lz4", "deflate", "chunked"]

    /// tree.tar made from tree.tar.gz (not stored: 56 MB), once per test process.
    static let tar: String = {
        let path = NSTemporaryDirectory() + "oci-tree-\(getpid()).tar"
        if !FileManager.default.fileExists(atPath: path) {
            _ = try? runProgram(
                "/bin/sh", ["-c", "gunzip -c '\(shared)/tree.tar.gz' > '\(path).part' && mv '\(path).part' '\(path)'"])
        }
        return path
    }()
}

@Suite(.serialized, ociRequirements[0], ociRequirements[1], ociRequirements[2])
struct OCIRegistryTests {
    let corpus = Corpus.locate()!

    func corpusImage(_ name: String) -> Corpus.Image {
        (try? corpus.images())!.first { $0.name == name }!
    }

    /// Each corpus layer by index and by digest, the reference by tag and pinned by digest:
    /// equal to the kernel's manifest of the image.
    @Test func erofsLayersByIndexAndByDigestEqualTheirManifests() throws {
        let registry = try TestRegistry()
        let images = OCIData.corpusNames.map(corpusImage)
        try registry.push(images.map { ($0.path, OCIData.erofsType) }, as: "corpus/layers")
        let (manifestDigest, manifest) = try registry.manifest("corpus/layers", "v1")
        let layers = manifest["layers"] as! [[String: Any]]
        #expect(layers.count == images.count)
        for (index, image) in images.enumerated() {
            try expectLayerWalk("\(registry.host)/corpus/layers:v1", "oci.layer=\(index)", equals: image.manifestPath)
            let digest = layers[index]["digest"] as! String
            // oci.blob without the sha256: prefix, as erofs-utils accepts it.
            try expectLayerWalk(
                "\(registry.host)/corpus/layers@\(manifestDigest)", "oci.blob=\(digest.dropFirst(7))",
                equals: image.manifestPath)
        }
        // Several layers and no choice; a layer out of range; both choices; a digest not there.
        for (options, message) in [
            ("oci.insecure", "has 3 layers"), ("oci.insecure,oci.layer=3", "oci.layer=3"),
            ("oci.insecure,oci.layer=0,oci.blob=\(String(repeating: "a", count: 64))", "mutually exclusive"),
            ("oci.insecure,oci.blob=\(String(repeating: "a", count: 64))", "no layer with that digest"),
        ] {
            let result = try runErofs(["ls", "-o", options, "\(registry.host)/corpus/layers:v1"])
            #expect(result.status != 0)
            #expect(errorLines(result).count == 1 && result.standardError.contains(message), "\(result.standardError)")
        }
        // An image without layers (was: "choose one with -o oci.layer=N (0 to -1)").
        try registry.push([], as: "corpus/empty", raw: true)
        let empty = try runErofs(["ls", "-o", "oci.insecure", "\(registry.host)/corpus/empty:v1"])
        #expect(empty.status != 0)
        #expect(
            errorLines(empty).count == 1 && empty.standardError.contains("the image has no layers"),
            "\(empty.standardError)")
        let missing = try runErofs(
            ["ls", "-o", "oci.insecure", "\(registry.host)/corpus/layers@sha256:\(String(repeating: "0", count: 64))"])
        #expect(missing.status != 0 && missing.standardError.contains("404"), "\(missing.standardError)")
    }

    /// The plain tar layer (pushed as is) through oci.tarindex, and the gzip tar layer through
    /// oci.tarindex + oci.zinfo, equal the kernel's manifest of index + tar.
    @Test func tarAndGzipTarLayersThroughTheTarIndexEqualTheManifest() throws {
        let registry = try TestRegistry()
        try registry.push([(OCIData.tar, "application/vnd.oci.image.layer.v1.tar")], as: "tree/tar", raw: true)
        try registry.push(
            [(OCIData.shared + "/tree.tar.gz", "application/vnd.oci.image.layer.v1.tar+gzip")], as: "tree/gzip")
        let manifest = OCIData.shared + "/tree.manifest.jsonl"
        let index = OCIData.shared + "/index.erofs"
        try expectLayerWalk("\(registry.host)/tree/tar:v1", "oci.tarindex=\(index)", equals: manifest)
        try expectLayerWalk(
            "\(registry.host)/tree/gzip:v1", "oci.tarindex=\(index),oci.zinfo=\(OCIData.shared)/tree.zinfo",
            equals: manifest)
        // Without the index, or the zinfo: one line saying what to give.
        for (reference, options, message) in [
            ("tree/tar:v1", "oci.insecure", "oci.tarindex=PATH"),
            ("tree/gzip:v1", "oci.insecure,oci.tarindex=\(index)", "oci.zinfo=PATH"),
        ] {
            let result = try runErofs(["ls", "-o", options, "\(registry.host)/\(reference)"])
            #expect(result.status != 0)
            #expect(errorLines(result).count == 1 && result.standardError.contains(message), "\(result.standardError)")
        }
    }

    /// An index of platforms: oci.platform picks one (a missing variant matching, as in
    /// containerd); the host's is the default; zstd layers are refused by name.
    @Test func platformsFromAnIndexAndZstdRefused() throws {
        let registry = try TestRegistry()
        let lz4 = corpusImage("lz4")
        let deflate = corpusImage("deflate")
        let host = try runProgram("/usr/bin/uname", ["-m"]).standardOutput.trimmingCharacters(
            in: .whitespacesAndNewlines)
        let hostPlatform = host == "aarch64" ? "linux/arm64/v8" : "linux/amd64"
        let otherPlatform = host == "aarch64" ? "linux/amd64" : "linux/arm64/v8"
        try registry.push(
            [(lz4.path, OCIData.erofsType), (deflate.path, OCIData.erofsType)], as: "multi/arch",
            platforms: [hostPlatform, otherPlatform])
        try expectLayerWalk("\(registry.host)/multi/arch:v1", "oci.layer=0", equals: lz4.manifestPath)
        let other = host == "aarch64" ? "linux/amd64" : "linux/arm64"  // no variant: matches v8
        try expectLayerWalk("\(registry.host)/multi/arch:v1", "oci.platform=\(other)", equals: deflate.manifestPath)
        let none = try runErofs(["ls", "-o", "oci.insecure,oci.platform=linux/s390x", "\(registry.host)/multi/arch:v1"])
        #expect(none.status != 0 && none.standardError.contains("no manifest for platform linux/s390x"))
        #expect(none.standardError.contains(hostPlatform), "\(none.standardError)")

        try registry.push([(lz4.path, "application/vnd.oci.image.layer.v1.tar+zstd")], as: "zstd/layer", raw: true)
        let zstd = try runErofs(["ls", "-o", "oci.insecure", "\(registry.host)/zstd/layer:v1"])
        #expect(zstd.status != 0 && errorLines(zstd).count == 1 && zstd.standardError.contains("zstd"))
    }

    /// An htpasswd registry (Basic auth straight to it): credentials from config.json's
    /// `auths`, from a credential helper (`credHelpers`), from oci.username/password (with the
    /// warning); wrong or no credentials fail with one line.
    @Test func basicAuthFromDockerConfigAndCredentialHelpers() throws {
        let registry = try TestRegistry(user: ("alice", "s3cret-pass"))
        let lz4 = corpusImage("lz4")
        try registry.push([(lz4.path, OCIData.erofsType)], as: "private/img", credentials: "alice:s3cret-pass")
        let reference = "\(registry.host)/private/img:v1"
        let config = try scratchDirectory("docker-config")
        defer { try? FileManager.default.removeItem(atPath: config) }
        func writeConfig(_ json: String) throws {
            try json.write(toFile: config + "/config.json", atomically: true, encoding: .utf8)
        }
        let auth = Data("alice:s3cret-pass".utf8).base64EncodedString()
        try writeConfig(#"{"auths": {"http://\#(registry.host)/v1/": {"auth": "\#(auth)"}}}"#)
        try expectLayerWalk(reference, "oci.layer=0", equals: lz4.manifestPath, environment: ["DOCKER_CONFIG": config])

        // A credential helper: the server on stdin, the secret on stdout, never in argv.
        let helper = config + "/docker-credential-testhelper"
        try """
        #!/bin/sh
        read server
        echo "$server" > \(config)/helper-asked
        echo '{"ServerURL": "'"$server"'", "Username": "alice", "Secret": "s3cret-pass"}'
        """.write(toFile: helper, atomically: true, encoding: .utf8)
        chmod(helper, 0o755)
        try writeConfig(#"{"credHelpers": {"\#(registry.host)": "testhelper"}}"#)
        try expectLayerWalk(
            reference, "oci.layer=0", equals: lz4.manifestPath,
            environment: ["DOCKER_CONFIG": config, "PATH": config + ":/usr/bin:/bin"])
        #expect(try String(contentsOfFile: config + "/helper-asked", encoding: .utf8) == registry.host + "\n")

        let inline = try runErofs([
            "ls", "-o", "oci.insecure,oci.username=alice,oci.password=s3cret-pass", reference,
        ])
        #expect(inline.status == 0 && inline.standardError.contains("visible to other users"))

        try writeConfig(
            #"{"auths": {"\#(registry.host)": {"auth": "\#(Data("alice:wrong".utf8).base64EncodedString())"}}}"#)
        let wrong = try runErofs(["ls", "-o", "oci.insecure", reference], environment: ["DOCKER_CONFIG": config])
        #expect(wrong.status != 0 && errorLines(wrong).count == 1, "\(wrong.standardError)")
        #expect(wrong.standardError.contains("refused the user name or password"), "\(wrong.standardError)")
        #expect(!wrong.standardError.contains("wrong") || !wrong.standardError.contains("alice:wrong"))
        let anonymous = try runErofs(["ls", "-o", "oci.insecure", reference])
        #expect(anonymous.status != 0 && errorLines(anonymous).count == 1)
        #expect(anonymous.standardError.contains("wants a user name and password"), "\(anonymous.standardError)")
    }

    /// A Bearer-token front door whose tokens live one second: a long read renews the token
    /// many times (before expiry and on 401s) and equals the manifest; blob redirects to
    /// another host never carry the Authorization header; wrong credentials: one line.
    @Test func bearerTokensAreRenewedAcrossExpiriesAndNeverLeakedOnRedirects() throws {
        let registry = try TestRegistry()
        try registry.push(
            [(OCIData.shared + "/tree.tar.gz", "application/vnd.oci.image.layer.v1.tar+gzip")], as: "tree/gzip")
        let front = try TestServer(
            "/usr/bin/python3",
            [
                TestServer.serversDirectory + "/token_registry.py", "--upstream", "\(registry.port)", "--user",
                "bob:token-pass", "--lifetime", "1",
            ])
        let config = try scratchDirectory("docker-config")
        defer { try? FileManager.default.removeItem(atPath: config) }
        let auth = Data("bob:token-pass".utf8).base64EncodedString()
        try #"{"auths": {"127.0.0.1:\#(front.port)": {"auth": "\#(auth)"}}}"#.write(
            toFile: config + "/config.json", atomically: true, encoding: .utf8)
        let start = Date()
        // Small blocks and no readahead: many requests, spread over the whole walk.
        try expectLayerWalk(
            "127.0.0.1:\(front.port)/tree/gzip:v1",
            "remote.block_size=64K,remote.readahead=0,oci.tarindex=\(OCIData.shared)/index.erofs,oci.zinfo=\(OCIData.shared)/tree.zinfo",
            equals: OCIData.shared + "/tree.manifest.jsonl", environment: ["DOCKER_CONFIG": config])
        let seconds = Date().timeIntervalSince(start)
        let stats =
            try JSONSerialization.jsonObject(with: Data(try front.control("GET", "/__stats").utf8)) as! [String: Int]
        #expect(stats["leaks"] == 0, "\(stats)")
        #expect(stats["storage_requests"]! > 10, "\(stats)")
        // A token per ~0.8 s of reading, at least: renewed across every expiry.
        #expect(Double(stats["tokens"]!) >= seconds / 2, "\(stats) in \(seconds) s")

        let wrong = try runErofs([
            "ls", "-o", "oci.insecure,oci.username=bob,oci.password=nope", "127.0.0.1:\(front.port)/tree/gzip:v1",
        ])
        #expect(wrong.status != 0 && errorLines(wrong).count == 1, "\(wrong.standardError)")
        #expect(wrong.standardError.contains("refused the credentials"))
    }
}
