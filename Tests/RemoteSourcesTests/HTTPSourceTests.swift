import Foundation
import ImageSources
import Manifest
@testable import RemoteSources
import Synchronization
import SystemCalls
import Testing
import TestSupport

/// Opens `url` with `-o` style options (memory cache unless one is given).
func openRemote(_ url: String, _ options: [(String, String?)] = [], environment: [String: String] = [:]) throws
    -> RemoteSource
{
    var all = options
    if !all.contains(where: { $0.0 == "remote.cache" }) { all.append(("remote.cache", "none")) }
    let description = try #require(
        try RemoteSourceDescription.parse(
            source: url, options: all.map { (key: $0.0, value: $0.1) }, environment: environment))
    return try description.open(environment: environment) { _ in }
}

/// Reads `count` bytes at `offset`, as the reader would.
func readRemote(_ source: RemoteSource, _ offset: UInt64, _ count: Int) throws -> [UInt8] {
    try source.read(count: count, at: offset)
}

/// Each fault the proxy can inject, against a real Range server: retried faults end in the
/// right bytes, the others in one clear error; never wrong bytes, never a hang past the timeouts.
@Suite(.serialized) struct HTTPFaultTests {
    let directory: String
    let server: TestServer
    let object: [UInt8]
    var url: String { "http://127.0.0.1:\(server.port)/object.bin" }
    /// Short timeouts and backoff keep the suite fast.
    let options: [(String, String?)] = [("http.timeout", "1"), ("http.retries", "3")]

    init() throws {
        directory = try scratchDirectory("faults")
        object = randomBytes(3 << 20)
        try Data(object).write(to: URL(fileURLWithPath: directory + "/object.bin"))
        server = try TestServer.rangeServer(root: directory)
    }

    func expectBytes(_ source: RemoteSource, at offset: Int, count: Int) throws {
        let bytes = try readRemote(source, UInt64(offset), count)
        #expect(bytes == Array(object[offset..<(offset + count)]))
    }

    @Test(arguments: ["reset", "status503", "truncate"])
    func retriedFaultsEndInTheRightBytes(mode: String) throws {
        let source = try openRemote(url, options)
        try server.control("POST", "/__fault?mode=\(mode)&count=2")
        try expectBytes(source, at: 1 << 20, count: 300_000)
        #expect(try server.rangeRequests() >= 4)  // the open, two faults, the retry
    }

    @Test func aStallIsAbandonedAfterTheTimeoutAndRetried() throws {
        let source = try openRemote(url, options)
        try server.control("POST", "/__fault?mode=stall&count=1&seconds=30")
        let start = Date()
        try expectBytes(source, at: 2 << 20, count: 100_000)
        #expect(Date().timeIntervalSince(start) < 8)
    }

