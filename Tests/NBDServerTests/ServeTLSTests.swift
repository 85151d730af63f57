#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NBDProtocol
import NBDServer
import Testing
import TestSupport

/// A CA and a server certificate for localhost/127.0.0.1 made with openssl(1), a client
/// directory as libnbd wants it (ca-cert.pem), a second CA the server's certificate does not
/// chain to, and a PSK file in psktool's format.
final class TestPKI {
    let directory: String
    var clientDirectory: String { directory + "/client" }
    var otherCADirectory: String { directory + "/other" }
    var certificate: String { directory + "/server-cert.pem" }
    var key: String { directory + "/server-key.pem" }
    var pskFile: String { directory + "/keys.psk" }
    var wrongPSKFile: String { directory + "/wrong.psk" }

    init() throws {
        directory = try #require(String(validatingCString: mkdtemp(strdup("/tmp/nbdtls.XXXXXX"))))
        let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for subdirectory in ["client", "other"] {
            try FileManager.default.createDirectory(
                atPath: directory + "/" + subdirectory, withIntermediateDirectories: false)
        }
        try openssl(
            ["req", "-x509"] + curve + [
                "-keyout", "ca-key.pem", "-out", "client/ca-cert.pem", "-days", "2", "-subj", "/CN=test CA",
            ])
        try openssl(
            ["req", "-x509"] + curve + [
                "-keyout", "other/ca-key.pem", "-out", "other/ca-cert.pem", "-days", "2", "-subj", "/CN=other CA",
            ])
        try openssl(["req"] + curve + ["-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/CN=localhost"])
        try Data("subjectAltName=DNS:localhost,IP:127.0.0.1\n".utf8).write(
            to: URL(fileURLWithPath: directory + "/ext.cnf"))
        try openssl([
            "x509", "-req", "-in", "server.csr", "-CA", "client/ca-cert.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-out", "server-cert.pem", "-days", "2", "-extfile", "ext.cnf",
        ])
        try Data("alice:\(String(repeating: "5a", count: 32))\n".utf8).write(to: URL(fileURLWithPath: pskFile))
        try Data("alice:\(String(repeating: "a5", count: 32))\n".utf8).write(to: URL(fileURLWithPath: wrongPSKFile))
    }

    private func openssl(_ arguments: [String]) throws {
        let result = try runProgram("/usr/bin/env", ["-C", directory, "/usr/bin/openssl"] + arguments)
        try #require(result.status == 0, "openssl \(arguments.joined(separator: " ")): \(result.standardError)")
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }
}

/// `erofs serve --tcp 127.0.0.1:PORT` as a child, ready once a plain TCP connect succeeds.
final class TCPServeProcess {
    let port: UInt16
    let process = Process()

    init(image: String, arguments: [String]) throws {
        port = try freeTCPPort()
        process.executableURL = URL(fileURLWithPath: builtProductsDirectory() + "/erofs")
        process.arguments = ["serve", image, "--tcp", "127.0.0.1:\(port)"] + arguments
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while !canConnect() {
            try #require(process.isRunning && Date() < deadline, "erofs serve did not listen on \(port)")
            usleep(20_000)
        }
    }

    private func canConnect() -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        } == 0
    }

    func terminate() -> Int32 {
        process.terminate()
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}

