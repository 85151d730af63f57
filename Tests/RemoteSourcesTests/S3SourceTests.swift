import Foundation
import ImageSources
@testable import RemoteSources
import SystemCalls
import Testing
import TestSupport

/// A moto S3 server that checks SigV4 signatures against an IAM user's key, with files uploaded.
struct MotoFixture {
    let server: TestServer
    let accessKey: String
    let secretKey: String
    static let bucket = "images"
    var endpoint: String { "http://127.0.0.1:\(server.port)" }

    init(files: [String]) throws {
        let port = TestServer.freePort()
        server = try TestServer(
            // `python3 -m`: the moto_server script may not be on PATH (a pyenv shim not yet made).
            "/usr/bin/env", ["python3", "-m", "moto.server", "-H", "127.0.0.1", "-p", "\(port)"],
            environment: ["INITIAL_NO_AUTH_ACTION_COUNT": "3"], port: port)
        let setup = try runProgram(
            "/usr/bin/env", ["python3", TestServer.serversDirectory + "/moto_setup.py", "\(port)", Self.bucket] + files)
        guard setup.status == 0 else { throw ServerError("moto setup: \(setup.standardError)") }
        let lines = setup.standardOutput.split(separator: "\n").map(String.init)
        accessKey = lines[0]
        secretKey = lines[1]
    }

    var environment: [String: String] { ["AWS_ACCESS_KEY_ID": accessKey, "AWS_SECRET_ACCESS_KEY": secretKey] }
}

