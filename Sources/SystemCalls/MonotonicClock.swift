#if canImport(Glibc)
import Glibc
#endif

/// CLOCK_MONOTONIC in seconds: deadlines and durations that a change of the wall clock does
/// not move.
public func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// CLOCK_MONOTONIC in nanoseconds, for intervals of a millisecond or less.
public func monotonicNanoseconds() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int(now.tv_sec) * 1_000_000_000 + Int(now.tv_nsec)
}
