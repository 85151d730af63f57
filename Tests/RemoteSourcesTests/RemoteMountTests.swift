import Foundation
import Testing
import TestSupport

/// `mount.erofs` with remote sources, for real through FUSE on this kernel: corpus images from
/// S3 (moto, signatures checked) and HTTP walk to their manifests; the secret is in no state
/// file, log, argv or environment of ours; every bad input at mount time is one line, exit 32,
/// and nothing left mounted, running or under /run.
@Suite(.requiresRoot, .requires(.pythonModule("moto")), .serialized) struct RemoteMountTests {
    static var mountErofs: String { builtProductsDirectory() + "/mount.erofs" }
    static var erofs: String { builtProductsDirectory() + "/erofs" }
    static let sample = Corpus.imagesOrEmpty.filter { ["lz4", "lzma", "chunked"].contains($0.name) }
    static let credentialsDirectory = "/run/erofs-mount/credentials"

    /// `mount.erofs` with the environment replaced (no inherited AWS_* variables).
    func mountErofs(_ arguments: [String], environment: [String: String] = [:]) throws -> ProcessResult {
        try runProgram(
            "/usr/bin/env",
            ["-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"] + environment.map { "\($0.key)=\($0.value)" }
                + [Self.mountErofs] + arguments)
    }

    /// The mount at `mountPoint` in /proc/self/mountinfo: device number, type, source.
    static func mount(at mountPoint: String) -> (device: String, type: String, source: String)? {
        let table = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for line in table.split(separator: "\n") {
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count > 6, fields[4] == mountPoint, let dash = fields.firstIndex(of: "-"),
                dash + 2 < fields.count
            else { continue }
            return (fields[2], fields[dash + 1], fields[dash + 2])
        }
        return nil
    }

    /// Our daemons (every process running a serving or supervising mode of mount.erofs).
    static func daemonProcesses() -> [Int32] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap(Int32.init) ?? []
        return pids.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return arguments.contains {
                ["--serve-fuse", "--supervise-fuse", "--serve-nbd-device", "--supervise-nbd-device"].contains($0)
            }
        }
    }

    static func daemonProcesses(mentioning text: String) -> [Int32] {
        daemonProcesses().filter { pid in
            let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()
            return String(decoding: data, as: UTF8.self).contains(text)
        }
    }

    /// Captured credential files holding `secret` (other sessions may capture their own at the
    /// same time: only ours are counted).
    static func captured(holding secret: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: credentialsDirectory)) ?? []
        return names.map { credentialsDirectory + "/" + $0 }.filter {
            (FileManager.default.contents(atPath: $0) ?? Data()).range(of: Data(secret.utf8)) != nil
        }
    }

    /// Files under /run/erofs-mount (state, logs), not the captured credentials themselves.
    static func stateFiles() -> [String] {
        let root = "/run/erofs-mount"
        let names = FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []
        return names.map { root + "/" + $0 }.filter { !$0.hasPrefix(credentialsDirectory) }
    }

    /// Mounts, walks, checks where the secret is (if any), unmounts, checks nothing is left.
    func mountWalkUnmount(
        source: String, options: String, image: Corpus.Image, environment: [String: String] = [:],
        secret: String? = nil, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        try mountWalkUnmount(
            source: source, options: options, name: image.name, manifest: try image.expectedManifest(),
            environment: environment, secrets: secret.map { [$0] } ?? [],
            captured: environment["AWS_SECRET_ACCESS_KEY"] == nil ? nil : secret, sourceLocation: sourceLocation)
    }

    /// Mounts `source` through FUSE, walks it (equal to `manifest`), runs `whileMounted`;
    /// checks that no process of ours (argv, environment) nor state file holds any of
    /// `secrets`, and that exactly one 0600 captured file holds `captured` (none when nil);
    /// unmounts and checks that nothing is left: mount, daemon, state, captured file. Every
    /// line on stderr must contain one of `warnings`.
    func mountWalkUnmount(
        source: String, options: String, name: String, manifest expected: String,
        environment: [String: String] = [:], secrets: [String] = [], captured: String? = nil,
        warnings: [String] = [], whileMounted: (_ mountPoint: String, _ state: String) throws -> Void = { _, _ in },
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let mountPoint = try scratchDirectory("remote-mnt")
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        let mounted = try mountErofs(
            ["-t", "erofs.fuse", source, mountPoint, "-o", options], environment: environment)
        try #require(mounted.status == 0, "\(name): \(mounted.standardError)", sourceLocation: sourceLocation)
        for line in mounted.standardError.split(separator: "\n") {
            #expect(warnings.contains { line.contains($0) }, "\(line)", sourceLocation: sourceLocation)
        }
        let entry = try #require(Self.mount(at: mountPoint), sourceLocation: sourceLocation)
        #expect(entry.type == "fuse.erofs", sourceLocation: sourceLocation)
        let state = "/run/erofs-mount/fuse/\(entry.device.replacingOccurrences(of: ":", with: "-")).json"
        let stateData = try #require(FileManager.default.contents(atPath: state), sourceLocation: sourceLocation)
        let daemon = try #require(
            (try JSONSerialization.jsonObject(with: stateData) as? [String: Any])?["daemonPID"] as? Int,
            sourceLocation: sourceLocation)

        let walk = try runProgram(Self.erofs, ["walk", mountPoint])
        #expect(walk.status == 0, "\(walk.standardError)", sourceLocation: sourceLocation)
        #expect(
            manifestDifference(actual: walk.standardOutput, expected: expected) == nil,
            "\(name) from \(source): \(manifestDifference(actual: walk.standardOutput, expected: expected) ?? "")",
            sourceLocation: sourceLocation)
        try whileMounted(mountPoint, state)

        if let secret = secrets.first {
            // Credentials from the environment: the daemon's own copy, one file, 0600, in a
            // 0700 directory. From a passwd file: none (the daemon reads the file).
            let files = Self.captured(holding: captured ?? secret)
            #expect(
                files.count == (captured == nil ? 0 : 1), "captured credentials: \(files)",
                sourceLocation: sourceLocation)
            for file in files {
                let attributes = try FileManager.default.attributesOfItem(atPath: file)
                #expect((attributes[.posixPermissions] as? Int) == 0o600, sourceLocation: sourceLocation)
            }
            let processes = Self.daemonProcesses()
            #expect(processes.contains(Int32(daemon)), sourceLocation: sourceLocation)
            var places = processes.flatMap { ["/proc/\($0)/cmdline", "/proc/\($0)/environ"] } + Self.stateFiles()
            places.append(state)
            for place in places {
                let bytes = FileManager.default.contents(atPath: place) ?? Data()
                for secret in secrets {
                    #expect(
                        bytes.range(of: Data(secret.utf8)) == nil, "the secret is in \(place)",
                        sourceLocation: sourceLocation)
                }
            }
        }

        let unmounted = try mountErofs(["-u", mountPoint])
        #expect(unmounted.status == 0, "\(unmounted.standardError)", sourceLocation: sourceLocation)
        #expect(Self.mount(at: mountPoint) == nil, sourceLocation: sourceLocation)
        #expect(
            !Self.daemonProcesses().contains(Int32(daemon)), "the daemon outlived -u", sourceLocation: sourceLocation)
        #expect(!FileManager.default.fileExists(atPath: state), sourceLocation: sourceLocation)
        if let secret = captured ?? secrets.first {
            #expect(
                Self.captured(holding: secret).isEmpty, "captured credentials outlived -u",
                sourceLocation: sourceLocation)
        }
    }

    @Test func corpusImagesFromS3AndHTTPThroughFUSEEqualTheirManifests() throws {
        try #require(Self.sample.count == 3, "no corpus found (../shared/corpus or $EROFS_CORPUS)")
        let moto = try MotoFixture(files: Self.sample.map(\.path))
        let http = try TestServer.rangeServer(root: try #require(Corpus.locate()).directory)
        let cache = try scratchDirectory("mount-cache")
        defer { try? FileManager.default.removeItem(atPath: cache) }
        for image in Self.sample {
            try mountWalkUnmount(
                source: "\(MotoFixture.bucket)/\(image.name).erofs",
                options: "s3.endpoint=\(moto.endpoint),remote.cache=\(cache)", image: image,
                environment: moto.environment, secret: moto.secretKey)
            try mountWalkUnmount(
                source: "http://127.0.0.1:\(http.port)/\(image.name).erofs", options: "remote.cache=none",
                image: image)
        }
        // From an s3fs passwd file: nothing captured, the state names the file.
        let directory = try scratchDirectory("mount-passwd")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let passwd = directory + "/passwd"
        try "\(moto.accessKey):\(moto.secretKey)\n".write(toFile: passwd, atomically: true, encoding: .utf8)
        chmod(passwd, 0o600)
        try mountWalkUnmount(
            source: "\(MotoFixture.bucket)/lz4.erofs",
            options: "s3.endpoint=\(moto.endpoint),s3.passwd_file=\(passwd),remote.cache=\(cache)",
            image: Self.sample[0], secret: moto.secretKey)
    }

    /// Plain `-t erofs`: a remote source goes to nbd where the kernel has it, else FUSE, and
    /// the choice is said on stderr.
    @Test func plainTypePicksABackendAndSaysWhich() throws {
        let image = try #require(Self.sample.first)
        let http = try TestServer.rangeServer(root: try #require(Corpus.locate()).directory)
        let mountPoint = try scratchDirectory("remote-plain")
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        let mounted = try mountErofs(
            ["-t", "erofs", "http://127.0.0.1:\(http.port)/\(image.name).erofs", mountPoint, "-o", "remote.cache=none"])
        try #require(mounted.status == 0, "\(mounted.standardError)")
        let hasNBD = FileManager.default.fileExists(atPath: "/sys/module/nbd")
        let type = Self.mount(at: mountPoint)?.type
        #expect(type == (hasNBD ? "erofs" : "fuse.erofs"))
        #expect(mounted.standardError.contains(hasNBD ? "mounting through nbd" : "mounting through FUSE"))
        #expect(mounted.standardError.split(separator: "\n").count == 1, "\(mounted.standardError)")
        let walk = try runProgram(Self.erofs, ["walk", mountPoint])
        #expect(manifestDifference(actual: walk.standardOutput, expected: try image.expectedManifest()) == nil)
        #expect(try mountErofs(["-u", mountPoint]).status == 0)
        // A remote source on the local backend is a usage error.
        let local = try mountErofs(["-t", "erofs.local", "http://127.0.0.1:\(http.port)/lz4.erofs", mountPoint])
        #expect(local.status == 1, "\(local.standardError)")
    }

    /// `remote.verify=full`: the whole object is fetched and decoded before the mount returns;
    /// quiet when stderr is not a terminal.
    @Test func verifyFullFetchesEverythingBeforeTheMountCompletes() throws {
        let image = try #require(Self.sample.first { $0.name == "chunked" })
        let http = try TestServer.rangeServer(root: try #require(Corpus.locate()).directory)
        let cache = try scratchDirectory("verify-cache")
        let mountPoint = try scratchDirectory("verify-mnt")
        defer {
            try? FileManager.default.removeItem(atPath: cache)
            try? FileManager.default.removeItem(atPath: mountPoint)
        }
        let mounted = try mountErofs(
            [
                "-t", "erofs.fuse", "http://127.0.0.1:\(http.port)/\(image.name).erofs", mountPoint, "-o",
                "remote.verify=full,remote.cache=\(cache)",
            ])
        try #require(mounted.status == 0, "\(mounted.standardError)")
        #expect(mounted.standardError.isEmpty, "progress or noise on a pipe: \(mounted.standardError)")
        let stats =
            try JSONSerialization.jsonObject(with: Data(try http.control("GET", "/__stats").utf8)) as! [String: Any]
        let size = try FileManager.default.attributesOfItem(atPath: image.path)[.size] as! Int
        #expect(
            (stats["bytes"] as! Int) >= size, "fetched \(stats["bytes"]!) of \(size) bytes before the mount returned")
        let walk = try runProgram(Self.erofs, ["walk", mountPoint])
        #expect(manifestDifference(actual: walk.standardOutput, expected: try image.expectedManifest()) == nil)
        #expect(try mountErofs(["-u", mountPoint]).status == 0)
    }

    /// One bad input at mount time: exit 32, one line naming the object and the cause, within
    /// the timeouts, and nothing mounted, running or left under /run.
    func expectCleanFailure(
        _ source: String, options: String, environment: [String: String] = [:], saying cause: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let mountPoint = try scratchDirectory("remote-bad")
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        // Our daemons for this source name its server (host:port) in their argument; other
        // suites and sessions run daemons of their own meanwhile.
        let server =
            source.hasPrefix("http")
            ? String(source.split(separator: "/")[1])
            : String(
                options.split(separator: ",").first { $0.hasPrefix("s3.endpoint=") }?.split(separator: "/")[1] ?? "")
        let started = Date()
        let result = try mountErofs(["-t", "erofs.fuse", source, mountPoint, "-o", options], environment: environment)
        let elapsed = Date().timeIntervalSince(started)
        #expect(result.status == 32, "\(source): \(result.standardError)", sourceLocation: sourceLocation)
        let lines = result.standardError.split(separator: "\n")
        #expect(lines.count == 1, "\(source): \(result.standardError)", sourceLocation: sourceLocation)
        #expect(
            !result.standardError.unicodeScalars.contains { $0 != "\n" && ($0.value < 0x20 || $0.value == 0x7f) },
            "\(source): a control character in \(result.standardError.debugDescription)", sourceLocation: sourceLocation
        )
        #expect(
            result.standardError.contains(cause), "\(source): expected \(cause): \(result.standardError)",
            sourceLocation: sourceLocation)
        #expect(elapsed < 20, "\(source): took \(elapsed) s", sourceLocation: sourceLocation)
        #expect(Self.mount(at: mountPoint) == nil, "\(source): left mounted", sourceLocation: sourceLocation)
        #expect(
            Self.daemonProcesses(mentioning: server).isEmpty, "\(source): a daemon was left",
            sourceLocation: sourceLocation)
        if let secret = environment["AWS_SECRET_ACCESS_KEY"] {
            #expect(!result.standardError.contains(secret), sourceLocation: sourceLocation)
            #expect(
                Self.captured(holding: secret).isEmpty, "\(source): credentials left", sourceLocation: sourceLocation)
        }
    }

    @Test func badInputAtMountTimeFailsInOneLineAndLeavesNothing() throws {
        let image = try #require(Self.sample.first)
        let directory = try scratchDirectory("bad-inputs")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let bytes = try Data(contentsOf: URL(fileURLWithPath: image.path))
        try bytes.write(to: URL(fileURLWithPath: directory + "/image.erofs"))
        try bytes.prefix(100_000).write(to: URL(fileURLWithPath: directory + "/short.erofs"))
        let http = try TestServer.rangeServer(root: directory)
        let base = "http://127.0.0.1:\(http.port)"
        let quick = "remote.cache=none,http.timeout=1,http.retries=1,http.connect_timeout=2"

        try expectCleanFailure("http://127.0.0.1:1/image.erofs", options: quick, saying: "cannot connect")
        try expectCleanFailure(
            "http://no-such-host.invalid/image.erofs", options: quick, saying: "cannot resolve the host")
        try expectCleanFailure(base + "/missing.erofs", options: quick, saying: "HTTP 404")
        try expectCleanFailure(base + "/short.erofs", options: quick, saying: "truncated EROFS image")
        func expectFaultFailsCleanly(_ fault: String, saying cause: String) throws {
            try http.control("POST", "/__fault?mode=\(fault)&count=10")
            try expectCleanFailure(base + "/image.erofs", options: quick, saying: cause)
            try http.control("DELETE", "/__fault")
        }
        try expectFaultFailsCleanly("stall&seconds=30", saying: "timed out")
        try expectFaultFailsCleanly("full200", saying: "does not support Range requests")
        // A size that would have sized the cache's map and bitmaps (2^63 - 1 trapped on an
        // overflow; 1 PiB wrote a 256 GiB map of zeros).
        for total in ["9223372036854775807", "1125899906842624"] {
            try expectFaultFailsCleanly(
                "hugetotal&total=\(total)",
                saying: "the server says the object is \(total) bytes: more than 16 TiB")
        }
        // Servers that never finish: an error's body, a body at a byte every 0.2 s (each
        // attempt used to go on as long as the server did).
        try expectFaultFailsCleanly("endless404", saying: "HTTP 404")
        try expectFaultFailsCleanly("trickle", saying: "too slow to use")
        // A server's own text is escaped into the one line: no newline, no escape sequence.
        try expectFaultFailsCleanly(
            "hostile403", saying: #"access denied (HTTP 403: AccessDenied\n\u{1b}[2J\u{1b}]0;owned\u{7}"#)

        let moto = try MotoFixture(files: [image.path])
        let object = "\(MotoFixture.bucket)/\(image.name).erofs"
        let s3 = "s3.endpoint=\(moto.endpoint)," + quick
        try expectCleanFailure(object, options: s3, saying: "access denied")
        try expectCleanFailure(
            object, options: s3,
            environment: ["AWS_ACCESS_KEY_ID": moto.accessKey, "AWS_SECRET_ACCESS_KEY": "NOTTHESECRET"],
            saying: "SignatureDoesNotMatch")
        try expectCleanFailure(
            "\(MotoFixture.bucket)/missing.erofs", options: s3, environment: moto.environment, saying: "HTTP 404")
        // moto takes any region: a proxy answers as S3 does for a bucket in eu-west-3.
        let proxy = try TestServer.rangeServer(upstream: moto.server.port)
        try proxy.control("POST", "/__fault?mode=region&region=eu-west-3&count=100")
        try expectCleanFailure(
            object, options: "s3.endpoint=http://127.0.0.1:\(proxy.port),s3.region=us-east-2," + quick,
            environment: moto.environment, saying: "wrong region: the bucket is in eu-west-3")
    }
}

