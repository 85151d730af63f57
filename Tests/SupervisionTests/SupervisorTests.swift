@testable import Supervision
import Glibc
import SystemCalls
import Testing

/// The supervisor's state machine through its seam: processes, reaping, signals and the clock
/// are scripted (`ScriptedSystem`), the pipes, control channels and links are real. Each
/// scripted worker says, up front, what a real worker of its mode would say; the supervisor
/// reads it when it asks.
@Suite struct SupervisorTests {
    /// A worker as the test plays it: the worker's ends of its status pipe and control channel.
    final class FakeWorker {
        let process: DaemonProcess
        let mode: String
        let executable: String
        var status: Int32
        let control: ControlChannel

        init(process: DaemonProcess, mode: String, executable: String, status: Int32, control: ControlChannel) {
            self.process = process
            self.mode = mode
            self.executable = executable
            self.status = status
            self.control = control
        }

        func report(_ report: DaemonReport) {
            report.send(to: status)
            status = -1
        }

        func say(_ message: ControlMessage) { try! control.send(message) }

        /// Everything the supervisor sent, in order (descriptors received are closed).
        func heard() -> [ControlMessage] {
            var words: [ControlMessage] = []
            while let word = try? control.receive(timeout: 0) {
                words.append(word)
                if word.descriptor >= 0 { close(word.descriptor) }
            }
            return words
        }

        private var gone = false

        /// Dies: its ends close, as a dead process's do (once: a second close could hit a
        /// descriptor another test running alongside has opened since).
        func vanish() {
            guard !gone else { return }
            gone = true
            if status >= 0 { close(status) }
            status = -1
            control.close()
        }
    }

    final class ScriptedSystem: SupervisorSystem {
        var workers: [FakeWorker] = []
        /// What each new worker says before the supervisor asks (by mode word).
        var script: (FakeWorker) -> Void = { _ in }
        /// Modes whose spawn fails.
        var failingModes: Set<String> = []
        var exited: [(pid: Int32, status: Int32)] = []
        var clock = 100.0
        var signalled: [(signal: Int32, pid: Int32)] = []
        var onSignal: (Int32, FakeWorker) -> Void = { _, _ in }
        var terminated: [Int32] = []
        var logs: [String] = []
        var installed = "/usr/sbin/mount.erofs.new"
        var nextPID: Int32 = 1000

        func spawn(executable: String, arguments: [String], descriptors: [Int32]) throws(SystemError)
            -> DaemonProcess
        {
            let mode = arguments.last ?? ""
            if failingModes.contains(mode.split(separator: ":").first.map(String.init) ?? mode) {
                throw SystemError("spawn", detail: "scripted failure for \(mode)")
            }
            nextPID += 1
            let process = DaemonProcess(pid: nextPID, startTime: 7)
            // The supervisor closes its copies of the worker's ends once the worker runs.
            let worker = FakeWorker(
                process: process, mode: mode, executable: executable, status: dup(descriptors[0]),
                control: ControlChannel(descriptor: dup(descriptors[1])))
            workers.append(worker)
            script(worker)
            return process
        }

        func reapChild() -> (pid: Int32, status: Int32)? { exited.isEmpty ? nil : exited.removeFirst() }
        func waitForChild(_ process: DaemonProcess) -> Int32 { 1 << 8 }
        func nextEvent(timeout: Double, hangUpOf descriptor: Int32?) -> SupervisorWakeUp? { nil }
        /// Wait statuses of workers that are exiting but not reaped yet.
        var exiting: [Int32: Int32] = [:]
        func exitStatusWhileExiting(_ process: DaemonProcess) -> Int32? { exiting[process.pid] }
        func now() -> Double { clock }
        func send(_ signal: Int32, to process: DaemonProcess) {
            signalled.append((signal, process.pid))
            if let worker = worker(process.pid) { onSignal(signal, worker) }
        }
        func terminate(_ process: DaemonProcess, signal: Int32, timeout: Double) { terminated.append(process.pid) }
        func waitForExit(_ process: DaemonProcess, timeout: Double) -> Bool { true }
        func pause(seconds: Double) { clock += seconds }
        func installedExecutable() -> String { installed }
        func log(_ line: String) { logs.append(line) }

