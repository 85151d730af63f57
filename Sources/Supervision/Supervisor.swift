#if canImport(Glibc)
import Glibc
#endif
import CShim
import SystemCalls

/// The supervisor of one kernel link (an nbd device, a FUSE connection, a ublk device): it
/// serves no I/O itself. It keeps one worker serving and one standby worker that has already
/// opened the source, and waits for signals and its worker's death, nothing else:
/// - SIGCHLD, or sooner the hang-up of its control channel: the serving worker died (any
///   signal, any crash). The supervisor holds a copy of the worker's link, so the kernel's
///   link did not die with it. The standby goes on serving
///   that link from where the backend's journal says the dead worker stopped, and a new standby
///   starts. Only when that cannot be done does the standby give the device a new link
///   (`reconnect`). A request in flight at every one of `CrashLoopGuard.limit` consecutive
///   deaths is failed with EIO by the next worker instead of killing it too.
/// - SIGUSR1, hot upgrade: a standby from the binary now installed opens the source, the serving
///   worker stops at a request boundary with every reply sent and hands over its live link,
///   the new worker serves it. The kernel never sees a dead link.
/// - SIGTERM: stop supervising (`-u`, `--disconnect`); the worker ends with the device.
/// A worker that ends because the kernel ended the link ends the supervisor.
///
/// Descriptors: the report to whoever started us on `statusDescriptor` (3).
public final class Supervisor<Backend: SupervisedBackend> {
    public static var statusDescriptor: Int32 { 3 }

    /// How the supervisor's `run` ends, as its exit status.
    public enum Exit: Int32 {
        /// The link ended (unmounted, disconnected) or we were told to stop.
        case done = 0
        /// The first worker failed, or no worker could be brought back.
        case failed = 1
    }

    /// A worker and our ends of its status pipe and control channel, which it owns: closed by
    /// `release()` or when the last reference goes, so no path out of a spawn, a recovery or an
    /// upgrade leaves them open.
    final class Worker {
        let process: DaemonProcess
        private var statusEnd: OwnedDescriptor?
        private var controlEnd: OwnedDescriptor?

        init(process: DaemonProcess, status: consuming OwnedDescriptor, control: consuming OwnedDescriptor) {
            self.process = process
            statusEnd = Optional(status)
            controlEnd = Optional(control)
        }

        /// -1 once released.
        var status: Int32 { statusEnd?.rawValue ?? -1 }
        var control: ControlChannel { ControlChannel(descriptor: controlEnd?.rawValue ?? -1) }

        /// Closes our ends now (a standby waiting for its word ends when its channel closes).
        func release() {
            statusEnd = nil
            controlEnd = nil
        }

        /// The worker's next word past a `prepared` not yet read (a standby started without
        /// waiting for it).
        func nextWord(timeout: Double) throws(SystemError) -> ControlMessage? {
            let word = try control.receive(timeout: timeout)
            return word == .prepared ? try control.receive(timeout: timeout) : word
        }
    }

    let backend: Backend
    let system: any SupervisorSystem
    var active: Worker?
    var standby: Worker?
    var link: UInt32 = 0
    /// Our copy of the serving worker's link: with it open, the worker's death does not close
    /// the kernel's link, and the standby can go on serving it.
    var liveLink: OwnedDescriptor?
    /// Our copy of the serving worker's reply file (its position counts a big reply's progress).
    var liveReplyFile: OwnedDescriptor?
    var stopping = false
    var standbyRetryAt = 0.0
    /// The binary new workers run: ours, until a hot upgrade installs another (a later
    /// standby must not bring the old code back).
    var workerExecutable: String
    /// Only a link that outlives its worker can be recovered.
    var recovers = false
    var crashLoop: CrashLoopGuard
    /// Where the report for whoever started us goes.
    let reportDescriptor: Int32

    public init(
        backend: Backend, system: any SupervisorSystem, workerExecutable: String = "/proc/self/exe",
        crashLoopLimit: Int = 3, reportDescriptor: Int32 = 3
    ) {
        self.backend = backend
        self.system = system
        self.workerExecutable = workerExecutable
        self.crashLoop = CrashLoopGuard(limit: crashLoopLimit)
        self.reportDescriptor = reportDescriptor
    }

