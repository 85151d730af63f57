import EROFSFormat
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

/// Multi-device images: Debian's mkfs.erofs 1.5 puts chunk-based file data on a blob
/// (`--blobdev`), the host kernel mounts the image with `-o device=BLOB` and is the oracle.
@Suite(.requiresRoot, .serialized) struct ExtraDeviceTests {
    /// A tree made by `MkfsImageTests.makeTree` (files from 0 B to 300 KB, all-zero files that
    /// mkfs deduplicates, symlinks, devices, xattrs) turned into an image plus its blob.
    struct MultiDeviceImage {
        let scratch: String
        let image: String
        let blob: String

        init(chunkSize: Int) throws {
            scratch = try temporaryDirectory("devices")
            image = scratch + "/image.erofs"
            blob = scratch + "/blob"
            try MkfsImageTests.makeTree(at: scratch + "/tree")
            let made = try runProgram(
                MkfsImageTests.mkfs, ["-T0", "--blobdev=\(blob)", "--chunksize=\(chunkSize)", image, scratch + "/tree"])
            try #require(made.status == 0, "mkfs.erofs: \(made.standardError)")
        }

        func remove() { try? FileManager.default.removeItem(atPath: scratch) }
    }

    /// The kernel's manifest of `source` mounted with `data` through mount(2) directly:
    /// a regular file as source is a file-backed mount (mount(8) would set up a loop device).
    static func kernelManifest(source: String, data: String, at mountPoint: String) throws -> String {
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        guard mount(source, mountPoint, "erofs", UInt(MS_RDONLY), data) == 0 else {
            let code = errno
            throw ExtraDeviceTestError("mount \(source) -o \(data): \(String(cString: strerror(code)))")
        }
        defer { umount(mountPoint) }
        return try DirectoryWalker.manifest(ofTreeAt: mountPoint).manifestText
    }

    @Test(arguments: [4096, 65536])
    func readerMatchesKernelFileBacked(chunkSize: Int) throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try MultiDeviceImage(chunkSize: chunkSize)
        defer { made.remove() }
        let filesystem = try EROFSFilesystem(path: made.image, devicePaths: [made.blob])
        #expect(filesystem.deviceTable.slots.count == 1)
        #expect(filesystem.deviceTable.deviceIDMask == 1)
        // The data really is on the blob: far more than the primary holds.
        let blobSize = try FileStatus.stat(made.blob).size
        #expect(blobSize > 500_000, "blob of \(blobSize) bytes")

