import Foundation
import Testing
import TestSupport

/// Every corpus image, mounted for real on this kernel by our mount.erofs, once file-backed and
/// once through a forced loop device, must look exactly like its manifest.
@Suite(.requiresRoot, .serialized) struct CorpusMountTests {
    let harness = MountHarness()

    enum Mode: String, CaseIterable { case fileBacked, loop }

    @Test(arguments: Corpus.imagesOrEmpty, Mode.allCases)
    func mountWalkUnmount(image: Corpus.Image, mode: Mode) throws {
        let workspace = try MountHarness.Workspace("corpus", copying: image.path, as: image.name + ".erofs")
        defer { workspace.remove() }
        let (copy, mountPoint) = (workspace.image, workspace.mountPoint)

        let arguments = mode == .loop ? ["-o", "loop", copy, mountPoint] : [copy, mountPoint]
        let mounted = try harness.run(arguments)
        try #require(mounted.status == 0, "mount.erofs failed: \(mounted.standardError)")
        let entries = try MountHarness.mounts(at: mountPoint)
        try #require(entries.count == 1)
        #expect(entries[0].fsType == "erofs")
        switch mode {
        case .fileBacked: #expect(entries[0].source == copy, "not a file-backed mount: \(entries[0].source)")
        case .loop:
            #expect(entries[0].source.hasPrefix("/dev/loop"))
            #expect(MountHarness.loopDevices(backing: copy) == [entries[0].source])
        }

        try MountHarness.expectTreeMatches(mountPoint, manifest: try image.expectedManifest())

        let unmounted = try harness.run(["-u", mountPoint])
        #expect(unmounted.status == 0, "mount.erofs -u failed: \(unmounted.standardError)")
        try MountHarness.expectNothingLeft(mountPoint: mountPoint, image: copy)
    }

    @Test func corpusIsPresent() throws {
        #expect(Corpus.imagesOrEmpty.count >= 12, "the corpus (../shared/corpus or $EROFS_CORPUS) is missing")
    }
}
