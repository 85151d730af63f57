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

    /// The wait status the supervisor acts on before SIGCHLD: none while the process runs,
    /// then what waitpid will report (a signal, an exit code), until it is reaped.
    @Test(arguments: [("sleep 60", SIGKILL), ("exit 3", Int32(3 << 8))])
    func exitStatusIsReadableBeforeTheReap(script: String, expected: Int32) throws {
        let child = try DaemonProcess.spawn(
            executable: "/bin/sh", arguments: ["-c", script], descriptors: [], logFile: nil)
        if expected == SIGKILL {
            usleep(50_000)
            #expect(child.exitStatusWhileExiting == nil, "a running process has no exit status")
            kill(child.pid, SIGKILL)
        }
        var status: Int32?
        for _ in 0..<500 where status == nil {
            status = child.exitStatusWhileExiting
            if status == nil { usleep(10_000) }
        }
        #expect(status == expected)
        var reaped: Int32 = 0
        #expect(waitpid(child.pid, &reaped, 0) == child.pid)
        #expect(reaped == expected)
        #expect(child.exitStatusWhileExiting == nil, "reaped: not this process any more")
    }

    /// The real wait: a worker's channel that closes wakes the supervisor with `.hangUp`; a
    /// word on it does not (it is read where it is awaited).
    @Test func hangUpOfTheWatchedChannelWakesTheSupervisor() throws {
        let system = ProcessSystem()
        defer {
            // ProcessSystem blocks its signals on this thread: let them go again.
            var set = system.signals
            pthread_sigmask(SIG_UNBLOCK, &set, nil)
        }
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &ends) == 0)
        defer { close(ends[0]) }
        // Other suites' children end meanwhile: their SIGCHLDs come too, and are skipped.
        func nextEventButSIGCHLD(timeout: Double) -> SupervisorWakeUp? {
            let deadline = monotonicSeconds() + timeout
            while true {
                let event = system.nextEvent(timeout: max(0, deadline - monotonicSeconds()), hangUpOf: ends[0])
                if event != .signal(SIGCHLD) || monotonicSeconds() >= deadline { return event }
            }
        }
        #expect(nextEventButSIGCHLD(timeout: 0.05) == nil)
        try ControlChannel(descriptor: ends[1]).send(.prepared)
        #expect(nextEventButSIGCHLD(timeout: 0.05) == nil, "a word is no hang-up")
        close(ends[1])
        let started = monotonicSeconds()
        #expect(nextEventButSIGCHLD(timeout: 5) == .hangUp)
        #expect(monotonicSeconds() - started < 1)
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
