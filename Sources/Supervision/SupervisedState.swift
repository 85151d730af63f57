#if canImport(Glibc)
import Glibc
#endif

/// The part of a link's state file the supervisor keeps up to date, whatever the backend: the
/// serving worker and the counters `--list`, `--upgrade` and the tests read.
public protocol SupervisedState {
    var servingPID: Int32? { get set }
    var servingStartTime: UInt64? { get set }
    var recoveries: Int? { get set }
    var lastRecoveryMilliseconds: Int? { get set }
    var upgrades: Int? { get set }
}

extension SupervisedState {
    /// Records `event`, and `serving` as the serving worker when given.
    public mutating func apply(_ event: SupervisorEvent, serving: DaemonProcess?) {
        if let serving {
            servingPID = serving.pid
            servingStartTime = serving.startTime
        }
        switch event {
        case .recovered(let milliseconds):
            recoveries = (recoveries ?? 0) + 1
            lastRecoveryMilliseconds = milliseconds
        case .upgraded:
            upgrades = (upgrades ?? 0) + 1
        }
    }
}

extension DaemonProcess {
    /// `--upgrade`: SIGUSR1 asks this supervisor to move its link to the binary now installed.
    /// Returns the link's state once it counts one more upgrade than `state`; nil when the
    /// supervisor stops being `stillOurs` or `timeout` seconds pass first.
    public func requestUpgrade<State: SupervisedState>(
        from state: State, timeout: Double, stillOurs: () -> Bool, reload: () -> State?
    ) -> State? {
        let before = state.upgrades ?? 0
        kill(pid, SIGUSR1)
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            usleep(20_000)
            if let now = reload(), (now.upgrades ?? 0) > before { return now }
            if !stillOurs() { break }
        }
        return nil
    }
}
