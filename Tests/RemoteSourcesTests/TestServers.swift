import Foundation
import TestSupport

/// A server process started by a test, stopped (SIGTERM, then waited for) when released.
final class TestServer: @unchecked Sendable {
    let process = Process()
    let port: Int

    /// Runs `executable` with `arguments`; the port is the first line it prints, or `port`
    /// when given (then the server is waited for with TCP connects: moto counts any request).
    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:], port fixedPort: Int? = nil)
        throws
    {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var merged = ProcessInfo.processInfo.environment
        merged.merge(environment) { $1 }
        process.environment = merged
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        if let fixedPort {
            port = fixedPort
            let deadline = Date().addingTimeInterval(20)
            while !Self.accepts(port) {
                guard Date() < deadline, process.isRunning else {
                    throw ServerError("\(executable) did not listen on \(port)")
                }
                usleep(50_000)
            }
        } else {
            var line = Data()
            while !line.contains(0x0a) {
                let byte = output.fileHandleForReading.readData(ofLength: 1)
                guard !byte.isEmpty else { throw ServerError("\(executable) exited before printing its port") }
                line += byte
            }
            guard
                let parsed = Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            else {
                throw ServerError("\(executable) printed no port")
            }
            port = parsed
        }
    }

    deinit {
        // SIGKILL: a SIGTERM can sit blocked in a mask inherited from the test runner's thread.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// The range server of Servers/range_server.py over `root`, or as a proxy to `upstream`.
    static func rangeServer(root: String? = nil, upstream: Int? = nil, tls: (certificate: String, key: String)? = nil)
        throws -> TestServer
    {
        var arguments = [serversDirectory + "/range_server.py"]
        if let tls { arguments += ["--tls", tls.certificate, tls.key] }
        if let root { arguments += ["--root", root] }
        if let upstream { arguments += ["--upstream", "127.0.0.1:\(upstream)"] }
        return try TestServer("/usr/bin/env", ["python3"] + arguments)
    }

    static var serversDirectory: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/Servers"
    }

    /// A free TCP port on loopback (bound, read, released).
    static func freePort() -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func accepts(_ port: Int) -> Bool {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        } == 0
    }

    /// Sends a control request (faults, stats) to the range server.
    @discardableResult
    func control(_ method: String, _ path: String) throws -> String {
        let result = try runProgram("/usr/bin/curl", ["-s", "-X", method, "http://127.0.0.1:\(port)\(path)"])
        guard result.status == 0 else { throw ServerError("control \(path): curl exit \(result.status)") }
        return result.standardOutput
    }

    func rangeRequests() throws -> Int {
        try stats()["range_requests"] as! Int
    }

    /// The Range header of each ranged request so far, in arrival order.
    func rangeLog() throws -> [String] {
        try stats()["range_log"] as! [String]
    }

    private func stats() throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(try control("GET", "/__stats").utf8)) as! [String: Any]
    }

    /// The range requests once there are at least `atLeast` and none has arrived for `quiet`
    /// seconds (a daemon's readahead, or a standby opening the object, goes on after the
    /// command that started it returned), waiting at most `limit` seconds.
    func rangeRequestsOnceQuiet(atLeast: Int = 0, quiet: Double = 0.5, limit: Double = 30) throws -> Int {
        let deadline = Date().addingTimeInterval(limit)
        var count = try rangeRequests()
        var since = Date()
        while Date() < deadline {
            usleep(50_000)
            let now = try rangeRequests()
            if now != count {
                count = now
                since = Date()
            } else if count >= atLeast && Date().timeIntervalSince(since) >= quiet {
                return count
            }
        }
        throw ServerError("range requests: \(count) after \(limit) s, not yet \(atLeast) and quiet")
    }
}

struct ServerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func scratchDirectory(_ name: String) throws -> String {
    let path = NSTemporaryDirectory() + "remote-sources-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// `count` random bytes (from /dev/urandom: a per-byte generator is slow in debug builds).
func randomBytes(_ count: Int) -> [UInt8] {
    [UInt8](FileHandle(forReadingAtPath: "/dev/urandom")!.readData(ofLength: count))
}
