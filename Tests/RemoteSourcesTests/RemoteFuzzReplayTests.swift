import Foundation
import ReaderFuzzSupport
import RemoteFuzzSupport
import TestSupport
import Testing

@testable import RemoteSources

/// The remote fuzzer's seeds and findings (Fuzz/seeds/remote, Fuzz/findings/remote) replayed on
/// the normal build through the fuzzer's own code, and the rule it enforces on every error line:
/// what a server sends never splits a line or reaches a terminal as control characters.
@Suite struct RemoteFuzzReplayTests {
    static var inputs: [URL] {
        FuzzInputs.files(in: "Fuzz/seeds/remote") + FuzzInputs.files(in: "Fuzz/findings/remote")
    }

    @Test func seedsCoverEveryParserAndKeepTheRules() throws {
        let inputs = try Self.inputs.map { (name: $0.lastPathComponent, bytes: Array(try Data(contentsOf: $0))) }
        let parsers = Set(inputs.compactMap { $0.bytes.first }.map { Int($0) % RemoteExercise.Parser.allCases.count })
        #expect(parsers.count == RemoteExercise.Parser.allCases.count, "seeds for parsers \(parsers.sorted())")
        for input in inputs {
            #expect(throws: Never.self, "\(input.name)") {
                try input.bytes.withUnsafeBytes { try RemoteExercise.run($0) }
            }
        }
    }

    /// The seeds are valid inputs: each parses, so the fuzzer starts from the accepting paths.
    @Test func seedsAreAccepted() throws {
        func seed(_ name: String) throws -> [UInt8] {
            Array(
                try Data(contentsOf: FuzzInputs.repository.appendingPathComponent("Fuzz/seeds/remote/\(name)"))
                    .dropFirst())
        }
        #expect(
            AuthChallenge(header: String(decoding: try seed("challenge-bearer"), as: UTF8.self))?.scheme == "bearer")
        #expect(ContentRange(String(decoding: try seed("range"), as: UTF8.self))?.total == 536_875_008)
        if case .index(let manifests) = try ImageDocument.decode(try seed("index"), contentType: nil, name: "x") {
            #expect(manifests.count == 4)
        } else {
            Issue.record("the index seed is not an index")
        }
        #expect(TokenReply(try seed("token"))?.lifetime == 300)
        let gzip = try seed("gzip-v1")
        let zinfoLength = Int(gzip[0]) << 8 | Int(gzip[1])
        let source = try GzipIndexedSource(
            compressed: InMemorySource(Array(gzip[(2 + zinfoLength)...])),
            zinfo: InMemorySource(Array(gzip[2..<(2 + zinfoLength)])))
        let text = String(decoding: try source.read(count: 64, at: 0), as: UTF8.self)
        #expect(text.hasPrefix("file 0: erofs remote layer bytes\nfile 1:"))
    }

    /// An S3 error body with a newline and an escape sequence in its <Code> and <Message>.
    @Test func serverTextInAnErrorStaysOnePrintableLine() {
        let body = Array(
            "<Error><Code>AccessDenied\n\u{1b}[2Jfake: mounted</Code><Message>\r\u{9b}31m\u{7f}</Message></Error>".utf8)
        let line = RangeRead.statusError(403, body, "bucket/key").description
        #expect(
            line.unicodeScalars.allSatisfy { $0.value >= 0x20 && !(0x7f...0x9f).contains($0.value) },
            "\(line.debugDescription)")
        #expect(line.contains(#"AccessDenied\n\u{1b}[2Jfake: mounted"#))
        #expect(line.contains(#"\r\u{9b}31m\u{7f}"#))
    }

    /// A manifest's media type is the server's text too, and of any length.
    @Test func mediaTypeInAnErrorIsEscapedAndBounded() throws {
        let hostile = #"{"mediaType":"text/\u001b]0;owned\u0007"# + String(repeating: "x", count: 100_000) + #""}"#
        #expect {
            try ImageDocument.decode(Array(hostile.utf8), contentType: nil, name: "registry/repo")
        } throws: { error in
            let line = (error as! RemoteError).description
            return line.utf8.count <= 1024 + 2 + 2048 && line.hasSuffix("...") && line.contains(#"\u{1b}]0;owned\u{7}"#)
                && !line.unicodeScalars.contains { $0.value < 0x20 }
        }
    }

    /// The fuzzer's first finding (Fuzz/findings/remote/empty-content-type): an empty
    /// Content-Type trapped the manifest decoder; it now declares no type and the shape decides.
    @Test func anEmptyContentTypeDeclaresNoType() throws {
        let layer = #"{"digest":"sha256:\#(String(repeating: "ab", count: 32))","size":4096}"#
        let manifest = Array(#"{"schemaVersion":2,"layers":[\#(layer)]}"#.utf8)
        for contentType in ["", ";", " ; charset=utf-8"] {
            guard
                case .manifest(_, let layers) = try ImageDocument.decode(manifest, contentType: contentType, name: "x")
            else {
                Issue.record("not read as a manifest with Content-Type \(contentType.debugDescription)")
                continue
            }
            #expect(layers.count == 1)
        }
    }

    /// A field with a control character inside is dropped: an ETag with a bare CR never goes on
    /// into If-Match.
    @Test func headerFieldsWithControlCharactersAreDropped() {
        #expect(HTTPHeaderField.parse("ETag: \"abc\"\r\n")! == ("etag", "\"abc\""))
        #expect(HTTPHeaderField.parse("X-Note:\tvalue with\ttabs \r\n")! == ("x-note", "value with\ttabs"))
        #expect(HTTPHeaderField.parse("ETag: \"a\rInjected: yes\"\r\n") == nil)
        #expect(HTTPHeaderField.parse("ETag: \"a\u{0}b\"") == nil)
        #expect(HTTPHeaderField.parse("Bad Name: x") == nil)
        #expect(HTTPHeaderField.parse(": x") == nil)
        #expect(HTTPHeaderField.parse("no colon") == nil)
    }

    @Test func printableLineLeavesOrdinaryTextAlone() {
        let text = "the object changed since it was opened (HTTP 412 on If-Match): not mixing two versions — ünïcode"
        #expect(text.printableLine(limit: 2048) == text)
        #expect("abcdef".printableLine(limit: 5) == "ab...")
        #expect("a\u{0}b".printableLine(limit: 100) == #"a\u{0}b"#)
    }
}
