@testable import Supervision
import Foundation
import Glibc
import SystemCalls
import Testing

@Suite struct DaemonProcessTests {
    @Test func spawnsInItsOwnSessionWithOnlyTheGivenDescriptors() throws {
        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        let log = NSTemporaryDirectory() + "daemon-\(UUID().uuidString).log"
        defer { unlink(log) }
        // The child reports its session id, pid, and what fds 0 and 3 are, then exits.
        let script =
            "echo sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$ fd0=$(readlink /proc/$$/fd/0) >&3; ls /proc/$$/fd | tr '\\n' ' ' >&3; echo to-log"
        let daemon = try DaemonProcess.spawn(
            executable: "/bin/sh", arguments: ["-c", script], descriptors: [pipeEnds[1]], logFile: log)
        close(pipeEnds[1])
        var output = [UInt8](repeating: 0, count: 4096)
        var total = 0
        while true {
            let n = read(pipeEnds[0], &output[total], output.count - total)
            if n <= 0 { break }
            total += n
        }
        close(pipeEnds[0])
        var status: Int32 = 0
        waitpid(daemon.pid, &status, 0)
        let report = String(decoding: output[..<total], as: UTF8.self)
        #expect(report.contains("sid=\(daemon.pid) pid=\(daemon.pid)"), "\(report)")
        #expect(report.contains("fd0=/dev/null"), "\(report)")
        // Only 0, 1, 2, 3 (and the fd ls itself opens for /proc/PID/fd) are open.
        let fds = report.split(separator: "\n").last.map { $0.split(separator: " ").compactMap { Int($0) } } ?? []
        #expect(Set(fds).isSubset(of: [0, 1, 2, 3, 4]), "\(report)")
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "to-log\n")
        #expect(daemon.startTime > 0)
        #expect(!daemon.isAlive)
    }

    @Test func pidReuseIsNotMistakenForOurDaemon() {
        let me = DaemonProcess(pid: getpid(), startTime: DaemonProcess.startTime(of: getpid()) ?? 0)
        #expect(me.isAlive)
        let impostor = DaemonProcess(pid: getpid(), startTime: me.startTime + 1)
        #expect(!impostor.isAlive)
    }
}

@Suite struct DaemonReportTests {
    func pipePair() -> (read: Int32, write: Int32) {
        var ends: [Int32] = [0, 0]
        _ = pipe(&ends)
        return (ends[0], ends[1])
    }

    @Test(arguments: [
        DaemonReport.ready(index: 7, method: "netlink", pid: 4321), .ready(index: 0, method: "ioctl", pid: 1),
        .failed("cannot open /x: No such file or directory"),
    ])
    func roundTrip(report: DaemonReport) throws {
        let (readEnd, writeEnd) = pipePair()
        defer { close(readEnd) }
        report.send(to: writeEnd)
        #expect(try DaemonReport.receive(from: readEnd, timeout: 2) == report)
    }

    @Test func silentDeathIsNil() throws {
        let (readEnd, writeEnd) = pipePair()
        defer { close(readEnd) }
        close(writeEnd)
        #expect(try DaemonReport.receive(from: readEnd, timeout: 2) == nil)
    }

    @Test func garbageIsNil() throws {
        let (readEnd, writeEnd) = pipePair()
        defer { close(readEnd) }
        _ = write(writeEnd, "ready x netlink\n", 16)
        close(writeEnd)
        #expect(try DaemonReport.receive(from: readEnd, timeout: 2) == nil)
    }

    @Test func silenceTimesOut() throws {
        let (readEnd, writeEnd) = pipePair()
        defer { close(readEnd); close(writeEnd) }
        #expect(throws: SystemError.self) { try DaemonReport.receive(from: readEnd, timeout: 0.2) }
    }
}
