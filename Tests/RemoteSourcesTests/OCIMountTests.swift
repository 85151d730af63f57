import Foundation
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `mount.erofs -o oci.* REF DIR` through FUSE on this kernel, against the real registry of
/// OCIRegistryTests: EROFS and tar-index layers equal their manifests, `--list` names the
/// reference and the layer, Basic credentials reach the daemons only in the captured file, a
/// SIGKILLed worker re-opens the layer under a reader, and `-u` leaves nothing.
@Suite(.requiresRoot, .serialized, ociRequirements[0], ociRequirements[1], ociRequirements[2])
struct OCIMountTests {
    let mounts = RemoteMountTests()
    static let warnings = ["oci.insecure: plain http", "oci.username/oci.password are visible"]

    /// After `-u`: no daemon of ours names the registry `host` (the supervisor and every worker
    /// gone).
    func expectNoDaemon(for host: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(
            RemoteMountTests.daemonProcesses(mentioning: host).isEmpty, "a daemon outlived -u",
            sourceLocation: sourceLocation)
    }

    /// The serving worker a FUSE state file names.
    func servingWorker(_ state: String) throws -> Int32 {
        let object = try JSONSerialization.jsonObject(with: FileManager.default.contents(atPath: state) ?? Data())
        return Int32(try #require((object as? [String: Any])?["servingPID"] as? Int))
    }

    /// `--list`'s row for `mountPoint` holds the reference and the layer digest.
    func expectListed(_ mountPoint: String, reference: String, layer: String) throws {
        let list = try mounts.mountErofs(["--list"])
        #expect(list.status == 0, "\(list.standardError)")
        let row = list.standardOutput.split(separator: "\n").first {
            $0.split(separator: "\t").contains { $0 == mountPoint }
        }
        let header = list.standardOutput.split(separator: "\n").first?.split(separator: "\t").count
        #expect(row?.split(separator: "\t", omittingEmptySubsequences: false).count == header, "\(list.standardOutput)")
        #expect(row?.contains(reference) == true && row?.contains(layer) == true, "\(list.standardOutput)")
    }

    /// Corpus layers by index, the plain tar through oci.tarindex and the gzip tar through
    /// oci.tarindex + oci.zinfo: each FUSE mount walks equal to its manifest.
    @Test func erofsAndTarIndexLayersThroughFUSEEqualTheirManifests() throws {
        let registry = try TestRegistry()
        let images = Corpus.imagesOrEmpty.filter { ["lz4", "deflate"].contains($0.name) }
        try #require(images.count == 2, "the corpus is missing")
        try registry.push(images.map { ($0.path, OCIData.erofsType) }, as: "corpus/layers")
        let layers = try registry.manifest("corpus/layers", "v1").json["layers"] as! [[String: Any]]
        let reference = "\(registry.host)/corpus/layers:v1"
        for (index, image) in images.enumerated() {
            let digest = layers[index]["digest"] as! String
            try mounts.mountWalkUnmount(
                source: reference,
                options: "oci.insecure,oci.layer=\(index),remote.cache=none"
                    + (index == 1 ? ",remote.verify=full" : ""), name: image.name,
                manifest: try image.expectedManifest(), warnings: Self.warnings
            ) { mountPoint, _ in
                try expectListed(mountPoint, reference: reference, layer: digest)
            }
            expectNoDaemon(for: registry.host)
        }
        try registry.push([(OCIData.tar, "application/vnd.oci.image.layer.v1.tar")], as: "tree/tar", raw: true)
        try registry.push(
            [(OCIData.shared + "/tree.tar.gz", "application/vnd.oci.image.layer.v1.tar+gzip")], as: "tree/gzip")
        let manifest = try String(contentsOfFile: OCIData.shared + "/tree.manifest.jsonl", encoding: .utf8)
        let index = OCIData.shared + "/index.erofs"
        for (repository, options) in [
            ("tree/tar", "oci.tarindex=\(index)"),
            ("tree/gzip", "oci.tarindex=\(index),oci.zinfo=\(OCIData.shared)/tree.zinfo"),
        ] {
            try mounts.mountWalkUnmount(
                source: "\(registry.host)/\(repository):v1", options: "oci.insecure,remote.cache=none," + options,
                name: repository, manifest: manifest, warnings: Self.warnings)
            expectNoDaemon(for: registry.host)
        }
    }

    /// Basic auth (htpasswd registry), from oci.username/password and from config.json: the
    /// password, and the captured USER:PASSWORD, are in no state file, argv or environment of
    /// ours; one 0600 captured file holds them while mounted, none after `-u`.
    @Test func basicAuthReachesTheDaemonsOnlyInTheCapturedFile() throws {
        let password = "pw-\(UInt64.random(in: 0...UInt64.max))"
        let registry = try TestRegistry(user: ("reader", password))
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "lz4" }, "the corpus is missing")
        try registry.push([(image.path, OCIData.erofsType)], as: "private/lz4", credentials: "reader:\(password)")
        let auth = Data("reader:\(password)".utf8).base64EncodedString()
        let source = "\(registry.host)/private/lz4:v1"
        try mounts.mountWalkUnmount(
            source: source, options: "oci.insecure,remote.cache=none,oci.username=reader,oci.password=\(password)",
            name: image.name, manifest: try image.expectedManifest(), secrets: [password, auth], captured: auth,
            warnings: Self.warnings)
        expectNoDaemon(for: registry.host)