        /// Each exec asked for, with whether its descriptors were inheritable at that moment;
        /// the exec then fails, as one of a missing binary would.
        var replacements: [(executable: String, arguments: [String], inheritable: Bool)] = []
        var beforeReplace: () -> Void = {}
        func replaceProcess(executable: String, arguments: [String]) -> SystemError {
            beforeReplace()
            let handover = arguments.last.flatMap(SupervisorHandover.init(argument:))
            let inheritable = handover?.descriptors.allSatisfy { fcntl($0, F_GETFD) & FD_CLOEXEC == 0 } ?? false
            replacements.append((executable, arguments, inheritable))
            return SystemError("execve", path: executable, errno: .noSuchFileOrDirectory)
        }

        func worker(_ pid: Int32?) -> FakeWorker? { workers.first { $0.process.pid == pid } }

        /// Worker `pid` died by `signal`: its ends close and SIGCHLD is due.
        func kill(_ pid: Int32?, signal: Int32 = SIGKILL) {
            guard let pid else { return }
            worker(pid)?.vanish()
            exited.append((pid, signal))
        }

        /// Worker `pid` is exiting with wait status `status`: its ends are closed, its status is
        /// readable, and its SIGCHLD has not come yet (`exited` is left alone).
        func beginExit(_ pid: Int32?, status: Int32) {
            guard let pid else { return }
            worker(pid)?.vanish()
            exiting[pid] = status
        }

        func exit(_ pid: Int32?, status: Int32) {
            guard let pid else { return }
            worker(pid)?.vanish()
            exited.append((pid, status << 8))
        }
    }

    final class FakeBackend: SupervisedBackend {
        var linkOurs = true
        /// When set: how many more times the link is ours.
        var remainingOurs: Int?
        var inFlight: [InFlightRequest] = []
        var failed: [[InFlightRequest]] = []
        var events: [SupervisorEvent] = []
        var forgotten: [UInt32] = []
        var released: [UInt32] = []
        var standbyWithFirstWorker = true
        var startsFirstStandbyWithFirstWorker: Bool { standbyWithFirstWorker }

        func linkName(_ link: UInt32) -> String { "/dev/fake\(link)" }
        func workerArguments(for mode: WorkerMode) -> [String] { ["--worker", mode.argument] }
        var sharedDescriptors: [Int32] { [] }
        var workersShareTheirLink: Bool { true }
        func canRecover(attachedBy method: String) -> Bool { method == "netlink" }
        func linkIsOurs(_ link: UInt32) -> Bool {
            guard let remaining = remainingOurs else { return linkOurs }
            remainingOurs = remaining - 1
            return remaining > 0
        }
        func linkIsDead(_ descriptor: Int32) -> Bool {
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            return poll(&poller, 1, 0) > 0 && poller.revents & Int16(POLLHUP) != 0
        }
        func ending(ofWorkerWithStatus status: Int32) -> WorkerEnding {
            guard status & 0x7f == 0 else { return .died }
            switch (status >> 8) & 0xff {
            case 0: return .linkEnded
            case 3: return .linkDropped
            case 4: return .handedOff
            default: return .died
            }
        }
        func releaseUnclaimed(link: UInt32, attachedBy method: String) { released.append(link) }
        func forget(link: UInt32) { forgotten.append(link) }
        func record(_ event: SupervisorEvent, link: UInt32, serving: DaemonProcess?) throws(SystemError) {
            events.append(event)
        }
        func requestsInFlight() -> [InFlightRequest] { inFlight }
        func failRequests(_ requests: [InFlightRequest]) -> Bool {
            failed.append(requests)
            return true
        }
        func supervisorArguments(resuming handover: SupervisorHandover) -> [String]? {
            ["--supervise", SupervisorHandover.flag, handover.argument]
        }
    }

