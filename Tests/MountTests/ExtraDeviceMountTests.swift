import Foundation
import KernelAttach
import Testing
import TestSupport

/// `mount.erofs -o device=BLOB` for images made by mkfs.erofs --blobdev: file-backed, through
/// a loop device, and with the blob given as a block device. The kernel opens extra devices the
/// way it opened the image, so mount.erofs adds loop devices where the kinds differ.
@Suite(.requiresRoot, .serialized) struct ExtraDeviceMountTests {
    let harness = MountHarness()

    /// An image whose chunked file data lives on `blob` (4 KiB chunks), and its reader manifest.
    struct BlobImage {
        let directory: String
        var image: String { directory + "/image.erofs" }
        var blob: String { directory + "/blob" }
        var mountPoint: String { directory + "/mnt" }
        let manifest: String

        init(harness: MountHarness) throws {
            directory = try MountHarness.scratchDirectory("devices")
            let tree = directory + "/tree"
            try FileManager.default.createDirectory(atPath: tree + "/sub", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: directory + "/mnt", withIntermediateDirectories: false)
            var generator = SplitMix64(seed: 7)
            for (name, size) in [
                ("empty", 0), ("small", 100), ("chunk", 4096), ("sub/big", 300_001), ("sub/odd", 70_001),
            ] {
                let bytes = (0..<size).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
                try Data(bytes).write(to: URL(fileURLWithPath: tree + "/" + name))
            }
            try Data(count: 200_000).write(to: URL(fileURLWithPath: tree + "/zeros"))
            let made = try runProgram(
                "/usr/bin/mkfs.erofs",
                ["-T0", "--blobdev=\(directory)/blob", "--chunksize=4096", directory + "/image.erofs", tree])
            try #require(made.status == 0, "mkfs.erofs: \(made.standardError)")
            let listed = try runProgram(
                harness.erofs,
                [
                    "ls", "--recursive", "--json", "--sha256", "--device", directory + "/blob",
                    directory + "/image.erofs",
                ])
            try #require(listed.status == 0, "erofs ls: \(listed.standardError)")
            manifest = listed.standardOutput
        }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// `blobAsBlockDevice`: pass the blob through a loop device of the test's own.
    @Test(arguments: [(["device=BLOB"], false), (["loop,device=BLOB"], false), (["device=BLOB"], true)])
    func mountWithBlob(options: [String], blobAsBlockDevice: Bool) throws {
        try #require(geteuid() == 0, "needs root")
        let made = try BlobImage(harness: harness)
        defer { made.remove() }
        var blobPath = made.blob
        var blobLoop: AttachedLoopDevice?
        if blobAsBlockDevice {
            let loop = try LoopDevice.attach(file: made.blob)
            blobLoop = loop
            blobPath = loop.device.path
        }
        defer { blobLoop?.close() }
        let data = options.map { $0.replacingOccurrences(of: "BLOB", with: blobPath) }
        let result = try harness.run(["-o", data.joined(separator: ","), made.image, made.mountPoint])
        try #require(result.status == 0, "mount.erofs -o \(data): \(result.standardError)")
        let mounted = try MountHarness.mounts(at: made.mountPoint)
        let fileBacked = !data.contains { $0.hasPrefix("loop") } && !blobAsBlockDevice
        // File-backed: the image itself is the source; otherwise a loop device is.
        #expect(mounted.first?.source.hasPrefix("/dev/loop") == !fileBacked, "\(mounted)")
        try MountHarness.expectTreeMatches(made.mountPoint, manifest: made.manifest)
        #expect(try runProgram("/bin/umount", [made.mountPoint]).status == 0)
        try MountHarness.expectNothingLeft(mountPoint: made.mountPoint, image: made.image)
        if !blobAsBlockDevice {
            try MountHarness.expectNothingLeft(mountPoint: made.mountPoint, image: made.blob)
        }
    }

    @Test func missingBlobIsRefusedBeforeMounting() throws {
        try #require(geteuid() == 0, "needs root")
        let made = try BlobImage(harness: harness)
        defer { made.remove() }
        let result = try harness.run(["-o", "device=\(made.directory)/no-such-blob", made.image, made.mountPoint])
        #expect(result.status != 0)
        #expect(result.standardError.contains("extra device"), "\(result.standardError)")
        try MountHarness.expectNothingLeft(mountPoint: made.mountPoint, image: made.image)
    }
}
