// What the remote fuzzer does with each input, shared with RemoteSourcesTests so that every seed
// and finding is replayed on the normal build through exactly the same calls. See Fuzz/README.md.
import ImageSources
import ReaderFuzzSupport
import RemoteSources

/// The parsers of what servers send (and of what users give that names a server): a response's
/// header lines, a registry's challenge, token and manifests, a Range reply's Content-Range, an
/// S3 error body, a gzip layer read through a zinfo. The first input byte picks the parser, the
/// rest is its input. Besides traps, hangs and absurd allocations, a finding is a broken rule of
/// the parser's own contract (`Violation`): values outside what it promises, a parse that does
/// not survive a round trip, or an error line that a server can split or fill with escape
/// sequences.
public enum RemoteExercise {
    public struct Violation: Error, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    public enum Parser: UInt8, CaseIterable {
        case challenge, contentRange, imageDocument, imageReference, tokenReply, platform, statusError, gzipLayer
        case headerLine
    }

    public static func run(_ input: UnsafeRawBufferPointer) throws(Violation) {
        guard let first = input.first else { return }
        let parser = Parser.allCases[Int(first) % Parser.allCases.count]
        let payload = Array(input.dropFirst())
        switch parser {
        case .challenge: try challenge(payload)
        case .contentRange: try contentRange(payload)
        case .imageDocument: try imageDocument(payload)
        case .imageReference: try imageReference(payload)
        case .tokenReply: try tokenReply(payload)
        case .platform: try platform(payload)
        case .statusError: try statusError(payload)
        case .gzipLayer: try gzipLayer(payload)
        case .headerLine: try headerLine(payload)
        }
    }

    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    /// C0, DEL or C1, written out here rather than taken from the code under test.
    static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value)
    }

    /// An error meant for one line of a terminal or a log: no control character, bounded.
    static func checkLine(_ error: RemoteError) throws(Violation) {
        let line = error.description
        if let bad = line.unicodeScalars.first(where: isControl) {
            throw Violation(
                "control character U+\(String(bad.value, radix: 16)) in an error line: \(line.debugDescription)")
        }
        guard line.utf8.count <= 4096 else { throw Violation("an error line of \(line.utf8.count) bytes") }
    }

    /// A header line as libcurl hands it over (CRLF included or not).
    static func headerLine(_ payload: [UInt8]) throws(Violation) {
        guard let (name, value) = HTTPHeaderField.parse(text(payload)) else { return }
        guard !name.isEmpty, name == name.lowercased(), !name.contains(":"),
            name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f })
        else { throw Violation("header name \(name.debugDescription)") }
        if let bad = value.unicodeScalars.first(where: { $0 != "\t" && isControl($0) }) {
            throw Violation("control character U+\(String(bad.value, radix: 16)) in the value of \(name)")
        }
        guard value.first != " ", value.last != " " else {
            throw Violation("value \(value.debugDescription) not trimmed")
        }
        if name == "content-range" { try contentRange(Array(value.utf8)) }
        if name == "www-authenticate" { try challenge(Array(value.utf8)) }
    }

    static func challenge(_ payload: [UInt8]) throws(Violation) {
        guard let challenge = AuthChallenge(header: text(payload)) else { return }
        guard !challenge.scheme.isEmpty, challenge.scheme == challenge.scheme.lowercased() else {
            throw Violation("scheme \(challenge.scheme.debugDescription)")
        }
        for name in challenge.parameters.keys where name.isEmpty || name != name.lowercased() {
            throw Violation("parameter name \(name.debugDescription)")
        }
    }

    static func contentRange(_ payload: [UInt8]) throws(Violation) {
        let header = text(payload)
        if let range = ContentRange(header) {
            guard range.first <= range.last, range.last < range.total else { throw Violation("\(range) out of order") }
            guard ContentRange("bytes \(range.first)-\(range.last)/\(range.total)") == range else {
                throw Violation("\(range) does not parse back")
            }
        }
        if let total = ContentRange.unsatisfiedTotal(header), ContentRange.unsatisfiedTotal("bytes */\(total)") != total
        {
            throw Violation("bytes */\(total) does not parse back")
        }
    }

    /// The payload is an optional Content-Type, a NUL, then the body (no NUL: the body alone).
    static func imageDocument(_ payload: [UInt8]) throws(Violation) {
        var contentType: String?
        var body = payload
        if let nul = payload.firstIndex(of: 0) {
            contentType = text(Array(payload[..<nul]))
            body = Array(payload[(nul + 1)...])
        }
        let document: ImageDocument
        do { document = try ImageDocument.decode(body, contentType: contentType, name: "registry/repo") } catch {
            try checkLine(error)
            return
        }
        func check(_ descriptor: Descriptor) throws(Violation) {
            guard ImageReference.isValidDigest(descriptor.digest), descriptor.size >= 0 else {
                throw Violation("descriptor \(descriptor) accepted")
            }
        }
        switch document {
        case .index(let manifests):
            for descriptor in manifests { try check(descriptor) }
            for platform in [
                Platform(os: "linux", architecture: "amd64"), Platform(os: "linux", architecture: "arm", variant: "v6"),
            ] {
                let chosen: Descriptor
                do { chosen = try ImageDocument.select(manifests, for: platform, name: "registry/repo") } catch {
                    try checkLine(error)
                    continue
                }
                guard manifests.contains(chosen) else { throw Violation("selected a manifest not in the index") }
            }
        case .manifest(let config, let layers):
            for descriptor in layers { try check(descriptor) }
            if let config { try check(config) }
        }
    }

    static func imageReference(_ payload: [UInt8]) throws(Violation) {
        guard let reference = try? ImageReference(parsing: text(payload)) else { return }
        guard let again = try? ImageReference(parsing: reference.description), again == reference else {
            throw Violation("\(reference) does not parse back to itself")
        }
    }

    static func tokenReply(_ payload: [UInt8]) throws(Violation) {
        if let reply = TokenReply(payload) {
            guard !reply.token.isEmpty, reply.token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
                throw Violation("token \(reply.token.debugDescription) accepted")
            }
            guard (0...86400).contains(reply.lifetime) else { throw Violation("lifetime \(reply.lifetime)") }
        }
        if let code = oauthErrorCode(payload),
            !(1...64).contains(code.utf8.count)
                || !code.utf8.allSatisfy({ $0 == UInt8(ascii: "_") || (0x61...0x7a).contains($0) })
        {
            throw Violation("OAuth2 error code \(code.debugDescription) accepted")
        }
    }

    static func platform(_ payload: [UInt8]) throws(Violation) {
        let platform: Platform
        do { platform = try Platform(parsing: text(payload)) } catch {
            try checkLine(error)
            return
        }
        guard let again = try? Platform(parsing: platform.description), again == platform else {
            throw Violation("\(platform) does not parse back to itself")
        }
        _ = platform.normalized
    }

    /// Two bytes of HTTP status (100-599), then the body.
    static func statusError(_ payload: [UInt8]) throws(Violation) {
        guard payload.count >= 2 else { return }
        let status = 100 + (Int(payload[0]) << 8 | Int(payload[1])) % 500
        let body = Array(payload.dropFirst(2))
        try checkLine(RangeRead.statusError(status, body, "bucket/key"))
        if let code = xmlElement("Code", in: text(body)), code.count > 200 {
            throw Violation("an XML element of \(code.count) characters")
        }
    }

    /// Two bytes of zinfo length, the zinfo, then the gzip blob; a few reads of the stream. The
    /// zinfo comes compact: its 12-byte header, then 17-byte checkpoints, each given the 32 KiB
    /// window (zeros) that follows it in a real zinfo; bytes left over are appended as they are.
    static func gzipLayer(_ payload: [UInt8]) throws(Violation) {
        guard payload.count >= 2 else { return }
        let zinfoLength = min(payload.count - 2, Int(payload[0]) << 8 | Int(payload[1]))
        let compact = payload[2..<(2 + zinfoLength)]
        var expanded = Array(compact.prefix(12))
        var entries = compact.dropFirst(12)
        while entries.count >= 17 {
            expanded += entries.prefix(17)
            expanded += [UInt8](repeating: 0, count: GzipCheckpoints.windowSize)
            entries = entries.dropFirst(17)
        }
        expanded += entries
        let zinfo = InMemorySource(expanded)
        let blob = InMemorySource(Array(payload[(2 + zinfoLength)...]))
        let source: GzipIndexedSource
        do { source = try GzipIndexedSource(compressed: blob, zinfo: zinfo) } catch {
            try checkLine(error)
            return
        }
        for offset in [0, source.size / 2, source.size &- 1] where offset < source.size {
            guard let bytes = try? source.read(count: 64 << 10, at: offset) else { continue }
            guard UInt64(bytes.count) <= min(64 << 10, source.size - offset) else {
                throw Violation("\(bytes.count) bytes read at \(offset) of \(source.size)")
            }
        }
    }
}