    /// The kernel's link: the test keeps the kernel's end, the workers share the other.
    final class Link {
        let kernel: Int32
        private(set) var server: Int32

        init() {
            var ends: [Int32] = [-1, -1]
            precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
            (kernel, server) = (ends[0], ends[1])
        }

        /// Whether every copy of the server end is closed.
        var serverGone: Bool {
            var poller = pollfd(fd: kernel, events: Int16(POLLIN), revents: 0)
            return poll(&poller, 1, 0) > 0 && poller.revents & Int16(POLLHUP) != 0
        }

        func closeServer() {
            if server >= 0 { close(server) }
            server = -1
        }

        deinit {
            close(kernel)
            closeServer()
        }
    }

    /// What a standby says once asked: go on from the journal, reconnect after a refused
    /// resume, or take a link over (a hot upgrade's `serveLink`).
    enum StandbyBehaviour { case resume, reconnect, takeOver, silent }

    /// A supervisor whose first worker attached /dev/fake5 over "netlink" and shares `link`;
    /// every standby says `prepared`, then behaves as `standbyBehaviour` says.
    final class Harness {
        let system = ScriptedSystem()
        let backend = FakeBackend()
        let link = Link()
        let reportEnds: [Int32]
        let supervisor: Supervisor<FakeBackend>
        var standbyBehaviour = StandbyBehaviour.resume
        var firstReport = DaemonReport.ready(index: 5, method: "netlink", pid: 0)

        init() {
            var ends: [Int32] = [-1, -1]
            precondition(pipe(&ends) == 0)
            reportEnds = ends
            supervisor = Supervisor(backend: backend, system: system, reportDescriptor: ends[1])
            system.script = { [unowned self] worker in
                if worker.mode.hasPrefix("standby") {
                    worker.say(.prepared)
                    switch standbyBehaviour {
                    case .resume: worker.say(.resumed(true))
                    case .reconnect: worker.say(.resumed(false))
                    case .takeOver: break
                    case .silent: return
                    }
                    if standbyBehaviour != .resume {
                        // Serving a link of its own: it shares it.
                        worker.say(.serving(link.server))
                        worker.say(.replyFile(-1))
                    }
                    worker.report(.ready(index: 5, method: "netlink", pid: worker.process.pid))
                } else {
                    worker.say(.serving(link.server))
                    worker.say(.replyFile(-1))
                    worker.report(firstReport)
                }
            }
        }

        /// Starts, and checks what whoever started the supervisor was told.
        func start() throws -> String? {
            let status = supervisor.start()
            return status == nil ? try receiveStatusLine(from: reportEnds[0], timeout: 2) : "exit \(status!)"
        }

        var active: FakeWorker? { system.worker(supervisor.active?.process.pid) }
        var standby: FakeWorker? { system.worker(supervisor.standby?.process.pid) }

        deinit {
            close(reportEnds[0])
            for worker in system.workers { worker.vanish() }
        }
    }

    @Test func firstWorkerReportsAndStandbyLearnsTheDevice() throws {
        let harness = Harness()
        #expect(try harness.start() == "ready 5 netlink 0")
        let standby = try #require(harness.standby)
        #expect(standby.mode == "standby", "the first standby starts before the device is known")
        #expect(standby.heard() == [.device(5)])
        #expect(harness.supervisor.liveLink?.rawValue != nil, "the supervisor holds a copy of the link")
        #expect(harness.active?.mode == "connect")
    }

    /// FUSE's choice: the mount waits for the first worker alone; the standby starts once the
    /// report is sent, already told the link.
    @Test func aLateFirstStandbyStartsAfterTheReport() throws {
        let harness = Harness()
        harness.backend.standbyWithFirstWorker = false
        #expect(try harness.start() == "ready 5 netlink 0")
        #expect(harness.system.workers.map(\.mode) == ["connect", "standby:5"], "the worker first, then its standby")
        let standby = try #require(harness.standby)
        #expect(standby.heard().isEmpty, "it knows the link from its arguments")
    }

