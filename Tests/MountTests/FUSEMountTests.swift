import Foundation
import KernelAttach
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `mount.erofs -t erofs.fuse`, for real on this kernel: every corpus image walks to its
/// manifest through FUSE with one and with several serving threads; `-u` leaves no mount and
/// no daemon; failures leave nothing; a corrupt image fails only the reads that touch it.
@Suite(.requiresRoot, .serialized) struct FUSEMountTests {
    let harness = MountHarness()

    /// FUSE processes of `image`: supervisor, workers and standbys (`mount.erofs --supervise-fuse`
    /// or `--serve-fuse ... IMAGE`).
    static func daemons(serving image: String) -> [Int32] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap(Int32.init) ?? []
        return pids.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return arguments.count > 2 && ["--serve-fuse", "--supervise-fuse"].contains(arguments[1])
                && arguments.last == image
        }
    }

    /// The FUSE processes of `image` once there are `count` of them (the first standby starts
    /// after the mount returns, so it may still be on its way), or what there is after 5 s.
    static func daemons(serving image: String, awaiting count: Int) -> [Int32] {
        var found = daemons(serving: image)
        for _ in 0..<500 where found.count < count {
            usleep(10_000)
            found = daemons(serving: image)
        }
        return found
    }

    /// The mount's state, as the supervisor keeps it (JSON object).
    static func state(of entry: MountInfoEntry) throws -> [String: Any] {
        let data = try Data(
            contentsOf: URL(fileURLWithPath: "/run/erofs-mount/fuse/\(entry.major)-\(entry.minor).json"))
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// The worker serving the mount, as its state names it.
    static func servingWorker(of entry: MountInfoEntry) throws -> Int32 {
        try #require((try state(of: entry))["servingPID"] as? Int).map(Int32.init)!
    }

    static func threadCount(of pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"))?.count ?? 0
    }

    /// Mounts `image` through FUSE; returns the mount table entry.
    func mount(
        _ image: String, at mountPoint: String, options: [String] = [],
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> MountInfoEntry {
        let mounted = try harness.run(["-t", "erofs.fuse"] + options + [image, mountPoint])
        try #require(
            mounted.status == 0, "mount.erofs failed: \(mounted.standardError)", sourceLocation: sourceLocation)
        let entries = try MountHarness.mounts(at: mountPoint)
        try #require(entries.count == 1, sourceLocation: sourceLocation)
        return entries[0]
    }

    /// Unmounts with `-u` and checks nothing is left: no mount, no daemon, no state file.
    func unmountAndExpectNothingLeft(
        _ mountPoint: String, image: String, entry: MountInfoEntry,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let unmounted = try harness.run(["-u", mountPoint])
        #expect(
            unmounted.status == 0, "mount.erofs -u failed: \(unmounted.standardError)", sourceLocation: sourceLocation)
        try MountHarness.expectNothingLeft(mountPoint: mountPoint, image: image, sourceLocation: sourceLocation)
        #expect(
            FUSEMountTests.daemons(serving: image).isEmpty, "a FUSE daemon outlived -u", sourceLocation: sourceLocation)
        #expect(
            !FUSEMountTests.stateOutlived(entry, image: image), "the FUSE state outlived -u",
            sourceLocation: sourceLocation)
    }

    /// Whether the state of the mount `entry` of `image` is still there. Other suites mount at
    /// the same time: the device number, freed by -u, may already be another mount's.
    static func stateOutlived(_ entry: MountInfoEntry, image: String) -> Bool {
        guard
            let data = FileManager.default.contents(atPath: "/run/erofs-mount/fuse/\(entry.major)-\(entry.minor).json")
        else { return false }
        let state = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        return state?["source"] as? String == image
    }

    @Test(arguments: Corpus.imagesOrEmpty, [1, 4])
    func corpusImageWalksToItsManifest(image: Corpus.Image, threads: Int) throws {
        let workspace = try MountHarness.Workspace("fuse", copying: image.path, as: image.name + ".erofs")
        defer { workspace.remove() }
        let entry = try mount(workspace.image, at: workspace.mountPoint, options: ["-o", "fuse.threads=\(threads)"])
        #expect(entry.fsType == "fuse.erofs")
        #expect(entry.source == workspace.image)
        // A supervisor, its worker and a standby.
        let daemons = FUSEMountTests.daemons(serving: workspace.image, awaiting: 3)
        #expect(daemons.count == 3)
        let worker = try FUSEMountTests.servingWorker(of: entry)
        #expect(daemons.contains(worker))
        #expect(FUSEMountTests.threadCount(of: worker) >= threads)
        for daemon in daemons {
            // Detached from the starter's working directory.
            #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(daemon)/cwd")) == "/")
        }

        try MountHarness.expectTreeMatches(workspace.mountPoint, manifest: try image.expectedManifest())

        try unmountAndExpectNothingLeft(workspace.mountPoint, image: workspace.image, entry: entry)
    }

    @Test func corpusIsPresent() {
        #expect(Corpus.imagesOrEmpty.count >= 12, "the corpus (../shared/corpus or $EROFS_CORPUS) is missing")
    }

    @Test func missingSourceFailsWithOneLineAndLeavesNothing() throws {
        let directory = try MountHarness.scratchDirectory("fuse-missing")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory + "/mnt", withIntermediateDirectories: false)
        let image = directory + "/absent.erofs"
        let result = try harness.run(["-t", "erofs.fuse", image, directory + "/mnt"])
        #expect(result.status == 32)
        let lines = result.standardError.split(separator: "\n")
        #expect(lines.count == 1)
        #expect(lines.first == "mount.erofs: cannot open source \(image): No such file or directory")
        #expect(try MountHarness.mounts(at: directory + "/mnt").isEmpty)
        #expect(FUSEMountTests.daemons(serving: image).isEmpty)
    }

    /// The daemon refuses the image after mount(2) was done (here: an extra device the image has
    /// no slot for): the mount fails with the daemon's words, and no mount, daemon or state stays.
    @Test func daemonFailureAfterTheMountLeavesNothing() throws {
        let workspace = try MountHarness.Workspace("fuse-daemon-fails", copying: BadInputTests.corpusImage("plain"))
        defer { workspace.remove() }
        let before = (try? FileManager.default.contentsOfDirectory(atPath: "/run/erofs-mount/fuse")) ?? []
        let result = try harness.run([
            "-t", "erofs.fuse", "-o", "device=\(workspace.image)", workspace.image, workspace.mountPoint,
        ])
        #expect(result.status == 32)
        let lines = result.standardError.split(separator: "\n")
        #expect(
            lines.count == 1 && lines[0].hasPrefix("mount.erofs: cannot serve \(workspace.image): "),
            "\(result.standardError)")
        #expect(try MountHarness.mounts(at: workspace.mountPoint).isEmpty)
        #expect(FUSEMountTests.daemons(serving: workspace.image).isEmpty)
        let after = (try? FileManager.default.contentsOfDirectory(atPath: "/run/erofs-mount/fuse")) ?? []
        // Other suites mount at the same time: their states (another source) and the logs those
        // states name are theirs.
        let others = Set(after).subtracting(before).compactMap { name -> [String]? in
            guard name.hasSuffix(".json"),
                let data = FileManager.default.contents(atPath: "/run/erofs-mount/fuse/\(name)"),
                let state = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                state["source"] as? String != workspace.image
            else { return nil }
            return [name, ((state["logFile"] as? String) ?? "").split(separator: "/").last.map(String.init) ?? ""]
        }.joined()
        let left = Set(after).subtracting(before).subtracting(others)
        #expect(left.isEmpty, "left behind: \(left)")

        // -f checks everything and mounts nothing.
        let fake = try harness.run(["-f", "-t", "erofs.fuse", workspace.image, workspace.mountPoint])
        #expect(fake.status == 0, "\(fake.standardError)")
        #expect(try MountHarness.mounts(at: workspace.mountPoint).isEmpty)
        #expect(FUSEMountTests.daemons(serving: workspace.image).isEmpty)
    }

    @Test func kernelOptionsAreHonouredWarnedOrRefused() throws {
        let workspace = try MountHarness.Workspace("fuse-options", copying: BadInputTests.corpusImage("plain"))
        defer { workspace.remove() }
        for (options, message) in [
            ("noacl", "`noacl` is not supported with -t erofs.fuse"),
            ("fsid=abc", "`fsid=abc` selects the kernel's fscache mode"),
            ("fuse.threads=0", "fuse.threads=0: expected 1 to 64"),
            ("fuse.bogus", "unknown or malformed fuse option `fuse.bogus`"),
            ("fuse.recovery=sometimes", "unknown or malformed fuse option `fuse.recovery=sometimes`"),
        ] {
            let result = try harness.run(["-t", "erofs.fuse", "-o", options, workspace.image, workspace.mountPoint])
            #expect(result.status == 1, "\(options): \(result.standardError)")
            #expect(result.standardError.contains(message), "\(options): \(result.standardError)")
            #expect(try MountHarness.mounts(at: workspace.mountPoint).isEmpty)
        }
        let refused = try harness.run(["-o", "fuse.threads=2", workspace.image, workspace.mountPoint])
        #expect(refused.status == 1 && refused.standardError.contains("fuse.* options need -t erofs.fuse"))

        let warned = try harness.run([
            "-t", "erofs.fuse", "-o", "cache_strategy=readaround,acl", workspace.image, workspace.mountPoint,
        ])
        #expect(warned.status == 0, "\(warned.standardError)")
        #expect(warned.standardError.contains("`cache_strategy=readaround` tunes the kernel's EROFS and has no effect"))
        #expect(warned.standardError.contains("`acl` is always on"))
        let entry = try #require(try MountHarness.mounts(at: workspace.mountPoint).first)
        try unmountAndExpectNothingLeft(workspace.mountPoint, image: workspace.image, entry: entry)
    }

    /// A plain umount(8) ends the connection too: the daemon exits and takes its state along.
    @Test func plainUmountLeavesNoDaemonAndNoState() throws {
        let workspace = try MountHarness.Workspace("fuse-umount", copying: BadInputTests.corpusImage("plain"))
        defer { workspace.remove() }
        let entry = try mount(workspace.image, at: workspace.mountPoint)
        let state = "/run/erofs-mount/fuse/\(entry.major)-\(entry.minor).json"
        #expect(FileManager.default.fileExists(atPath: state))
        #expect(try runProgram("/bin/umount", [workspace.mountPoint]).status == 0)
        var left = FUSEMountTests.daemons(serving: workspace.image)
        for _ in 0..<250 where !left.isEmpty || FileManager.default.fileExists(atPath: state) {
            usleep(20_000)
            left = FUSEMountTests.daemons(serving: workspace.image)
        }
        #expect(left.isEmpty, "the daemon outlived umount")
        #expect(!FileManager.default.fileExists(atPath: state), "the state outlived umount")
    }

    /// A scratch directory with an empty `tree` to make `image` of and an empty `mountPoint`.
    struct ScratchTree {
        let directory: String
        var tree: String { directory + "/tree" }
        var image: String { directory + "/image.erofs" }
        var mountPoint: String { directory + "/mnt" }

        init(_ label: String) throws {
            directory = try MountHarness.scratchDirectory(label)
            for path in [directory + "/tree", directory + "/mnt"] {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            }
        }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Pages of `path` in the page cache (mincore of a mapping of it).
    static func residentPages(_ path: String) throws -> (resident: Int, pages: Int) {
        let fd = open(path, O_RDONLY)
        try #require(fd >= 0, "open \(path)")
        defer { close(fd) }
        var status = stat()
        try #require(fstat(fd, &status) == 0)
        let size = Int(status.st_size)
        let pages = (size + 4095) / 4096
        guard size > 0 else { return (0, 0) }
        let mapped = try #require(mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0))
        try #require(mapped != MAP_FAILED)
        defer { munmap(mapped, size) }
        var vector = [UInt8](repeating: 0, count: pages)
        try #require(mincore(mapped, size, &vector) == 0)
        return (vector.filter { $0 & 1 != 0 }.count, pages)
    }

    /// Big reads: the mount's readahead window is raised to 1 MiB once INIT is answered (the
    /// kernel's 128 KiB otherwise: `fuse.readahead_kb=0` keeps it), and big reads of flat
    /// files, which go out spliced from the image file, give the file's bytes at any offset,
    /// also where a read meets the tail packed after the inode (the copy path's part).
    @Test func bigFlatFilesReadWholeAndAtOffsetsWithTheWindowRaised() throws {
        let scratch = try ScratchTree("fuse-big-reads")
        defer { scratch.remove() }
        var generator = SplitMix64(seed: 1515)
        var contents: [String: [UInt8]] = [:]
        for (name, size) in [("even", 4 << 20), ("tail", (3 << 20) + 1717)] {
            let bytes = (0..<size).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            contents[name] = bytes
            try Data(bytes).write(to: URL(fileURLWithPath: scratch.tree + "/" + name))
        }
        let made = try runProgram("/usr/bin/mkfs.erofs", [scratch.image, scratch.tree])  // flat, uncompressed
        try #require(made.status == 0, "\(made.standardError)")

        for (options, window) in [([String](), "1024"), (["-o", "fuse.readahead_kb=0"], "128")] {
            let entry = try mount(scratch.image, at: scratch.mountPoint, options: options)
            let bdi = "/sys/class/bdi/\(entry.major):\(entry.minor)/read_ahead_kb"
            let readahead = try String(contentsOfFile: bdi, encoding: .utf8)
            #expect(readahead.trimmingCharacters(in: .whitespacesAndNewlines) == window, "\(options): \(bdi)")
            for (name, bytes) in contents.sorted(by: { $0.key < $1.key }) {
                let path = scratch.mountPoint + "/" + name
                #expect(Array(try Data(contentsOf: URL(fileURLWithPath: path))) == bytes, "\(name) read whole")
                let fd = open(path, O_RDONLY)
                try #require(fd >= 0)
                defer { close(fd) }
                for (offset, count) in [(0, 1 << 20), (12345, 300_000), (bytes.count - 70_000, 100_000), (4096, 65536)]
                {
                    var buffer = [UInt8](repeating: 0, count: count)
                    let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
                    #expect(got == min(count, bytes.count - offset), "\(name) at \(offset)")
                    if got > 0 {
                        #expect(buffer[..<got] == bytes[offset..<(offset + got)], "\(name) at \(offset)")
                    }
                }
            }
            try unmountAndExpectNothingLeft(scratch.mountPoint, image: scratch.image, entry: entry)
        }
    }

    /// SiblingPrefetch: reading the first file of a directory through a fresh mount puts the
    /// small files after it in the page cache (NOTIFY_STORE) with the right bytes, before the
    /// reader asks for them; `fuse.prefetch_kb=0` turns it off (nothing resident), and a file
    /// over 64 KiB is left to its own readahead.
    @Test func readingAFileFromItsStartPrefetchesTheSmallFilesAfterIt() throws {
        let scratch = try ScratchTree("fuse-prefetch")
        defer { scratch.remove() }
        let (tree, image, mountPoint) = (scratch.tree, scratch.image, scratch.mountPoint)
        try FileManager.default.createDirectory(atPath: tree + "/d", withIntermediateDirectories: true)
        var generator = SplitMix64(seed: 15)
        var contents: [String: [UInt8]] = [:]
        for index in 0..<30 {
            let size = index == 20 ? 100_000 : 1 + Int(generator.next() % 12_000)
            let text = (0..<size).map { UInt8(ascii: "a") + UInt8(($0 * 7 + index + Int(generator.next() % 3)) % 26) }
            contents[String(format: "f%02d", index)] = text
            try Data(text).write(to: URL(fileURLWithPath: tree + String(format: "/d/f%02d", index)))
        }
        let made = try runProgram("/usr/bin/mkfs.erofs", ["-zlz4hc", image, tree])
        try #require(made.status == 0, "\(made.standardError)")

        for prefetch in [true, false] {
            let entry = try mount(image, at: mountPoint, options: prefetch ? [] : ["-o", "fuse.prefetch_kb=0"])
            let names = try FileManager.default.contentsOfDirectory(atPath: mountPoint + "/d").sorted()
            #expect(names.count == 30)
            let first = try Data(contentsOf: URL(fileURLWithPath: mountPoint + "/d/f00"))
            #expect(Array(first) == contents["f00"])
            var resident = 0
            for name in names.dropFirst() {
                let pages = try FUSEMountTests.residentPages(mountPoint + "/d/" + name)
                if name == "f20" {
                    #expect(pages.resident == 0, "prefetch \(prefetch): the 100 KB file was pushed")
                } else if pages.resident == pages.pages {
                    resident += 1
                }
            }
            if prefetch {
                // The pushes happen before the first file's answer: all there by now.
                #expect(resident == 28, "\(resident) of the 28 small files after f00 in the page cache")
            } else {
                #expect(resident == 0, "\(resident) files in the page cache with the prefetch off")
            }
            for name in names {
                let bytes = try Data(contentsOf: URL(fileURLWithPath: mountPoint + "/d/" + name))
                #expect(Array(bytes) == contents[name], "prefetch \(prefetch): \(name) differs")
            }
            try unmountAndExpectNothingLeft(mountPoint, image: image, entry: entry)
        }
    }

    /// SiblingPrefetch ahead of reads (`fuse.prefetch_ahead=on`; the default pushes ahead only
    /// when a CPU is idle, which a test cannot count on): once a file of a listed directory has
    /// been read, the next directories listed to their end get their small files pushed before
    /// any of them is read (a walk that reads what it lists); a walk that only lists pushes
    /// nothing, and with `fuse.prefetch_ahead=off` only a read pushes.
    @Test func aWalkThatReadsGetsItsNextListingsPushedAhead() throws {
        let scratch = try ScratchTree("fuse-prefetch-walk")
        defer { scratch.remove() }
        var generator = SplitMix64(seed: 1516)
        var contents: [String: [UInt8]] = [:]
        let directories = (0..<8).map { "d\($0)" }
        for directory in directories {
            try FileManager.default.createDirectory(
                atPath: scratch.tree + "/" + directory, withIntermediateDirectories: true)
            for index in 0..<10 {
                let size = 1 + Int(generator.next() % 8000)
                let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index &+ Int(generator.next() % 5)) }
                let path = "\(directory)/f\(index)"
                contents[path] = bytes
                try Data(bytes).write(to: URL(fileURLWithPath: scratch.tree + "/" + path))
            }
        }
        let made = try runProgram("/usr/bin/mkfs.erofs", ["-zlz4hc", scratch.image, scratch.tree])
        try #require(made.status == 0, "\(made.standardError)")
        var entry = try mount(scratch.image, at: scratch.mountPoint, options: ["-o", "fuse.prefetch_ahead=on"])
        let root = scratch.mountPoint
        func residentFiles(_ directory: String) throws -> Int {
            try (0..<10).filter { index in
                let pages = try FUSEMountTests.residentPages("\(root)/\(directory)/f\(index)")
                return pages.resident == pages.pages
            }.count
        }
        /// Resident files of `directory` once pushes have had `seconds` to land.
        func residentFiles(_ directory: String, awaiting count: Int, seconds: Int) throws -> Int {
            var found = try residentFiles(directory)
            for _ in 0..<(seconds * 100) where found < count {
                usleep(10_000)
                found = try residentFiles(directory)
            }
            return found
        }

        // Listing alone (find, ls -R): nothing is pushed.
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/d0").count == 10)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/d1").count == 10)
        #expect(try residentFiles("d1", awaiting: 1, seconds: 1) == 0, "a listing no read earned was pushed")
        // A read from a file's start: its directory's files after it are pushed before its answer...
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: root + "/d0/f0"))) == contents["d0/f0"])
        #expect(try residentFiles("d0", awaiting: 10, seconds: 5) == 10)
        // ...and the next directory listed to its end is pushed whole, none of it read yet. A push
        // ahead that its thread starts late (a loaded machine) is dropped and the next listing
        // waits for a read again: then read one more file and list the next directory.
        var pushedAhead = false
        for (read, listed) in zip(directories.dropFirst(), directories.dropFirst(2)) where !pushedAhead {
            _ = try Data(contentsOf: URL(fileURLWithPath: "\(root)/\(read)/f0"))
            #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/" + listed).count == 10)
            pushedAhead = try residentFiles(listed, awaiting: 10, seconds: 2) == 10
        }
        #expect(pushedAhead, "no listing was pushed ahead of its reads")
        // What was pushed is what the files hold.
        for (path, bytes) in contents {
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: root + "/" + path))) == bytes, "\(path)")
        }
        try unmountAndExpectNothingLeft(root, image: scratch.image, entry: entry)

        // Off: a read pushes its own directory, never the next listing.
        entry = try mount(scratch.image, at: root, options: ["-o", "fuse.prefetch_ahead=off"])
        _ = try FileManager.default.contentsOfDirectory(atPath: root + "/d0")
        _ = try Data(contentsOf: URL(fileURLWithPath: root + "/d0/f0"))
        #expect(try residentFiles("d0", awaiting: 10, seconds: 5) == 10)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/d1").count == 10)
        #expect(try residentFiles("d1", awaiting: 1, seconds: 1) == 0, "pushed ahead with fuse.prefetch_ahead=off")
        try unmountAndExpectNothingLeft(root, image: scratch.image, entry: entry)
    }

    /// A multi-device image: `-o device=BLOB` reaches the daemon, which reads the chunks there.
    @Test func extraDeviceIsServed() throws {
        let made = try ExtraDeviceMountTests.BlobImage(harness: harness)
        defer { made.remove() }
        let entry = try mount(made.image, at: made.mountPoint, options: ["-o", "device=\(made.blob)"])
        try MountHarness.expectTreeMatches(made.mountPoint, manifest: made.manifest)
        try unmountAndExpectNothingLeft(made.mountPoint, image: made.image, entry: entry)
    }

    /// A compressed extent overwritten with 0xFF: reading the file fails with EIO (never wrong
    /// bytes), the daemon logs it and keeps serving everything else.
    @Test func corruptDataGivesEIOAndTheDaemonSurvives() throws {
        let scratch = try ScratchTree("fuse-corrupt")
        defer { scratch.remove() }
        let (tree, image, mountPoint) = (scratch.tree, scratch.image, scratch.mountPoint)
        let big = (0..<40_000).map { "line \($0) of the corrupt-image test\n" }.joined()
        try Data(big.utf8).write(to: URL(fileURLWithPath: tree + "/big"))
        try Data("small file\n".utf8).write(to: URL(fileURLWithPath: tree + "/small"))
        let made = try runProgram("/usr/bin/mkfs.erofs", ["-zlz4", image, tree])
        try #require(made.status == 0, "\(made.standardError)")

        // dump.erofs -e lists the file's extents: "  1:  28147..  56145 |  27998 :  8192..  12288 |  4096".
        let dump = try runProgram("/usr/bin/dump.erofs", ["--path=/big", "-e", image])
        let extent = try #require(
            dump.standardOutput.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("1:") }
        )
        let fields = extent.split(whereSeparator: { " .:|".contains($0) })
        // fields: 1, logical start, logical end, length, physical start, physical end, length
        let physical = try #require(UInt64(fields[4]))
        try BadInputTests.patch(image, at: physical, [UInt8](repeating: 0xff, count: 4096))

        let entry = try mount(image, at: mountPoint, options: ["-o", "fuse.threads=2"])
        let daemon = try FUSEMountTests.servingWorker(of: entry)
        let expected = Array(big.utf8)
        for _ in 0..<2 {
            let fd = open(mountPoint + "/big", O_RDONLY)
            try #require(fd >= 0)
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var failure: Int32 = 0
            var total = 0
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n < 0 { failure = errno; break }
                if n == 0 { break }
                // Whatever is returned before the failure is the file's true content.
                #expect(buffer[..<n] == expected[total..<(total + n)])
                total += n
            }
            close(fd)
            #expect(failure == EIO, "reading the corrupt file gave errno \(failure) after \(total) bytes")
        }
        #expect(try String(contentsOfFile: mountPoint + "/small", encoding: .utf8) == "small file\n")
        #expect(kill(daemon, 0) == 0, "the daemon died")
        let logFile = try #require(try FUSEMountTests.state(of: entry)["logFile"] as? String)
        let log = try String(contentsOfFile: logFile, encoding: .utf8)
        #expect(log.contains("nid"), "no log line names the damage: \(log)")
        try unmountAndExpectNothingLeft(mountPoint, image: image, entry: entry)
    }
}