    @Test func aServerThatKeepsStallingFailsWithinTheTimeouts() throws {
        let source = try openRemote(url, [("http.timeout", "1"), ("http.retries", "1")])
        try server.control("POST", "/__fault?mode=stall&count=10&seconds=30")
        let start = Date()
        #expect {
            _ = try readRemote(source, 2 << 20, 100_000)
        } throws: { error in
            let text = "\(error)"
            return (error as? SystemError)?.errno == .timedOut && text.contains("/object.bin")
                && text.contains("timed out")
        }
        // Two attempts of about a second each, one backoff.
        #expect(Date().timeIntervalSince(start) < 6)
    }

    /// Servers that never finish: an error's endless body, a redirect's endless body, a body
    /// at a byte every 0.2 s. Each attempt went on as long as the server did (the no-byte
    /// timeout never fired); now each ends within the timeouts with one clear error.
    @Test func endlessBodiesAndTricklesEndWithinTheTimeouts() throws {
        let quick: [(String, String?)] = [("http.timeout", "1"), ("http.retries", "1")]
        var start = Date()
        try server.control("POST", "/__fault?mode=endless404&count=10")
        #expect { _ = try openRemote(url, quick) } throws: { ($0 as? RemoteError)?.kind == .notFound }
        #expect(Date().timeIntervalSince(start) < 10)
        try server.control("DELETE", "/__fault")

        start = Date()
        try server.control("POST", "/__fault?mode=endless302&count=10")
        var settings = HTTPSettings()
        (settings.stallTimeout, settings.retries) = (1, 1)
        #expect {
            _ = try RemoteObject.open(
                endpoint: RemoteEndpoint(url: url, displayName: url, followRedirects: true),
                transport: HTTPTransport(settings: settings), probe: 64 << 10)
        } throws: { "\($0)".contains("a redirect's body over 1 MiB") }
        #expect(Date().timeIntervalSince(start) < 10)
        try server.control("DELETE", "/__fault")

        let source = try openRemote(url, quick)
        start = Date()
        try server.control("POST", "/__fault?mode=trickle&count=10")
        #expect { _ = try readRemote(source, 2 << 20, 100_000) } throws: { "\($0)".contains("too slow to use") }
        #expect(Date().timeIntervalSince(start) < 8)
        try server.control("DELETE", "/__fault")
    }

    @Test func aWholeObjectAnswerIsRefusedNotDownloaded() throws {
        let source = try openRemote(url, options)
        try server.control("POST", "/__fault?mode=full200&count=5")
        #expect {
            _ = try readRemote(source, 1 << 20, 4096)
        } throws: { "\($0)".contains("does not support Range requests") }
        // Also at open time.
        #expect {
            _ = try openRemote(url, options)
        } throws: { "\($0)".contains("does not support Range requests") }
    }

    @Test func aReplacedObjectIsAnErrorNotMixedBytes() throws {
        let source = try openRemote(url, options)
        try expectBytes(source, at: 0, count: 4096)
        var replaced = object
        replaced[2 << 20] ^= 0xff
        try Data(replaced).write(to: URL(fileURLWithPath: directory + "/object.bin"))
        #expect {
            _ = try readRemote(source, 2 << 20, 4096)
        } throws: { error in
            (error as? SystemError)?.errno == .staleNFSFileHandle && "\(error)".contains("changed since it was opened")
        }
    }

    @Test func aShorterObjectIsAnErrorNotZeros() throws {
        let source = try openRemote(url, options)
        try Data(object[..<(1 << 20)]).write(to: URL(fileURLWithPath: directory + "/object.bin"))
        #expect(throws: SystemError.self) { _ = try readRemote(source, 2 << 20, 4096) }
    }

    @Test func missingObjectAndUnreachableServerAreOneLine() throws {
        #expect {
            _ = try openRemote("http://127.0.0.1:\(server.port)/missing.bin", options)
        } throws: { error in
            (error as? RemoteError)?.kind == .notFound && !"\(error)".contains("\n")
        }
        let closed = TestServer.freePort()
        let start = Date()
        #expect {
            _ = try openRemote("http://127.0.0.1:\(closed)/x", [("http.retries", "1")])
        } throws: { "\($0)".contains("cannot connect") }
        #expect(Date().timeIntervalSince(start) < 5)
    }

    /// Small random reads of a cold object fetch one block each; a sequential reader gets
    /// growing readahead: few requests for many reads, every byte right.
    @Test func randomReadsStaySmallAndSequentialReadsAreReadAhead() throws {
        let source = try openRemote(url, [("remote.block_size", "64K")])
        let before = source.statistics.withLock { $0 }
        for offset in [1_000_000, 2_500_000, 3_000_000] { try expectBytes(source, at: offset, count: 512) }
        let random = source.statistics.withLock { $0 }
        #expect(random.requests - before.requests == 3)
        #expect(random.fetchedBytes - before.fetchedBytes == 3 * 65536)
        var offset = 0
        while offset < object.count {
            let count = min(16384, object.count - offset)
            try expectBytes(source, at: offset, count: count)
            offset += count
        }
        let sequential = source.statistics.withLock { $0 }
        // 192 reads of 16 KiB over 48 blocks: readahead makes a few large requests.
        #expect(sequential.requests - random.requests < 20)
    }

    /// Hinted bytes (a listing's scattered inodes) are fetched in the background, a request per
    /// missing block, each once: the reads that follow wait for no request of their own.
    @Test func hintedBlocksAreFetchedAheadOnce() throws {
        let source = try openRemote(url, [("remote.block_size", "64K")])
        let offsets = [200_000, 1_100_000, 2_900_000]
        let before = source.statistics.withLock { $0 }.requests
        for offset in offsets { source.readAhead(at: UInt64(offset), count: 4096) }
        source.readAhead(at: UInt64(offsets[0]), count: 4096)  // again: already in flight or there
        var fetched = 0
        for _ in 0..<500 {
            fetched = source.statistics.withLock { $0 }.requests - before
            if fetched >= offsets.count && offsets.allSatisfy({ source.store.contains(block: $0 / 65536) }) { break }
            usleep(10_000)
        }
        #expect(fetched == offsets.count)
        for offset in offsets { try expectBytes(source, at: offset, count: 4096) }
        #expect(source.statistics.withLock { $0 }.requests - before == offsets.count)
        // Past the end, or nothing: no request.
        source.readAhead(at: UInt64(object.count), count: 4096)
        source.readAhead(at: 0, count: 0)
        #expect(source.statistics.withLock { $0 }.requests - before == offsets.count)
    }

    /// Many threads reading the same cold blocks at once: one fetch per block, right bytes.
    @Test func concurrentReadersOfOneBlockShareItsFetch() throws {
        let source = try openRemote(url, [("remote.block_size", "1M"), ("remote.readahead", "1M")])
        let before = source.statistics.withLock { $0 }.requests
        let failures = Mutex<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 16) { index in
            let offset = (1 << 20) + index * 1000
            let bytes = try? readRemote(source, UInt64(offset), 1000)
            if bytes != Array(object[offset..<(offset + 1000)]) { failures.withLock { $0 += 1 } }
        }
        #expect(failures.withLock { $0 } == 0)
        #expect(source.statistics.withLock { $0 }.requests - before == 1)
    }
}

