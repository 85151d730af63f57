import Foundation
import Testing
import TestSupport

/// The crafted-image writer (TestSupport/CraftedImage) makes images the kernel mounts: a
/// writer-made image, mounted by the kernel's own EROFS (mount(8), file-backed), shows exactly
/// the tree our reader lists.
@Suite(.requiresRoot, .serialized) struct CraftedImageMountTests {
    let harness = MountHarness()

    @Test func kernelMountShowsWhatTheReaderLists() throws {
        let directory = try MountHarness.scratchDirectory("crafted")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = directory + "/crafted.erofs"
        let mountPoint = directory + "/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        try Data(CraftedImage.sample().bytes()).write(to: URL(fileURLWithPath: image))

        // -i: the kernel alone, no mount helper.
        let mounted = try runProgram("/usr/bin/mount", ["-i", "-t", "erofs", "-o", "ro", image, mountPoint])
        try #require(mounted.status == 0, "the kernel refused the crafted image: \(mounted.standardError)")
        defer { _ = try? runProgram("/usr/bin/umount", [mountPoint]) }

        let walked = try runProgram(harness.erofs, ["walk", mountPoint])
        #expect(walked.status == 0, "\(walked.standardError)")
        let listed = try runProgram(harness.erofs, ["ls", "--recursive", "--json", "--sha256", image])
        #expect(listed.status == 0, "\(listed.standardError)")
        #expect(walked.standardOutput.split(separator: "\n").count == 15, "\(walked.standardOutput)")
        #expect(
            manifestDifference(actual: listed.standardOutput, expected: walked.standardOutput) == nil,
            "\(manifestDifference(actual: listed.standardOutput, expected: walked.standardOutput) ?? "")")
        // What the kernel shows, spot-checked against the description.
        #expect(walked.standardOutput.contains("\"path\": \"/sparse\""))
        #expect(walked.standardOutput.contains("capability"))
    }

    /// The shapes the hostile-input tests use are valid for the kernel too: a 64-deep chain
    /// lists the same, and 1 TiB of null chunks reads as holes with the tail after them.
    @Test func kernelReadsTheChainAndTheTerabyteOfHoles() throws {
        let directory = try MountHarness.scratchDirectory("crafted-shapes")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mountPoint = directory + "/mnt"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        let chain = directory + "/chain.erofs"
        let sparse = directory + "/sparse.erofs"
        try Data(CraftedImage.deepChain(depth: 64).bytes()).write(to: URL(fileURLWithPath: chain))
        try Data(CraftedImage.sparseFile(holes: 1 << 40, tail: Array("tail\n".utf8)).bytes()).write(
            to: URL(fileURLWithPath: sparse))

        try #require(
            try runProgram("/usr/bin/mount", ["-i", "-t", "erofs", "-o", "ro", chain, mountPoint]).status == 0)
        let walked = try runProgram(harness.erofs, ["walk", mountPoint])
        _ = try runProgram("/usr/bin/umount", [mountPoint])
        let listed = try runProgram(harness.erofs, ["ls", "--recursive", "--json", "--sha256", chain])
        #expect(walked.standardOutput.split(separator: "\n").count == 66)
        #expect(manifestDifference(actual: listed.standardOutput, expected: walked.standardOutput) == nil)

        try #require(
            try runProgram("/usr/bin/mount", ["-i", "-t", "erofs", "-o", "ro", sparse, mountPoint]).status == 0)
        defer { _ = try? runProgram("/usr/bin/umount", [mountPoint]) }
        let descriptor = open(mountPoint + "/sparse", O_RDONLY)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        var status = stat()
        #expect(fstat(descriptor, &status) == 0 && status.st_size == (1 << 40) + 5)
        var tail = [UInt8](repeating: 0, count: 5)
        #expect(pread(descriptor, &tail, 5, off_t(1) << 40) == 5 && tail == Array("tail\n".utf8))
        #expect(lseek(descriptor, 0, 3) == off_t(1) << 40)  // 3: SEEK_DATA
    }
}
