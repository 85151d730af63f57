#if canImport(Glibc)
import Glibc
#endif

/// The sockets of a network server's connections: the connection caps, eviction of idle
/// handshakes, and the forced shutdown at the end. The registry owns the sockets it admitted:
/// it alone closes them, under its lock, so that a `shutdown(2)` from another thread never
/// reaches a descriptor number already reused for a new connection.
///
/// Transmitting connections and handshakes have separate caps. Handshakes are cheap to open
/// and an attacker can hold many (idle, half-open): at their cap the one quiet the longest is
/// dropped for a newcomer, so a real client, whose every handshake step takes milliseconds,
/// gets through a flood as long as the handshake slots outnumber what the flood opens in that
/// time. Transmitting connections are never evicted; at their cap newcomers are closed.
final class ConnectionRegistry: @unchecked Sendable {
    enum Phase: Equatable {
        case handshake
        case transmission
    }

    private struct Entry {
        let socket: Int32
        var phase: Phase = .handshake
        /// When the handshake last made progress (a message received), or was accepted.
        var lastActivity: UInt64
        /// Shut down to make room; its thread is on its way out.
        var evicted = false
    }

    let transmissionCapacity: Int
    let handshakeCapacity: Int
    private let state = ConditionLock()
    private var entries: [Int: Entry] = [:]
    private var nextID = 0
    private var handshaking = 0
    private var transmitting = 0
    private var evicted = 0

    init(transmissionCapacity: Int, handshakeCapacity: Int) {
        precondition(transmissionCapacity > 0 && handshakeCapacity > 0)
        self.transmissionCapacity = transmissionCapacity
        self.handshakeCapacity = handshakeCapacity
    }

    enum Admission: Equatable {
        case admitted(id: Int)
        /// Every transmission slot is taken (or evicted handshakes did not go in time).
        case full
    }

    /// Takes `socket` into a handshake slot, evicting the handshake quiet the longest when they
    /// are all taken. On `.full` the caller closes `socket`.
    func admit(_ socket: Int32) -> Admission {
        state.withLock {
            guard transmitting < transmissionCapacity else { return .full }
            let start = monotonicMicroseconds()
            while handshaking >= handshakeCapacity {
                // Evicted connections keep their thread until it notices: at most as many as
                // the handshake slots. Past that, wait for one to go (the flood waits in the
                // listen queue) rather than refuse a client a moment later would serve.
                if evicted < handshakeCapacity, let victim = quietestHandshake() {
                    entries[victim]?.evicted = true
                    handshaking -= 1
                    evicted += 1
                    shutdown(entries[victim]!.socket, Int32(SHUT_RDWR))
                    break
                }
                let waited = monotonicMicroseconds() - start
                guard waited < Self.evictionWait else { return .full }
                state.wait(microseconds: Self.evictionWait - waited)
            }
            nextID += 1
            entries[nextID] = Entry(socket: socket, lastActivity: monotonicMicroseconds())
            handshaking += 1
            return .admitted(id: nextID)
        }
    }

    /// How long `admit` waits for evicted connections' threads to end.
    static let evictionWait: UInt64 = 1_000_000

    private func quietestHandshake() -> Int? {
        entries.filter { !$0.value.evicted && $0.value.phase == .handshake }
            .min { $0.value.lastActivity < $1.value.lastActivity }?.key
    }

    /// A handshake message arrived on connection `id`.
    func progressed(_ id: Int) {
        state.withLock { entries[id]?.lastActivity = monotonicMicroseconds() }
    }

    /// Moves connection `id` from its handshake slot to a transmission slot; false when it was
    /// evicted meanwhile or every transmission slot was taken since it was accepted.
    func enterTransmission(_ id: Int) -> Bool {
        state.withLock {
            guard let entry = entries[id], !entry.evicted, transmitting < transmissionCapacity else { return false }
            entries[id]?.phase = .transmission
            handshaking -= 1
            transmitting += 1
            return true
        }
    }

    /// Closes connection `id`'s socket and frees its slot.
    func remove(_ id: Int) {
        state.withLock {
            guard let entry = entries.removeValue(forKey: id) else { return }
            if entry.evicted {
                evicted -= 1
            } else if entry.phase == .handshake {
                handshaking -= 1
            } else {
                transmitting -= 1
            }
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
