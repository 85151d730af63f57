import Foundation
import Testing
import TestSupport

/// The crafted-image writer (TestSupport/CraftedImage) makes images the kernel mounts: a
/// writer-made image, mounted by the kernel's own EROFS (mount(8), file-backed), shows exactly
/// the tree our reader lists.
@Suite(.serialized) struct CraftedImageMountTests {
    let harness = MountHarness()

    @Test func kernelMountShowsWhatTheReaderLists() throws {
        let directory = try MountHarness.scratchDirectory("crafted")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = directory + "/crafted.erofs", mountPoint = directory + "/mnt"
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
        #expect(manifestDifference(actual: listed.standardOutput, expected: walked.standardOutput) == nil,
                "\(manifestDifference(actual: listed.standardOutput, expected: walked.standardOutput) ?? "")")
        // What the kernel shows, spot-checked against the description.
        #expect(walked.standardOutput.contains("\"path\": \"/sparse\""))
        #expect(walked.standardOutput.contains("capability"))
    }
}
