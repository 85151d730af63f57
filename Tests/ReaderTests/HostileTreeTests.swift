import CShim
import EROFSReader
import ImageManifest
import Foundation
import Manifest
import SystemCalls
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// `erofs extract`, `ls`, `cat` and `walk` on an image made now by mkfs.erofs from a tree a
/// stranger could send (issue 13): a world-writable root owned by nobody, a device node,
/// setuid/setgid files, file capabilities, trusted.* xattrs, names that are not UTF-8 and a name
/// that drives a terminal. Extraction runs as root, the case the defaults must make safe.
@Suite(.requiresRoot, .serialized) struct HostileTreeTests {
    static var erofs: String { builtProductsDirectory() + "/erofs" }
    static let cafE9: [UInt8] = Array("caf".utf8) + [0xe9]
    static let cafE8: [UInt8] = Array("caf".utf8) + [0xe8]
    static let red: [UInt8] = [0x1b] + Array("[31mred".utf8)
    static let newline: [UInt8] = Array("new\nline".utf8)
    static let byteDirectory: [UInt8] = Array("dir".utf8) + [0xff]
    static let linkTarget: [UInt8] = Array("target".utf8) + [0xfe]
    /// Two xattr names that differ only in a byte that is not UTF-8.
    static let xattrNames: [ByteString] = [
        ByteString("user.") + ByteString(cafE9), ByteString("user.") + ByteString(cafE8),
    ]
    /// security.capability v2 (VFS_CAP_REVISION_2, effective) granting CAP_NET_RAW (13).
    static let capability: [UInt8] =
        [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00] + [UInt8](repeating: 0, count: 12)

    struct Made {
        let scratch: String
        let image: String
        func remove() { try? FileManager.default.removeItem(atPath: scratch) }
    }

    /// The tree as an image; the names that are not UTF-8 only with `names`, so that the
    /// tests of the other items do not trip over them on a reader that mangles them.
    static func makeImage(_ label: String, names: Bool = false) throws -> Made {
        let scratch = try temporaryDirectory("hostile-\(label)")
        let tree = ByteString(scratch + "/tree")
        func path(_ components: [UInt8]...) -> ByteString {
            components.reduce(tree) { $0.appending(component: ByteString($1)) }
        }
        func file(_ path: ByteString, _ contents: [UInt8], mode: mode_t = 0o644) throws {
            let descriptor = path.withCString { open($0, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode) }
            try #require(descriptor >= 0, "create \(path)")
            defer { close(descriptor) }
            try #require(contents.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) } == contents.count)
            try #require(fchmod(descriptor, mode) == 0)
        }
        func check(_ result: Int32, _ what: String) throws {
            try #require(result == 0, "\(what): \(String(cString: strerror(errno)))")
        }
        try check(tree.withCString { mkdir($0, 0o755) }, "mkdir tree")
        try check(tree.withCString { chown($0, 65534, 65534) }, "chown tree")
        try check(tree.withCString { chmod($0, 0o777) }, "chmod tree")
        try check(
            path(Array("null".utf8)).withCString { mknod($0, S_IFCHR | 0o666, MkfsImageTests.makeDevice(1, 3)) },
            "mknod")
        // Owner first: chown clears setuid and setgid.
        try file(path(Array("setuid".utf8)), Array("u".utf8))
        try check(path(Array("setuid".utf8)).withCString { chown($0, 1234, 5678) }, "chown setuid")
        try check(path(Array("setuid".utf8)).withCString { chmod($0, 0o4755) }, "chmod setuid")
        try file(path(Array("setgid".utf8)), Array("g".utf8), mode: 0o2755)
        try file(path(Array("world-writable".utf8)), Array("w".utf8), mode: 0o666)
        try check(path(Array("sticky".utf8)).withCString { mkdir($0, 0o755) }, "mkdir sticky")
        try check(path(Array("sticky".utf8)).withCString { chmod($0, 0o1777) }, "chmod sticky")
        try file(path(Array("capable".utf8)), Array("c".utf8), mode: 0o755)
        for (name, value) in [
            ("security.capability", capability), ("trusted.overlay.opaque", Array("y".utf8)),
            ("user.note", Array("hi".utf8)),
        ] {
            let result = path(Array("capable".utf8)).withCString { cPath in
                value.withUnsafeBytes { setxattr(cPath, name, $0.baseAddress, $0.count, 0) }
            }
            try check(result, "setxattr \(name)")
        }
        if names {
            try file(path(cafE9), cafE9)
            try file(path(cafE8), cafE8)
            for name in xattrNames {
                let result = path(cafE9).withCString { cPath in name.withCString { setxattr(cPath, $0, [0x01], 1, 0) } }
                try check(result, "setxattr \(name)")
            }
            try file(path(red), red)
            try file(path(newline), newline)
            try check(path(byteDirectory).withCString { mkdir($0, 0o755) }, "mkdir dir\\377")
            try file(path(byteDirectory, cafE9), Array("inside".utf8))
            try check(
                ByteString(linkTarget).withCString { target in
                    path(Array("link".utf8)).withCString { symlink(target, $0) }
                }, "symlink")
        }
        let image = scratch + "/image.erofs"
        let made = try runProgram(MkfsImageTests.mkfs, ["-T0", image, scratch + "/tree"])
        try #require(made.status == 0, "mkfs.erofs: \(made.standardError)")
        return Made(scratch: scratch, image: image)
    }