    /// Goes on supervising after the exec of a hot upgrade, from what the previous binary
    /// handed over (see `SupervisorHandover`).
    public convenience init(
        backend: Backend, system: any SupervisorSystem, resuming handover: SupervisorHandover,
        workerExecutable: String, crashLoopLimit: Int = 3
    ) {
        self.init(
            backend: backend, system: system, workerExecutable: workerExecutable, crashLoopLimit: crashLoopLimit,
            reportDescriptor: -1)
        link = handover.link
        recovers = handover.recovers
        active = Worker(
            process: handover.worker, status: OwnedDescriptor(handover.workerStatus),
            control: OwnedDescriptor(handover.workerControl))
        if handover.liveLink >= 0 { liveLink = OwnedDescriptor(handover.liveLink) }
        if handover.liveReplyFile >= 0 { liveReplyFile = OwnedDescriptor(handover.liveReplyFile) }
        // Close-on-exec again: the workers get them only where spawn puts them.
        handover.setInherited(false)
    }

    /// The supervisor's whole life; returns its exit status.
    public func run(firstMode: WorkerMode = .connect) -> Int32 {
        if let status = start(firstMode: firstMode) { return status }
        return serve()
    }

    /// After `init(resuming:)`: supervises on, taking signals as before the exec.
    public func resume() -> Int32 {
        resumeAfterExec()
        // A child that ended during the exec left its SIGCHLD pending: it is taken below.
        return serve()
    }

    /// Counts the upgrade that exec'd us and starts a standby.
    func resumeAfterExec() {
        log("\(name): supervising again as \(system.installedExecutable()), worker \(active?.process.pid ?? 0)")
        if let active { record(.upgraded, serving: active.process) }
        if recovers {
            replaceStandby()
            _ = cshim_populate_executable_code_in_background()
        }
    }

    func serve() -> Int32 {
        while true {
            let status: Int32?
            switch system.nextEvent(timeout: 1, hangUpOf: watchedControl) {
            case .signal(let signal)?: status = handle(signal)
            case .hangUp?: status = activeWorkerHungUp()
            case nil: status = handle(nil)
            }
            if let status { return status }
        }
    }

    /// The serving worker's control channel, watched for its death while the link can be taken
    /// over without it (it is shared); nil once it hung up, so a hang-up is taken once.
    var watchedControl: Int32? {
        guard recovers, backend.workersShareTheirLink, let active, active.process.pid != hungUp else { return nil }
        return active.control.descriptor
    }

    /// The worker whose control channel hung up last.
    var hungUp: Int32?

    /// The serving worker's control channel hung up: the last of its threads let its
    /// descriptors go, so it can no longer read or write the link, and it has begun exiting.
    /// Its SIGCHLD comes only after it has also dropped its mappings, one round trip per mapped
    /// file where the binary is on a network filesystem, on a loaded host seconds: a death is
    /// recovered from now (its wait status is readable already). A clean end waits for SIGCHLD.
    func activeWorkerHungUp() -> Int32? {
        guard let ended = active else { return nil }
        hungUp = ended.process.pid
        guard let status = system.exitStatusWhileExiting(ended.process),
            backend.ending(ofWorkerWithStatus: status) == .died
        else { return nil }
        return activeWorkerEnded(ended, status: status, seenAtHangUp: true)
    }

    /// Starts the first worker and its standby, and reports; an exit status when that failed.
    public func start(firstMode: WorkerMode = .connect) -> Int32? {
        // The first standby starts with the first worker and learns the link from us: a crash
        // soon after the mount then finds it ready, not still starting. Unless the backend
        // would rather return sooner: it then starts once the report is sent.
        if backend.startsFirstStandbyWithFirstWorker {
            standby = try? spawn(mode: .standby(nil), executable: workerExecutable)
        }
        // The first worker's report goes, as is, to whoever started us.
        let first: Worker
        let report: DaemonReport
        do {
            (first, report) = try startWorker(mode: firstMode)
        } catch {
            stopStandby()
            DaemonReport.failed("\(error)").send(to: reportDescriptor)
            return Exit.failed.rawValue
        }
        guard case .ready(let index, let method, _) = report, let attached = UInt32(exactly: index) else {
            stopStandby()
            report.send(to: reportDescriptor)
            first.release()
            _ = system.waitForExit(first.process, timeout: 10)
            return Exit.failed.rawValue
        }
        active = first
        link = attached
        recovers = backend.canRecover(attachedBy: method)
        if recovers, let early = standby, (try? early.control.send(.device(link))) == nil {
            stopStandby()
        }
        if !recovers { stopStandby() }
        adoptLink(of: first)
        guard report.send(to: reportDescriptor) else {
            // Whoever started us died before learning of the link: release it.
            log("\(name): nobody took the report; releasing it")
            stopping = true
            stopStandby()
            backend.releaseUnclaimed(link: link, attachedBy: method)
            _ = system.waitForExit(first.process, timeout: 30)
            first.release()
            dropLiveLink()
            return Exit.failed.rawValue
        }
        log("supervising \(name) (\(method)), worker \(first.process.pid)")
        if recovers && standby == nil { replaceStandby() }
        // Our recovery code first runs at the first crash: its pages are mapped now, so that
        // crash does not also wait for them to be read (best effort, Linux 5.14+).
        if recovers { _ = cshim_populate_executable_code_in_background() }
        return nil
    }

