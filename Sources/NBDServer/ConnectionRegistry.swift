#if canImport(Glibc)
import Glibc
#endif

/// The sockets of a network server's connections: the connection cap, eviction of idle
/// handshakes, and the forced shutdown at the end. The registry owns the sockets it admitted:
/// it alone closes them, under its lock, so that a `shutdown(2)` from another thread never
/// reaches a descriptor number already reused for a new connection.
final class ConnectionRegistry: @unchecked Sendable {
    enum Phase: Equatable {
        case handshake
        case transmission
    }

    private struct Entry {
        let socket: Int32
        var phase: Phase = .handshake
        /// Handshake messages received: a client that sent nothing yet is evicted first.
        var messages = 0
        var lastActivity: UInt64
        /// Shut down to make room; its thread is on its way out but still counts for the
        /// thread bound.
        var evicted = false
    }

    /// Connections served at once (handshaking or transmitting, not counting evicted ones).
    let capacity: Int
    private let state = ConditionLock()
    private var entries: [Int: Entry] = [:]
    private var nextID = 0
    private var live = 0

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    enum Admission: Equatable {
        case admitted(id: Int)
        /// Every slot is held by a connection in transmission (or evicted ones not yet gone).
        case full
    }

    /// Takes `socket` into a slot. At the cap, the handshake that made the least progress
    /// (nothing received, then quiet the longest) is shut down to make room: an idle or
    /// half-open flood then cannot keep a real client, whose handshake takes milliseconds,
    /// out. Transmitting connections are never evicted. On `.full` the caller closes `socket`.
    func admit(_ socket: Int32) -> Admission {
        state.withLock {
            let start = monotonicMicroseconds()
            while live >= capacity {
                guard let victim = leastProgressedHandshake() else { return .full }
                // Evicted connections keep their thread until it notices: at most `capacity` of
                // them. Past that, wait for one to go (the flood waits in the listen queue)
                // rather than refuse a client a moment later would serve.
                if entries.count < 2 * capacity {
                    entries[victim]?.evicted = true
                    live -= 1
                    shutdown(entries[victim]!.socket, Int32(SHUT_RDWR))
                    break
                }
                let waited = monotonicMicroseconds() - start
                guard waited < Self.evictionWait else { return .full }
                state.wait(microseconds: Self.evictionWait - waited)
            }
            nextID += 1
            entries[nextID] = Entry(socket: socket, lastActivity: monotonicMicroseconds())
            live += 1
            return .admitted(id: nextID)
        }
    }

    /// How long `admit` waits for evicted connections' threads to end.
    static let evictionWait: UInt64 = 1_000_000

    private func leastProgressedHandshake() -> Int? {
        entries.filter { !$0.value.evicted && $0.value.phase == .handshake }
            .min { ($0.value.messages, $0.value.lastActivity) < ($1.value.messages, $1.value.lastActivity) }?.key
    }

    /// A handshake message arrived on connection `id`.
    func progressed(_ id: Int, now: UInt64) {
        state.withLock {
            entries[id]?.messages += 1
            entries[id]?.lastActivity = now
        }
    }

    /// Connection `id` finished its handshake: it is no longer evictable.
    func enterTransmission(_ id: Int) {
        state.withLock { entries[id]?.phase = .transmission }
    }

    /// Closes connection `id`'s socket and frees its slot.
    func remove(_ id: Int) {
        state.withLock {
            guard let entry = entries.removeValue(forKey: id) else { return }
            if !entry.evicted { live -= 1 }
            close(entry.socket)
            state.broadcast()
        }
    }

    var count: Int { state.withLock { entries.count } }

    /// Waits until every connection is removed or `deadline` (CLOCK_MONOTONIC microseconds)
    /// passes; true when none is left.
    func waitUntilEmpty(deadline: UInt64) -> Bool {
        state.withLock {
            while !entries.isEmpty {
                let now = monotonicMicroseconds()
                guard now < deadline else { return false }
                state.wait(microseconds: deadline - now)
            }
            return true
        }
    }

    /// Shuts every socket down in both directions: blocked reads see the end of the stream,
    /// blocked sends fail with EPIPE, so every connection thread ends promptly however its
    /// client behaves.
    func shutdownAll() {
        state.withLock {
            for entry in entries.values { shutdown(entry.socket, Int32(SHUT_RDWR)) }
        }
    }
}

/// CLOCK_MONOTONIC in microseconds.
func monotonicMicroseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
}