extension RemoteMountTests {
    /// A daemon lives long and root can read its /proc/PID/environ: the AWS_* variables of the
    /// mount's environment never reach it (they did: daemons inherited the whole environment).
    @Test func daemonsInheritNoCredentialVariables() throws {
        let image = try #require(Self.sample.first)
        let mountPoint = try scratchDirectory("environ-mnt")
        defer { try? FileManager.default.removeItem(atPath: mountPoint) }
        let marker = "SECRET-\(UInt64.random(in: 0...UInt64.max))"
        let mounted = try mountErofs(
            ["-t", "erofs.fuse", image.path, mountPoint],
            environment: ["AWS_SECRET_ACCESS_KEY": marker, "AWS_SESSION_TOKEN": marker])
        try #require(mounted.status == 0, "\(mounted.standardError)")
        defer { _ = try? mountErofs(["-u", mountPoint]) }
        let entry = try #require(Self.mount(at: mountPoint))
        let state = try #require(
            FileManager.default.contents(
                atPath: "/run/erofs-mount/fuse/\(entry.device.replacingOccurrences(of: ":", with: "-")).json"))
        let daemon = try #require(
            (try JSONSerialization.jsonObject(with: state) as? [String: Any])?["daemonPID"] as? Int)
        let environment = try #require(FileManager.default.contents(atPath: "/proc/\(daemon)/environ"))
        #expect(!environment.isEmpty)
        #expect(environment.range(of: Data(marker.utf8)) == nil, "the daemon's environment holds AWS_* variables")
    }
}