    /// Acts on one signal (nil: a second passed without one); the exit status when the
    /// supervisor should end.
    public func handle(_ signal: Int32?) -> Int32? {
        switch signal {
        case SIGCHLD:
            if let status = reapWorkers() { return status }
        case SIGTERM, SIGINT, SIGHUP:
            stopping = true
            stopStandby()
            if active == nil { return Exit.done.rawValue }
        case SIGUSR1:
            upgrade()
        default:
            break
        }
        if standby == nil, !stopping, active != nil, recovers, system.now() >= standbyRetryAt {
            replaceStandby()
        }
        return nil
    }

    var name: String { backend.linkName(link) }

    /// Reaps every exited child; returns the supervisor's exit status when it should end.
    func reapWorkers() -> Int32? {
        while let (pid, status) = system.reapChild() {
            if pid == standby?.process.pid {
                log("standby worker \(pid) ended (\(describe(waitStatus: status)))")
                standby?.release()
                standby = nil
                standbyRetryAt = system.now() + 1
                continue
            }
            // A worker recovered from at its hang-up is not active any more: only reaped here.
            guard pid == active?.process.pid, let ended = active else { continue }
            if let status = activeWorkerEnded(ended, status: status) { return status }
        }
        return nil
    }

    /// The serving worker ended with wait status `status`: recovers, or returns the
    /// supervisor's exit status when it should end.
    func activeWorkerEnded(_ ended: Worker, status: Int32, seenAtHangUp: Bool = false) -> Int32? {
        let pid = ended.process.pid
        ended.release()
        active = nil
        let ending = backend.ending(ofWorkerWithStatus: status)
        if stopping || ending == .linkEnded || !recovers || !backend.linkIsOurs(link) {
            log("\(name): worker \(pid) ended (\(describe(waitStatus: status))); done")
            dropLiveLink()
            stopStandby()
            if !stopping { backend.forget(link: link) }
            return Exit.done.rawValue
        }
        log(
            "\(name): worker \(pid) died (\(describe(waitStatus: status))\(seenAtHangUp ? ", seen at its hang-up" : "")); recovering"
        )
        if ending == .linkDropped { dropLiveLink() }
        recover(after: ended.process)
        if active == nil {
            dropLiveLink()
            stopStandby()
            return Exit.failed.rawValue
        }
        return nil
    }

    /// Fails, through the next worker, what was in flight at too many deaths in a row.
    func guardAgainstCrashLoop() {
        let poisoned = crashLoop.workerDied(holding: backend.requestsInFlight())
        guard !poisoned.isEmpty else { return }
        let failed = backend.failRequests(poisoned)
        for request in poisoned {
            log(
                "\(name): \(request.summary) was in flight at \(crashLoop.limit) worker deaths in a row; \(failed ? "failing it with EIO" : "cannot fail it: the backend has no way to")"
            )
        }
    }

