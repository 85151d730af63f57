#if canImport(Glibc)
import Glibc
#endif
import KernelAttach
import NBDKernel
import SystemCalls
import SystemPackage
import Testing

/// Device queries against a sysfs-shaped tree in a temporary directory (the host has no nbd
/// module), so every state the scan must recognise can be laid out.
@Suite struct NBDDeviceTests {
    /// A fake /sys/block with nbd devices; removed at deinit.
    final class FakeSysfs {
        let root: String

        init() throws {
            var template = Array("/tmp/nbd-sysfs-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { throw SystemError.lastErrno("mkdtemp") }
            root = String(cString: made)
        }

        deinit {
            // Only what `add` made: files in nbdN and nbdN/holders, then the directories.
            for device in NBDDevice.all(sysfsBlock: root) {
                for name in ["pid", "backend", "size", "inflight", "queue/scheduler"] {
                    unlink("\(device.sysfsPath)/\(name)")
                }
                rmdir("\(device.sysfsPath)/queue")
                for holder in device.holders { rmdir("\(device.sysfsPath)/holders/\(holder)") }
                rmdir("\(device.sysfsPath)/holders")
                rmdir(device.sysfsPath)
            }
            rmdir(root)
        }

        func add(
            _ index: UInt32, size: String = "0", pid: String? = nil, backend: String? = nil,
            inflight: String = "       0        0", holders: [String] = []
        ) {
            let directory = "\(root)/nbd\(index)"
            mkdir(directory, 0o755)
            mkdir(directory + "/holders", 0o755)
            for holder in holders { mkdir("\(directory)/holders/\(holder)", 0o755) }
            write("\(directory)/size", size + "\n")
            write("\(directory)/inflight", inflight + "\n")
            if let pid { write("\(directory)/pid", pid + "\n") }
            if let backend { write("\(directory)/backend", backend + "\n") }
        }

        func write(_ path: String, _ text: String) {
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            precondition(fd >= 0, "cannot create \(path)")
            _ = Array(text.utf8).withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
    }

    @Test func readsAttributesAndListsDevicesInOrder() throws {
        let sysfs = try FakeSysfs()
        sysfs.add(10, size: "2048", pid: "4242", backend: "img-1")
        sysfs.add(2)
        let devices = NBDDevice.all(sysfsBlock: sysfs.root)
        #expect(devices.map(\.index) == [2, 10])
        let busy = devices[1]
        #expect(busy.path == "/dev/nbd10")
        #expect(busy.serverPID == 4242)
        #expect(busy.backendIdentifier == "img-1")
        #expect(busy.hasBackendIdentifierSupport)
        #expect(busy.sizeSectors == 2048)
        #expect(busy.isInService)
        let idle = devices[0]
        #expect(idle.serverPID == nil)
        #expect(idle.backendIdentifier == nil)
        #expect(!idle.hasBackendIdentifierSupport)
        #expect(idle.inflightRequests! == (0, 0))
        #expect(!idle.isInService)
        #expect(idle.reasonInUse == nil)
    }

    /// The scheduler in use is the bracketed one; setting it writes the name (the kernel then
    /// shows it in brackets); turning it off writes nothing where it is off already.
    @Test func schedulerIsReadFromItsBracketsAndSetByName() throws {
        let sysfs = try FakeSysfs()
        sysfs.add(0)
        let device = NBDDevice(index: 0, sysfsBlock: sysfs.root)
        #expect(device.queue.scheduler == nil)
        mkdir("\(device.sysfsPath)/queue", 0o755)
        sysfs.write("\(device.sysfsPath)/queue/scheduler", "none [mq-deadline] \n")
        #expect(device.queue.scheduler == "mq-deadline")
        try device.queue.turnOffScheduler()
        #expect(try readTextFile("\(device.sysfsPath)/queue/scheduler") == "none\n")
        sysfs.write("\(device.sysfsPath)/queue/scheduler", "[none] mq-deadline\n")
        try device.queue.turnOffScheduler()
        #expect(try readTextFile("\(device.sysfsPath)/queue/scheduler") == "[none] mq-deadline\n")
        #expect(throws: SystemError.self) { try NBDDevice(index: 7, sysfsBlock: sysfs.root).queue.setScheduler("none") }
    }

    /// 6.1's nbd starts at 128 KiB under a 32 MiB ceiling: raised to loop's 1280. A ceiling
    /// below that is the limit; a device already there is left alone.
    @Test(arguments: [("128", "32768", "1280\n"), ("128", "512", "512\n"), ("1280", "32768", "1280")])
    func maxRequestSizeIsRaisedToLoops(current: String, ceiling: String, after: String) throws {
        let sysfs = try FakeSysfs()
        sysfs.add(0)
        let queue = NBDDevice(index: 0, sysfsBlock: sysfs.root).queue
        #expect(try queue.raiseMaxRequestKiB() == nil)  // nothing to read: nothing done
        mkdir("\(queue.devicePath)/queue", 0o755)
        sysfs.write("\(queue.devicePath)/queue/max_sectors_kb", current)
        sysfs.write("\(queue.devicePath)/queue/max_hw_sectors_kb", ceiling)
        try queue.raiseMaxRequestKiB()
        #expect(try readTextFile("\(queue.devicePath)/queue/max_sectors_kb") == after)
    }

    @Test func eachSignOfUseIsRecognised() throws {
        let sysfs = try FakeSysfs()
        sysfs.add(0, pid: "17")
        sysfs.add(1, backend: "other")
        sysfs.add(2, size: "8")
        sysfs.add(3, inflight: "       1        0")
        sysfs.add(4, holders: ["dm-0"])
        sysfs.add(5, backend: "")  // an empty backend file: connected once without identifier
        let reasons = NBDDevice.all(sysfsBlock: sysfs.root).map(\.reasonInUse)
        #expect(
            reasons == [
                "served by pid 17", "bound to backend other", "has a size (8 sectors)", "has requests in flight",
                "held by dm-0", nil,
            ])
    }

