@testable import NBDBackend
@testable import LocalBackend
import Foundation
import Glibc
import KernelAttach
import Logging
import Supervision
import SystemCalls
import Testing
import TestSupport

/// State files, state directories and processes an attacker may have put in place: nothing of
/// theirs is trusted, signalled or followed.
@Suite(.requiresRoot, .serialized) struct HostileStateTests {
    func freshStore() -> StateStore {
        StateStore(directory: NSTemporaryDirectory() + "hostile-state-\(UUID().uuidString)/nbd")
    }

    static func sample(index: Int = 3) -> DeviceState { StateStoreTests.sample(index: index) }

    func write(_ object: [String: Any], to path: String) throws {
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
    }

    func stateObject(_ state: DeviceState, in store: StateStore) throws -> [String: Any] {
        try store.save(state)
        let path = store.path(forDevice: state.index)
        defer { unlink(path) }
        return try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    @Test(
        arguments: [
            ("nbd3.json", 3), ("nbd0.json", 0), ("nbd1048575.json", 1_048_575), ("nbd-1.json", nil),
            ("nbd+1.json", nil),
            ("nbd01.json", nil), ("nbd.json", nil), ("nbd1048576.json", nil), ("nbd99999999999999999999.json", nil),
            ("nbd3.json.tmp.12", nil), ("nbd３.json", nil), ("xnbd3.json", nil),
        ] as [(String, Int?)])
    func stateFileNames(name: String, index: Int?) {
        #expect(StateStore.deviceIndex(fileName: name) == index)
    }

    /// `nbd-1.json` used to be listed as device -1, and `UInt32(-1)` trapped `--list`.
    @Test func listingIgnoresNamesThatAreNoDeviceAndRefusesImpossibleStates() throws {
        let store = freshStore()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        let object = try stateObject(Self.sample(index: 3), in: store)
        var negative = object
        negative["index"] = -1
        try write(negative, to: store.directory + "/nbd-1.json")
        try write(negative, to: store.path(forDevice: 5))  // a file whose state names another device
        var everyone = object
        everyone["index"] = 6
        everyone["daemonPID"] = -1  // kill(-1, ...) signals every process we may signal
        try write(everyone, to: store.path(forDevice: 6))
        var group = object
        group["index"] = 7
        group["servingPID"] = 0
        try write(group, to: store.path(forDevice: 7))
        var traversal = object
        traversal["index"] = 8
        traversal["backendIdentifier"] = "../../etc/x"
        try write(traversal, to: store.path(forDevice: 8))
        let listed = try store.all()
        #expect(listed.map(\.index) == [5, 6, 7, 8])
        for (index, result) in listed {
            guard case .failure(let error) = result else { Issue.record("nbd\(index).json was accepted"); continue }
            #expect("\(error)".contains("not a valid state file"), "\(error)")
        }
    }

    @Test func stateFilesThatAreNotOursAreRefused() throws {
        let store = freshStore()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        try store.save(Self.sample(index: 3))
        // A symlink to a state elsewhere is not followed.
        let elsewhere = NSTemporaryDirectory() + "hostile-elsewhere-\(UUID().uuidString).json"
        defer { unlink(elsewhere) }
        try FileManager.default.copyItem(atPath: store.path(forDevice: 3), toPath: elsewhere)
        try FileManager.default.createSymbolicLink(atPath: store.path(forDevice: 4), withDestinationPath: elsewhere)
        #expect { try store.load(device: 4) } throws: { ($0 as? SystemError)?.kind == .refused }
        // Owned by someone else.
        try FileManager.default.copyItem(atPath: store.path(forDevice: 3), toPath: store.path(forDevice: 9))
        #expect(chown(store.path(forDevice: 9), 65534, 65534) == 0)
        #expect { try store.load(device: 9) } throws: {
            "\($0)".contains("owned by uid 65534") && ($0 as? SystemError)?.kind == .refused
        }
        // Far too big to be a state.
        try Data(repeating: 0x20, count: 1 << 20).write(to: URL(fileURLWithPath: store.path(forDevice: 10)))
        #expect { try store.load(device: 10) } throws: { "\($0)".contains("too big") }
    }