    /// A new worker on the dead link after `dead`: the standby if there is one, else a fresh
    /// one; retried while the link still waits for us.
    func recover(after dead: DaemonProcess) {
        let started = system.now()
        guardAgainstCrashLoop()
        var resumed = false
        if let live = liveLink?.rawValue, !backend.linkIsDead(live) {
            if standby == nil { replaceStandby() }
            if let candidate = standby {
                standby = nil
                resumed = resume(candidate)
                if resumed { active = candidate } else { standby = candidate }
            }
        }
        // The slow way: the link must die first, then the kernel takes a new one. Taken at its
        // hang-up, the dead worker may still hold its copy: it is gone once reaped.
        if !resumed {
            _ = system.waitForExit(dead, timeout: 10)
            dropLiveLink()
        }
        if active == nil, let candidate = standby {
            standby = nil
            do {
                try candidate.control.send(.reconnect)
                if case .ready? = try DaemonReport.receive(from: candidate.status, timeout: 10) {
                    active = candidate
                }
            } catch {
                log("standby \(candidate.process.pid) could not take over: \(error)")
            }
            if active == nil {
                candidate.release()
                system.terminate(candidate.process, signal: SIGKILL, timeout: 5)
            }
        }
        while active == nil && !stopping && backend.linkIsOurs(link) {
            do {
                let (worker, report) = try startWorker(mode: .reattach(link))
                if case .ready = report {
                    active = worker
                    break
                }
                worker.release()
                log("\(name): a new worker failed: \(report)")
            } catch {
                log("\(name): cannot start a new worker: \(error)")
            }
            system.pause(seconds: 0.5)
        }
        guard let active else { return }
        if !resumed { adoptLink(of: active) }
        let milliseconds = Int((system.now() - started) * 1000)
        log(
            "\(name): worker \(active.process.pid) serves again after \(milliseconds) ms (\(resumed ? "same link, from the journal" : "new link"))"
        )
        record(.recovered(milliseconds: milliseconds), serving: active.process)
        replaceStandby()
    }

    /// Hot upgrade: the installed binary's standby takes the live link from the worker.
    func upgrade() {
        guard let old = active, !stopping else { return }
        let started = system.now()
        stopStandby()
        let fresh: Worker
        let executable = system.installedExecutable()
        do { fresh = try startStandby(executable: executable) } catch {
            log("\(name): upgrade failed, the current worker keeps serving: \(error)")
            replaceStandby()
            return
        }
        system.send(SIGUSR2, to: old.process)
        // Owned: closed on every way out unless handed to the new worker.
        var handedOver: OwnedDescriptor?
        do {
            if case .handOff(let descriptor)? = try old.control.receive(timeout: 30) {
                handedOver = OwnedDescriptor(descriptor.take())
            }
        } catch {
            log("\(name): worker \(old.process.pid) did not hand over its link: \(error)")
        }
        var resumed = false
        do {
            if let descriptor = handedOver?.rawValue {
                try fresh.control.send(.serveLink(descriptor))
                handedOver = nil
            } else {
                // It died (or hung) on the way: once it is gone, this is a recovery.
                system.terminate(old.process, signal: SIGKILL, timeout: 5)
                resumed = liveLink != nil && resume(fresh)
                if !resumed {
                    dropLiveLink()
                    try fresh.control.send(.reconnect)
                }
            }
            if !resumed {
                guard case .ready? = try DaemonReport.receive(from: fresh.status, timeout: 10) else {
                    throw SystemError("upgrade", detail: "the new worker did not start serving")
                }
            }
        } catch {
            log("\(name): upgrade failed: \(error)")
            fresh.release()
            system.terminate(fresh.process, signal: SIGKILL, timeout: 5)
            // The old worker is gone or going; the SIGCHLD path recovers the link.
            return
        }
        old.release()
        active = fresh
        workerExecutable = executable
        if !resumed { adoptLink(of: fresh) }
        let milliseconds = Int((system.now() - started) * 1000)
        log("\(name): upgraded to worker \(fresh.process.pid) in \(milliseconds) ms")
        // The state names the new worker before the exec (a supervisor lost in it leaves a
        // state `--reattach` can trust), but the upgrade is counted by the new supervisor
        // (`resume`): `--upgrade` returns only once no part of the link runs the old code.
        record(.upgradeHandedOver, serving: fresh.process)
        replaceSupervisor(with: executable)
        record(.upgraded, serving: fresh.process)
        replaceStandby()
    }

    /// The end of a hot upgrade: this process becomes the installed binary too, keeping its
    /// pid (the state names it), its children and the descriptors of the serving worker. On
    /// success it does not return; when the exec fails the old supervisor goes on.
    func replaceSupervisor(with executable: String) {
        guard let active else { return }
        stopStandby()  // the new supervisor starts its own
        let handover = SupervisorHandover(
            link: link, recovers: recovers, worker: active.process, workerStatus: active.status,
            workerControl: active.control.descriptor, liveLink: liveLink?.rawValue ?? -1,
            liveReplyFile: liveReplyFile?.rawValue ?? -1, shared: backend.sharedDescriptors)
        guard let arguments = backend.supervisorArguments(resuming: handover) else { return }
        log("\(name): replacing the supervisor with \(executable)")
        handover.setInherited(true)
        let error = system.replaceProcess(executable: executable, arguments: arguments)
        handover.setInherited(false)
        log("\(name): the supervisor stays as it was: \(error)")
    }

