import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One self-rewriting line on standard error while long work runs, only when standard error is
/// a terminal (a script or a log gets nothing); at most ten updates a second. Drawn by one
/// thread at a time (the one doing the work, or FetchProgress's).
public final class TerminalProgress: @unchecked Sendable {
    let label: String
    let total: UInt64
    public let enabled = isatty(2) == 1
    private var lastDraw: UInt64 = 0

    public init(label: String, total: UInt64) {
        self.label = label
        self.total = total
    }

    public func update(_ done: UInt64) {
        guard enabled else { return }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let milliseconds = UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
        guard milliseconds - lastDraw >= 100 || done == total else { return }
        lastDraw = milliseconds
        let percent = total == 0 ? 100 : done * 100 / total
        draw("\r\u{1B}[K\(label) \(done >> 20)/\(total >> 20) MiB (\(percent)%)")
    }

    public func finish() { if enabled { draw("\n") } }
    public func abandon() { if enabled { draw("\r\u{1B}[K") } }

    private func draw(_ text: String) {
        var text = text
        text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}

/// Progress of work that reads a remote object in no simple order (`erofs extract`): the bytes
/// fetched from the server, drawn ten times a second until `stop`. Nothing when standard error
/// is not a terminal.
public final class FetchProgress: Sendable {
    private let stopped = Atomic(false)
    private let done = DispatchSemaphore(value: 0)

    public init?(_ source: RemoteSource, label: String) {
        let progress = TerminalProgress(label: "\(source.displayName): \(label)", total: source.size)
        guard progress.enabled else { return nil }
        DispatchQueue.global().async { [self] in
            while !stopped.load(ordering: .acquiring) {
                progress.update(min(source.fetchedBytes, source.size))
                usleep(100_000)
            }
            progress.update(min(source.fetchedBytes, source.size))
            progress.finish()
            done.signal()
        }
    }

    /// Draws the last figure and ends the line.
    public func stop() {
        stopped.store(true, ordering: .releasing)
        done.wait()
    }
}