        // A wrong password: exit 32, one line naming the registry, nothing mounted, running or
        // captured.
        let mountPoint = try scratchDirectory("oci-wrong")
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        let wrong = try mounts.mountErofs([
            "-t", "erofs.fuse", source, mountPoint, "-o",
            "oci.insecure,oci.username=reader,oci.password=wrong-\(password)",
        ])
        #expect(wrong.status == 32, "\(wrong.standardError)")
        let errors = wrong.standardError.split(separator: "\n").filter { !$0.contains("warning:") }
        #expect(errors.count == 1 && errors[0].contains(registry.host), "\(wrong.standardError)")
        #expect(!wrong.standardError.contains(password))
        #expect(RemoteMountTests.mount(at: mountPoint) == nil)
        #expect(RemoteMountTests.captured(holding: Data("reader:wrong-\(password)".utf8).base64EncodedString()).isEmpty)
        expectNoDaemon(for: registry.host)

        let directory = try scratchDirectory("oci-docker-config")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try #"{"auths": {"\#(registry.host)": {"auth": "\#(auth)"}}}"#.write(
            toFile: directory + "/config.json", atomically: true, encoding: .utf8)
        try mounts.mountWalkUnmount(
            source: source, options: "oci.insecure,remote.cache=none", name: image.name,
            manifest: try image.expectedManifest(), environment: ["DOCKER_CONFIG": directory],
            secrets: [password, auth], captured: auth, warnings: Self.warnings)
        expectNoDaemon(for: registry.host)
    }

    /// An identity token in config.json (what `docker login` leaves for an OAuth2 registry) is
    /// a refresh token: each access token comes from a POST grant_type=refresh_token to the
    /// realm, never from a Basic GET; it reaches the daemons only in the captured file. A
    /// refused refresh token (400 invalid_grant): exit 32, one line, nothing mounted.
    @Test func identityTokenIsExchangedAtTheRealmAsARefreshToken() throws {
        let registry = try TestRegistry()
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "lz4" }, "the corpus is missing")
        try registry.push([(image.path, OCIData.erofsType)], as: "private/lz4")
        let refreshToken = "rt-\(UInt64.random(in: 0...UInt64.max))"
        let front = try TestServer(
            "/usr/bin/python3",
            [
                TestServer.serversDirectory + "/token_registry.py", "--upstream", "\(registry.port)",
                "--refresh-token", refreshToken, "--lifetime", "2",
            ])
        let source = "127.0.0.1:\(front.port)/private/lz4:v1"
        let directory = try scratchDirectory("oci-identity-token")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func writeConfig(_ token: String) throws {
            try #"{"auths": {"127.0.0.1:\#(front.port)": {"identitytoken": "\#(token)"}}}"#.write(
                toFile: directory + "/config.json", atomically: true, encoding: .utf8)
        }
        try writeConfig(refreshToken)
        let captured = Data(refreshToken.utf8).base64EncodedString()
        try mounts.mountWalkUnmount(
            source: source, options: "oci.insecure,remote.cache=none", name: image.name,
            manifest: try image.expectedManifest(), environment: ["DOCKER_CONFIG": directory],
            secrets: [refreshToken, captured], captured: captured, warnings: Self.warnings)
        expectNoDaemon(for: "127.0.0.1:\(front.port)")
        let stats =
            try JSONSerialization.jsonObject(with: Data(try front.control("GET", "/__stats").utf8)) as! [String: Int]
        // Every token issued was a refresh grant (the mount's and each daemon's), none refused.
        #expect(stats["refresh_grants"]! >= 2 && stats["tokens"] == stats["refresh_grants"], "\(stats)")
        #expect(stats["refused_grants"] == 0 && stats["leaks"] == 0, "\(stats)")

        let wrongToken = "rt-revoked-\(UInt64.random(in: 0...UInt64.max))"
        try writeConfig(wrongToken)
        let mountPoint = try scratchDirectory("oci-identity-wrong")
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        let wrong = try mounts.mountErofs(
            ["-t", "erofs.fuse", source, mountPoint, "-o", "oci.insecure"], environment: ["DOCKER_CONFIG": directory])
        #expect(wrong.status == 32, "\(wrong.standardError)")
        let errors = wrong.standardError.split(separator: "\n").filter { !$0.contains("warning:") }
        #expect(errors.count == 1, "\(wrong.standardError)")
        #expect(errors.first?.contains("refused the identity token") == true, "\(wrong.standardError)")
        #expect(errors.first?.contains("invalid_grant") == true, "\(wrong.standardError)")
        #expect(!wrong.standardError.contains(wrongToken))
        #expect(RemoteMountTests.mount(at: mountPoint) == nil)
        #expect(RemoteMountTests.captured(holding: Data(wrongToken.utf8).base64EncodedString()).isEmpty)
        expectNoDaemon(for: "127.0.0.1:\(front.port)")
    }

    /// The serving worker SIGKILLed under a verifying reader (cold page cache each round): the
    /// next worker opens the layer again (manifest and layer digest pinned, its own token) and
    /// the walk completes equal to the manifest.
    @Test func workerKilledUnderAReaderReopensTheLayer() throws {
        let registry = try TestRegistry()
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "lz4" }, "the corpus is missing")
        try registry.push([(image.path, OCIData.erofsType)], as: "corpus/lz4")
        let expected = try image.expectedManifest()
        try mounts.mountWalkUnmount(
            source: "\(registry.host)/corpus/lz4:v1", options: "oci.insecure,remote.cache=none", name: image.name,
            manifest: expected, warnings: Self.warnings
        ) { mountPoint, state in
            var kills = 0
            for _ in 0..<3 {
                try "3\n".write(toFile: "/proc/sys/vm/drop_caches", atomically: false, encoding: .utf8)
                let walk = Process()
                walk.executableURL = URL(fileURLWithPath: RemoteMountTests.erofs)
                walk.arguments = ["walk", mountPoint]
                let output = Pipe()
                walk.standardOutput = output
                walk.standardError = FileHandle.nullDevice
                try walk.run()
                for _ in 0..<2 {
                    usleep(100_000)
                    let worker = try servingWorker(state)
                    // Counted only while the walk reads (else the kill proves nothing).
                    if walk.isRunning && kill(worker, SIGKILL) == 0 { kills += 1 }
                    // Until the supervisor names the next worker.
                    for _ in 0..<2000 where try servingWorker(state) == worker { usleep(1000) }
                }
                let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                walk.waitUntilExit()
                #expect(walk.terminationStatus == 0)
                let difference = manifestDifference(actual: text, expected: expected)
                #expect(difference == nil, "\(difference ?? "")")
            }
            #expect(kills >= 3, "only \(kills) kills landed during a walk")

            // The tag moved to another image: the next worker still opens the pinned manifest
            // and layer, not what the tag names now.
            let other = try #require(Corpus.imagesOrEmpty.first { $0.name == "plain" }, "a tree other than lz4's")
            try registry.push([(other.path, OCIData.erofsType)], as: "corpus/lz4")
            // Twice: the standby the supervisor keeps ready opened the layer before the push.
            for _ in 0..<2 {
                let worker = try servingWorker(state)
                #expect(kill(worker, SIGKILL) == 0)
                for _ in 0..<2000 where try servingWorker(state) == worker { usleep(1000) }
                usleep(500_000)
            }
            try "3\n".write(toFile: "/proc/sys/vm/drop_caches", atomically: false, encoding: .utf8)
            let walk = try runProgram(RemoteMountTests.erofs, ["walk", mountPoint])
            #expect(walk.status == 0, "\(walk.standardError)")
            #expect(manifestDifference(actual: walk.standardOutput, expected: expected) == nil)
            // Its own row only: other mounts on the host (other tests, a user's) are not its business.
            let list = try mounts.mountErofs(["--list"]).standardOutput
            let row = list.split(separator: "\n").first { $0.contains(mountPoint) }
            #expect(row != nil && !row!.contains("dead"), "\(list)")
        }
        expectNoDaemon(for: registry.host)
    }
}
