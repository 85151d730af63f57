#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import Manifest
import NBDKernel
import SystemCalls
import Testing
import SystemPackage
import TestSupport

/// Corpus images served to a real nbd device, mounted by the kernel's EROFS driver from it,
/// and walked: the tree must equal the image's manifest. Attached once over netlink, once over
/// ioctl. In the test VM only (like KernelNBDTests).
@Suite(.requiresRoot, .requires(.kernelModule("nbd")), .serialized)
struct KernelNBDMountTests {
    enum Attach: String, CaseIterable { case netlink, ioctl }

    /// Images every kernel from 6.1 reads (corpus README).
    static let imageNames = ["plain", "lz4"]

    @Test(arguments: Attach.allCases, imageNames)
    func corpusImageMountsFromNBD(attach: Attach, imageName: String) throws {
        let corpus = try #require(Corpus.locate(), "corpus not found (EROFS_CORPUS or ../shared/corpus)")
        let image = try #require(try corpus.images().first { $0.name == imageName })
        let descriptor = try FileDescriptor.open(path: image.path, .readOnly)
        let size = try FileStatus.fstat(descriptor).size
        var bytes = try descriptor.read(exactly: Int(size), at: 0, path: image.path)
        try descriptor.close()
        // The device is whole 512-byte blocks; the tail past the image reads as zeros.
        bytes += [UInt8](repeating: 0, count: (512 - bytes.count % 512) % 512)

        let (responder, kernelEnd) = try TinyNBDResponder.pair(image: bytes)
        let sizeBytes = UInt64(bytes.count)
        let detach: () throws -> Void
        let device: NBDDevice
        switch attach {
        case .netlink:
            let nbd = try NBDNetlink.open()
            let index = try nbd.connect(
                NBDConnectRequest(
                    sizeBytes: sizeBytes, blockSizeBytes: 512, serverFlags: [.hasFlags, .readOnly],
                    backendIdentifier: image.path, sockets: [kernelEnd]))
            device = NBDDevice(index: index)
            detach = { try nbd.disconnect(index: index) }
        case .ioctl:
            let attachment = try NBDIoctlAttachment.attachToFreeDevice(
                socket: kernelEnd,
                configuration: .init(sizeBytes: sizeBytes, blockSizeBytes: 512, serverFlags: [.hasFlags, .readOnly]))
            device = attachment.device
            detach = { if case .failure(let error) = try attachment.disconnect() { throw error } }
        }
        close(kernelEnd)
        try device.waitUntilInService(timeout: .seconds(10))

        var template = Array("/tmp/nbd-mount-XXXXXX".utf8CString)
        let mountPoint = String(cString: try #require(mkdtemp(&template)))
        defer { rmdir(mountPoint) }
        try Mount.mount(source: device.path, target: mountPoint, type: "erofs", flags: .readOnly, data: "")
        let walked: String
        do {
            walked = try DirectoryWalker.manifest(ofTreeAt: mountPoint).manifestText
        } catch {
            try? Mount.unmount(mountPoint)
            throw error
        }
        try Mount.unmount(mountPoint)
        let difference = manifestDifference(actual: walked, expected: try image.expectedManifest())
        #expect(difference == nil, "\(difference ?? "")")
        #expect(responder.servedReads > 0)

        try detach()
        responder.join()
        #expect(responder.sawDisconnect)
        try KernelNBDTests.waitUntil("\(device.path) released") { device.serverPID == nil }
    }
}
