import Foundation
import Testing
import TestSupport

/// Bad sources, mountpoints and options: one clear line naming the path and the problem, the
/// exit status mount(8) documents, and nothing mounted or attached afterwards.
@Suite(.requiresRoot, .serialized) struct BadInputTests {
    let harness = MountHarness()

    struct Case: CustomStringConvertible, Sendable {
        var name: String
        var arguments: @Sendable (_ image: String, _ mountPoint: String) -> [String]
        var prepare: @Sendable (_ image: String) throws -> Void = { _ in }
        var status: Int32
        var message: @Sendable (_ image: String, _ mountPoint: String) -> String
        var description: String { name }
    }

    static func corpusImage(_ name: String) -> String {
        Corpus.imagesOrEmpty.first { $0.name == name }?.path ?? "/missing-corpus/\(name).erofs"
    }

    static func copy(_ name: String, to path: String) throws {
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.copyItem(atPath: corpusImage(name), toPath: path)
    }

    static func patch(_ path: String, at offset: UInt64, _ bytes: [UInt8]) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data(bytes))
        try handle.close()
    }

    static let cases: [Case] = [
        Case(
            name: "missing file", arguments: { image, dir in [image + ".absent", dir] }, status: 32,
            message: { image, _ in "cannot open source \(image).absent: No such file or directory" }),
        Case(
            name: "not an EROFS file", arguments: { image, dir in [image, dir] },
            prepare: { image in try Data(repeating: 0x5a, count: 8192).write(to: URL(fileURLWithPath: image)) },
            status: 32, message: { image, _ in "\(image): not an EROFS image: bad magic 0x5A5A5A5A at offset 1024" }),
        Case(
            name: "empty file", arguments: { image, dir in [image, dir] },
            prepare: { image in try Data().write(to: URL(fileURLWithPath: image)) },
            status: 32, message: { image, _ in "\(image): not an EROFS image: too short for a superblock" }),
        Case(
            name: "truncated image", arguments: { image, dir in [image, dir] },
            prepare: { image in
                try copy("plain", to: image)
                try FileHandle(forWritingTo: URL(fileURLWithPath: image)).truncate(atOffset: 1 << 20)
            },
            status: 32, message: { image, _ in "\(image): truncated EROFS image: the superblock says" }),
        Case(
            name: "truncated image through a loop device", arguments: { image, dir in ["-o", "loop", image, dir] },
            prepare: { image in
                try copy("lz4", to: image)
                try FileHandle(forWritingTo: URL(fileURLWithPath: image)).truncate(atOffset: 8192)
            },
            status: 32, message: { image, _ in "\(image): truncated EROFS image" }),
        Case(
            name: "unknown incompatible feature", arguments: { image, dir in [image, dir] },
            prepare: { image in
                try copy("plain", to: image)
                try patch(image, at: 1024 + 80 + 3, [0x80])  // bit 31 of feature_incompat
            },
            status: 32,
            message: { image, _ in "\(image): unsupported EROFS image: unknown incompatible feature bits 0x80000000" }),
        Case(
            name: "corrupt superblock checksum", arguments: { image, dir in [image, dir] },
            prepare: { image in
                try copy("lz4", to: image)
                try patch(image, at: 1024 + 64, [0x58])  // volume name, covered by the crc32c
            },
            status: 32, message: { image, _ in "\(image): corrupt EROFS superblock: checksum" }),
        Case(
            name: "missing mountpoint", arguments: { image, dir in [image, dir + "/absent"] },
            prepare: { image in try copy("plain", to: image) },
            status: 32, message: { _, dir in "mountpoint \(dir)/absent does not exist" }),
        Case(
            name: "mountpoint is a file", arguments: { image, _ in [image, image] },
            prepare: { image in try copy("plain", to: image) },
            status: 32, message: { image, _ in "mountpoint \(image) is not a directory" }),
        Case(
            name: "source is a directory", arguments: { _, dir in [dir, dir] }, status: 32,
            message: { _, dir in "source \(dir) is a directory" }),
        Case(
            name: "unknown subtype", arguments: { image, dir in ["-t", "erofs.zfs", image, dir] },
            prepare: { image in try copy("plain", to: image) },
            status: 1, message: { _, _ in "invalid filesystem subtype `zfs`" }),
        Case(
            name: "other filesystem type", arguments: { image, dir in ["-t", "squashfs", image, dir] },
            prepare: { image in try copy("plain", to: image) },
            status: 1, message: { _, _ in "unsupported filesystem type `squashfs`" }),
        Case(
            name: "loop with the nbd backend",
            arguments: { image, dir in ["-t", "erofs.nbd", "-o", "loop", image, dir] },
            prepare: { image in try copy("plain", to: image) },
            status: 1, message: { _, _ in "conflicting options: `-o loop` needs the local backend" }),
        Case(
            name: "unknown nbd recovery mode",
            arguments: { image, dir in ["-t", "erofs.nbd", "-o", "nbd.recovery=sometimes", image, dir] },
            prepare: { image in try copy("plain", to: image) },
            status: 1, message: { _, _ in "unknown or malformed nbd option `nbd.recovery=sometimes`" }),
        Case(
            name: "request timer of zero",
            arguments: { image, dir in ["-t", "erofs.nbd", "-o", "nbd.requeue_ms=0", image, dir] },
            prepare: { image in try copy("plain", to: image) },
            status: 1, message: { _, _ in "unknown or malformed nbd option `nbd.requeue_ms=0`" }),
        Case(
            name: "poll longer than 10 ms",
            arguments: { image, dir in ["-t", "erofs.nbd", "-o", "nbd.poll_us=20000", image, dir] },
            prepare: { image in try copy("plain", to: image) },
            status: 1, message: { _, _ in "unknown or malformed nbd option `nbd.poll_us=20000`" }),
        Case(
            name: "reattach of something that is no nbd device", arguments: { _, dir in ["--reattach", dir] },
            status: 32, message: { _, dir in "\(dir) is neither /dev/nbdN nor mounted from one" }),
        // Devices are found by number: one that does not exist here cannot be named.
        Case(
            name: "upgrade of a device that does not exist", arguments: { _, _ in ["--upgrade", "/dev/nbd93"] },
            status: 32, message: { _, _ in "cannot use /dev/nbd93: No such file or directory" }),
        Case(
            name: "disconnect of a device that is no nbd device", arguments: { _, _ in ["--disconnect", "/dev/null"] },
            status: 32, message: { _, _ in "/dev/null is neither /dev/nbdN nor mounted from one" }),
        Case(
            name: "unmount and reattach together", arguments: { _, dir in ["-u", "--reattach", dir] },
            status: 1, message: { _, _ in "conflicting options: -u and --reattach" }),
        Case(
            name: "unmount of something not mounted", arguments: { _, dir in ["-u", dir] },
            status: 32, message: { _, dir in "\(dir) is not mounted" }),
    ]

    @Test(arguments: cases)
    func refusedCleanly(_ testCase: Case) throws {
        let scratch = try MountHarness.scratchDirectory("bad")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let image = scratch + "/image.erofs"
        let mountPoint = scratch + "/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        try testCase.prepare(image)

        let result = try harness.run(testCase.arguments(image, mountPoint))
        #expect(result.status == testCase.status, "stderr: \(result.standardError)")
        let expected = "mount.erofs: " + testCase.message(image, mountPoint)
        #expect(result.standardError.hasPrefix(expected), "stderr was: \(result.standardError)")
        #expect(!result.standardError.contains("Fatal error"), "crashed: \(result.standardError)")
        try MountHarness.expectNothingLeft(mountPoint: mountPoint, image: image)
    }

    @Test func busyMountpointStillMountsOnTop() throws {
        // mount(2) stacks mounts; -u then removes only ours.
        let workspace = try MountHarness.Workspace("stack", copying: BadInputTests.corpusImage("plain"))
        defer { workspace.remove() }
        let (image, mountPoint) = (workspace.image, workspace.mountPoint)
        #expect(try harness.run([image, mountPoint]).status == 0)
        #expect(try harness.run([image, mountPoint]).status == 0)
        #expect(try MountHarness.mounts(at: mountPoint).count == 2)
        #expect(try harness.run(["-u", mountPoint]).status == 0)
        #expect(try MountHarness.mounts(at: mountPoint).count == 1)
        #expect(try harness.run(["-u", mountPoint]).status == 0)
        try MountHarness.expectNothingLeft(mountPoint: mountPoint, image: image)
    }

    @Test func fakeMountChecksButMountsNothing() throws {
        let workspace = try MountHarness.Workspace("fake", copying: BadInputTests.corpusImage("lz4"))
        defer { workspace.remove() }
        let (image, mountPoint) = (workspace.image, workspace.mountPoint)
        let result = try harness.run(["-f", "-v", image, mountPoint])
        #expect(result.status == 0)
        #expect(result.standardError.contains("not mounted (-f)"))
        try MountHarness.expectNothingLeft(mountPoint: mountPoint, image: image)
    }

    @Test func helpAndVersion() throws {
        let help = try harness.run(["--help"])
        #expect(help.status == 0)
        #expect(help.standardOutput.contains("Usage: mount.erofs [OPTIONS] SOURCE MOUNTPOINT"))
        let version = try harness.run(["-V"])
        #expect(version.status == 0 && version.standardOutput.hasPrefix("mount.erofs "))
    }
}