extension RemoteMountTests {
    /// Long work on a remote image (`remote.verify=full`, `erofs extract`) shows progress when
    /// standard error is a terminal (script(1) gives it one) and nothing into a pipe.
    @Test func progressOnATerminalOnly() throws {
        let image = try #require(Self.sample.first { $0.name == "chunked" })
        let http = try TestServer.rangeServer(root: try #require(Corpus.locate()).directory)
        let url = "http://127.0.0.1:\(http.port)/\(image.name).erofs"
        let directory = try scratchDirectory("progress")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mountPoint = directory + "/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)

        // On a terminal: script runs the command on a pty and copies what it writes.
        let mountCommand =
            "\(Self.mountErofs) -t erofs.fuse \(url) \(mountPoint) -o remote.verify=full,remote.cache=none"
        let onTerminal = try runProgram("/usr/bin/script", ["-qec", mountCommand, "/dev/null"])
        #expect(onTerminal.status == 0, "\(onTerminal.standardOutput)")
        #expect(onTerminal.standardOutput.contains("\(url): fetching"), "\(onTerminal.standardOutput)")
        #expect(onTerminal.standardOutput.contains("(100%)"), "\(onTerminal.standardOutput)")
        #expect(try mountErofs(["-u", mountPoint]).status == 0)

        let extractCommand = "\(Self.erofs) extract \(url) \(directory)/tty -o remote.cache=none"
        let extractOnTerminal = try runProgram("/usr/bin/script", ["-qec", extractCommand, "/dev/null"])
        #expect(extractOnTerminal.status == 0, "\(extractOnTerminal.standardOutput)")
        #expect(extractOnTerminal.standardOutput.contains("\(url): fetched"), "\(extractOnTerminal.standardOutput)")

        // Into a pipe: no progress.
        let quiet = try runProgram(Self.erofs, ["extract", url, directory + "/pipe", "-o", "remote.cache=none"])
        #expect(quiet.status == 0, "\(quiet.standardError)")
        #expect(!quiet.standardError.contains("fetched"), "\(quiet.standardError)")
    }
}