/// The S3 source against moto with signature checks on: corpus images equal their manifests,
/// credentials from the environment or an s3fs passwd file, wrong secrets refused in one line.
@Suite(.requires(.pythonModule("moto")), .serialized) struct S3SourceTests {
    static var erofs: String { builtProductsDirectory() + "/erofs" }
    static let sample = Corpus.imagesOrEmpty.filter { ["lz4", "lzma", "chunked"].contains($0.name) }

    /// `erofs` with the environment replaced (no inherited AWS_* variables).
    func runErofs(_ arguments: [String], environment: [String: String]) throws -> ProcessResult {
        try runProgram(
            "/usr/bin/env",
            ["-i", "PATH=/usr/bin:/bin"] + environment.map { "\($0.key)=\($0.value)" } + [Self.erofs] + arguments)
    }

    @Test func corpusImagesFromS3EqualTheirManifests() throws {
        try #require(Self.sample.count == 3, "no corpus found (../shared/corpus or $EROFS_CORPUS)")
        let moto = try MotoFixture(files: Self.sample.map(\.path))
        let cache = try scratchDirectory("s3cache")
        defer { try? FileManager.default.removeItem(atPath: cache) }
        for image in Self.sample {
            for sig in ["4"] {
                let result = try runErofs(
                    [
                        "ls", "--recursive", "--json", "--sha256", "\(MotoFixture.bucket)/\(image.name).erofs",
                        "-o", "s3.endpoint=\(moto.endpoint),s3.sig=\(sig),remote.cache=\(cache)",
                    ],
                    environment: moto.environment)
                #expect(result.status == 0, "\(image.name): \(result.standardError)")
                let expected = try image.expectedManifest()
                #expect(
                    manifestDifference(actual: result.standardOutput, expected: expected) == nil,
                    "\(image.name): \(manifestDifference(actual: result.standardOutput, expected: expected) ?? "")")
            }
        }
        // The same through the environment's endpoint and an s3:// SOURCE, cache off.
        var environment = moto.environment
        environment["AWS_ENDPOINT_URL"] = moto.endpoint
        let viaEnvironment = try runErofs(
            [
                "cat", "s3://\(MotoFixture.bucket)/lz4.erofs",
                "/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9/level10/level11/level12/level13/level14/level15/level16/level17/level18/level19/level20/level21/level22/level23/bottom.txt",
                "-o", "remote.cache=none",
            ], environment: environment)
        #expect(viaEnvironment.status == 0, "\(viaEnvironment.standardError)")
        #expect(!viaEnvironment.standardOutput.isEmpty)
    }

    @Test func credentialsFromAPasswdFileAndRefusals() throws {
        let image = try #require(Self.sample.first)
        let moto = try MotoFixture(files: [image.path])
        let directory = try scratchDirectory("s3passwd")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let source = "\(MotoFixture.bucket)/\(image.name).erofs"
        let options = "s3.endpoint=\(moto.endpoint),remote.cache=none"
        // erofs-utils reads BUCKET:ACCESS:SECRET lines wrongly; a wrong default line must lose
        // to the bucket's own line.
        let passwd = directory + "/passwd"
        try "WRONGKEY:WRONGSECRET\n\(MotoFixture.bucket):\(moto.accessKey):\(moto.secretKey)\n".write(
            toFile: passwd, atomically: true, encoding: .utf8)
        chmod(passwd, 0o600)
        let viaFile = try runErofs(["inspect", source, "-o", options + ",s3.passwd_file=\(passwd)"], environment: [:])
        #expect(viaFile.status == 0, "\(viaFile.standardError)")
        #expect(viaFile.standardError.isEmpty, "\(viaFile.standardError)")

        // A wrong secret: one line naming the object and the refusal, no secret.
        let wrong = try runErofs(
            ["inspect", source, "-o", options],
            environment: ["AWS_ACCESS_KEY_ID": moto.accessKey, "AWS_SECRET_ACCESS_KEY": "NOTTHESECRET"])
        #expect(wrong.status != 0)
        #expect(wrong.standardError.split(separator: "\n").count == 1, "\(wrong.standardError)")
        #expect(
            wrong.standardError.contains("s3://\(source)") && wrong.standardError.contains("access denied"),
            "\(wrong.standardError)")
        #expect(!wrong.standardError.contains("NOTTHESECRET"))
        // Anonymous, against a server that checks signatures: refused the same way.
        let anonymous = try runErofs(["inspect", source, "-o", options], environment: [:])
        #expect(anonymous.status != 0)
        #expect(anonymous.standardError.split(separator: "\n").count == 1, "\(anonymous.standardError)")
    }

    /// Faults between us and S3 (a proxy that keeps the signed Host header), and an object
    /// replaced while open.
    @Test func faultsAndReplacementThroughAProxy() throws {
        let directory = try scratchDirectory("s3object")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let object = randomBytes(2 << 20)
        try Data(object).write(to: URL(fileURLWithPath: directory + "/object.bin"))
        let moto = try MotoFixture(files: [directory + "/object.bin"])
        let proxy = try TestServer.rangeServer(upstream: moto.server.port)
        let description = try #require(
            try RemoteSourceDescription.parse(
                source: "\(MotoFixture.bucket)/object.bin",
                options: [
                    ("s3.endpoint", "http://127.0.0.1:\(proxy.port)"), ("remote.cache", "none"), ("http.timeout", "2"),
                    ("http.retries", "3"),
                ],
                environment: moto.environment))
        let source = try description.open(environment: moto.environment) { _ in }
        for mode in ["reset", "status503", "truncate"] {
            try proxy.control("POST", "/__fault?mode=\(mode)&count=2")
            let offset = mode == "reset" ? 300_000 : mode == "status503" ? 900_000 : 1_500_000
            #expect(
                try source.read(count: 100_000, at: UInt64(offset)) == Array(object[offset..<(offset + 100_000)]),
                "\(mode)")
        }
        try proxy.control("POST", "/__fault?mode=full200&count=1")
        #expect(throws: SystemError.self) { _ = try source.read(count: 1000, at: 1_900_000) }
        // Replace the object: the next uncached read fails instead of mixing versions.
        var replaced = object
        replaced[1_950_000] ^= 1
        try Data(replaced).write(to: URL(fileURLWithPath: directory + "/object.bin"))
        let upload = try runProgram(
            "/usr/bin/env",
            [
                "python3", "-c",
                "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3]).upload_file(sys.argv[4], 'images', 'object.bin')",
                moto.endpoint, moto.accessKey, moto.secretKey, directory + "/object.bin",
            ])
        #expect(upload.status == 0, "\(upload.standardError)")
        #expect {
            _ = try source.read(count: 1000, at: 1_950_000)
        } throws: { "\($0)".contains("changed since it was opened") }
    }
}