        let ours = try filesystem.manifest(sha256: true).manifestText
        let kernel = try Self.kernelManifest(source: made.image, data: "device=\(made.blob)", at: made.scratch + "/mnt")
        #expect(kernel.split(separator: "\n").count > 300)
        #expect(
            manifestDifference(actual: ours, expected: kernel) == nil,
            "chunk size \(chunkSize): \(manifestDifference(actual: ours, expected: kernel) ?? "")")
    }

    /// With a loop device for the image, the kernel opens extra devices as block devices too:
    /// `device=` must name a block device (a regular file is refused with EINVAL).
    @Test func readerMatchesKernelOnLoopDevices() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try MultiDeviceImage(chunkSize: 4096)
        defer { made.remove() }
        let ours = try EROFSFilesystem(path: made.image, devicePaths: [made.blob]).manifest(sha256: true).manifestText
        let imageLoop = try Self.attachLoop(made.image)
        defer { _ = try? runProgram("/sbin/losetup", ["-d", imageLoop]) }
        let blobLoop = try Self.attachLoop(made.blob)
        defer { _ = try? runProgram("/sbin/losetup", ["-d", blobLoop]) }
        let mountPoint = made.scratch + "/mnt"
        #expect(throws: ExtraDeviceTestError.self) {
            try Self.kernelManifest(source: imageLoop, data: "device=\(made.blob)", at: mountPoint)
        }
        let kernel = try Self.kernelManifest(source: imageLoop, data: "device=\(blobLoop)", at: mountPoint)
        #expect(
            manifestDifference(actual: ours, expected: kernel) == nil,
            "\(manifestDifference(actual: ours, expected: kernel) ?? "")")
    }

    static func attachLoop(_ path: String) throws -> String {
        let result = try runProgram("/sbin/losetup", ["-f", "--show", "-r", path])
        try #require(result.status == 0, "losetup: \(result.standardError)")
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func missingOrShortBlobIsAClearError() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try MultiDeviceImage(chunkSize: 4096)
        defer { made.remove() }
        // Without the blob: metadata still reads, the first chunk on the blob names the device.
        let withoutBlob = try EROFSFilesystem(path: made.image)
        let root = try withoutBlob.lookup(path: "/")
        #expect(try !withoutBlob.readDirectory(root).isEmpty)
        let missing = #expect(throws: EROFSError.self) { try withoutBlob.manifest(sha256: true) }
        #expect(missing?.kind == .device)
        #expect(
            missing?.message.contains("extra device 1 (slot 0, tag empty), which is missing") == true,
            "\(String(describing: missing))")
        #expect(missing?.path != nil && missing?.nid != nil)

        // A blob cut short: the read past its end names the device and its path.
        let short = made.scratch + "/blob.short"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: made.blob))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: short))
        let truncated = try EROFSFilesystem(path: made.image, devicePaths: [short])
        let beyond = #expect(throws: EROFSError.self) { try truncated.manifest(sha256: true) }
        #expect(beyond?.kind == .device)
        #expect(beyond?.message.contains("beyond the end of extra device 1") == true, "\(String(describing: beyond))")

        // More devices than slots: refused when opening, as the kernel refuses the mount.
        let surplus = #expect(throws: EROFSError.self) {
            try EROFSFilesystem(path: made.image, devicePaths: [made.blob, made.blob])
        }
        #expect(surplus?.kind == .device)

        // The tool says the same and exits non-zero.
        let tool = try runProgram(ToolTests.erofs, ["verify", made.image])
        #expect(tool.status != 0)
        #expect(tool.standardError.contains("which is missing"), "\(tool.standardError)")
        let listed = try runProgram(
            ToolTests.erofs, ["ls", "--recursive", "--json", "--sha256", "--device", made.blob, made.image])
        #expect(listed.status == 0, "\(listed.standardError)")
        let expected = try EROFSFilesystem(path: made.image, devicePaths: [made.blob]).manifest(sha256: true)
            .manifestText
        #expect(listed.standardOutput == expected)
        let inspected = try runProgram(ToolTests.erofs, ["inspect", made.image])
        #expect(
            inspected.standardOutput.contains("device 1: tag \"\" blocks 0 mapped_blkaddr 0 (not given)"),
            "\(inspected.standardOutput)")
        let inspectedJSON = try runProgram(ToolTests.erofs, ["inspect", "--json", made.image, "--device", made.blob])
        #expect(
            inspectedJSON.standardOutput.contains(
                "\"devices\": [{\"tag\": \"\", \"blocks\": 0, \"mapped_blkaddr\": 0}]"),
            "\(inspectedJSON.standardOutput)")
        #expect(inspectedJSON.standardOutput.contains("\"extra_devices\": 1"))
    }

    /// `erofs extract --device` (with every opt-in) and `erofs cat --device` reproduce what the reader (checked
    /// against the kernel above) sees; directory sizes are the host's and are left out.
    @Test func toolsReadThroughTheBlob() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try MultiDeviceImage(chunkSize: 65536)
        defer { made.remove() }
        let extracted = try runProgram(
            ToolTests.erofs,
            ["extract"] + ToolTests.faithfulExtract + ["--device", made.blob, made.image, made.scratch + "/out"])
        #expect(extracted.status == 0, "\(extracted.standardError)")
        let filesystem = try EROFSFilesystem(path: made.image, devicePaths: [made.blob])
        var walked = try DirectoryWalker.manifest(ofTreeAt: made.scratch + "/out")
        var expected = try filesystem.manifest(sha256: true)
        for index in walked.indices where walked[index].kind == .dir { walked[index].size = 0 }
        for index in expected.indices where expected[index].kind == .dir { expected[index].size = 0 }
        #expect(
            manifestDifference(actual: walked.manifestText, expected: expected.manifestText) == nil,
            "\(manifestDifference(actual: walked.manifestText, expected: expected.manifestText) ?? "")")
        let catted = try runProgram(ToolTests.erofs, ["cat", made.image, "/sizes/text-300001", "--device", made.blob])
        #expect(catted.status == 0, "\(catted.standardError)")
        let inode = try filesystem.lookup(path: "/sizes/text-300001")
        #expect(Array(catted.standardOutput.utf8) == (try filesystem.read(inode, at: 0, count: Int(inode.size))))
        let without = try runProgram(ToolTests.erofs, ["extract", made.image, made.scratch + "/out2"])
        #expect(without.status == 1)
        #expect(without.standardError.contains("which is missing"), "\(without.standardError)")
    }

    /// The unified address mode: with the slot's unified address set (mkfs.erofs 1.5 leaves it
    /// 0, so the test writes it) and the blob appended to the image, the kernel reads device-id
    /// chunks from the image itself when no device is given (its "flat" mode). Device-0
    /// addresses inside a slot's range (what a flattened image's pclusters would use) are not
    /// made by mkfs 1.5 and are covered only by the mapping code, not by this test.
    @Test func flatImageWithUnifiedAddresses() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let made = try MultiDeviceImage(chunkSize: 4096)
        defer { made.remove() }
        var image = [UInt8](try Data(contentsOf: URL(fileURLWithPath: made.image)))
        let blob = [UInt8](try Data(contentsOf: URL(fileURLWithPath: made.blob)))
        let superblock = try Superblock(decoding: image[Superblock.offset...])
        let blockSize = superblock.blockSize
        try #require(image.count == Int(superblock.blocks) * blockSize && blob.count % blockSize == 0)
        let slotStart = Int(superblock.deviceTableSlotOffset) * DeviceSlot.size
        func putLE32(_ value: UInt32, at offset: Int) {
            for index in 0..<4 { image[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        putLE32(UInt32(blob.count / blockSize), at: slotStart + 64)  // blocks
        putLE32(UInt32(superblock.blocks), at: slotStart + 68)  // unified address: right after the image
        let checksum = try superblock.computedChecksum(firstBlockFromSuperblock: Array(image[Superblock.offset...]))
        putLE32(checksum, at: Superblock.offset + 4)
        let patched = made.scratch + "/patched.erofs"
        let flat = made.scratch + "/flat.erofs"
        try Data(image).write(to: URL(fileURLWithPath: patched))
        try Data(image + blob).write(to: URL(fileURLWithPath: flat))

        let slot = try #require(try EROFSFilesystem(path: patched).deviceTable.slots.first)
        #expect(slot.blocks == UInt64(blob.count / blockSize) && slot.mappedBlockAddress == superblock.blocks)
        let kernel = try Self.kernelManifest(source: flat, data: "", at: made.scratch + "/mnt")
        let fromFlat = try EROFSFilesystem(path: flat).manifest(sha256: true).manifestText
        let fromBlob = try EROFSFilesystem(path: patched, devicePaths: [made.blob]).manifest(sha256: true).manifestText
        #expect(
            manifestDifference(actual: fromFlat, expected: kernel) == nil,
            "\(manifestDifference(actual: fromFlat, expected: kernel) ?? "")")
        #expect(fromBlob == fromFlat)
        // Now that the slot records the blob's size, a short blob is refused when opening.
        let short = made.scratch + "/blob.short"
        try Data(blob.prefix(blob.count - blockSize)).write(to: URL(fileURLWithPath: short))
        let refused = #expect(throws: EROFSError.self) { try EROFSFilesystem(path: patched, devicePaths: [short]) }
        #expect(refused?.kind == .device)
        #expect(refused?.message.contains("its slot says") == true, "\(String(describing: refused))")
        // The patched image alone (blob neither given nor appended) names the missing device.
        let alone = #expect(throws: EROFSError.self) { try EROFSFilesystem(path: patched).manifest(sha256: true) }
        #expect(alone?.kind == .device)
    }
}

