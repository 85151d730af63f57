import NBDBackend
import Foundation
import Glibc
import SystemCalls
import Testing

@Suite struct StateStoreTests {
    static func sample(index: Int = 3) -> DeviceState {
        DeviceState(
            index: index, source: "/images/a.erofs", sizeBytes: 4_050_944, blockSize: 4096,
            backendIdentifier: "erofs-mount-0123456789abcdef", attachMethod: .netlink, deadConnectionTimeout: 60,
            daemonPID: 4242, daemonStartTime: 99, mountPoint: "/mnt/a", mountOptions: "ro",
            createdAt: Date(timeIntervalSince1970: 1_800_000_000))
    }

    func freshStore() -> StateStore {
        StateStore(directory: NSTemporaryDirectory() + "state-test-\(UUID().uuidString)/run/nbd")
    }

    @Test func roundTripWithPrivatePermissions() throws {
        let store = freshStore()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        try store.save(Self.sample())
        #expect(try store.load(device: 3) == Self.sample())
        #expect(try FileStatus.stat(store.path(forDevice: 3)).permissions == 0o600)
        #expect(try FileStatus.stat(store.directory).permissions == 0o700)
        #expect(try store.load(device: 4) == nil)
        #expect(try store.all().map(\.index) == [3])
        try store.remove(device: 3)
        #expect(try store.load(device: 3) == nil)
        try store.remove(device: 3)  // removing what is gone is fine
    }

    @Test func overwriteIsAtomicAndLeavesNoTemporaryFiles() throws {
        let store = freshStore()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        var state = Self.sample()
        try store.save(state)
        state.daemonPID = 5151
        try store.save(state)
        #expect(try store.load(device: 3)?.daemonPID == 5151)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory) == ["nbd3.json"])
    }

    @Test func corruptStateIsReportedWithItsPath() throws {
        let store = freshStore()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        try store.save(Self.sample(index: 1))
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: store.path(forDevice: 1)))
        #expect {
            try store.load(device: 1)
        } throws: { error in
            "\(error)".contains(store.path(forDevice: 1)) && "\(error)".contains("not a valid state file")
                && (error as? SystemError)?.kind == .corrupt && (error as? SystemError)?.underlying != nil
        }
        // A state that is not valid is refused before it is written.
        var impossible = Self.sample(index: 2)
        impossible.daemonPID = -1
        #expect { try store.save(impossible) } throws: { ($0 as? SystemError)?.kind == .refused }
        guard case .failure = try store.all().first?.state else {
            Issue.record("a corrupt state must be listed as a failure")
            return
        }
    }
}