@Suite(.requiresRoot, .serialized) struct UnmountTests {
    let harness = MountHarness()

    @Test func unmountByImagePath() throws {
        let workspace = try MountHarness.Workspace("unmount", copying: BadInputTests.corpusImage("plain"))
        defer { workspace.remove() }
        let (image, mountPoint) = (workspace.image, workspace.mountPoint)
        for options in [[], ["-o", "loop"]] {
            #expect(try harness.run(options + [image, mountPoint]).status == 0)
            let result = try harness.run(["-u", image])
            #expect(result.status == 0, "stderr: \(result.standardError)")
            try MountHarness.expectNothingLeft(mountPoint: mountPoint, image: image)
        }
    }

    @Test func loopDeviceSetUpByHandIsLeftAlone() throws {
        // losetup without autoclear: -u unmounts but must not take the user's device away.
        let workspace = try MountHarness.Workspace("losetup", copying: BadInputTests.corpusImage("plain"))
        defer { workspace.remove() }
        let (image, mountPoint) = (workspace.image, workspace.mountPoint)
        let losetup = try runProgram("/usr/sbin/losetup", ["-r", "-f", "--show", image])
        try #require(losetup.status == 0, "losetup: \(losetup.standardError)")
        let device = losetup.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? runProgram("/usr/sbin/losetup", ["-d", device]) }
        #expect(try harness.run([device, mountPoint]).status == 0)
        #expect(try MountHarness.mounts(at: mountPoint).first?.source == device)
        #expect(try harness.run(["-u", mountPoint]).status == 0)
        #expect(try MountHarness.mounts(at: mountPoint).isEmpty)
        #expect(MountHarness.loopDevices(backing: image) == [device])
    }
}
