import Foundation
@testable import RemoteSources
import Testing
import TestSupport

/// What a daemon is handed: the description round-trips through its argument, holds no secret
/// when credentials come from the environment, and the captured file is 0600, read back whole,
/// and removed only inside its directory. In RemoteMountTests' serialized suite: those tests
/// count the captured files.
extension RemoteMountTests {
    @Test func aDescriptionCarriesWhereCredentialsAreNeverWhat() throws {
        let secret = "S3CR3T-\(UInt64.random(in: 0...UInt64.max))"
        let environment = [
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": "TOKEN-" + secret,
        ]
        let description = try #require(
            try RemoteSourceDescription.parse(
                source: "bucket/dir/image.erofs", options: [("s3.endpoint", "http://127.0.0.1:9")],
                environment: environment))
        #expect(description.credentials == .environment)
        let handed = try CapturedCredentials.capture(description, environment: environment)
        let file = try #require(handed.file)
        defer { CapturedCredentials.remove(file) }
        #expect(handed.description.credentials == .captured(path: file))
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect(attributes[.posixPermissions] as? Int == 0o600)
        #expect(try CapturedCredentials.read(file) == environment)

        let served = ServedSource.remote(handed.description)
        #expect(!served.argument.contains(secret))
        #expect(served.argument.hasPrefix("{"))
        #expect(try ServedSource(argument: served.argument) == served)
        #expect(served.capturedCredentials == file)
        #expect(served.displayName == "s3://bucket/dir/image.erofs")
        #expect(try ServedSource(argument: "/images/a.erofs") == .local(path: "/images/a.erofs"))

        // A passwd file is named, nothing captured.
        let fromFile = try #require(
            try RemoteSourceDescription.parse(
                source: "bucket/image.erofs", options: [("s3.passwd_file", "/etc/passwd-s3fs")],
                environment: environment))
        #expect(try CapturedCredentials.capture(fromFile, environment: environment).file == nil)

        // remove() touches nothing outside its directory.
        let outside = NSTemporaryDirectory() + "captured-\(getpid())"
        #expect(FileManager.default.createFile(atPath: outside, contents: Data()))
        defer { try? FileManager.default.removeItem(atPath: outside) }
        CapturedCredentials.remove(outside)
        CapturedCredentials.remove(CapturedCredentials.directory + "/../credentials-elsewhere")
        #expect(FileManager.default.fileExists(atPath: outside))
        CapturedCredentials.remove(file)
        #expect(!FileManager.default.fileExists(atPath: file))
    }
}
