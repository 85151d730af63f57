#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization
import SystemCalls

/// Error lines within a budget: at most `burst` per `window` seconds; what goes beyond is
/// counted and said in one line when the next window opens. A hostile image read in a loop
/// then costs a bounded log, not a full /run.
public final class RateLimitedLog: Sendable {
    private struct Window {
        var start: Double
        var logged = 0
        var suppressed = 0
    }

    let logger: Logger
    let burst: Int
    let window: Double
    let clock: @Sendable () -> Double
    private let state: Mutex<Window>

    public init(
        logger: Logger, burst: Int = 20, window: Double = 10,
        clock: @escaping @Sendable () -> Double = monotonicSeconds
    ) {
        self.logger = logger
        self.burst = burst
        self.window = window
        self.clock = clock
        state = Mutex(Window(start: clock()))
    }

    public func log(_ message: @autoclosure () -> String) {
        let now = clock()
        let (allowed, suppressedBefore) = state.withLock { window -> (Bool, Int) in
            var suppressed = 0
            if now - window.start >= self.window {
                suppressed = window.suppressed
                window = Window(start: now)
            }
            guard window.logged < burst else {
                window.suppressed += 1
                return (false, suppressed)
            }
            window.logged += 1
            return (true, suppressed)
        }
        if suppressedBefore > 0 { logger.error("\(suppressedBefore) more errors were not logged") }
        if allowed { logger.error("\(message())") }
    }
}
