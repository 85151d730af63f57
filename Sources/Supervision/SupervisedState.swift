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