/// `erofs ls --recursive --json --sha256` of corpus images over HTTP equals their manifests,
/// and a second run reuses the block cache.
@Suite struct HTTPToolTests {
    static var erofs: String { builtProductsDirectory() + "/erofs" }
    static let sample = Corpus.imagesOrEmpty.filter {
        ["plain", "lz4", "lzma", "chunked", "ztailpacking-fragments-dedupe"].contains($0.name)
    }

    @Test func sampleIsPresent() {
        #expect(Self.sample.count == 5, "no corpus found (../shared/corpus or $EROFS_CORPUS)")
    }

    @Test(arguments: sample)
    func listOverHTTPEqualsTheManifest(image: Corpus.Image) throws {
        let server = try TestServer.rangeServer(root: URL(fileURLWithPath: image.path).deletingLastPathComponent().path)
        let cache = try scratchDirectory("cache")
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let url = "http://127.0.0.1:\(server.port)/\(image.name).erofs"
        let arguments = ["ls", "--recursive", "--json", "--sha256", url, "-o", "remote.cache=\(cache)"]
        let result = try runProgram(Self.erofs, arguments)
        #expect(result.status == 0, "\(result.standardError)")
        let expected = try image.expectedManifest()
        #expect(
            manifestDifference(actual: result.standardOutput, expected: expected) == nil,
            "\(manifestDifference(actual: result.standardOutput, expected: expected) ?? "")")
        let first = try server.rangeRequests()
        let again = try runProgram(Self.erofs, arguments)
        #expect(again.standardOutput == result.standardOutput)
        // Only the open's probe goes to the server the second time.
        #expect(try server.rangeRequests() - first == 1)
    }

    /// Two processes reading the same object into one cache directory at the same time both
    /// get the right tree, and a third, later process finds every block there.
    @Test func twoProcessesShareOneCache() throws {
        let image = try #require(Self.sample.first { $0.name == "lzma" })
        let server = try TestServer.rangeServer(root: URL(fileURLWithPath: image.path).deletingLastPathComponent().path)
        let cache = try scratchDirectory("shared-cache")
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let arguments = [
            "ls", "--recursive", "--json", "--sha256", "http://127.0.0.1:\(server.port)/lzma.erofs", "-o",
            "remote.cache=\(cache),remote.block_size=16K",
        ]
        let results = Mutex<[ProcessResult]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            if let result = try? runProgram(Self.erofs, arguments) { results.withLock { $0.append(result) } }
        }
        let expected = try image.expectedManifest()
        let both = results.withLock { $0 }
        #expect(both.count == 2)
        for result in both {
            #expect(result.status == 0, "\(result.standardError)")
            #expect(result.standardOutput == expected)
        }
        let before = try server.rangeRequests()
        let third = try runProgram(Self.erofs, arguments)
        #expect(third.standardOutput == expected)
        #expect(try server.rangeRequests() - before == 1)
    }

    /// `erofs extract` reads from its worker threads at once (all waiting on the same fetches):
    /// the tree equals the one extracted from the local image.
    @Test(.requiresRoot) func extractOverHTTPEqualsLocalExtraction() throws {
        let image = try #require(Self.sample.first { $0.name == "lz4" })
        let server = try TestServer.rangeServer(root: URL(fileURLWithPath: image.path).deletingLastPathComponent().path)
        let directory = try scratchDirectory("extract")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let remote = try runProgram(
            Self.erofs,
            [
                "extract", "http://127.0.0.1:\(server.port)/lz4.erofs", directory + "/remote", "--root-metadata", "-o",
                "remote.cache=none,remote.block_size=4K",
            ])
        #expect(remote.status == 0, "\(remote.standardError)")
        let local = try runProgram(Self.erofs, ["extract", image.path, directory + "/local", "--root-metadata"])
        #expect(local.status == 0, "\(local.standardError)")
        let remoteTree = try DirectoryWalker.manifest(ofTreeAt: directory + "/remote").manifestText
        let localTree = try DirectoryWalker.manifest(ofTreeAt: directory + "/local").manifestText
        #expect(remoteTree.split(separator: "\n").count > 400)
        #expect(manifestDifference(actual: remoteTree, expected: localTree) == nil)
    }

    /// HTTPS: a certificate from an unknown CA is refused (one line pointing at http.cafile);
    /// trusted through http.cafile it reads; http.insecure_tls reads with a warning.
    @Test func tlsIsVerified() throws {
        let directory = try scratchDirectory("tls")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let made = try runProgram(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", directory + "/key.pem", "-out",
                directory + "/cert.pem",
            ])
        try #require(made.status == 0, "\(made.standardError)")
        let image = try #require(Self.sample.first { $0.name == "plain" })
        let server = try TestServer.rangeServer(
            root: URL(fileURLWithPath: image.path).deletingLastPathComponent().path,
            tls: (directory + "/cert.pem", directory + "/key.pem"))
        let url = "https://127.0.0.1:\(server.port)/plain.erofs"
        let untrusted = try runProgram(Self.erofs, ["inspect", url, "-o", "remote.cache=none"])
        #expect(untrusted.status != 0)
        #expect(
            untrusted.standardError.contains("TLS") && untrusted.standardError.contains("http.cafile"),
            "\(untrusted.standardError)")
        #expect(untrusted.standardError.split(separator: "\n").count == 1, "\(untrusted.standardError)")
        let trusted = try runProgram(
            Self.erofs, ["inspect", url, "-o", "remote.cache=none,http.cafile=\(directory)/cert.pem"])
        #expect(trusted.status == 0, "\(trusted.standardError)")
        #expect(trusted.standardError.isEmpty)
        let insecure = try runProgram(Self.erofs, ["inspect", url, "-o", "remote.cache=none,http.insecure_tls"])
        #expect(insecure.status == 0, "\(insecure.standardError)")
        #expect(insecure.standardError.contains("warning") && insecure.standardError.contains("insecure_tls"))
        #expect(insecure.standardOutput == trusted.standardOutput)
    }

    @Test func errorsAreOneLineWithoutSecrets() throws {
        let result = try runProgram(
            Self.erofs,
            [
                "ls", "http://user:hunter2@127.0.0.1:\(TestServer.freePort())/x.erofs?sig=SECRETSIG", "-o",
                "http.retries=0",
            ])
        #expect(result.status != 0)
        #expect(result.standardError.split(separator: "\n").count == 1, "\(result.standardError)")
        #expect(
            !result.standardError.contains("hunter2") && !result.standardError.contains("SECRETSIG"),
            "\(result.standardError)")
        let port = TestServer.freePort()
        let unreachable = try runProgram(
            Self.erofs, ["ls", "http://127.0.0.1:\(port)/x.erofs?sig=SECRETSIG", "-o", "http.retries=0"])
        #expect(unreachable.status != 0)
        #expect(unreachable.standardError.split(separator: "\n").count == 1, "\(unreachable.standardError)")
        #expect(
            unreachable.standardError.contains("cannot connect") && !unreachable.standardError.contains("SECRETSIG"),
            "\(unreachable.standardError)")
        let local = try runProgram(Self.erofs, ["ls", "/nonexistent.erofs", "-o", "s3.region=x"])
        #expect(local.status != 0)
    }
}
