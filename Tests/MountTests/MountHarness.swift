import Foundation
import KernelAttach
import Manifest
import Testing
import TestSupport

/// Runs the real `mount.erofs` and checks what it leaves in the kernel's mount table and
/// loop devices.
struct MountHarness {
    let binaries = builtProductsDirectory()
    var mountErofs: String { binaries + "/mount.erofs" }
    var erofs: String { binaries + "/erofs" }

    /// A fresh directory under /tmp (disk-backed here: the kernel refuses file-backed mounts of
    /// images on tmpfs), removed by `cleanUp`.
    static func scratchDirectory(_ label: String) throws -> String {
        let path = NSTemporaryDirectory() + "erofs-mount-test-\(label)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A scratch directory holding a private copy of an image and an empty mountpoint `mnt`.
    struct Workspace {
        let directory: String
        let image: String
        var mountPoint: String { directory + "/mnt" }

        /// `source`: the image file to copy (a private copy, so that the leftover checks see no
        /// one else's use of the corpus image).
        init(_ label: String, copying source: String, as name: String = "image.erofs") throws {
            directory = try MountHarness.scratchDirectory(label)
            image = directory + "/" + name
            try FileManager.default.copyItem(atPath: source, toPath: image)
            try FileManager.default.createDirectory(atPath: directory + "/mnt", withIntermediateDirectories: false)
        }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    func run(_ arguments: [String]) throws -> ProcessResult {
        try runProgram(mountErofs, arguments)
    }

    static func mounts(at mountPoint: String) throws -> [MountInfoEntry] {
        let canonical = URL(fileURLWithPath: mountPoint).resolvingSymlinksInPath().path
        return try MountTable.read().filter { $0.mountPoint == canonical }
    }

    static func loopDevices(backing file: String) -> [String] {
        LoopDevice.attached().filter { $0.backingFile == file }.map(\.device.path)
    }

    /// Asserts the mount left nothing: no mount at `mountPoint`, no loop device on `image`.
    static func expectNothingLeft(mountPoint: String, image: String, sourceLocation: SourceLocation = #_sourceLocation)
        throws
    {
        #expect(try mounts(at: mountPoint).isEmpty, "a mount was left at \(mountPoint)", sourceLocation: sourceLocation)
        // Autoclear may complete a moment after the unmount returns.
        var left = loopDevices(backing: image)
        for _ in 0..<100 where !left.isEmpty {
            usleep(10_000)
            left = loopDevices(backing: image)
        }
        #expect(left.isEmpty, "loop devices left on \(image): \(left)", sourceLocation: sourceLocation)
    }

    /// Walks a mounted tree and compares it with the manifest, byte for byte.
    static func expectTreeMatches(
        _ mountPoint: String, manifest: String, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let walked = try DirectoryWalker.manifest(ofTreeAt: mountPoint).manifestText
        let difference = manifestDifference(actual: walked, expected: manifest)
        #expect(difference == nil, "\(difference ?? "")", sourceLocation: sourceLocation)
    }
}