    /// Asks the standby to go on serving the live link from the journal; false when it could
    /// not (it then waits for `reconnect`) or is gone.
    func resume(_ candidate: Worker) -> Bool {
        guard let live = liveLink?.rawValue else { return false }
        do {
            if let file = liveReplyFile?.rawValue { try candidate.control.send(.replyFile(file)) }
            try candidate.control.send(.resume(live))
            guard case .resumed(true)? = try candidate.nextWord(timeout: 30) else {
                log("\(name): the standby cannot resume from the journal; giving the link a new one")
                return false
            }
            guard case .ready? = try DaemonReport.receive(from: candidate.status, timeout: 10) else {
                throw SystemError("resume", detail: "the standby did not report")
            }
            return true
        } catch {
            log("\(name): standby \(candidate.process.pid) could not resume: \(error)")
            return false
        }
    }

    /// Takes the copy of its link a worker sends before its report (not after a resume: the
    /// link is the one we hold).
    func adoptLink(of worker: Worker) {
        guard backend.workersShareTheirLink else { return }
        guard case .serving(let descriptor)? = try? worker.nextWord(timeout: 2) else {
            log("\(name): worker \(worker.process.pid) sent no copy of its link; a crash will need a new one")
            return
        }
        dropLiveLink()
        liveLink = OwnedDescriptor(descriptor.take())
        if case .replyFile(let file)? = try? worker.control.receive(timeout: 2), file.rawValue >= 0 {
            liveReplyFile = OwnedDescriptor(file.take())
        }
    }

    func dropLiveLink() {
        liveLink = nil
        liveReplyFile = nil
    }

    func replaceStandby() {
        stopStandby()
        do { standby = try startStandby(executable: workerExecutable, waitUntilPrepared: false) } catch {
            log("\(name): no standby worker: \(error)")
            standbyRetryAt = system.now() + 1
        }
    }

    func stopStandby() {
        guard let old = standby else { return }
        standby = nil
        old.release()  // a standby waiting for its word ends when the channel closes
        system.terminate(old.process, signal: SIGTERM, timeout: 2)
    }

    /// Starts a standby. Only an upgrade waits for it to have opened the source (the old
    /// worker must not stop before); otherwise its `prepared` is skipped when its word comes,
    /// so a crash while a standby is still starting waits for that start, not for the
    /// supervisor to finish waiting on it.
    func startStandby(executable: String, waitUntilPrepared: Bool = true) throws(SystemError) -> Worker {
        let worker = try spawn(mode: .standby(link), executable: executable)
        guard waitUntilPrepared else { return worker }
        guard case .prepared? = try? worker.control.receive(timeout: 30) else {
            worker.release()
            system.terminate(worker.process, signal: SIGKILL, timeout: 5)
            throw SystemError("start a standby worker", detail: "it ended before opening its source")
        }
        return worker
    }

    /// Starts a worker that attaches at once, and waits for its report.
    func startWorker(mode: WorkerMode) throws(SystemError) -> (Worker, DaemonReport) {
        let worker = try spawn(mode: mode, executable: workerExecutable)
        let report: DaemonReport?
        do { report = try DaemonReport.receive(from: worker.status, timeout: 30) } catch {
            worker.release()
            system.terminate(worker.process, signal: SIGKILL, timeout: 5)
            throw error
        }
        guard let report else {
            let status = system.waitForChild(worker.process)
            worker.release()
            return (worker, .failed("the serving worker exited before attaching (\(describe(waitStatus: status)))"))
        }
        return (worker, report)
    }

    func spawn(mode: WorkerMode, executable: String) throws(SystemError) -> Worker {
        // The worker's ends close when this returns (it has its copies); ours go to `Worker`.
        let status = try DescriptorPair.pipe()
        let control = try DescriptorPair.socketPair(type: SOCK_SEQPACKET, "socketpair (worker control)")
        let process = try system.spawn(
            executable: executable, arguments: backend.workerArguments(for: mode),
            descriptors: [status.second.rawValue, control.second.rawValue] + backend.sharedDescriptors)
        return Worker(process: process, status: status.first, control: control.first)
    }

    func record(_ event: SupervisorEvent, serving: DaemonProcess) {
        do { try backend.record(event, link: link, serving: serving) } catch {
            log("\(name): cannot update its state: \(error)")
        }
    }

    func log(_ message: String) { system.log("erofs-supervisor[\(getpid())]: \(message)") }
}
