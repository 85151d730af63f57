import Foundation
import Testing
import TestSupport

/// util-linux mount(8) runs /sbin/mount.<type> when it exists. In a private mount namespace,
/// a copy of /usr/sbin with our binary as mount.erofs is bound over the real one, so the test
/// installs nothing on the machine, and `mount -t erofs` must then go through our helper.
@Suite(.requiresRoot, .serialized) struct MountHelperTests {
    let harness = MountHarness()

    /// `type` erofs.fuse: mount(8) finds no mount.erofs.fuse and runs mount.erofs -t erofs.fuse.
    @Test(arguments: [
        ("erofs", [String]()), ("erofs", ["-o", "ro,nodev"]), ("erofs", ["-o", "loop"]), ("erofs.fuse", []),
    ])
    func mountEightPicksUpTheHelper(type: String, options: [String]) throws {
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "lz4" })
        let workspace = try MountHarness.Workspace("helper", copying: image.path)
        defer { workspace.remove() }
        let (scratch, copy, mountPoint) = (workspace.directory, workspace.image, workspace.mountPoint)
        let sbin = URL(fileURLWithPath: "/sbin").resolvingSymlinksInPath().path

        let script = """
            set -e
            d=$(mktemp -d)
            cp -a \(sbin)/. "$d"/
            cp '\(harness.mountErofs)' "$d"/mount.erofs
            mount --bind "$d" \(sbin)
            mount -v -t \(type) \(options.joined(separator: " ")) '\(copy)' '\(mountPoint)'
            '\(harness.erofs)' walk '\(mountPoint)' > '\(scratch)/walk.jsonl'
            grep ' \(mountPoint) ' /proc/self/mountinfo > '\(scratch)/mountinfo'
            '\(sbin)/mount.erofs' -u '\(mountPoint)'
            """
        let result = try runProgram(
            "/usr/bin/unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", script])
        #expect(result.status == 0, "stderr: \(result.standardError)")
        // Our helper ran: it reports the mount on stderr because mount(8) passed -v through.
        #expect(result.standardError.contains("mount.erofs: mounted "), "stderr: \(result.standardError)")
        let mountInfo = try String(contentsOfFile: scratch + "/mountinfo", encoding: .utf8)
        #expect(mountInfo.contains(type == "erofs" ? " - erofs " : " - fuse.erofs "))
        if options.contains("ro,nodev") { #expect(mountInfo.contains("nodev")) }
        let walked = try String(contentsOfFile: scratch + "/walk.jsonl", encoding: .utf8)
        #expect(manifestDifference(actual: walked, expected: try image.expectedManifest()) == nil)
        try MountHarness.expectNothingLeft(mountPoint: mountPoint, image: copy)
        #expect(FUSEMountTests.daemons(serving: copy).isEmpty)
    }
}