    static func status(_ path: String) throws -> FileStatus { try FileStatus.lstat(path) }

    static var umaskValue: UInt32 {
        let mask = umask(0)
        umask(mask)
        return UInt32(mask)
    }

    /// An independent walker of a mounted tree: Python's json.dumps(ensure_ascii=False) of
    /// os.fsdecode'd names, whose lone surrogates `backslashreplace` writes as \udcXX; sorted by
    /// path bytes. What `erofs walk` and `erofs ls --json` must print.
    static let pythonWalker = #"""
        import hashlib, json, os, stat, sys
        root = os.fsencode(sys.argv[1])
        kinds = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
                 stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}
        def entry(rel, full):
            st = os.lstat(full)
            kind = kinds[stat.S_IFMT(st.st_mode)]
            e = {"path": os.fsdecode(rel), "type": kind, "mode": "%04o" % stat.S_IMODE(st.st_mode),
                 "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                 "nlink": st.st_nlink,
                 "xattrs": {os.fsdecode(n): os.getxattr(full, n, follow_symlinks=False).hex()
                            for n in os.listxattr(full, follow_symlinks=False)}}
            if kind in ("char", "block"): e["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
            if kind == "symlink": e["target"] = os.fsdecode(os.readlink(full))
            if kind == "file":
                with open(full, "rb") as f: e["sha256"] = hashlib.sha256(f.read()).hexdigest()
            return e
        paths, pending = [], [b"/"]
        while pending:
            rel = pending.pop()
            full = root + rel if rel != b"/" else root
            paths.append((rel, full))
            if stat.S_ISDIR(os.lstat(full).st_mode):
                pending += [rel.rstrip(b"/") + b"/" + name for name in os.listdir(full)]
        for rel, full in sorted(paths):
            line = json.dumps(entry(rel, full), sort_keys=True, ensure_ascii=False)
            sys.stdout.buffer.write(line.encode("utf-8", "backslashreplace") + b"\n")
        """#

    /// Runs `script` under /bin/sh with $1.. set to `arguments`: lets a test pass arguments
    /// that are not UTF-8 (printf makes them) and keep output as bytes (redirected to a file).
    static func shell(_ script: String, _ arguments: [String]) throws -> ProcessResult {
        try runProgram("/bin/sh", ["-c", script, "sh"] + arguments)
    }

    // MARK: item 4: the destination

    /// Was: exit 0, `d` turned drwxrwxrwx nobody:nogroup and the image's files merged in.
    @Test func nonEmptyDestinationIsRefusedAndLeftAlone() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try Self.makeImage("nonempty")
        defer { made.remove() }
        let destination = made.scratch + "/d"
        try FileManager.default.createDirectory(atPath: destination, withIntermediateDirectories: false)
        #expect(chmod(destination, 0o700) == 0)
        try Data("keep\n".utf8).write(to: URL(fileURLWithPath: destination + "/keep"))
        let before = try Self.status(destination)
        let result = try runProgram(Self.erofs, ["extract", made.image, destination])
        #expect(result.status == 1)
        #expect(result.standardError.contains("\(destination): not empty (it holds keep)"), "\(result.standardError)")
        #expect(try Self.status(destination) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: destination) == ["keep"])
        #expect(try String(contentsOfFile: destination + "/keep", encoding: .utf8) == "keep\n")
    }

    /// A symlink as DEST (planted in a shared directory, naming an empty directory of root's)
    /// is not followed.
    @Test func aSymlinkedDestinationIsNotFollowed() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try Self.makeImage("dest-link")
        defer { made.remove() }
        let target = made.scratch + "/roots-empty"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        #expect(symlink(target, made.scratch + "/out") == 0)
        let result = try runProgram(Self.erofs, ["extract", made.image, made.scratch + "/out"])
        #expect(result.status == 1)
        #expect(result.standardError.contains("a symlink: not followed"), "\(result.standardError)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: target).isEmpty)
    }

    /// Whoever can write in DEST may swap each node the extraction makes (a FIFO here) for a
    /// symlink to a file of root's before its chmod. Was: fchmodat followed the symlink and the
    /// victim, 0600, became 0644 (reproduced with a C loop that won all 3000 swaps). Now the
    /// chmod goes through a descriptor taken without following, and the swapped names are
    /// reported, not chmodded. The race is run for real: the assertion is on the victim.
    @Test func aNodeSwappedForASymlinkIsNotChmodded() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let scratch = try temporaryDirectory("hostile-swap")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let count = 1500
        try FileManager.default.createDirectory(atPath: scratch + "/tree", withIntermediateDirectories: false)
        for index in 0..<count { #expect(mkfifo("\(scratch)/tree/f\(index)", 0o666) == 0) }
        let image = scratch + "/fifos.erofs"
        let made = try runProgram(MkfsImageTests.mkfs, ["-T0", image, scratch + "/tree"])
        try #require(made.status == 0, "mkfs.erofs: \(made.standardError)")
        let victim = scratch + "/victim"
        try Data("root's\n".utf8).write(to: URL(fileURLWithPath: victim))
        #expect(chmod(victim, 0o600) == 0)
        let destination = scratch + "/out"
        try FileManager.default.createDirectory(atPath: destination, withIntermediateDirectories: false)

        // The attacker: as each node appears, a symlink to the victim replaces it.
        let racer = Thread {
            for index in 0..<count {
                let node = "\(destination)/f\(index)"
                let bait = "\(scratch)/bait\(index)"
                guard symlink(victim, bait) == 0 else { return }
                let deadline = Date().addingTimeInterval(10)
                var status = stat()
                while lstat(node, &status) != 0 && Date() < deadline {}
                rename(bait, node)
            }
        }
        racer.start()
        let result = try runProgram(Self.erofs, ["extract", image, destination])
        while !racer.isFinished { usleep(1000) }
        let swapped = try FileManager.default.contentsOfDirectory(atPath: destination).filter { name in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: destination + "/" + name)) == victim
        }
        #expect(!swapped.isEmpty, "the race never won a swap: the test showed nothing")
        #expect(try Self.status(victim).permissions == 0o600, "\(result.standardError)")
        // A swap that landed before the chmod is reported (exit 2); one after it is not seen.
        #expect(result.status == 0 || result.status == 2, "\(result.standardError)")
        if result.status == 2 { #expect(result.standardError.contains("chmod"), "\(result.standardError)") }
    }

    /// DEST keeps its own owner and mode (an existing empty one) or gets what mkdir gives (a
    /// new one); the image root's metadata only with --root-metadata.
    @Test func destinationKeepsItsOwnMetadata() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try Self.makeImage("dest")
        defer { made.remove() }
        let existing = made.scratch + "/empty"
        try FileManager.default.createDirectory(atPath: existing, withIntermediateDirectories: false)
        #expect(chmod(existing, 0o700) == 0)
        let result = try runProgram(Self.erofs, ["extract", made.image, existing])
        #expect(result.status == 0, "\(result.standardError)")
        let kept = try Self.status(existing)
        #expect(kept.permissions == 0o700 && kept.uid == 0 && kept.gid == 0, "\(kept)")
        #expect(FileManager.default.fileExists(atPath: existing + "/setgid"))

        let created = try runProgram(Self.erofs, ["extract", made.image, made.scratch + "/new"])
        #expect(created.status == 0, "\(created.standardError)")
        let new = try Self.status(made.scratch + "/new")
        #expect(new.permissions == 0o777 & ~Self.umaskValue && new.uid == 0 && new.gid == 0, "\(new)")

        let asked = try runProgram(
            Self.erofs, ["extract", "--root-metadata", "--same-permissions", made.image, made.scratch + "/root"])
        #expect(asked.status == 0, "\(asked.standardError)")
        let root = try Self.status(made.scratch + "/root")
        #expect(root.permissions == 0o777 && root.uid == 65534 && root.gid == 65534, "\(root)")
    }

    // MARK: item 5: what is restored

    /// As root with no option: no device node, no setuid/setgid, the umask applied, the sticky
    /// bit kept, owners restored, only user.* xattrs (no capability, no trusted.*), and a note
    /// saying what was left out. Was: all of it restored, silently.
    @Test func defaultsAreSafeForAStrangersImage() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try Self.makeImage("defaults")
        defer { made.remove() }
        let out = made.scratch + "/out"
        let result = try runProgram(Self.erofs, ["extract", made.image, out])
        #expect(result.status == 0, "\(result.standardError)")
        let mask = Self.umaskValue
        #expect(throws: SystemError.self) { try Self.status(out + "/null") }
        let setuid = try Self.status(out + "/setuid")
        #expect(setuid.permissions == 0o755 & ~mask && setuid.uid == 1234 && setuid.gid == 5678, "\(setuid)")
        #expect(try Self.status(out + "/setgid").permissions == 0o755 & ~mask)
        #expect(try Self.status(out + "/world-writable").permissions == 0o666 & ~mask)
        #expect(try Self.status(out + "/sticky").permissions == 0o1777 & ~mask)
        #expect(try ExtendedAttributes.names(ByteString(out + "/capable")) == ["user.note"])
        #expect(try ExtendedAttributes.value(ByteString(out + "/capable"), name: "user.note") == Array("hi".utf8))
        #expect(result.standardError.contains("1 device node(s), first /null (--devices)"), "\(result.standardError)")
        #expect(result.standardError.contains("setuid/setgid on 2 object(s)"))
        #expect(result.standardError.contains("1 security.capability xattr(s) (--capabilities)"))
        #expect(result.standardError.contains("1 trusted.* xattr(s) (--xattrs)"))

        // --no-same-owner with --same-permissions: a setuid file owned by the extracting user
        // would run as that user (root here), so setuid is dropped there too, as tar does.
        let unowned = try runProgram(
            Self.erofs, ["extract", "--no-same-owner", "--same-permissions", made.image, made.scratch + "/unowned"])
        #expect(unowned.status == 0, "\(unowned.standardError)")
        let mine = try Self.status(made.scratch + "/unowned/setuid")
        #expect(mine.permissions == 0o755 && mine.uid == 0 && mine.gid == 0, "\(mine)")
        #expect(try Self.status(made.scratch + "/unowned/setgid").permissions == 0o755)
    }

    /// With every opt-in the extracted tree is the image, byte for byte and bit for bit:
    /// device, setuid/setgid, capability, trusted.*, owners, the root's metadata.
    @Test func optInsRestoreTheImageExactly() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try Self.makeImage("optin")
        defer { made.remove() }
        let out = made.scratch + "/out"
        let result = try runProgram(Self.erofs, ["extract"] + ToolTests.faithfulExtract + [made.image, out])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(!result.standardError.contains("note:"), "\(result.standardError)")
        var walked = try DirectoryWalker.manifest(ofTreeAt: out)
        var expected = try EROFSFilesystem(path: made.image).manifest(sha256: true)
        for index in walked.indices where walked[index].kind == .dir { walked[index].size = 0 }
        for index in expected.indices where expected[index].kind == .dir { expected[index].size = 0 }
        #expect(
            manifestDifference(actual: walked.manifestText, expected: expected.manifestText) == nil,
            "\(manifestDifference(actual: walked.manifestText, expected: expected.manifestText) ?? "")")
        #expect(
            try ExtendedAttributes.value(ByteString(out + "/capable"), name: "security.capability") == Self.capability)
        let device = try Self.status(out + "/null")
        #expect(device.kind == .char && device.rdevMajor == 1 && device.rdevMinor == 3)
        #expect(try Self.status(out + "/setuid").permissions == 0o4755)
    }

    // MARK: item 6: names are bytes

    /// Was: extract failed ("File exists": both names became "caf\u{FFFD}").
    @Test func extractKeepsNamesAsBytes() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try Self.makeImage("extract-names", names: true)
        defer { made.remove() }
        let out = ByteString(made.scratch + "/out")
        let result = try runProgram(Self.erofs, ["extract", made.image, made.scratch + "/out"])
        #expect(result.status == 0, "\(result.standardError)")
        for name in [Self.cafE9, Self.cafE8, Self.red] {
            let path = out.appending(component: ByteString(name))
            let descriptor = path.withCString { open($0, O_RDONLY | O_CLOEXEC) }
            #expect(descriptor >= 0, "open \(path)")
            var buffer = [UInt8](repeating: 0, count: 64)
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            close(descriptor)
            #expect(Array(buffer.prefix(max(count, 0))) == name, "contents of \(path)")
        }
        #expect((try? DirectoryWalker.readLink(out.appending(component: "link"))) == ByteString(Self.linkTarget))
        let attributes = (try? ExtendedAttributes.names(out.appending(component: ByteString(Self.cafE9)))) ?? []
        #expect(Set(attributes) == Set(Self.xattrNames), "\(attributes)")
    }

    /// Was: ls --json printed "/caf\u{FFFD}" twice, and walk could not stat it; cat could not
    /// name it. A Python walker of the kernel's mount is the independent oracle.
    @Test func listingAndWalkKeepNamesAsBytes() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try Self.makeImage("list-names", names: true)
        defer { made.remove() }

        // ls --json: distinct, escaped paths, equal to the walk of the kernel's mount, whose
        // mountpoint name is not UTF-8 either (so walk takes its argument as bytes).
        let listed = try runProgram(Self.erofs, ["ls", "--recursive", "--json", "--sha256", made.image])
        #expect(listed.status == 0, "\(listed.standardError)")
        let paths: [String] = listed.standardOutput.split(separator: "\n").compactMap { line -> String? in
            guard let start = line.firstRange(of: "\"path\": \"") else { return nil }
            return String(line.suffix(from: start.upperBound).prefix { $0 != "\"" })
        }
        #expect(Set(paths).count == paths.count, "duplicate paths: \(paths)")
        #expect(
            paths.contains("/caf\\udce9") && paths.contains("/caf\\udce8") && paths.contains("/dir\\udcff/caf\\udce9"))
        #expect(paths.contains("/\\u001b[31mred"))
        #expect(listed.standardOutput.contains("\"target\": \"target\\udcfe\""))
        #expect(
            listed.standardOutput.contains(#""xattrs": {"user.caf\udce8": "01", "user.caf\udce9": "01"}"#),
            "\(listed.standardOutput)")
        let mountPoint = made.scratch + "/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        let mountPointBytes = ByteString(mountPoint + "/") + ByteString([0xfd])
        #expect(mountPointBytes.withCString { mkdir($0, 0o755) } == 0)
        let mounted = try Self.shell(
            #"mount -t erofs -o ro,loop "$1" "$2/$(printf '\375')""#, [made.image, mountPoint])
        try #require(mounted.status == 0, "mount: \(mounted.standardError)")
        let walked = try Self.shell(#""$1" walk "$2/$(printf '\375')""#, [Self.erofs, mountPoint])
        let python = try Self.shell(#"python3 -c "$1" "$2/$(printf '\375')""#, [Self.pythonWalker, mountPoint])
        _ = try Self.shell(#"umount "$1/$(printf '\375')""#, [mountPoint])
        #expect(walked.status == 0, "\(walked.standardError)")
        #expect(
            manifestDifference(actual: walked.standardOutput, expected: listed.standardOutput) == nil,
            "\(manifestDifference(actual: walked.standardOutput, expected: listed.standardOutput) ?? "")")
        #expect(python.status == 0, "\(python.standardError)")
        #expect(
            manifestDifference(actual: listed.standardOutput, expected: python.standardOutput) == nil,
            "\(manifestDifference(actual: listed.standardOutput, expected: python.standardOutput) ?? "")")

        // cat takes the path as bytes.
        let catted = try Self.shell(#""$1" cat "$2" "$(printf '/dir\377/caf\351')""#, [Self.erofs, made.image])
        #expect(catted.status == 0, "\(catted.standardError)")
        #expect(catted.standardOutput == "inside")
    }

    /// ls into a pipe writes names as they are, one per line; with -b, and on a terminal,
    /// escaped as GNU ls -b does, so no byte of a name reaches the terminal raw.
    @Test func listingEscapesNamesForATerminal() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try Self.makeImage("tty", names: true)
        defer { made.remove() }
        let rawFile = made.scratch + "/raw"
        let piped = try Self.shell(#""$1" ls "$2" > "$3""#, [Self.erofs, made.image, rawFile])
        #expect(piped.status == 0, "\(piped.standardError)")
        let raw = Array(try Data(contentsOf: URL(fileURLWithPath: rawFile)))
        let lines = raw.split(separator: 0x0a, omittingEmptySubsequences: false).map(Array.init)
        #expect(
            lines.contains(Self.cafE9) && lines.contains(Self.cafE8) && lines.contains(Self.red)
                && lines.contains(Self.byteDirectory),
            "\(lines.map { ByteString($0).escaped })")

        let escaped = try runProgram(Self.erofs, ["ls", "-b", made.image])
        let expected = ["\\033[31mred", "caf\\350", "caf\\351", "dir\\377"]
        for name in expected {
            #expect(
                escaped.standardOutput.split(separator: "\n").contains(Substring(name)), "\(escaped.standardOutput)")
        }
        // -0: raw names, each ended by a NUL, so a newline in a name is unambiguous.
        let zeroFile = made.scratch + "/zero"
        let zeroed = try Self.shell(#""$1" ls -0 "$2" > "$3""#, [Self.erofs, made.image, zeroFile])
        #expect(zeroed.status == 0, "\(zeroed.standardError)")
        let names = Array(try Data(contentsOf: URL(fileURLWithPath: zeroFile))).split(separator: 0).map(Array.init)
        #expect(names.contains(Self.newline) && names.contains(Self.cafE9) && !names.contains(Array("line".utf8)))
        #expect(escaped.standardOutput.split(separator: "\n").contains("new\\nline"))
        let long = try runProgram(Self.erofs, ["ls", "-l", "-b", made.image])
        #expect(long.standardOutput.contains(" link -> target\\376\n"), "\(long.standardOutput)")

        // A terminal: script(1) gives the command a pty.
        let terminal = try Self.shell(#"script -qec "'$1' ls '$2'" /dev/null"#, [Self.erofs, made.image])
        #expect(terminal.status == 0, "\(terminal.standardError)")
        let shown = terminal.standardOutput.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }).map(
            String.init)
        for name in expected { #expect(shown.contains(name), "\(shown)") }
        #expect(!terminal.standardOutput.unicodeScalars.contains("\u{1b}"))
    }
}
