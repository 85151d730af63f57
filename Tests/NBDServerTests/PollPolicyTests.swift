@testable import NBDServer
import Testing

/// The reader spins for the next request only while requests keep coming within the window:
/// these feed the policy wait times and check when it spins.
@Suite struct PollPolicyTests {
    static let window: UInt64 = 1000

    @Test func aZeroWindowNeverSpins() {
        var policy = PollPolicy(window: 0)
        #expect(!policy.spins)
        for _ in 0..<20 { policy.record(waited: 10) }
        #expect(!policy.spins)
    }

    @Test func aNewConnectionSpins() {
        #expect(PollPolicy(window: Self.window).spins)
    }

    /// A reader's own work between files makes every few waits late; that must not cost the
    /// following requests their spin.
    @Test func anOccasionalLateWaitKeepsSpinning() {
        var policy = PollPolicy(window: Self.window)
        for wait in 0..<200 {
            policy.record(waited: wait % 3 == 2 ? 50_000 : 300)
            #expect(policy.spins, "stopped spinning after wait \(wait)")
        }
    }

    /// An idle device, or a client slower than the window, stops costing CPU after a few waits,
    /// and keeps not spinning.
    @Test func lateWaitsStopTheSpinSoon() {
        var policy = PollPolicy(window: Self.window)
        var spinning: [Bool] = []
        for _ in 0..<40 {
            policy.record(waited: Self.window + 1)
            spinning.append(policy.spins)
        }
        let firstWithout = spinning.firstIndex(of: false)
        #expect(firstWithout != nil && firstWithout! < 8)
        #expect(!spinning[(firstWithout ?? 0)...].contains(true))
    }

    /// Waits that slept but would have ended within the window bring the spin back.
    @Test func quickRequestsAfterAnIdleSpellSpinAgain() {
        var policy = PollPolicy(window: Self.window)
        for _ in 0..<40 { policy.record(waited: 2_000_000) }
        #expect(!policy.spins)
        var waits = 0
        while !policy.spins && waits < 100 {
            policy.record(waited: Self.window)  // exactly the window still counts as in time
            waits += 1
        }
        #expect(policy.spins)
        #expect(waits <= 8)
    }

    /// Mostly late waits (one in three in time) do not keep it spinning.
    @Test func mostlyLateWaitsDoNotSpin() {
        var policy = PollPolicy(window: Self.window)
        for wait in 0..<30 { policy.record(waited: wait % 3 == 0 ? 100 : 5000) }
        var spun = 0
        for wait in 30..<300 {
            policy.record(waited: wait % 3 == 0 ? 100 : 5000)
            if policy.spins { spun += 1 }
        }
        #expect(spun == 0)
    }
}
