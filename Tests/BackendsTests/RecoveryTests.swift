@testable import Backends
import Foundation
import Glibc
import Logging
import SystemCalls
import Testing

@Suite struct WorkerControlTests {
    @Test func wordsWithoutDescriptors() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        try worker.send(.prepared)
        #expect(try supervisor.receive(timeout: 2) == .prepared)
        try supervisor.send(.reconnect)
        #expect(try worker.receive(timeout: 2) == .reconnect)
        try worker.send(.resumed(true))
        #expect(try supervisor.receive(timeout: 2) == .resumed(true))
        try worker.send(.resumed(false))
        #expect(try supervisor.receive(timeout: 2) == .resumed(false))
        for index: UInt32 in [0, 7, 0x0102_0304, .max] {
            try supervisor.send(.device(index))
            #expect(try worker.receive(timeout: 2) == .device(index))
        }
    }

    /// Each word that carries a socket arrives with it, and without one it is refused.
    @Test func socketWordsCarryTheirDescriptor() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        try worker.send(.serving(ends[1]))
        guard case .serving(let kept)? = try supervisor.receive(timeout: 2) else { Issue.record("no serving"); return }
        close(kept)
        try supervisor.send(.resume(ends[1]))
        guard case .resume(let live)? = try worker.receive(timeout: 2) else { Issue.record("no resume"); return }
        close(live)
        #expect(ControlMessage(code: UInt8(ascii: "J"), descriptor: -1) == nil)
        #expect(ControlMessage(code: UInt8(ascii: "K"), descriptor: -1) == nil)
        #expect(ControlMessage(code: UInt8(ascii: "Y"), descriptor: 7) == nil)
        #expect(ControlMessage(code: UInt8(ascii: "I"), payload: [1, 2], descriptor: -1) == nil, "a short index")
        #expect(
            ControlMessage(code: UInt8(ascii: "P"), payload: [1], descriptor: -1) == nil, "bytes after a one-byte word")
    }

    /// The socket handed over is the same open socket: bytes written into one copy come out of
    /// the other, as the kernel's requests do after a hot upgrade.
    @Test func handOffPassesTheLiveSocket() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]) }
        try worker.send(.handOff(ends[1]))
        close(ends[1])
        guard case .handOff(let received)? = try supervisor.receive(timeout: 2) else {
            Issue.record("no hand-off")
            return
        }
        defer { close(received) }
        #expect(fcntl(received, F_GETFD) & FD_CLOEXEC != 0)
        #expect(write(ends[0], "req", 3) == 3)
        var buffer = [UInt8](repeating: 0, count: 3)
        #expect(read(received, &buffer, 3) == 3)
        #expect(buffer == Array("req".utf8))
    }

    @Test func peerGoneIsNil() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close() }
        worker.close()
        #expect(try supervisor.receive(timeout: 2) == nil)
    }

    @Test func silenceTimesOut() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        #expect(throws: SystemError.self) { try supervisor.receive(timeout: 0.1) }
    }
}

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
