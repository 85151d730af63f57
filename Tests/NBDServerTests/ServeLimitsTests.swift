#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NBDProtocol
import Testing
import TestSupport

/// `erofs serve` against hostile clients: the connection cap, the handshake time limit, clients
/// that never read their replies, and a socket path it must not clobber.
@Suite(.serialized) struct ServeLimitsTests {
    /// At the cap, with every slot transmitting, a new connection is closed at once, before the
    /// greeting; when a slot frees, a real client is served again.
    @Test func connectionOverTheCapIsClosedAtOnce() throws {
        let server = try ServeProcess(image: try corpusImagePath(), extraArguments: ["--max-connections", "2"])
        var transmitting = [try UnixClient(path: server.socketPath), try UnixClient(path: server.socketPath)]
        for client in transmitting { try client.handshakeToTransmission() }
        let extra = try UnixClient(path: server.socketPath)
        let started = Date()
        #expect(extra.receive(1) == nil, "a connection over the cap got a greeting")
        #expect(Date().timeIntervalSince(started) < 1)
        transmitting.removeLast()
        try waitUntilNbdinfoSucceeds(server)
        expectCleanShutdown(server)
    }

    /// Idle connections fill the handshake slots (4 per transmission slot) but cannot keep a
    /// real client out: the handshake quiet the longest makes room for the new one.
    @Test func idleConnectionsDoNotStarveARealClient() throws {
        let server = try ServeProcess(image: try corpusImagePath(), extraArguments: ["--max-connections", "4"])
        let idle = try (0..<60).map { _ in try UnixClient(path: server.socketPath) }
        let result = try runProgram("/usr/bin/nbdinfo", ["--size", server.uri])
        #expect(result.status == 0, "\(result.standardError)")
        // At most the handshake slots of them still have a live connection, the newest ones.
        let live = idle.map { $0.isOpenAfterGreeting() }
        #expect(live.filter { $0 }.count <= 16)
        #expect(!live[0] && live[59])
        withExtendedLifetime(idle) {}
        expectCleanShutdown(server)
    }

    /// Under a low open-file limit the cap is lowered to what fits, with a warning, instead of
    /// accept failing with EMFILE for real clients.
    @Test func capIsLoweredToFitTheDescriptorLimit() throws {
        let directory = try #require(String(validatingCString: mkdtemp(strdup("/tmp/nbdfd.XXXXXX"))))
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let command =
            "ulimit -n 100 && exec timeout --preserve-status -s TERM 1 \"$0\" serve \"$1\" --unix \"$2\" --max-connections 500"
        let result = try runProgram(
            "/bin/sh",
            ["-c", command, builtProductsDirectory() + "/erofs", try corpusImagePath(), directory + "/s.sock"])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(
            result.standardError.contains("connection cap lowered to fit the open-file limit"),
            "\(result.standardError)")
        #expect(result.standardError.contains("max-connections=4 "), "\(result.standardError)")  // (100 - 64) / 9
    }

    /// A client that stays silent after the greeting is dropped when the handshake time is up.
    @Test func silentClientIsClosedAtTheHandshakeTimeout() throws {
        let server = try ServeProcess(image: try corpusImagePath(), extraArguments: ["--handshake-timeout", "1"])
        let client = try UnixClient(path: server.socketPath)
        #expect(client.receive(18) != nil)
        let started = Date()
        client.setReceiveTimeout(seconds: 5)
        #expect(client.receive(1) == nil)
        let waited = Date().timeIntervalSince(started)
        #expect(waited > 0.8 && waited < 3, "closed after \(waited) s")
        expectCleanShutdown(server)
    }

    /// A client that asks for far more than the socket buffers hold and never reads: SIGTERM
    /// still ends the server within 5 s (its sockets are shut down after the grace period).
    @Test func sigtermWithAClientThatNeverReadsExitsWithinFiveSeconds() throws {
        let server = try ServeProcess(image: try corpusImagePath("chunked"))
        let client = try UnixClient(path: server.socketPath)
        try client.handshakeToTransmission()
        client.floodReadsWithoutReading()
        usleep(300_000)
        let started = Date()
        #expect(server.terminate() == 0)
        let took = Date().timeIntervalSince(started)
        #expect(took < 5, "exit took \(took) s")
    }