    @Test func aFailedFirstWorkerIsReportedAndNothingIsSupervised() throws {
        let harness = Harness()
        harness.firstReport = .failed("cannot open /x")
        #expect(try harness.start() == "exit 1")
        #expect(try receiveStatusLine(from: harness.reportEnds[0], timeout: 2) == "error cannot open /x")
        #expect(harness.system.terminated.contains(harness.system.workers[0].process.pid), "the standby is stopped")
    }

    @Test func anIoctlLinkHasNoStandby() throws {
        let harness = Harness()
        harness.firstReport = .ready(index: 5, method: "ioctl", pid: 0)
        #expect(try harness.start() == "ready 5 ioctl 0")
        #expect(harness.supervisor.standby == nil)
        let worker = try #require(harness.active)
        harness.system.kill(worker.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == 0, "a link that dies with its worker ends the supervisor")
    }

    /// Death while serving: the standby resumes the same link from the journal.
    @Test func workerDeathResumesTheSameLinkOnTheStandby() throws {
        let harness = Harness()
        _ = try harness.start()
        let dead = try #require(harness.active)
        let standby = try #require(harness.standby)
        harness.system.kill(dead.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.supervisor.active?.process == standby.process)
        let words = standby.heard()
        #expect(words.first == .device(5))
        guard case .resume? = words.last else {
            Issue.record("the standby was not asked to resume: \(words)")
            return
        }
        #expect(harness.backend.events.count == 1)
        #expect(harness.standby?.mode == "standby:5", "a new standby is ready for the next death")
        #expect(!harness.link.serverGone)
    }

    /// The journal cannot be trusted: the standby closes the link, gets a new one, and the
    /// supervisor lets go of the old one (else the kernel would never see it die).
    @Test func standbyThatCannotResumeReconnects() throws {
        let harness = Harness()
        harness.standbyBehaviour = .reconnect
        _ = try harness.start()
        let standby = try #require(harness.standby)
        harness.system.kill(harness.active?.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.supervisor.active?.process == standby.process)
        #expect(standby.heard().last == .reconnect)
        #expect(harness.backend.events.count == 1)
    }

    /// A worker that says the kernel dropped its link: the copy held is dropped and the
    /// standby reconnects.
    @Test func droppedLinkIsNotResumed() throws {
        let harness = Harness()
        harness.standbyBehaviour = .reconnect
        _ = try harness.start()
        let standby = try #require(harness.standby)
        harness.system.exit(harness.active?.process.pid, status: 3)
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(standby.heard() == [.device(5), .reconnect], "no resume of a dropped link")
    }

    /// No standby can start: a fresh worker reattaches, and the supervisor retries while the
    /// link waits.
    @Test func deathWithoutStandbyReattaches() throws {
        let harness = Harness()
        _ = try harness.start()
        harness.system.failingModes = ["standby"]
        harness.system.kill(harness.standby?.process.pid)
        harness.system.kill(harness.active?.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.active?.mode == "reattach:5")
        #expect(harness.supervisor.standby == nil)
        #expect(harness.system.logs.contains { $0.contains("no standby worker") })
        #expect(harness.backend.events == [.recovered(milliseconds: 0)])
    }

    /// Killed: its control channel hangs up as it lets its descriptors go, well before its
    /// SIGCHLD (it must still drop its mappings). The standby resumes at the hang-up; the
    /// SIGCHLD that follows only reaps.
    @Test func deathIsRecoveredAtTheHangUpBeforeSIGCHLD() throws {
        let harness = Harness()
        _ = try harness.start()
        let dead = try #require(harness.active)
        let standby = try #require(harness.standby)
        #expect(harness.supervisor.watchedControl == harness.supervisor.active?.control.descriptor)
        harness.system.beginExit(dead.process.pid, status: SIGKILL)
        #expect(harness.supervisor.activeWorkerHungUp() == nil)
        #expect(harness.supervisor.active?.process == standby.process, "the standby serves before the SIGCHLD")
        #expect(harness.backend.events.count == 1)
        #expect(
            harness.supervisor.watchedControl == harness.supervisor.active?.control.descriptor,
            "the new worker is watched")

