import EROFSReader
import ImageManifest
import Foundation
import Manifest
import CShim
import SystemCalls
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Images made now by the system's mkfs.erofs (Debian's 1.5) from a generated tree, read by us
/// and mounted by the host kernel: the kernel's view is the oracle.
@Suite(.serialized) struct MkfsImageTests {
    static let mkfs = "/usr/bin/mkfs.erofs"
    static var canMount: Bool { geteuid() == 0 && FileManager.default.isExecutableFile(atPath: mkfs) }

    /// A tree with the awkward parts: sizes around block boundaries, holes of zeros, text,
    /// symlinks (short, long, dangling), hard links, devices, a fifo, special modes, owners,
    /// nanosecond times and xattrs.
    static func makeTree(at root: String) throws {
        let manager = FileManager.default
        var generator = SplitMix64(seed: 42)
        func random(_ count: Int) -> Data {
            var bytes = [UInt8](repeating: 0, count: count)
            for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: generator.next()) }
            return Data(bytes)
        }
        try manager.createDirectory(atPath: root + "/sizes", withIntermediateDirectories: true)
        for size in [0, 1, 511, 512, 4095, 4096, 4097, 8191, 65_537, 131_073, 300_001] {
            try random(size).write(to: URL(fileURLWithPath: "\(root)/sizes/random-\(size)"))
            let text = Data(String(repeating: "erofs reader line \(size)\n", count: size / 20 + 1).utf8.prefix(size))
            try text.write(to: URL(fileURLWithPath: "\(root)/sizes/text-\(size)"))
            try Data(count: size).write(to: URL(fileURLWithPath: "\(root)/sizes/zero-\(size)"))
        }
        var mixed = Data(count: 70_000)
        mixed.append(random(9_000))
        mixed.append(Data(count: 40_000))
        try mixed.write(to: URL(fileURLWithPath: "\(root)/sizes/mixed"))
        try manager.createDirectory(atPath: root + "/deep/a/b/c/d/e", withIntermediateDirectories: true)
        try Data("bottom\n".utf8).write(to: URL(fileURLWithPath: root + "/deep/a/b/c/d/e/bottom.txt"))
        try manager.createDirectory(atPath: root + "/many", withIntermediateDirectories: true)
        for index in 0..<300 {
            try Data("\(index)".utf8).write(
                to: URL(fileURLWithPath: "\(root)/many/entry-\(index)-\(String(repeating: "x", count: index % 40))"))
        }
        try manager.createSymbolicLink(atPath: root + "/link-short", withDestinationPath: "sizes/text-1")
        try manager.createSymbolicLink(
            atPath: root + "/link-long", withDestinationPath: String(repeating: "long/", count: 200))
        try manager.createSymbolicLink(atPath: root + "/link-dangling", withDestinationPath: "/nowhere/at/all")
        try manager.linkItem(atPath: root + "/sizes/text-4097", toPath: root + "/hardlink-a")
        try manager.linkItem(atPath: root + "/sizes/text-4097", toPath: root + "/hardlink-b")
        try manager.createDirectory(atPath: root + "/special", withIntermediateDirectories: true)
        #expect(mknod(root + "/special/char", S_IFCHR | 0o640, makeDevice(1, 3)) == 0)
        #expect(mknod(root + "/special/block", S_IFBLK | 0o600, makeDevice(259, 70000)) == 0)
        #expect(mkfifo(root + "/special/fifo", 0o644) == 0)
        try Data("suid".utf8).write(to: URL(fileURLWithPath: root + "/special/setuid"))
        #expect(chmod(root + "/special/setuid", 0o4755) == 0)
        #expect(chown(root + "/special/setuid", 1234, 5678) == 0)
        try manager.createDirectory(atPath: root + "/special/sticky", withIntermediateDirectories: true)
        #expect(chmod(root + "/special/sticky", 0o1777) == 0)
        try Data("x".utf8).write(to: URL(fileURLWithPath: root + "/xattrs"))
        for (name, value) in [
            ("user.short", [UInt8]("v".utf8)), ("user.long", [UInt8](repeating: 0x41, count: 600)),
            ("trusted.overlay.opaque", [UInt8]("y".utf8)), ("security.label", [0, 1, 2, 255]),
        ] {
            let result = value.withUnsafeBytes { setxattr(root + "/xattrs", name, $0.baseAddress, $0.count, 0) }
            #expect(result == 0, "setxattr \(name)")
        }
        let times = [
            timespec(tv_sec: 1_600_000_000, tv_nsec: 123_456_789),
            timespec(tv_sec: 1_600_000_000, tv_nsec: 123_456_789),
        ]
        #expect(utimensat(AT_FDCWD, root + "/sizes/mixed", times, 0) == 0)
    }

    static func makeDevice(_ major: UInt64, _ minor: UInt64) -> dev_t {
        dev_t((major & 0xfff) << 8 | (major & ~0xfff) << 32 | (minor & 0xff) | (minor & ~0xff) << 12)
    }

    @Test(.requiresRoot, arguments: [[String](), ["-zlz4"], ["-zlz4hc"]])
    func readerMatchesKernel(options: [String]) throws {
        try #require(Self.canMount, "needs root and mkfs.erofs")
        let scratch = try temporaryDirectory("mkfs")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try Self.makeTree(at: scratch + "/tree")
        let image = scratch + "/image.erofs"
        let made = try runProgram(Self.mkfs, options + ["-T0", image, scratch + "/tree"])
        try #require(made.status == 0, "mkfs.erofs \(options): \(made.standardError)")

        let ours = try EROFSFilesystem(path: image).manifest(sha256: true).manifestText
        let mountPoint = scratch + "/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mounted = try runProgram("/bin/mount", ["-t", "erofs", "-o", "ro,loop", image, mountPoint])
        try #require(mounted.status == 0, "mount: \(mounted.standardError)")
        let kernel: String
        do {
            kernel = try DirectoryWalker.manifest(ofTreeAt: mountPoint).manifestText
        } catch {
            _ = try? runProgram("/bin/umount", [mountPoint])
            throw error
        }
        _ = try runProgram("/bin/umount", [mountPoint])
        #expect(kernel.split(separator: "\n").count > 300)
        #expect(
            manifestDifference(actual: ours, expected: kernel) == nil,
            "mkfs.erofs \(options): \(manifestDifference(actual: ours, expected: kernel) ?? "")")
    }
}