    /// A directory another user made (or a symlink in its place) is refused, not chmodded and
    /// used.
    @Test func stateDirectoryOfAnotherUserOrSymlinkIsRefused() throws {
        let store = freshStore()
        let parent = (store.directory as NSString).deletingLastPathComponent
        defer { try? FileManager.default.removeItem(atPath: parent) }
        try FileManager.default.createDirectory(atPath: store.directory, withIntermediateDirectories: true)
        #expect(chown(store.directory, 65534, 65534) == 0)
        #expect(chmod(store.directory, 0o777) == 0)
        #expect { try store.all() } throws: { "\($0)".contains("owned by uid 65534") }
        #expect(throws: SystemError.self) { try store.save(Self.sample()) }
        #expect(try FileStatus.lstat(store.directory).permissions == 0o777, "left as it was")

        try FileManager.default.removeItem(atPath: store.directory)
        let target = parent + "/real"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: store.directory, withDestinationPath: target)
        #expect { try store.save(Self.sample()) } throws: { "\($0)".contains("a symlink is not followed") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: target).isEmpty)

        // A parent others may write to (without the sticky bit) could have it replaced.
        try FileManager.default.removeItem(atPath: store.directory)
        #expect(chmod(parent, 0o777) == 0)
        #expect { try store.save(Self.sample()) } throws: { "\($0)".contains("others could replace") }
    }

    /// A state may name any pid: a process with start time 0 (unknown), or one whose start
    /// time matches but that is not our daemon, is never signalled.
    @Test func teardownNeverSignalsAProcessThatIsNotOurDaemon() throws {
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["60"]
        try sleeper.run()
        defer { kill(sleeper.processIdentifier, SIGKILL); sleeper.waitUntilExit() }
        let pid = sleeper.processIdentifier
        let startTime = try #require(DaemonProcess.startTime(of: pid))
        #expect(!DaemonProcess(pid: pid, startTime: 0).isAlive, "start time 0 matches no process")
        #expect(DaemonProcess(pid: pid, startTime: startTime).isAlive)
        #expect(!DaemonProcess(pid: pid, startTime: startTime).isOurs(serving: Self.sample().backendIdentifier))

        let store = freshStore()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        for (daemonStart, servingStart) in [(UInt64(0), UInt64(0)), (startTime, startTime)] {
            var state = Self.sample(index: 1_000_000)  // no such device anywhere
            state.supervised = true
            state.daemonPID = pid
            state.daemonStartTime = daemonStart
            state.servingPID = pid
            state.servingStartTime = servingStart
            try store.save(state)
            _ = NBDTeardown(logger: Logger(label: "test"), store: store).release(state)
            #expect(kill(pid, 0) == 0 && sleeper.isRunning, "teardown signalled \(pid) (start time \(daemonStart))")
            #expect(try store.load(device: 1_000_000) == nil, "our own stale state goes")
        }
    }

    @Test(arguments: [
        ("erofs", "/dev/loop0", "ro", true),
        ("fuse.erofs", "erofs", "rw,user_id=0,group_id=0", true),
        ("fuse.erofs", "erofs", "rw,user_id=1000,group_id=1000", false),
        ("fuse", "my-erofs-image", "rw,user_id=1000,group_id=1000", false),
        ("fuse", "/dev/nbd0", "rw,user_id=0,group_id=0", false),
        ("tmpfs", "/dev/nbd0", "rw", false),
        ("fuse.erofsfoo", "erofs", "rw,user_id=0", false),
    ])
    func unmountRecognisesOnlyEROFSMounts(type: String, source: String, options: String, ours: Bool) {
        let entry = MountTable.parse("36 35 0:99 / /mnt rw - \(type) \(source) \(options)").first
        #expect(entry.map(Unmounter.isOurs) == ours)
    }

    /// A file renamed over the image path, or rewritten, is not the image the device serves.
    @Test func imageIdentityNamesWhatChanged() throws {
        let directory = NSTemporaryDirectory() + "hostile-image-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/img"
        try Data(repeating: 1, count: 4096).write(to: URL(fileURLWithPath: path))
        let before = ImageIdentity(try FileStatus.stat(path))
        #expect(ImageIdentity(try FileStatus.stat(path)).difference(from: before) == nil)
        try Data(repeating: 2, count: 8192).write(to: URL(fileURLWithPath: directory + "/new"))
        #expect(rename(directory + "/new", path) == 0)
        let after = try #require(ImageIdentity(try FileStatus.stat(path)).difference(from: before))
        #expect(after.contains("device:inode") && after.contains("size 4096 -> 8192"), "\(after)")
    }
}