    /// With one slot and a send timeout of one second, a client that never reads holds the slot
    /// only until its replies stop moving; then a real client gets it.
    @Test func sendTimeoutFreesTheSlotOfAClientThatNeverReads() throws {
        let server = try ServeProcess(
            image: try corpusImagePath("chunked"), extraArguments: ["--max-connections", "1", "--send-timeout", "1"])
        let client = try UnixClient(path: server.socketPath)
        try client.handshakeToTransmission()
        client.floodReadsWithoutReading()
        usleep(200_000)
        #expect(try UnixClient(path: server.socketPath).receive(1) == nil, "the slot was free")
        let started = Date()
        try waitUntilNbdinfoSucceeds(server)
        #expect(Date().timeIntervalSince(started) < 5)
        withExtendedLifetime(client) {}
        expectCleanShutdown(server)
    }

    /// A regular file at the socket path is neither replaced nor removed.
    @Test func existingFileAtTheSocketPathIsRefused() throws {
        let directory = try #require(String(validatingCString: mkdtemp(strdup("/tmp/nbdpath.XXXXXX"))))
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/precious"
        try Data("keep me\n".utf8).write(to: URL(fileURLWithPath: path))
        let result = try runProgram(
            "/usr/bin/timeout",
            ["10", builtProductsDirectory() + "/erofs", "serve", try corpusImagePath(), "--unix", path])
        #expect(result.status == 1, "status \(result.status): \(result.standardError)")
        #expect(
            result.standardError.contains("\(path): the path exists and is not a socket"), "\(result.standardError)")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me\n")
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: directory) == ["precious"],
            "temporary socket left behind")
    }

    /// A socket no server answers on (left by one that died) is replaced; a live one is not.
    @Test func staleSocketIsReplacedAndLiveOneRefused() throws {
        let server = try ServeProcess(image: try corpusImagePath())
        let second = try runProgram(
            "/usr/bin/timeout",
            ["10", builtProductsDirectory() + "/erofs", "serve", try corpusImagePath(), "--unix", server.socketPath])
        #expect(
            second.status == 1 && second.standardError.contains("another server listens"), "\(second.standardError)")
        // Kill the first without its cleanup: its socket file stays, stale.
        kill(server.process.processIdentifier, SIGKILL)
        server.process.waitUntilExit()
        #expect(FileManager.default.fileExists(atPath: server.socketPath))
        let replacement = try ServeProcess(image: try corpusImagePath(), socketPath: server.socketPath)
        try waitUntilNbdinfoSucceeds(replacement)
        expectCleanShutdown(replacement)
    }

    /// What is at the path when the server ends is removed only if it is the server's socket.
    @Test func socketReplacedWhileServingIsNotRemoved() throws {
        let server = try ServeProcess(image: try corpusImagePath())
        let other = server.directory + "/other"
        try Data("mine\n".utf8).write(to: URL(fileURLWithPath: other))
        #expect(rename(other, server.socketPath) == 0)
        #expect(server.terminate() == 0)
        #expect(try String(contentsOfFile: server.socketPath, encoding: .utf8) == "mine\n")
    }

    /// The export's description does not carry the image's path (or any default text); it is
    /// what --description says.
    @Test func descriptionDoesNotLeakTheImagePath() throws {
        let image = try corpusImagePath()
        for (arguments, expected) in [([String](), nil as String?), (["--description", "base layer"], "base layer")] {
            let server = try ServeProcess(image: image, extraArguments: arguments)
            let info = try runOrRecord("/usr/bin/nbdinfo", ["--json", server.uri])
            #expect(
                !info.standardOutput.contains(image)
                    && !info.standardOutput.contains(URL(fileURLWithPath: image).lastPathComponent))
            let json = try #require(
                try JSONSerialization.jsonObject(with: Data(info.standardOutput.utf8)) as? [String: Any])
            let export = try #require((json["exports"] as? [[String: Any]])?.first)
            #expect(export["description"] as? String == expected)
            expectCleanShutdown(server)
        }
    }

    /// `--tcp :PORT` listens on 127.0.0.1 only and does not warn; an address open to other hosts
    /// warns that no TLS protects it, unless TLS is required.
    @Test func emptyTCPHostMeansLoopbackAndOtherAddressesWarn() throws {
        let pki = try TestPKI()
        for (host, tls, warns) in [("", false, false), ("0.0.0.0", false, true), ("0.0.0.0", true, false)] {
            let port = try freeTCPPort()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: builtProductsDirectory() + "/erofs")
            process.arguments =
                ["serve", try corpusImagePath(), "--tcp", "\(host):\(port)"] + (tls ? ["--tls-psk", pki.pskFile] : [])
            let errors = Pipe()
            process.standardError = errors
            try process.run()
            var listening: String?
            for _ in 0..<100 where listening == nil {
                listening = listeningTCPAddress(port: port)
                if listening == nil { usleep(50_000) }
            }
            process.terminate()
            process.waitUntilExit()
            let log = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus == 0, "\(log)")
            #expect(
                listening == (host.isEmpty ? "0100007F" : "00000000"),
                "\(host):\(port) listened on \(listening ?? "nothing")")
            #expect(log.contains("any host that reaches it can read the image") == warns, "\(log)")
        }
    }

    /// The small soak: idle, half-open and never-reading clients over the cap while nbdinfo and
    /// nbdcopy are served; SIGTERM ends it within 5 s (Tests/NBDServerTests/Peers/soak.py; the full figures are
    /// in BENCHMARKS.md).
    @Test func smallSoakServesRealClientsAndStopsInTime() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Tests/NBDServerTests/Peers/soak.py").path
        let result = try runProgram(
            "/usr/bin/python3",
            [
                script, builtProductsDirectory() + "/erofs", try corpusImagePath("chunked"),
                "--idle", "400", "--half-open", "60", "--slow", "6", "--max-connections", "16",
            ])
        #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
        #expect(result.standardOutput.hasPrefix("served ") && result.standardOutput.contains("\nok sigterm-exit="))
    }
}