@Suite(.serialized) struct ServeTLSTests {
    /// Certificates: nbdinfo and nbdcopy (GnuTLS, verifying the chain and the host name) are
    /// served through TLS; a client without TLS, or trusting another CA, is not.
    @Test func certificateTLSServesRealClientsAndRefusesOthers() throws {
        let pki = try TestPKI()
        let image = try corpusImagePath("chunked")
        let server = try TCPServeProcess(
            image: image, arguments: ["--tls-certificate", pki.certificate, "--tls-key", pki.key])
        let uri = "nbds://localhost:\(server.port)/?tls-certificates=\(pki.clientDirectory)"
        let info = try runOrRecord("/usr/bin/nbdinfo", ["--json", uri])
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(info.standardOutput.utf8)) as? [String: Any])
        #expect(json["TLS"] as? Bool == true)
        let copy = pki.directory + "/copy.img"
        _ = try runOrRecord("/usr/bin/nbdcopy", ["--connections=2", uri, copy])
        #expect(FileManager.default.contentsEqual(atPath: copy, andPath: image))

        let plain = try runProgram("/usr/bin/nbdinfo", ["--size", "nbd://localhost:\(server.port)/"])
        #expect(plain.status != 0 && plain.standardError.contains("requires TLS"), "\(plain.standardError)")
        let untrusted = try runProgram(
            "/usr/bin/nbdinfo", ["--size", "nbds://localhost:\(server.port)/?tls-certificates=\(pki.otherCADirectory)"])
        #expect(
            untrusted.status != 0 && untrusted.standardError.contains("certificate verification"),
            "\(untrusted.standardError)")
        #expect(server.terminate() == 0)
    }

    /// On the wire, before STARTTLS: LIST is refused with NBD_REP_ERR_TLS_REQD, the connection
    /// stays usable, and EXPORT_NAME closes it.
    @Test func requiredTLSRefusesOptionsBeforeStartTLS() throws {
        let pki = try TestPKI()
        let server = try ServeProcess(image: try corpusImagePath(), extraArguments: ["--tls-psk", pki.pskFile])
        let client = try UnixClient(path: server.socketPath)
        _ = try #require(client.receive(18))
        client.send([0, 0, 0, 3])
        for option in [OptionCode.list, .structuredReply] {
            client.send(OptionRequestHeader(option: option, length: 0).encoded())
            let header = try OptionReply.decodeHeader(try #require(client.receive(OptionReply.headerSize)))
            #expect(header.option == option && header.type == .errorTLSRequired)
            if header.length > 0 { _ = client.receive(Int(header.length)) }
        }
        client.send(OptionRequestHeader(option: .exportName, length: 0).encoded())
        #expect(client.receive(1) == nil)
        expectCleanShutdown(server)
    }

    /// Pre-shared keys (psktool's file format): the right key is served, a wrong one refused.
    @Test func pskTLSServesTheRightKeyOnly() throws {
        let pki = try TestPKI()
        let image = try corpusImagePath("chunked")
        let server = try ServeProcess(image: image, extraArguments: ["--tls-psk", pki.pskFile])
        let uri = "nbds+unix://alice@/?socket=\(server.socketPath)&tls-psk-file=\(pki.pskFile)"
        let copy = pki.directory + "/copy.img"
        _ = try runOrRecord("/usr/bin/nbdcopy", [uri, copy])
        #expect(FileManager.default.contentsEqual(atPath: copy, andPath: image))
        let wrong = try runProgram(
            "/usr/bin/nbdinfo",
            ["--size", "nbds+unix://alice@/?socket=\(server.socketPath)&tls-psk-file=\(pki.wrongPSKFile)"])
        #expect(wrong.status != 0, "a wrong key was accepted")
        let stranger = try runProgram(
            "/usr/bin/nbdinfo",
            ["--size", "nbds+unix://mallory@/?socket=\(server.socketPath)&tls-psk-file=\(pki.pskFile)"])
        #expect(stranger.status != 0, "an unknown identity was accepted")
        expectCleanShutdown(server)
    }

    /// A key or PSK file other users can read is named in a warning (openssl's key as it
    /// writes it is 0600; a copied one often is not).
    @Test func secretFilesOthersCanReadAreNamed() throws {
        let pki = try TestPKI()
        #expect(chmod(pki.key, 0o600) == 0 && chmod(pki.pskFile, 0o644) == 0)
        let exposed = TLSContext.exposedSecrets([pki.key, pki.pskFile, nil])
        #expect(exposed == ["\(pki.pskFile): mode 644: other users can read the secret (chmod 600 it)"])
        #expect(chmod(pki.pskFile, 0o640) == 0)
        #expect(TLSContext.exposedSecrets([pki.pskFile]).count == 1)
        #expect(chmod(pki.pskFile, 0o600) == 0)
        #expect(TLSContext.exposedSecrets([pki.key, pki.pskFile]).isEmpty)
    }

    /// `--tls=on`: plain clients and TLS clients are both served.
    @Test func optionalTLSServesBoth() throws {
        let pki = try TestPKI()
        let server = try TCPServeProcess(
            image: try corpusImagePath(),
            arguments: ["--tls=on", "--tls-certificate", pki.certificate, "--tls-key", pki.key])
        for (uri, tls) in [
            ("nbd://localhost:\(server.port)/", false),
            ("nbds://localhost:\(server.port)/?tls-certificates=\(pki.clientDirectory)", true),
        ] {
            let info = try runOrRecord("/usr/bin/nbdinfo", ["--json", uri])
            let json = try #require(
                try JSONSerialization.jsonObject(with: Data(info.standardOutput.utf8)) as? [String: Any])
            #expect(json["TLS"] as? Bool == tls)
        }
        #expect(server.terminate() == 0)
    }

    /// A TLS client that floods READs and never reads: SIGTERM still ends the server in 5 s.
    @Test func sigtermWithAStalledTLSClientExitsWithinFiveSeconds() throws {
        let pki = try TestPKI()
        let server = try TCPServeProcess(
            image: try corpusImagePath("chunked"),
            arguments: ["--tls-certificate", pki.certificate, "--tls-key", pki.key])
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Tests/NBDServerTests/Peers/tls_stalled_reader.py").path
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        client.arguments = [script, "\(server.port)", pki.clientDirectory + "/ca-cert.pem"]
        let output = Pipe()
        client.standardOutput = output
        try client.run()
        defer { if client.isRunning { kill(client.processIdentifier, SIGKILL) } }
        let line = String(decoding: output.fileHandleForReading.availableDataOrLine(), as: UTF8.self)
        #expect(line.hasPrefix("stalled"), "the client did not get to stall: \(line)")
        let started = Date()
        #expect(server.terminate() == 0)
        #expect(Date().timeIntervalSince(started) < 5)
    }

    @Test func credentialsAreCheckedBeforeServing() throws {
        let pki = try TestPKI()
        let binary = builtProductsDirectory() + "/erofs"
        let image = try corpusImagePath()
        let socket = pki.directory + "/s.sock"
        let noCredentials = try runProgram(binary, ["serve", image, "--unix", socket, "--tls=require"])
        #expect(noCredentials.status == 64 && noCredentials.standardError.contains("needs --tls-certificate"))
        try Data("alice:5a5\n".utf8).write(to: URL(fileURLWithPath: pki.directory + "/bad.psk"))
        let badPSK = try runProgram(
            binary, ["serve", image, "--unix", socket, "--tls-psk", pki.directory + "/bad.psk"])
        #expect(
            badPSK.status == 1 && badPSK.standardError.contains("bad.psk: line 1 is not IDENTITY:HEXKEY"),
            "\(badPSK.standardError)")
        let mismatched = try runProgram(
            binary,
            [
                "serve", image, "--unix", socket, "--tls-certificate", pki.certificate, "--tls-key",
                pki.directory + "/ca-key.pem",
            ])
        #expect(
            mismatched.status == 1 && mismatched.standardError.contains("ca-key.pem: error:")
                && mismatched.standardError.contains("key values mismatch"), "\(mismatched.standardError)")
        #expect(!FileManager.default.fileExists(atPath: socket))
    }
}

extension FileHandle {
    /// One line (or what came before the end of the stream).
    func availableDataOrLine() -> Data {
        var line = Data()
        while true {
            let byte = readData(ofLength: 1)
            if byte.isEmpty || byte == Data([0x0a]) { return line }
            line.append(byte)
        }
    }
}