        harness.system.exited.append((dead.process.pid, SIGKILL))
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.supervisor.active?.process == standby.process)
        #expect(harness.backend.events.count == 1, "the late SIGCHLD recovered nothing again")
    }

    /// A worker that ends because its link ended hangs up too: that is no death to recover
    /// from, and the SIGCHLD decides, as before. The hang-up is not watched again.
    @Test func aCleanEndAtTheHangUpWaitsForSIGCHLD() throws {
        let harness = Harness()
        _ = try harness.start()
        let ending = try #require(harness.active)
        harness.system.beginExit(ending.process.pid, status: 0)
        #expect(harness.supervisor.activeWorkerHungUp() == nil)
        #expect(harness.supervisor.active?.process == ending.process)
        #expect(harness.supervisor.watchedControl == nil, "a hang-up is taken once, not polled in a loop")
        #expect(harness.backend.events.isEmpty)
        harness.system.exited.append((ending.process.pid, 0))
        #expect(harness.supervisor.handle(SIGCHLD) == 0)
    }

    /// A channel that hangs up while its worker is not exiting (nothing of ours does that)
    /// changes nothing: the worker serves on, and its death is seen at SIGCHLD.
    @Test func aHangUpWithoutAnExitRecoversNothing() throws {
        let harness = Harness()
        _ = try harness.start()
        let worker = try #require(harness.active)
        #expect(harness.supervisor.activeWorkerHungUp() == nil)
        #expect(harness.supervisor.active?.process == worker.process)
        #expect(harness.supervisor.watchedControl == nil)
        harness.system.kill(worker.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.backend.events.count == 1)
    }

    /// Death at the first step, before the report: the mount is told and nothing stays.
    @Test func deathBeforeTheReport() throws {
        let harness = Harness()
        harness.system.script = { worker in
            if worker.mode == "connect" { worker.vanish() } else { worker.say(.prepared) }
        }
        #expect(try harness.start() == "exit 1")
        #expect(
            try receiveStatusLine(from: harness.reportEnds[0], timeout: 2)?.hasPrefix(
                "error the serving worker exited before attaching") == true)
    }

    /// The standby dies as it is asked to take over (before any answer): a fresh worker
    /// reattaches the device instead.
    @Test func standbyDeathDuringTheTakeover() throws {
        let harness = Harness()
        harness.standbyBehaviour = .silent
        _ = try harness.start()
        let standby = try #require(harness.standby)
        standby.vanish()  // its SIGCHLD comes after the worker's
        harness.system.kill(harness.active?.process.pid)
        harness.standbyBehaviour = .resume
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.active?.mode == "reattach:5")
        #expect(harness.system.terminated.contains(standby.process.pid))
        #expect(harness.supervisor.liveLink?.rawValue != nil, "the reattached worker's link is held")
        harness.system.exited.append((standby.process.pid, SIGKILL))
        #expect(harness.supervisor.handle(SIGCHLD) == nil, "the late SIGCHLD of the dead standby changes nothing")
        #expect(harness.active?.mode == "reattach:5")
    }

    /// The standby dies: it is replaced a second later, not in a loop.
    @Test func standbyDeathIsReplacedAfterASecond() throws {
        let harness = Harness()
        _ = try harness.start()
        let first = try #require(harness.standby)
        harness.system.kill(first.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.supervisor.standby == nil)
        #expect(harness.supervisor.handle(nil) == nil)
        #expect(harness.supervisor.standby == nil, "not within the second")
        harness.system.clock += 1
        #expect(harness.supervisor.handle(nil) == nil)
        #expect(harness.standby?.mode == "standby:5")
        #expect(harness.supervisor.active != nil)
    }

    /// The standby dies and the worker then dies before a new one: a new standby is started
    /// for the recovery at once.
    @Test func workerDeathRightAfterStandbyDeath() throws {
        let harness = Harness()
        _ = try harness.start()
        harness.system.kill(harness.standby?.process.pid)
        harness.system.kill(harness.active?.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.active?.mode == "standby:5")
        #expect(harness.backend.events.count == 1)
    }

    @Test func linkEndedEndsTheSupervisorAndForgetsTheDevice() throws {
        let harness = Harness()
        _ = try harness.start()
        harness.system.exit(harness.active?.process.pid, status: 0)
        #expect(harness.supervisor.handle(SIGCHLD) == 0)
        #expect(harness.backend.forgotten == [5])
        #expect(harness.supervisor.liveLink?.rawValue == nil)
    }

    @Test func stopThenWorkerEndKeepsTheState() throws {
        let harness = Harness()
        _ = try harness.start()
        #expect(harness.supervisor.handle(SIGTERM) == nil)
        #expect(harness.supervisor.standby == nil)
        harness.system.kill(harness.active?.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == 0)
        #expect(harness.backend.forgotten.isEmpty, "-u removes the state itself")
    }

    @Test func deathOfALinkNoLongerOursEnds() throws {
        let harness = Harness()
        _ = try harness.start()
        harness.backend.linkOurs = false
        harness.system.kill(harness.active?.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == 0)
    }

    /// No worker can be brought back and the link goes away meanwhile: the supervisor fails.
    @Test func noWorkerAtAllFails() throws {
        let harness = Harness()
        _ = try harness.start()
        harness.system.failingModes = ["standby", "reattach"]
        harness.system.kill(harness.standby?.process.pid)
        harness.system.kill(harness.active?.process.pid)
        // The link waits through the first death's check and three attempts.
        harness.backend.remainingOurs = 4
        #expect(harness.supervisor.handle(SIGCHLD) == 1)
        #expect(harness.system.logs.filter { $0.contains("cannot start a new worker") }.count == 3)
        #expect(harness.system.clock == 101.5, "half a second between attempts")
    }

    /// Hot upgrade: the new binary's standby gets the live link the old worker hands over.
    @Test func upgradeHandsTheLinkOver() throws {
        let harness = Harness()
        _ = try harness.start()
        let old = try #require(harness.active)
        harness.standbyBehaviour = .takeOver
        harness.system.onSignal = { signal, worker in
            if signal == SIGUSR2 { worker.say(.handOff(harness.link.server)) }
        }
        #expect(harness.supervisor.handle(SIGUSR1) == nil)
        let fresh = try #require(harness.active)
        #expect(fresh.process != old.process)
        #expect(fresh.executable == harness.system.installed)
        #expect(harness.supervisor.workerExecutable == harness.system.installed, "later workers run the new binary")
        guard case .serveLink? = fresh.heard().last else {
            Issue.record("the new worker got no link")
            return
        }
        #expect(harness.backend.events == [.upgradeHandedOver, .upgraded])
        #expect(harness.standby?.executable == harness.system.installed)
    }

    /// The upgrade ends by exec'ing the installed binary as the supervisor, handing over the
    /// serving worker and the links; a supervisor resumed from that handover supervises on.
    @Test func upgradeReplacesTheSupervisorWithItsState() throws {
        let harness = Harness()
        _ = try harness.start()
        harness.standbyBehaviour = .takeOver
        harness.system.onSignal = { signal, worker in
            if signal == SIGUSR2 { worker.say(.handOff(harness.link.server)) }
        }
        var countedAtExec: [SupervisorEvent]?
        harness.system.beforeReplace = { countedAtExec = harness.backend.events }
        #expect(harness.supervisor.handle(SIGUSR1) == nil)
        #expect(
            countedAtExec == [.upgradeHandedOver],
            "the state names the new worker before the exec, and the new binary counts the upgrade")
        #expect(
            harness.backend.events == [.upgradeHandedOver, .upgraded], "the exec failed: the old supervisor counts it")
        let fresh = try #require(harness.active)
        let replacement = try #require(harness.system.replacements.first)
        #expect(replacement.executable == harness.system.installed)
        #expect(replacement.inheritable, "the descriptors survive the exec")
        let argument = try #require(replacement.arguments.last)
        let handover = try #require(SupervisorHandover(argument: argument))
        #expect(handover.link == 5 && handover.recovers && handover.worker == fresh.process)
        #expect(handover.descriptors.allSatisfy { fcntl($0, F_GETFD) & FD_CLOEXEC != 0 }, "close-on-exec again")
        #expect(harness.system.logs.contains { $0.contains("the supervisor stays as it was") })
        #expect(harness.standby != nil, "the exec failed: the old supervisor goes on, with a standby")

        // What the new binary would do with it (copies: the old supervisor here still owns them).
        var copy = handover
        copy.workerStatus = dup(handover.workerStatus)
        copy.workerControl = dup(handover.workerControl)
        copy.liveLink = dup(handover.liveLink)
        copy.liveReplyFile = -1
        copy.shared = []
        let parsed = try #require(SupervisorHandover(argument: copy.argument))
        let resumed = Supervisor(
            backend: harness.backend, system: harness.system, resuming: parsed,
            workerExecutable: harness.system.installed)
        #expect(resumed.active?.process == fresh.process && resumed.liveLink?.rawValue == copy.liveLink)
        harness.standbyBehaviour = .resume
        resumed.resumeAfterExec()
        #expect(harness.backend.events.last == .upgraded, "the resumed supervisor counts its upgrade")
        #expect(harness.backend.events.count == 3)
        let standby = try #require(harness.system.worker(resumed.standby?.process.pid))
        harness.system.kill(fresh.process.pid)
        #expect(resumed.handle(SIGCHLD) == nil)
        #expect(resumed.active?.process == standby.process)
        guard case .resume? = standby.heard().last else {
            Issue.record("the resumed supervisor did not resume the live link")
            return
        }
    }

    @Test(arguments: [
        "", "link=5", "link=5,recovers=1,worker=1:2,status=3,control=4,live=-1,reply=-1,shared=",
        "link=5,recovers=2,worker=100:2,status=0,control=1,live=-1,reply=-1,shared=",
        "link=5,recovers=1,worker=100:2,status=0,control=1,live=-1,reply=-1,shared=0:x",
        "link=5,recovers=1,worker=100:2,status=0,control=1,live=-1,reply=-1,shared=,link=6",
        "link=5,recovers=1,worker=100:2,status=0,control=99999,live=-1,reply=-1,shared=",
    ])
    func malformedHandoversAreRefused(argument: String) {
        #expect(SupervisorHandover(argument: argument) == nil)
    }

    @Test func handoverRoundTrips() throws {
        let handover = SupervisorHandover(
            link: 7, recovers: true, worker: DaemonProcess(pid: 4242, startTime: 99), workerStatus: 0,
            workerControl: 1, liveLink: 2, liveReplyFile: -1, shared: [-1, 0])
        #expect(SupervisorHandover(argument: handover.argument) == handover)
    }

    /// Upgrade during a recovery: the serving worker died before it could hand its link over.
    /// The new binary's standby resumes it from the journal.
    @Test func upgradeWhileTheWorkerIsDead() throws {
        let harness = Harness()
        _ = try harness.start()
        let old = try #require(harness.active)
        old.vanish()  // dead, SIGCHLD not yet taken
        #expect(harness.supervisor.handle(SIGUSR1) == nil)
        let fresh = try #require(harness.active)
        #expect(fresh.process != old.process)
        guard case .resume? = fresh.heard().last else {
            Issue.record("the new worker was not asked to resume")
            return
        }
        #expect(harness.system.terminated.contains(old.process.pid))
        // Its SIGCHLD comes later and changes nothing.
        harness.system.exited.append((old.process.pid, SIGKILL))
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.supervisor.active?.process == fresh.process)
    }

    /// The upgrade's standby cannot start: the old worker keeps serving, untouched.
    @Test func upgradeWithoutANewWorkerKeepsTheOld() throws {
        let harness = Harness()
        _ = try harness.start()
        let old = try #require(harness.active)
        harness.system.failingModes = ["standby"]
        #expect(harness.supervisor.handle(SIGUSR1) == nil)
        #expect(harness.supervisor.active?.process == old.process)
        #expect(!harness.system.signalled.contains { $0.signal == SIGUSR2 })
    }

    /// The new worker dies between the hand-over and its first word: the socket the old worker
    /// handed over must be closed, or that stray reference keeps the kernel's link alive and a
    /// later RECONFIGURE recovery is refused. (Failed before the supervisor owned it.)
    @Test func failedHandOverClosesTheHandedOverLink() throws {
        let harness = Harness()
        _ = try harness.start()
        harness.standbyBehaviour = .takeOver
        let handed = Link()
        harness.system.onSignal = { signal, worker in
            guard signal == SIGUSR2 else { return }
            worker.say(.handOff(handed.server))
            handed.closeServer()
            // The new worker is gone by the time the supervisor writes to it.
            harness.system.workers.last?.vanish()
        }
        #expect(!handed.serverGone)
        #expect(harness.supervisor.handle(SIGUSR1) == nil)
        #expect(harness.system.logs.contains { $0.contains("upgrade failed") })
        #expect(handed.serverGone, "the supervisor kept a copy of the handed-over link")
    }

    /// The same request in flight at three deaths in a row is failed once, and logged; the
    /// rest is served on.
    @Test func crashLoopFailsThePoisonedRequestOnce() throws {
        let harness = Harness()
        _ = try harness.start()
        let poisoned = InFlightRequest(key: "cookie-9", summary: "READ of 4096 bytes at 8192")
        let other = InFlightRequest(key: "cookie-10", summary: "READ of 4096 bytes at 0")
        harness.backend.inFlight = [poisoned]
        for death in 1...3 {
            if death == 2 { harness.backend.inFlight = [poisoned, other] }
            if death == 3 { harness.backend.inFlight = [poisoned] }
            harness.system.kill(harness.active?.process.pid)
            #expect(harness.supervisor.handle(SIGCHLD) == nil)
            #expect(harness.supervisor.active != nil)
        }
        #expect(harness.backend.failed == [[poisoned]])
        #expect(harness.system.logs.filter { $0.contains("READ of 4096 bytes at 8192 was in flight at 3") }.count == 1)
        // The next death without it starts counting again.
        harness.backend.inFlight = [other]
        harness.system.kill(harness.active?.process.pid)
        #expect(harness.supervisor.handle(SIGCHLD) == nil)
        #expect(harness.backend.failed.count == 1)
        #expect(harness.backend.events.count == 4)
    }
}

@Suite struct CrashLoopGuardTests {
    let a = InFlightRequest(key: "a", summary: "a")
    let b = InFlightRequest(key: "b", summary: "b")

    @Test func onlyConsecutiveDeathsCount() {
        var guardian = CrashLoopGuard(limit: 3)
        #expect(guardian.workerDied(holding: [a, b]).isEmpty)
        #expect(guardian.workerDied(holding: [a]).isEmpty)
        #expect(guardian.workerDied(holding: [a, b]) == [a], "b missed a death")
        #expect(guardian.workerDied(holding: [a, b]).isEmpty, "a starts over once failed")
        #expect(guardian.workerDied(holding: []).isEmpty)
        #expect(guardian.workerDied(holding: [b]).isEmpty)
    }

    @Test func duplicatesCountOnce() {
        var guardian = CrashLoopGuard(limit: 2)
        #expect(guardian.workerDied(holding: [a, a]).isEmpty)
        #expect(guardian.workerDied(holding: [a, a]) == [a])
    }

    @Test func limitOfOneFailsAtOnce() {
        var guardian = CrashLoopGuard(limit: 0)
        #expect(guardian.limit == 1)
        #expect(guardian.workerDied(holding: [a]) == [a])
    }
}
