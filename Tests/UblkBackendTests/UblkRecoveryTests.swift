#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Supervision
import SystemCalls
import Testing
import UblkKernel

@testable import UblkBackend

/// The ublk side of the supervision protocol, without a kernel: the worker's and supervisor's
/// command lines, how a worker's exit reads, a standby's wait for its turn, and the state.
@Suite struct UblkSupervisionTests {
    @Test func workerArgumentsRoundTrip() {
        for mode: WorkerMode in [.connect, .reattach(3), .standby(3), .standby(nil)] {
            let settings = UblkDaemon.Settings(source: "/images/a b.erofs", deviceID: 3, mode: mode)
            #expect(UblkDaemon.Settings(arguments: settings.arguments) == settings)
            let supervisor = UblkSupervisor.arguments(for: settings)
            #expect(supervisor.first == UblkSupervisor.flag)
            #expect(UblkDaemon.Settings(arguments: supervisor, flag: UblkSupervisor.flag) == settings)
            // A supervisor's line is not a worker's, nor the reverse.
            #expect(UblkDaemon.Settings(arguments: supervisor) == nil)
        }
        #expect(UblkDaemon.Settings(arguments: [UblkDaemon.flag, "connect", "x", "/i"]) == nil)
        #expect(UblkDaemon.Settings(arguments: [UblkDaemon.flag, "adopt:1", "1", "/i"]) == nil)
        #expect(UblkDaemon.Settings(arguments: [UblkDaemon.flag, "connect", "1"]) == nil)
    }

    /// Only a worker that exited 0 (its device ended under it) ends the supervision; a kill, a
    /// crash, a failure or the SIGUSR2 of an upgrade leave a device to recover.
    @Test func workerEndings() {
        let device = UblkSupervisedDevice(
            settings: UblkDaemon.Settings(source: "/i", deviceID: 0, mode: .connect), image: -1)
        #expect(device.ending(ofWorkerWithStatus: 0) == .linkEnded)
        #expect(device.ending(ofWorkerWithStatus: 1 << 8) == .died)
        #expect(device.ending(ofWorkerWithStatus: UblkDaemon.Exit.released.rawValue << 8) == .died)
        #expect(device.ending(ofWorkerWithStatus: SIGKILL) == .died)
        #expect(device.ending(ofWorkerWithStatus: SIGUSR2) == .died)
        #expect(device.ending(ofWorkerWithStatus: SIGSEGV | 0x80) == .died)  // with a core dump
        #expect(!device.workersShareTheirLink)
        #expect(device.workerArguments(for: .standby(nil)) == [UblkDaemon.flag, "standby", "0", "/i"])
    }

    /// A standby says `prepared`, ignores the device word (it has the device), answers a
    /// resume with "cannot" (closing the descriptor it got), and goes on `reconnect`.
    @Test func standbyWaitsForReconnect() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close() }
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]) }
        try supervisor.send(.device(5))
        try supervisor.send(.resume(ends[1]))
        close(ends[1])
        try supervisor.send(.reconnect)
        #expect(try UblkDaemon.waitForTurn(worker, device: 5))
        worker.close()
        #expect(try supervisor.receive(timeout: 2) == .prepared)
        #expect(try supervisor.receive(timeout: 2) == .resumed(false))
        // The resumed link was closed by the standby: its peer reads end of file.
        var byte: UInt8 = 0
        #expect(read(ends[0], &byte, 1) == 0)
    }

    @Test func standbyLetGoWhenTheChannelCloses() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { worker.close() }
        supervisor.close()
        #expect(try UblkDaemon.waitForTurn(worker, device: 1) == false)
    }

    /// A live ublk queue cannot change process: a hand-over is refused, not served.
    @Test func standbyRefusesAHandOver() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        try supervisor.send(.serveLink(ends[1]))
        #expect(throws: SystemError.self) { try UblkDaemon.waitForTurn(worker, device: 1) }
    }
}

@Suite struct UblkStateTests {
    func temporaryStore() throws -> UblkStateStore {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ublk-state-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        ).path
        return UblkStateStore(directory: directory)
    }

    func state(_ id: UInt32) -> UblkDeviceState {
        UblkDeviceState(
            deviceID: id, source: "/i.erofs", sizeBytes: 4096, imageDevice: 1, imageInode: 2, queues: 1,
            queueDepth: 64)
    }

    @Test func deviceIDsAreTheStateFilesOnly() throws {
        let store = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        #expect(try store.deviceIDs() == [])
        try store.ensureDirectory()
        for id: UInt32 in [12, 3] { try store.save(state(id)) }
        for junk in ["ublk3.log", "ublkx.json", "nbd1.json", "ublk4.json.tmp"] {
            FileManager.default.createFile(atPath: "\(store.directory)/\(junk)", contents: Data())
        }
        #expect(try store.deviceIDs() == [3, 12])
        try store.remove(device: 3)
        #expect(try store.deviceIDs() == [12])
        #expect(!FileManager.default.fileExists(atPath: "\(store.directory)/ublk3.log"))
    }

    /// A state written before the supervisor (no worker, counters or image identity) still reads.
    @Test func stateWithoutSupervisorFieldsReads() throws {
        let store = try temporaryStore()
        defer { try? FileManager.default.removeItem(atPath: store.directory) }
        try store.ensureDirectory()
        let old = """
            {"deviceID": 7, "source": "/i.erofs", "sizeBytes": 4096, "imageDevice": 1, "imageInode": 2,
             "queues": 2, "queueDepth": 64, "daemonPID": 99, "daemonStartTime": 5}
            """
        FileManager.default.createFile(
            atPath: store.path(device: 7), contents: Data(old.utf8), attributes: [.posixPermissions: 0o600])
        let loaded = try #require(try store.load(device: 7))
        #expect(loaded.servingPID == nil && loaded.recoveries == nil && loaded.image == nil)
        #expect(loaded.supervisor == DaemonProcess(pid: 99, startTime: 5))
    }

    /// A state naming a process that is not our ublk daemon for that device (here: this test
    /// process, and pid 1) never makes it ours: nothing would be signalled.
    @Test func onlyOurDaemonsAreOurs() {
        var state = state(4)
        let me = DaemonProcess(pid: getpid(), startTime: DaemonProcess.startTime(of: getpid()) ?? 0)
        state.daemonPID = me.pid
        state.daemonStartTime = me.startTime
        #expect(me.isAlive)
        #expect(!state.isOurs(state.supervisor))
        #expect(!state.isOurs(DaemonProcess(pid: 1, startTime: DaemonProcess.startTime(of: 1) ?? 0)))
        #expect(!state.isOurs(nil))
    }
}
