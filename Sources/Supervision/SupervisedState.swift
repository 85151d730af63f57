#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

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
        case .upgradeHandedOver:
            break
        case .upgraded:
            upgrades = (upgrades ?? 0) + 1
        }
    }
}

/// Why `--upgrade` of a link failed.
public struct UpgradeFailure: Error, CustomStringConvertible, Sendable {
    public let description: String
}

extension DaemonProcess {
    /// `--upgrade`: SIGUSR1 asks this supervisor, which the caller checked is ours, to move
    /// `link` (a device or a mountpoint) to the binary now installed; returns the link's state
    /// once it counts one more upgrade than `state`. While it waits only the supervisor's
    /// identity (pid and start time) is checked, not its command line: the supervisor execs
    /// itself, and mid-exec its /proc/PID/cmdline reads empty. `log` is the supervisor's.
    public func requestUpgrade<State: SupervisedState>(
        of link: String, from state: State, timeout: Double, log: String, reload: () -> State?
    ) throws(UpgradeFailure) -> State {
        let before = state.upgrades ?? 0
        kill(pid, SIGUSR1)
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            usleep(20_000)
            if let now = reload(), (now.upgrades ?? 0) > before { return now }
            if !isAlive {
                throw UpgradeFailure(
                    description: "\(link): its supervisor ended before the upgrade completed (see \(log))")
            }
        }
        throw UpgradeFailure(description: "\(link): the upgrade did not complete within \(Int(timeout)) s (see \(log))")
    }
}