extension ExtraDeviceTests {
    /// Data of device 0 inside a slot's unified range is read from that device (the kernel's
    /// `erofs_map_dev` for m_deviceid 0), compressed pclusters included. mkfs.erofs 1.5 does not
    /// make such images (with --chunksize it compresses nothing), so the test builds one from an
    /// lz4 image P of N blocks: a device table is appended as block N (slot: unified address 1,
    /// N - 1 blocks), the device is P's blocks 1..N-1, and every data extent dump.erofs reports
    /// is zeroed in the primary. The kernel, given the device, reads the tree intact: the oracle.
    @Test func compressedDataInTheUnifiedRange() throws {
        try #require(MkfsImageTests.canMount, "needs root and mkfs.erofs")
        let scratch = try temporaryDirectory("unified")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try MkfsImageTests.makeTree(at: scratch + "/tree")
        let original = scratch + "/original.erofs"
        let made = try runProgram(MkfsImageTests.mkfs, ["-zlz4", "-T0", original, scratch + "/tree"])
        try #require(made.status == 0, "mkfs.erofs: \(made.standardError)")
        let expected = try EROFSFilesystem(path: original).manifest(sha256: true)

        var image = [UInt8](try Data(contentsOf: URL(fileURLWithPath: original)))
        let superblock = try Superblock(decoding: image[Superblock.offset...])
        let blockSize = superblock.blockSize
        let blocks = Int(superblock.blocks)
        try #require(image.count == blocks * blockSize && blocks * blockSize / DeviceSlot.size <= Int(UInt16.max))
        let device = Array(image[blockSize...])

        // Zero the block-aligned data extents of every regular file (inline tails stay).
        var zeroed = 0
        for entry in expected where entry.kind == .file && entry.size > 0 {
            let dump = try runProgram("/usr/bin/dump.erofs", ["-e", "--path=\(entry.path)", original])
            try #require(dump.status == 0, "dump.erofs: \(dump.standardError)")
            for line in dump.standardOutput.split(separator: "\n") {
                let halves = line.split(separator: ":")
                guard halves.count == 3 else { continue }
                let physical = halves[2].split(separator: "|").first.map {
                    $0.split(separator: ".").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
                }
                guard let range = physical, range.count == 2, range[0] % blockSize == 0, range[1] % blockSize == 0,
                    range[0] >= blockSize, range[1] <= image.count, range[0] < range[1]
                else { continue }
                image.replaceSubrange(range[0]..<range[1], with: repeatElement(0, count: range[1] - range[0]))
                zeroed += range[1] - range[0]
            }
        }
        #expect(zeroed > 500_000, "zeroed \(zeroed) bytes of data")

        // The device table in an appended block; the feature bit (shared with COMPR_HEAD2).
        func put(_ value: UInt64, at offset: Int, width: Int) {
            for index in 0..<width { image[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        var slot = [UInt8](repeating: 0, count: blockSize)
        slot.replaceSubrange(0..<7, with: "unified".utf8)
        image += slot
        put(UInt64(blocks - 1), at: blocks * blockSize + 64, width: 4)
        put(1, at: blocks * blockSize + 68, width: 4)
        put(UInt64(superblock.featureIncompat.union(.deviceTable).rawValue), at: Superblock.offset + 80, width: 4)
        put(1, at: Superblock.offset + 86, width: 2)
        put(UInt64(blocks * blockSize / DeviceSlot.size), at: Superblock.offset + 88, width: 2)
        let patchedBlock = try Superblock(decoding: image[Superblock.offset...])
        put(
            UInt64(try patchedBlock.computedChecksum(firstBlockFromSuperblock: Array(image[Superblock.offset...]))),
            at: Superblock.offset + 4, width: 4)
        let primary = scratch + "/primary.erofs"
        let devicePath = scratch + "/device"
        try Data(image).write(to: URL(fileURLWithPath: primary))
        try Data(device).write(to: URL(fileURLWithPath: devicePath))

        let filesystem = try EROFSFilesystem(path: primary, devicePaths: [devicePath])
        #expect(
            filesystem.deviceTable.slots == [
                DeviceSlot(tag: slot.prefix(64).map { $0 }, blocks: UInt64(blocks - 1), mappedBlockAddress: 1)
            ])
        let ours = try filesystem.manifest(sha256: true).manifestText
        let kernel = try Self.kernelManifest(source: primary, data: "device=\(devicePath)", at: scratch + "/mnt")
        #expect(
            manifestDifference(actual: ours, expected: kernel) == nil,
            "\(manifestDifference(actual: ours, expected: kernel) ?? "")")
        #expect(ours == expected.manifestText)
        // Without the device the zeroed primary is read: the data is wrong or fails to decode.
        let alone = try? EROFSFilesystem(path: primary).manifest(sha256: true).manifestText
        #expect(alone != expected.manifestText)
    }
}

struct ExtraDeviceTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
