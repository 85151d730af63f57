import Foundation
@testable import RemoteSources
import Testing
import TestSupport

/// SigV4 and SigV2 against AWS's published examples and against botocore, the AWS SDK's signer.
@Suite struct SigningTests {
    static let docsSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

    /// The SigV4 test suite's "get-vanilla" case (credential AKIDEXAMPLE, 2015-08-30).
    @Test func sigV4GetVanilla() {
        let credentials = S3Credentials(accessKey: "AKIDEXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
        let authorization = SigV4.authorization(
            method: "GET", canonicalURI: "/",
            headers: [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")],
            payloadHash: SigV4.emptyPayloadHash, amzDate: "20150830T123600Z", region: "us-east-1", service: "service",
            credentials: credentials)
        #expect(
            authorization
                == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        )
    }

    /// The S3 documentation's "GET Object" example (examplebucket/test.txt, Range bytes=0-9).
    @Test func sigV4S3GetObjectExample() {
        let credentials = S3Credentials(accessKey: "AKIAIOSFODNN7EXAMPLE", secretKey: Self.docsSecret)
        let headers = [
            ("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", SigV4.emptyPayloadHash), ("x-amz-date", "20130524T000000Z"),
        ]
        let authorization = SigV4.authorization(
            method: "GET", canonicalURI: "/test.txt", headers: headers, payloadHash: SigV4.emptyPayloadHash,
            amzDate: "20130524T000000Z", region: "us-east-1", service: "s3", credentials: credentials)
        #expect(authorization.hasSuffix("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"))
        #expect(SigV4.amzDate(1_369_353_600) == "20130524T000000Z")
    }

    /// Our S3Signer's headers, signed again by botocore for the same instant: the same
    /// Authorization, for vhost and path addressing, a key needing percent-encoding, a session
    /// token, and both signature versions.
    @Test(.requires(.pythonModule("botocore")), arguments: [(4, false), (4, true), (2, false), (2, true)])
    func matchesBotocore(version: Int, pathStyle: Bool) throws {
        let credentials = S3Credentials(
            accessKey: "AKIDTEST", secretKey: "se/cr+et", sessionToken: version == 4 ? "tok/en=" : nil)
        let location = S3Location(
            bucket: "bucket", key: "dir/a b+c~ü.erofs", endpoint: "http://s3.example.test:9000", region: "eu-west-3",
            signatureVersion: version, pathStyle: pathStyle)
        let addressing = location.addressing
        let signer = S3Signer(
            credentials: credentials, version: version, region: location.region, host: addressing.host,
            canonicalURI: addressing.path, resource: addressing.resource)
        let now = 1_764_940_000
        let signed = signer.sign(
            method: "GET", headers: [("Range", "bytes=0-65535"), ("If-Match", "\"abc\"")], now: now)
        let ours = try #require(signed.first { $0.0 == "Authorization" }?.1)
        // botocore computes its own Host, date and content-hash headers: give it the others.
        let given = signed.filter {
            !["authorization", "host", "x-amz-date", "x-amz-content-sha256", "date"].contains($0.0.lowercased())
        }
        var arguments = [
            TestServer.serversDirectory + "/botocore_sign.py", version == 4 ? "v4" : "v2", "GET", addressing.url,
            "\(now)",
            credentials.accessKey, credentials.secretKey,
        ]
        if version == 4 { arguments += [location.region, "s3"] }
        arguments += given.map { "\($0.0):\($0.1)" }
        let result = try runProgram("/usr/bin/env", ["AUTH_PATH=\(addressing.resource)", "python3"] + arguments)
        #expect(result.status == 0, "\(result.standardError)")
        let lines = result.standardOutput.split(separator: "\n").map(String.init)
        #expect(lines.first == ours)
        if version == 2 { #expect(lines.last == signed.first { $0.0 == "Date" }?.1) }
    }

    @Test func percentEncodingKeepsUnreservedAndSlashes() {
        #expect(percentEncoded("a/b c+d~e_f.g-ü", keepSlash: true) == "a/b%20c%2Bd~e_f.g-%C3%BC")
        #expect(percentEncoded("a/b", keepSlash: false) == "a%2Fb")
        #expect(base64(Array("any carnal pleas".utf8)) == "YW55IGNhcm5hbCBwbGVhcw==")
        #expect(base64(Array("any carnal pleasu".utf8)) == "YW55IGNhcm5hbCBwbGVhc3U=")
    }

    /// Credentials never show in a description of the source or of the credentials.
    @Test func descriptionsCarryNoSecret() throws {
        let description = try #require(
            try RemoteSourceDescription.parse(
                source: "bucket/key", options: [("s3.endpoint", "http://127.0.0.1:1")],
                environment: [
                    "AWS_ACCESS_KEY_ID": "AKIDSECRETLESS", "AWS_SECRET_ACCESS_KEY": "TOPSECRETVALUE",
                    "AWS_SESSION_TOKEN": "TOKENVALUE",
                ]))
        #expect(description.credentials == .environment)
        let encoded = String(decoding: try JSONEncoder().encode(description), as: UTF8.self)
        #expect(!encoded.contains("TOPSECRETVALUE") && !encoded.contains("TOKENVALUE"))
        let credentials = S3Credentials(accessKey: "AKID", secretKey: "TOPSECRETVALUE", sessionToken: "TOKENVALUE")
        #expect(!"\(credentials)".contains("TOPSECRETVALUE") && !"\(credentials)".contains("TOKENVALUE"))
        #expect(
            RemoteSourceDescription.redacted("https://user:pw@host:8/a/b?X-Amz-Signature=s#f") == "https://host:8/a/b")
    }

    @Test func passwdFileLines() throws {
        let directory = try scratchDirectory("passwd")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/passwd"
        try "# comment\nDEFAULTKEY:DEFAULTSECRET\nother:OTHERKEY:OTHERSECRET\nmine:MINEKEY:MINESECRET\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)
        var warnings: [String] = []
        let mine = try RemoteSourceDescription.readPasswdFile(path, bucket: "mine") { warnings.append($0) }
        #expect(mine == S3Credentials(accessKey: "MINEKEY", secretKey: "MINESECRET"))
        let other = try RemoteSourceDescription.readPasswdFile(path, bucket: "third") { warnings.append($0) }
        #expect(other == S3Credentials(accessKey: "DEFAULTKEY", secretKey: "DEFAULTSECRET"))
        #expect(warnings.isEmpty)
        chmod(path, 0o644)
        _ = try RemoteSourceDescription.readPasswdFile(path, bucket: "mine") { warnings.append($0) }
        #expect(warnings.count == 1)
        try "KEYONLY\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect {
            try RemoteSourceDescription.readPasswdFile(path, bucket: "mine") { _ in }
        } throws: { error in
            let text = "\(error)"
            return text.contains("line 1") && !text.contains("KEYONLY")
        }
    }

    @Test func contentRangeIsParsedStrictly() {
        #expect(ContentRange("bytes 0-9/10") == ContentRange("bytes 0-9/10"))
        #expect(ContentRange("bytes 0-9/10")?.total == 10)
        for bad in [
            "bytes 0-10/10", "bytes 5-4/10", "bytes -1-4/10", "bytes 0-9/*", "bytes=0-9/10", "bytes 0-9/10x",
            "bytes +0-9/10",
        ] {
            #expect(ContentRange(bad) == nil, "\(bad)")
        }
        #expect(ContentRange.unsatisfiedTotal("bytes */0") == 0)
    }
}
