/// Decides whether the wait for the next request tries the socket without sleeping first.
///
/// A sleep in poll(2) costs a wake-up when the request comes, and under emulation that wake-up
/// is most of a small read's round trip. Spinning pays only while requests come within the
/// window, so the policy keeps a moving share of the recent waits that ended in time (spun or
/// slept alike) and spins only while at least half of them did. One gap (a reader's own work
/// between files) therefore does not turn spinning off for the next request, and a device that
/// goes idle, or a client slower than the window, stops spinning after a few waits.
struct PollPolicy: Equatable {
    /// How long a wait may spin, in microseconds; 0: never.
    let window: UInt64
    /// The share of recent waits that ended within `window`, in 1/256ths: each wait moves it
    /// an eighth of the way to 256 (in time) or 0 (late), so it averages about the last eight.
    private(set) var share: UInt32 = Self.whole

    init(window: UInt64) { self.window = window }

    /// Whether the next wait spins before it sleeps.
    var spins: Bool { window > 0 && share >= Self.whole / 2 }

    /// Records how long a wait took, from its start until a request was there.
    mutating func record(waited microseconds: UInt64) {
        guard window > 0 else { return }
        share = share - share / 8 + (microseconds <= window ? Self.whole / 8 : 0)
    }

    private static let whole: UInt32 = 256
}
