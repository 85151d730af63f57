import EROFSReader
import Foundation
import Testing
import TestSupport

/// Images whose shape, not their bytes, is the attack (issue 13): a DAG of directories that
/// multiplies into 2^30 paths, chains 20000 directories deep, terabyte sparse files. The real
/// `erofs` binary runs on CraftedImage images under time, memory and descriptor limits.
@Suite(.requiresRoot, .serialized) struct HostileShapeTests {
    static var erofs: String { builtProductsDirectory() + "/erofs" }

    /// Runs `erofs` with a wall-clock limit (killed: status 9), an address-space limit and a
    /// descriptor limit; GNU time adds "erofs-usage: SECONDS s MAXRSS KiB" to its stderr.
    static func runLimited(
        _ arguments: [String], seconds: Int = 60, memoryMiB: Int = 2048, files: Int = 1024,
        standardOutput: String? = nil
    ) throws -> ProcessResult {
        let redirect = standardOutput.map { " >'\($0)'" } ?? ""
        let script =
            "ulimit -v \(memoryMiB * 1024); ulimit -n \(files); exec /usr/bin/time -f 'erofs-usage: %e s %M KiB' timeout -s KILL \(seconds) \"$@\"\(redirect)"
        let result = try runProgram("/bin/sh", ["-c", script, "sh", erofs] + arguments)
        if let usage = result.standardError.split(separator: "\n").last(where: { $0.hasPrefix("erofs-usage:") }) {
            print("erofs \(arguments.first ?? ""): \(usage)")
        }
        return result
    }

    /// The peak RSS GNU time reported, in KiB.
    static func peakKiB(_ result: ProcessResult) -> Int {
        guard let line = result.standardError.split(separator: "\n").last(where: { $0.hasPrefix("erofs-usage:") })
        else { return .max }
        return Int(line.split(separator: " ").dropLast().last ?? "") ?? .max
    }

    static func write(_ image: CraftedImage, in directory: String, as name: String = "image.erofs") throws -> String {
        let path = directory + "/" + name
        try Data(image.bytes()).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Removes a tree of any depth (FileManager builds full paths: PATH_MAX).
    static func removeTree(_ path: String) { _ = try? runProgram("/bin/rm", ["-rf", path]) }

    /// A tmpfs of `size` at a fresh directory, for extractions that must not fill the disk.
    static func withTmpfs<T>(size: String, _ body: (String) throws -> T) throws -> T {
        let mountPoint = try temporaryDirectory("tmpfs")
        let mounted = try runProgram("/usr/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", mountPoint])
        try #require(mounted.status == 0, "\(mounted.standardError)")
        defer {
            _ = try? runProgram("/usr/bin/umount", [mountPoint])
            try? FileManager.default.removeItem(atPath: mountPoint)
        }
        return try body(mountPoint)
    }

    // MARK: A directory reached twice

    /// 30 levels of `a` and `b` naming the same next directory: 2^30 paths from 12 KiB. Every
    /// recursive command refuses it at the second name, quickly, naming the path.
    @Test(arguments: [
        ["extract", "IMAGE", "DEST"], ["ls", "--recursive", "IMAGE"],
        ["ls", "--recursive", "--json", "--sha256", "IMAGE"],
        ["verify", "IMAGE"],
    ])
    func directoryReachedTwiceIsRefused(command: [String]) throws {
        let directory = try temporaryDirectory("dag")
        defer { Self.removeTree(directory) }
        let image = try Self.write(.directoryDAG(levels: 30), in: directory)
        let arguments = command.map { $0 == "IMAGE" ? image : $0 == "DEST" ? directory + "/out" : $0 }
        let started = Date()
        let result = try Self.runLimited(arguments, seconds: 30, memoryMiB: 1024)
        #expect(result.status == 1, "status \(result.status): \(result.standardError.suffix(300))")
        #expect(result.standardError.contains("directory reached twice"), "\(result.standardError.suffix(300))")
        // The deepest directory is reached first through a/a/.../a, then again through .../a/b.
        let twice = "path " + String(repeating: "/a", count: 29) + "/b"
        #expect(result.standardError.contains(twice), "\(result.standardError.suffix(300))")
        #expect(Date().timeIntervalSince(started) < 10)
        #expect(Self.peakKiB(result) < 100 << 10, "peak RSS \(Self.peakKiB(result)) KiB")
    }

