#if canImport(Glibc)
import Glibc
#endif
import NBDKernel
import Netlink
import SystemCalls
import SystemPackage
import Testing
import TestSupport

/// Real nbd devices: these run where the nbd module is loaded and we are root (the test VM:
/// vmtests). Elsewhere they are skipped, visibly.
@Suite(.requiresRoot, .requires(.kernelModule("nbd")), .serialized)
struct KernelNBDTests {
    /// 1 MiB whose every 4-byte word holds its own offset: a misplaced block cannot match.
    static let image: [UInt8] = (0..<(1 << 18)).flatMap { (word: Int) -> [UInt8] in
        let offset = UInt32(word * 4)
        return [
            UInt8(truncatingIfNeeded: offset), UInt8(truncatingIfNeeded: offset >> 8),
            UInt8(truncatingIfNeeded: offset >> 16), UInt8(truncatingIfNeeded: offset >> 24),
        ]
    }

    /// Reads `range` of the device after dropping its cached pages, so reads reach the server.
    static func read(_ device: NBDDevice, _ range: Range<Int>) throws -> [UInt8] {
        let fd = try retryingOnInterrupt("open", path: device.path) { open(device.path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: range.count, alignment: 4096)
        defer { buffer.deallocate() }
        var filled = 0
        while filled < range.count {
            let got = try retryingOnInterrupt("pread", path: device.path) {
                pread(fd, buffer.baseAddress! + filled, range.count - filled, off_t(range.lowerBound + filled))
            }
            if got == 0 { break }
            filled += got
        }
        return Array(buffer[..<filled])
    }

    static func waitUntil(_ what: String, timeout: Duration = .seconds(10), _ condition: () -> Bool) throws {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while !condition() {
            guard clock.now < deadline else {
                throw SystemError("wait", detail: "\(what) did not happen within \(timeout)")
            }
            usleep(10_000)
        }
    }

    @Test func netlinkConnectReadReattachDisconnect() throws {
        let nbd = try NBDNetlink.open()
        let monitor = try NBDLinkDeadMonitor(family: nbd.family)
        let (first, kernelEnd) = try TinyNBDResponder.pair(image: Self.image)
        let index = try nbd.connect(
            NBDConnectRequest(
                sizeBytes: UInt64(Self.image.count), blockSizeBytes: 4096, timeoutSeconds: 30,
                serverFlags: [.hasFlags, .readOnly], deadConnectionTimeoutSeconds: 60,
                backendIdentifier: "netlink-test", sockets: [kernelEnd]))
        close(kernelEnd)  // the kernel holds its own reference
        let device = NBDDevice(index: index)
        try device.waitUntilInService(timeout: .seconds(10))
        #expect(device.sizeSectors == UInt64(Self.image.count / 512))
        #expect(device.hasBackendIdentifierSupport)
        #expect(device.backendIdentifier == "netlink-test")
        #expect(try nbd.status(index: index) == [NBDDeviceStatus(index: index, connected: true)])
        #expect(try Self.read(device, 0..<(256 << 10)) == Array(Self.image[0..<(256 << 10)]))
        #expect(try nbd.status().contains(NBDDeviceStatus(index: index, connected: true)))

        // The device is taken: a second CONNECT to it is refused.
        let (spare, spareEnd) = try TinyNBDResponder.pair(image: Self.image)
        let busy = #expect(throws: SystemError.self) {
            try nbd.connect(NBDConnectRequest(index: index, sizeBytes: 4096, sockets: [spareEnd]))
        }
        #expect(busy?.description == "nbd CONNECT /dev/nbd\(index): Device or resource busy")
        // RECONFIGURE while no socket is dead succeeds yet drops the new socket: once our copy
        // is closed, the spare server sees end-of-file without having served anything.
        try nbd.reconfigure(index: index, sockets: [spareEnd], identifier: "netlink-test")
        close(spareEnd)
        spare.join()
        #expect(spare.servedReads == 0)

        // The server dies: LINK_DEAD arrives, STATUS still says connected.
        first.kill()
        first.join()
        #expect(try monitor.nextDeadLink(timeoutMilliseconds: 10_000) == index)
        #expect(try nbd.status(index: index) == [NBDDeviceStatus(index: index, connected: true)])

        // A wrong identifier is refused; the right one reattaches a new server.
        let (second, secondEnd) = try TinyNBDResponder.pair(image: Self.image)
        let refused = #expect(throws: SystemError.self) {
            try nbd.reconfigure(index: index, sockets: [secondEnd], identifier: "another-image")
        }
        #expect(refused?.errno == .invalidArgument)
        try nbd.reconfigure(index: index, sockets: [secondEnd], identifier: "netlink-test")
        close(secondEnd)
        let tail = (768 << 10)..<Self.image.count
        #expect(try Self.read(device, tail) == Array(Self.image[tail]))
        #expect(second.servedReads > 0)

        try nbd.disconnect(index: index)
        second.join()
        #expect(second.sawDisconnect)
        try Self.waitUntil("nbd\(index) released") { device.serverPID == nil }
    }

    /// The recipe for DISCONNECT_ON_CLOSE: set it by RECONFIGURE once a user (the mount) holds
    /// the device; the last close then disconnects it, and the server gets NBD_CMD_DISC.
    @Test func disconnectOnCloseSetByReconfigure() throws {
        let nbd = try NBDNetlink.open()
        let (responder, kernelEnd) = try TinyNBDResponder.pair(image: Self.image)
        let index = try nbd.connect(
            NBDConnectRequest(
                sizeBytes: UInt64(Self.image.count), serverFlags: [.hasFlags, .readOnly], sockets: [kernelEnd]))
        close(kernelEnd)
        let device = NBDDevice(index: index)
        try device.waitUntilInService(timeout: .seconds(10))

        let holder = try retryingOnInterrupt("open", path: device.path) { open(device.path, O_RDONLY | O_CLOEXEC) }
        try nbd.reconfigure(index: index, clientFlags: .disconnectOnClose)
        usleep(100_000)
        #expect(device.isInService)  // still held
        close(holder)
        responder.join()
        #expect(responder.sawDisconnect)
        try Self.waitUntil("nbd\(index) released") { device.serverPID == nil }
    }

    @Test(arguments: [true, false])
    func ioctlAttachReadDisconnect(serverClosesOnDisconnect: Bool) throws {
        let (responder, kernelEnd) = try TinyNBDResponder.pair(
            image: Self.image, closesOnDisconnect: serverClosesOnDisconnect)
        let attachment = try NBDIoctlAttachment.attachToFreeDevice(
            socket: kernelEnd,
            configuration: .init(
                sizeBytes: UInt64(Self.image.count), blockSizeBytes: 4096, timeoutSeconds: 30,
                serverFlags: [.hasFlags, .readOnly]))
        close(kernelEnd)
        let device = attachment.device
        try device.waitUntilInService(timeout: .seconds(10))
        #expect(attachment.finished == nil)
        #expect(try Self.read(device, 0..<Self.image.count) == Self.image)
        #expect(responder.servedReads > 0)
        // A second scan passes over the device we hold.
        #expect(device.reasonInUse != nil)

        // A server that keeps its end open after NBD_CMD_DISC is cut off after the grace.
        let outcome = try attachment.disconnect(grace: .milliseconds(500))
        if case .failure(let error) = outcome { Issue.record("NBD_DO_IT failed: \(error)") }
        responder.join()
        #expect(responder.sawDisconnect)
        try Self.waitUntil("nbd\(device.index) released") { device.serverPID == nil }
    }
}