/// The local address (hex, as /proc/net/tcp prints it) of the IPv4 socket listening on `port`.
private func listeningTCPAddress(port: UInt16) -> String? {
    guard let table = try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8) else { return nil }
    let portHex = String(format: "%04X", port)
    for line in table.split(separator: "\n").dropFirst() {
        let fields = line.split(separator: " ")
        guard fields.count > 3, fields[3] == "0A" else { continue }  // TCP_LISTEN
        let local = fields[1].split(separator: ":")
        if local.count == 2 && local[1] == portHex { return String(local[0]) }
    }
    return nil
}

/// nbdinfo until it succeeds (a slot may take a moment to free); records the last failure.
func waitUntilNbdinfoSucceeds(_ server: ServeProcess, seconds: Double = 8) throws {
    let deadline = Date().addingTimeInterval(seconds)
    var result = try runProgram("/usr/bin/nbdinfo", ["--size", server.uri])
    while result.status != 0 && Date() < deadline {
        usleep(100_000)
        result = try runProgram("/usr/bin/nbdinfo", ["--size", server.uri])
    }
    #expect(result.status == 0, "nbdinfo: \(result.standardError)")
}

extension UnixClient {
    /// Fixed newstyle with NO_ZEROES, then OPT_GO on the default export, up to its ACK.
    func handshakeToTransmission() throws {
        _ = try #require(receive(18), "no greeting")
        send([0, 0, 0, 3])
        let go = InfoRequest(exportName: "").encoded()
        send(OptionRequestHeader(option: .go, length: UInt32(go.count)).encoded() + go)
        while true {
            let header = try OptionReply.decodeHeader(
                try #require(receive(OptionReply.headerSize), "handshake cut short"))
            if header.length > 0 { _ = receive(Int(header.length)) }  // a 0-byte MSG_WAITALL recv blocks
            try #require(!header.type.isError, "GO refused")
            if header.type == .ack { return }
        }
    }

    /// Sends READs of 1 MiB until the socket takes no more, reading nothing.
    func floodReadsWithoutReading() {
        var small: Int32 = 4096
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        for cookie in 0..<512 {
            let request = Request(
                type: .read, cookie: UInt64(cookie), offset: UInt64(cookie % 4) << 20, length: 1 << 20
            ).encoded()
            let sent = request.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if sent != request.count { break }
        }
    }

    func setReceiveTimeout(seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Reads the greeting if it came; false when the server has closed the connection.
    func isOpenAfterGreeting() -> Bool {
        var bytes = [UInt8](repeating: 0, count: 64)
        while true {
            let got = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 64, Int32(MSG_DONTWAIT)) }
            if got == 0 { return false }
            if got < 0 { return errno == EAGAIN }
        }
    }
}
