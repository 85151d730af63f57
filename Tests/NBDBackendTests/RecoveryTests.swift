@testable import NBDBackend
import Foundation
import Glibc
import Logging
import SystemCalls
import Testing

@Suite struct DaemonSettingsTests {
    @Test(arguments: [NBDDaemon.Mode.connect, .reattach(3), .standby(12), .standby(nil)])
    func argumentsRoundTrip(mode: NBDDaemon.Mode) {
        let settings = NBDDaemon.Settings(
            source: "/images/a b.erofs", identifier: "erofs-mount-00ff", deadConnectionTimeout: 60,
            forceIoctl: false, mode: mode, requeueMilliseconds: 250, pollMicroseconds: 75)
        #expect(NBDDaemon.Settings(arguments: settings.arguments) == settings)
        #expect(NBDSupervisor.arguments(for: settings).first == NBDSupervisor.flag)
    }

    /// A supervisor of the build before the poll setting passes 7 arguments to the workers of a
    /// hot upgrade: they take the default.
    @Test func sevenArgumentsOfAnOlderSupervisorStillWork() throws {
        let settings = try #require(
            NBDDaemon.Settings(arguments: ["--serve-nbd-device", "/a", "id", "60", "netlink", "standby:3", "250"]))
        #expect(settings.mode == .standby(3) && settings.pollMicroseconds == NBDDaemon.Settings.defaultPollMicroseconds)
    }

    @Test(arguments: [
        ["--serve-nbd-device", "/a", "id", "60", "netlink", "attach:3", "250"],
        ["--serve-nbd-device", "/a", "id", "60", "netlink", "reattach:x", "250"],
        ["--serve-nbd-device", "/a", "id", "sixty", "netlink", "connect", "250"],
        ["--serve-nbd-device", "/a", "id", "60", "carrier-pigeon", "connect", "250"],
        ["--serve-nbd-device", "/a", "id", "60", "netlink", "connect"],
        ["--serve-nbd-device", "/a", "id", "60", "netlink", "connect", "250", "soon"],
        ["--serve-nbd-device", "/a", "id", "60", "netlink", "connect", "250", "200", "extra"],
    ])
    func malformedArgumentsAreRefused(arguments: [String]) {
        #expect(NBDDaemon.Settings(arguments: arguments) == nil)
    }
}

@Suite struct RecoveryRefusalTests {
    func store() -> StateStore {
        StateStore(directory: NSTemporaryDirectory() + "recovery-test-\(UUID().uuidString)")
    }

    func message(_ body: () throws -> Void) -> String? {
        do { try body() } catch { return "\(error)" }
        return nil
    }

    @Test func targetsThatAreNoNBDDevice() {
        let recovery = NBDRecovery(logger: Logger(label: "test"), store: store())
        // Found by device number: the root filesystem is no EROFS mount of an nbd device.
        #expect(
            message { _ = try recovery.reattach("/") }?.contains("/ is not an EROFS mount of an nbd device (it is ")
                == true)
        #expect(
            message { _ = try recovery.reattach(NSTemporaryDirectory()) }?.contains(
                "is neither /dev/nbdN nor mounted from one") == true)
        #expect(message { _ = try recovery.reattach("/dev/null") }?.contains("/dev/null is neither /dev/nbdN") == true)
        #expect(
            message { _ = try recovery.upgrade("/nonexistent/dir") }
                == "cannot use /nonexistent/dir: No such file or directory")
    }

    @Test func deviceWithoutState() {
        let states = store()
        let recovery = NBDRecovery(logger: Logger(label: "test"), store: states)
        #expect(
            message { _ = try recovery.reattach(index: 77, target: "/dev/nbd77") }
                == "/dev/nbd77 is not managed by mount.erofs (no state in \(states.directory))")
    }

    /// This host has no nbd driver (so the device is given by index, past the lookup of its
    /// number): a state for a device the kernel does not show is stale, and is left as it is.
    @Test func staleStateChangesNothing() throws {
        let states = store()
        defer { try? FileManager.default.removeItem(atPath: states.directory) }
        var state = StateStoreTests.sample(index: 78)
        state.supervised = true
        try states.save(state)
        let before = try Data(contentsOf: URL(fileURLWithPath: states.path(forDevice: 78)))
        let recovery = NBDRecovery(logger: Logger(label: "test"), store: states)
        #expect(
            message { _ = try recovery.reattach(index: 78, target: "/dev/nbd78") }?.contains(
                "/dev/nbd78 is not connected: the state") == true)
        #expect(message { _ = try recovery.upgrade(index: 78, target: "/dev/nbd78") }?.contains("is stale") == true)
        #expect(try Data(contentsOf: URL(fileURLWithPath: states.path(forDevice: 78))) == before)
    }

    /// An ioctl device is refused for what it is, before the kernel is asked about it: once its
    /// daemon died the kernel may still show the dead server's pid (seen on 6.12).
    @Test func ioctlDeviceIsRefusedFirst() throws {
        let states = store()
        defer { try? FileManager.default.removeItem(atPath: states.directory) }
        var state = StateStoreTests.sample(index: 81)
        state.attachMethod = .ioctl
        try states.save(state)
        let recovery = NBDRecovery(logger: Logger(label: "test"), store: states)
        #expect(
            message { _ = try recovery.reattach(index: 81, target: "/dev/nbd81") }?.hasSuffix("cannot be reattached")
                == true)
        #expect(
            message { _ = try recovery.upgrade(index: 81, target: "/dev/nbd81") }?.hasSuffix(
                "cannot be replaced while it is mounted") == true)
    }

    @Test func unreadableStateIsReported() throws {
        let states = store()
        defer { try? FileManager.default.removeItem(atPath: states.directory) }
        try states.ensureDirectory()
        try Data("{ not json".utf8).write(to: URL(fileURLWithPath: states.path(forDevice: 79)))
        let recovery = NBDRecovery(logger: Logger(label: "test"), store: states)
        #expect(
            message { _ = try recovery.reattach(index: 79, target: "/dev/nbd79") }?.contains(
                "/dev/nbd79: cannot use its state") == true)
    }

    @Test func olderStateFilesStillLoad() throws {
        let states = store()
        defer { try? FileManager.default.removeItem(atPath: states.directory) }
        try states.save(StateStoreTests.sample(index: 80))
        // A state written before recovery existed has none of its fields.
        let path = states.path(forDevice: 80)
        var object =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        object.removeValue(forKey: "supervised")
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
        let loaded = try states.load(device: 80)
        #expect(loaded?.supervised == nil && loaded?.servingPID == nil && loaded?.index == 80)
    }
}