    // MARK: Depth

    /// 20000 nested directories: `ls -R` lists all of them (no recursion on the image's depth:
    /// the old recursive collect overflowed the stack), and extract restores them holding a
    /// bounded number of descriptors (the old one held one per level: EMFILE under 256, and with
    /// a high limit a stack overflow).
    @Test func twentyThousandLevels() throws {
        let depth = 20000
        let directory = try temporaryDirectory("deep")
        defer { Self.removeTree(directory) }
        let image = try Self.write(.deepChain(depth: depth), in: directory)

        let listed = try Self.runLimited(
            ["ls", "--recursive", image], seconds: 120, memoryMiB: 2048, standardOutput: directory + "/ls.txt")
        #expect(listed.status == 0, "status \(listed.status): \(listed.standardError.suffix(300))")
        // Streamed: the 20000 levels' frames, not the 400 MB of output.
        #expect(Self.peakKiB(listed) < 200 << 10, "peak RSS \(Self.peakKiB(listed)) KiB")
        // 400 MB of paths: counted by wc, the last line read from the end.
        let lineCount = try runProgram("/usr/bin/wc", ["-l", directory + "/ls.txt"]).standardOutput.split(
            separator: " "
        ).first
        #expect(lineCount == Substring(String(depth + 2)))
        let output = try FileHandle(forReadingFrom: URL(fileURLWithPath: directory + "/ls.txt"))
        let bottom = String(repeating: "/d", count: depth) + "/file\n"
        try output.seek(toOffset: try output.seekToEnd() - UInt64(bottom.utf8.count))
        let bottomListed = try output.readToEnd() == Data(bottom.utf8)
        try output.close()
        #expect(bottomListed)

        let extracted = try Self.runLimited(["extract", image, directory + "/out"], seconds: 120, files: 256)
        #expect(extracted.status == 0, "status \(extracted.status): \(extracted.standardError.suffix(300))")
        #expect(Self.peakKiB(extracted) < 200 << 10, "peak RSS \(Self.peakKiB(extracted)) KiB")
        // Down the chain one descriptor at a time: every level was made, the file at the bottom.
        var current = open(directory + "/out", O_RDONLY | O_DIRECTORY)
        try #require(current >= 0)
        var levels = 0
        var restoredModes = 0
        var status = stat()
        while true {
            let next = openat(current, "d", O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
            if next < 0 { break }
            close(current)
            current = next
            levels += 1
            // Set when the walk left the level: through a descriptor reopened via ".." for all
            // but the 128 deepest.
            if fstat(current, &status) == 0 && status.st_mode & 0o7777 == 0o755 { restoredModes += 1 }
        }
        defer { close(current) }
        #expect(levels == depth)
        #expect(restoredModes == depth)
        #expect(fstatat(current, "file", &status, 0) == 0 && status.st_size == 7)
        // The directories' modes were restored on the way back up (0755, not mkdir's 0700).
        #expect(fstat(current, &status) == 0 && status.st_mode & 0o7777 == 0o755)
    }

    // MARK: Holes

    /// 1 TiB of holes and 4 KiB of data: extract into a 64 MiB tmpfs makes a sparse file of the
    /// full size that occupies one page, in seconds (the old extract wrote zeros until the
    /// filesystem was full).
    @Test func terabyteOfHolesExtractsSparse() throws {
        let directory = try temporaryDirectory("holes")
        defer { Self.removeTree(directory) }
        let tail = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 31 + 7) }
        let image = try Self.write(.sparseFile(holes: 1 << 40, tail: tail), in: directory)
        #expect(try FileManager.default.attributesOfItem(atPath: image)[.size] as? Int ?? 0 < 16384)
        try Self.withTmpfs(size: "64m") { tmpfs in
            let started = Date()
            let result = try Self.runLimited(["extract", image, tmpfs + "/out"], seconds: 60, memoryMiB: 1024)
            #expect(result.status == 0, "status \(result.status): \(result.standardError.suffix(300))")
            #expect(Date().timeIntervalSince(started) < 20)
            var status = stat()
            #expect(stat(tmpfs + "/out/sparse", &status) == 0)
            #expect(status.st_size == (1 << 40) + 4096)
            #expect(status.st_blocks <= 16, "\(status.st_blocks) blocks of 512 bytes allocated")
            let descriptor = open(tmpfs + "/out/sparse", O_RDONLY)
            defer { close(descriptor) }
            var read = [UInt8](repeating: 0, count: 4096)
            #expect(pread(descriptor, &read, 4096, off_t(1) << 40) == 4096)
            let tailMatches = read == tail
            #expect(tailMatches)
            // The hole is a hole to SEEK_DATA as well.
            #expect(lseek(descriptor, 0, 3) == off_t(1) << 40)  // 3: SEEK_DATA
        }
    }

    /// `verify` and `ls --recursive --json` decode every file's data but read no holes: the
    /// terabyte file is checked in well under a second (the old ones read 2^40 zeros).
    @Test(arguments: [["verify", "IMAGE"], ["ls", "--recursive", "--json", "IMAGE"]])
    func terabyteOfHolesIsNotRead(command: [String]) throws {
        let directory = try temporaryDirectory("holes-read")
        defer { Self.removeTree(directory) }
        let image = try Self.write(.sparseFile(holes: 1 << 40, tail: [1, 2, 3]), in: directory)
        let started = Date()
        let result = try Self.runLimited(command.map { $0 == "IMAGE" ? image : $0 }, seconds: 30, memoryMiB: 1024)
        #expect(result.status == 0, "status \(result.status): \(result.standardError.suffix(300))")
        #expect(result.standardOutput.contains("1099511627779"), "\(result.standardOutput.prefix(300))")
        #expect(Date().timeIntervalSince(started) < 10)
    }

    /// Real data larger than the destination's free space is refused before anything is
    /// written, naming the file and the flag; with the flag it is attempted.
    @Test func dataBeyondTheFreeSpaceIsRefused() throws {
        let directory = try temporaryDirectory("space")
        defer { Self.removeTree(directory) }
        var crafted = CraftedImage()
        crafted.add(
            .init(.file(.blocks([UInt8](repeating: 0x5a, count: 8 << 20))), permissions: 0o644), named: "big",
            in: crafted.root)
        let image = try Self.write(crafted, in: directory)
        try Self.withTmpfs(size: "4m") { tmpfs in
            let refused = try Self.runLimited(["extract", image, tmpfs + "/out"], seconds: 30)
            #expect(refused.status == 1)
            #expect(refused.standardError.contains("not enough space: /big"), "\(refused.standardError)")
            #expect(refused.standardError.contains("--ignore-free-space"))
            #expect(!FileManager.default.fileExists(atPath: tmpfs + "/out/big"))

            let forced = try Self.runLimited(["extract", "--ignore-free-space", image, tmpfs + "/out2"], seconds: 30)
            #expect(forced.status == 1)
            #expect(
                forced.standardError.contains("write /big failed: No space left on device"), "\(forced.standardError)")
        }
    }

    /// `cat` into a regular file keeps the holes (on a 64 MiB tmpfs: the old cat wrote zeros
    /// until it was full); into a pipe it writes the zeros.
    @Test func catKeepsHolesInAFileAndWritesZerosToAPipe() throws {
        let directory = try temporaryDirectory("cat")
        defer { Self.removeTree(directory) }
        let tail = Array("the end\n".utf8)
        let image = try Self.write(.sparseFile(holes: 1 << 40, tail: tail), in: directory)
        try Self.withTmpfs(size: "64m") { tmpfs in
            let started = Date()
            let toFile = try Self.runLimited(["cat", image, "/sparse"], seconds: 60, standardOutput: tmpfs + "/sparse")
            #expect(toFile.status == 0, "\(toFile.standardError)")
            #expect(Date().timeIntervalSince(started) < 20)
            var status = stat()
            #expect(stat(tmpfs + "/sparse", &status) == 0 && status.st_size == (1 << 40) + off_t(tail.count))
            #expect(status.st_blocks <= 16, "\(status.st_blocks) blocks")
        }

        let small = try Self.write(
            .sparseFile(holes: 3 << 20, tail: tail, chunkBits: 0), in: directory, as: "small.erofs")
        let toPipe = try runProgram(Self.erofs, ["cat", small, "/sparse"])
        #expect(toPipe.status == 0)
        let bytes = Array(toPipe.standardOutput.utf8)
        #expect(bytes.count == (3 << 20) + tail.count)
        #expect(bytes.prefix(3 << 20).allSatisfy { $0 == 0 } && Array(bytes.suffix(tail.count)) == tail)
    }
}
