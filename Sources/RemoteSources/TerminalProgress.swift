#if canImport(Glibc)
import Glibc
#endif

/// One self-rewriting line on standard error while long work runs, only when standard error is
/// a terminal (a script or a log gets nothing); at most ten updates a second.
public final class TerminalProgress {
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
