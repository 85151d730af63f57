#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NBDProtocol
import Testing
import TestSupport

/// `erofs serve` running as a child process on a Unix socket in a fresh directory.
final class ServeProcess {
    let directory: String
    let socketPath: String
    let exportName: String
    let image: String
    let process = Process()
    let errorOutput = Pipe()

    /// `socketPath`: where to listen (default: in a fresh directory, removed at the end).
    init(image: String, exportName: String = "img", extraArguments: [String] = [], socketPath: String? = nil) throws {
        directory = try #require(String(validatingCString: mkdtemp(strdup("/tmp/nbdserve.XXXXXX"))))
        self.socketPath = socketPath ?? directory + "/nbd.sock"
        self.exportName = exportName
        self.image = image
        let binary = builtProductsDirectory() + "/erofs"
        try #require(FileManager.default.isExecutableFile(atPath: binary), "\(binary) not built")
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["serve", image, "--unix", self.socketPath, "--export-name", exportName] + extraArguments
        process.standardError = errorOutput
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: self.socketPath) {
            try #require(process.isRunning, "erofs serve exited early")
            try #require(Date() < deadline, "socket \(self.socketPath) did not appear")
            usleep(10_000)
        }
    }

    var uri: String { "nbd+unix:///\(exportName)?socket=\(socketPath)" }

    /// SIGTERM, then the exit status (nil if it did not exit within 10 s).
    func terminate() -> Int32? {
        process.terminate()
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        guard !process.isRunning else {
            kill(process.processIdentifier, SIGKILL)
            return nil
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Ends the server, checking the clean shutdown: exit status 0, no socket file left.
func expectCleanShutdown(_ server: ServeProcess) {
    #expect(server.terminate() == 0)
    #expect(!FileManager.default.fileExists(atPath: server.socketPath), "socket file left behind")
}

func runOrRecord(_ executable: String, _ arguments: [String]) throws -> ProcessResult {
    let result = try runProgram(executable, arguments)
    #expect(result.status == 0, "\(executable) \(arguments.joined(separator: " ")): \(result.standardError)")
    return result
}

@Suite(.serialized) struct ServeCommandTests {
    @Test func nbdinfoSeesSizeReadOnlyBlockSizesAndName() throws {
        let image = try corpusImagePath()
        let server = try ServeProcess(image: image, exportName: "plain")
        let info = try runOrRecord("/usr/bin/nbdinfo", ["--json", server.uri])
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(info.standardOutput.utf8)) as? [String: Any])
        #expect(json["protocol"] as? String == "newstyle-fixed")
        #expect(json["structured"] as? Bool == true)
        let export = try #require((json["exports"] as? [[String: Any]])?.first)
        let size = try FileManager.default.attributesOfItem(atPath: image)[.size] as? Int
        #expect(export["export-name"] as? String == "plain")
        #expect(export["export-size"] as? Int == size)
        #expect(export["is_read_only"] as? Bool == true)
        #expect(export["can_multi_conn"] as? Bool == true)
        #expect(export["can_flush"] as? Bool == true)
        #expect(export["block_size_minimum"] as? Int == 1)
        #expect(export["block_size_preferred"] as? Int == 4096)
        #expect(export["block_size_maximum"] as? Int == 32 << 20)

        let list = try runOrRecord("/usr/bin/nbdinfo", ["--list", "--json", "nbd+unix://?socket=\(server.socketPath)"])
        let listed = try #require(
            try JSONSerialization.jsonObject(with: Data(list.standardOutput.utf8)) as? [String: Any])
        #expect((listed["exports"] as? [[String: Any]])?.compactMap { $0["export-name"] as? String } == ["plain"])
        expectCleanShutdown(server)
    }

    @Test func nbdcopyWithManyConnectionsCopiesTheImageExactly() throws {
        let image = try corpusImagePath("chunked")
        let server = try ServeProcess(image: image)
        let copy = server.directory + "/copy.img"
        try runOrRecord(
            "/usr/bin/nbdcopy", ["--connections=4", "--requests=16", "--request-size=65536", server.uri, copy])
        #expect(FileManager.default.contentsEqual(atPath: copy, andPath: image))
        // And the default export (empty name) is the same export.
        let copyDefault = server.directory + "/copy-default.img"
        try runOrRecord("/usr/bin/nbdcopy", ["nbd+unix:///?socket=\(server.socketPath)", copyDefault])
        #expect(FileManager.default.contentsEqual(atPath: copyDefault, andPath: image))
        expectCleanShutdown(server)
    }

    @Test func qemuImgComparesTheExportEqualToTheImage() throws {
        let image = try corpusImagePath("lz4")
        let server = try ServeProcess(image: image)
        let result = try runOrRecord("/usr/bin/qemu-img", ["compare", "-f", "raw", "-F", "raw", server.uri, image])
        #expect(result.standardOutput.contains("Images are identical"))
        expectCleanShutdown(server)
    }

    @Test func libnbdEdgeCases() throws {
        let image = try corpusImagePath()
        let server = try ServeProcess(image: image)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Tests/NBDServerTests/Peers/edge_cases.py").path
        let result = try runProgram("/usr/bin/python3", [script, server.uri, image])
        #expect(result.status == 0, "\(result.standardOutput)\(result.standardError)")
        #expect(result.standardOutput == "ok\n")
        expectCleanShutdown(server)
    }

    /// A raw client: unknown options are refused without ending the handshake, then the old
    /// EXPORT_NAME entry works (no zero padding with NO_ZEROES) and gives simple replies.
    @Test func rawHandshakeUnknownOptionThenExportName() throws {
        let image = try corpusImagePath()
        let server = try ServeProcess(image: image, exportName: "plain")
        let client = try UnixClient(path: server.socketPath)
        let greeting = try #require(client.receive(18))
        #expect(greeting == Array("NBDMAGICIHAVEOPT".utf8) + [0, 3])
        client.send([0, 0, 0, 3])
        client.send(OptionRequestHeader(option: OptionCode(rawValue: 99), length: 3).encoded() + [1, 2, 3])
        let header = try OptionReply.decodeHeader(try #require(client.receive(OptionReply.headerSize)))
        #expect(header.option == OptionCode(rawValue: 99) && header.type == .errorUnsupported)
        _ = client.receive(Int(header.length))
        client.send(OptionRequestHeader(option: .exportName, length: 5).encoded() + Array("plain".utf8))
        let exportReply = try #require(client.receive(10))
        #expect(exportReply[8...] == [0x01, 0x07])
        client.send(Request(type: .read, cookie: 77, offset: 1024, length: 1024).encoded())
        let reply = try SimpleReply(decoding: try #require(client.receive(SimpleReply.size)))
        #expect(reply.cookie == 77 && reply.error == .none)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)))
        #expect(try #require(client.receive(1024))[...] == bytes[1024..<2048])
        client.send(Request(type: .disconnect, cookie: 78, offset: 0, length: 0).encoded())
        #expect(client.receive(1) == nil)  // closed, never replied to
        expectCleanShutdown(server)
    }

    /// SIGTERM while a client sits idle in the handshake: the server still exits promptly.
    @Test func shutdownWithAnIdleClientConnected() throws {
        let server = try ServeProcess(image: try corpusImagePath())
        let client = try UnixClient(path: server.socketPath)
        _ = client.receive(18)
        expectCleanShutdown(server)
        #expect(client.receive(1) == nil)
    }
}

/// A blocking Unix-socket client for hand-made protocol exchanges.
final class UnixClient {
    let fd: Int32

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        try #require(status == 0, "connect \(path): errno \(errno)")
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func receive(_ count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress, count, Int32(MSG_WAITALL)) }
        return got == count ? bytes : nil
    }
}

/// A TCP port that was free a moment ago (bound to port 0, then released).
func freeTCPPort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    try #require(bound, "cannot find a free port: errno \(errno)")
    return UInt16(bigEndian: address.sin_port)
}

@Suite struct ServeOverTCPTests {
    @Test func nbdcopyOverTCPCopiesTheImage() throws {
        let image = try corpusImagePath("lz4hc-bigpcluster")
        let port = try freeTCPPort()
        let binary = builtProductsDirectory() + "/erofs"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["serve", image, "--tcp", "127.0.0.1:\(port)", "--export-name", "tcp"]
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        let directory = try #require(String(validatingCString: mkdtemp(strdup("/tmp/nbdtcp.XXXXXX"))))
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let copy = directory + "/copy.img"
        var result = try runProgram("/usr/bin/nbdcopy", ["nbd://127.0.0.1:\(port)/tcp", copy])
        for _ in 0..<50 where result.status != 0 {  // until the server listens
            usleep(100_000)
            result = try runProgram("/usr/bin/nbdcopy", ["nbd://127.0.0.1:\(port)/tcp", copy])
        }
        #expect(result.status == 0, "\(result.standardError)")
        #expect(FileManager.default.contentsEqual(atPath: copy, andPath: image))
        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }
}
