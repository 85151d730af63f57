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
    static func expectNothingLeft(mountPoint: String, image: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
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
    static func expectTreeMatches(_ mountPoint: String, manifest: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let walked = try DirectoryWalker.manifest(ofTreeAt: mountPoint).manifestText
        let difference = manifestDifference(actual: walked, expected: manifest)
        #expect(difference == nil, "\(difference ?? "")", sourceLocation: sourceLocation)
    }
}