    @Test func scanReportsWhyNoDeviceWasFree() throws {
        let sysfs = try FakeSysfs()
        sysfs.add(0, size: "8", pid: "17")
        sysfs.add(1, holders: ["md0"])
        let error = #expect(throws: SystemError.self) {
            try NBDIoctlAttachment.attachToFreeDevice(
                socket: 0, configuration: .init(sizeBytes: 4096, serverFlags: [.hasFlags, .readOnly]),
                sysfsBlock: sysfs.root)
        }
        #expect(error?.errno == Errno(rawValue: ENODEV))
        #expect(error?.detail == "nbd0 served by pid 17; nbd1 held by md0")
    }

    @Test func scanWithoutDevicesSaysSo() throws {
        let sysfs = try FakeSysfs()
        let error = #expect(throws: SystemError.self) {
            try NBDIoctlAttachment.attachToFreeDevice(
                socket: 0, configuration: .init(sizeBytes: 4096, serverFlags: []), sysfsBlock: sysfs.root)
        }
        #expect(error?.detail == "no nbd devices (is the nbd module loaded?)")
    }

    @Test func ioctlConfigurationIsCheckedBeforeAnyDeviceIsTouched() {
        for (configuration, why) in [
            (
                NBDIoctlAttachment.Configuration(sizeBytes: 4096, blockSizeBytes: 3000, serverFlags: []),
                "block size 3000 is not a power of two from 512 to 65536"
            ),
            (
                NBDIoctlAttachment.Configuration(sizeBytes: 4097, blockSizeBytes: 4096, serverFlags: []),
                "size 4097 is not a non-zero multiple of the block size 4096"
            ),
        ] {
            let error = #expect(throws: SystemError.self) {
                try NBDIoctlAttachment.attach(device: NBDDevice(index: 999), socket: 0, configuration: configuration)
            }
            #expect(error?.detail == why)
        }
    }

    @Test func waitingForServiceTimesOutWithWhatItSaw() throws {
        let sysfs = try FakeSysfs()
        sysfs.add(3, size: "0", pid: "99")
        let device = NBDDevice(index: 3, sysfsBlock: sysfs.root)
        let clock = ContinuousClock()
        let start = clock.now
        let error = #expect(throws: SystemError.self) { try device.waitUntilInService(timeout: .milliseconds(50)) }
        #expect(clock.now - start >= .milliseconds(50))
        #expect(error?.errno == .timedOut)
        #expect(error?.detail == "not in service after 0.05 seconds (pid 99, size 0 sectors)")

        sysfs.write("\(device.sysfsPath)/size", "16\n")
        try device.waitUntilInService(timeout: .milliseconds(50))
    }
}
