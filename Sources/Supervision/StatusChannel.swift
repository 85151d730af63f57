#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// How a starting daemon tells the `mount.erofs` that started it how attaching went: one line
/// on a pipe, then the pipe is closed. A daemon that dies first leaves the pipe empty, which
/// the parent reports with the daemon's exit status and log.
public enum DaemonReport: Equatable, Sendable {
    /// Attached and serving link `index` (N of /dev/nbdN, /dev/ublkbN, ...), attached by
    /// `method` (a backend's word without spaces: "netlink", "ioctl", ...); `pid` is the
    /// serving worker's.
    case ready(index: Int, method: String, pid: Int32)
    case failed(String)

    var line: String {
        switch self {
        case .ready(let index, let method, let pid): "ready \(index) \(method) \(pid)\n"
        case .failed(let message): "error " + message.split(separator: "\n").joined(separator: " ") + "\n"
        }
    }

    init?(line: String) {
        let parts = line.split(separator: " ", maxSplits: 1)
        guard let word = parts.first else { return nil }
        switch word {
        case "ready":
            let fields = parts.count > 1 ? parts[1].split(separator: " ") : []
            guard fields.count == 3, let index = Int(fields[0]), let pid = Int32(fields[2]),
                !fields[1].isEmpty, fields[1].utf8.allSatisfy({ (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) })
            else { return nil }
            self = .ready(index: index, method: String(fields[1]), pid: pid)
        case "error":
            self = .failed(parts.count > 1 ? String(parts[1]) : "unknown error")
        default:
            return nil
        }
    }

    /// Writes the report to `fd` (the daemon's end) and closes it. False when nobody read it
    /// (the reader died): whatever the report announced has no owner.
    @discardableResult
    public func send(to fd: Int32) -> Bool {
        var text = line
        let complete = text.withUTF8 { bytes in
            var written = 0
            while written < bytes.count {
                let n = write(fd, bytes.baseAddress! + written, bytes.count - written)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                written += n
            }
            return true
        }
        close(fd)
        return complete
    }

    /// Reads one report from `fd` (the parent's end), waiting at most `timeout` seconds.
    /// nil: the daemon closed the pipe without a word (it died) or said something unreadable.
    public static func receive(from fd: Int32, timeout: Double) throws(SystemError) -> DaemonReport? {
        try receiveStatusLine(from: fd, timeout: timeout).flatMap(DaemonReport.init(line:))
    }
}

/// Reads one line (without its newline) from a daemon's status pipe, waiting at most `timeout`
/// seconds. nil: the daemon closed the pipe without a whole line (it died).
public func receiveStatusLine(from fd: Int32, timeout: Double) throws(SystemError) -> String? {
    var collected: [UInt8] = []
    let deadline = monotonicSeconds() + timeout
    while !collected.contains(UInt8(ascii: "\n")) {
        let remaining = deadline - monotonicSeconds()
        guard remaining > 0 else {
            throw SystemError(.timedOut, "wait for the serving daemon", detail: "no answer within \(Int(timeout)) s")
        }
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&poller, 1, Int32(min(remaining, 1) * 1000))
        if ready < 0 && errno == EINTR { continue }
        if ready < 0 { throw .lastErrno("poll the serving daemon's status pipe") }
        if ready == 0 { continue }
        var chunk = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &chunk, chunk.count)
        if n < 0 && errno == EINTR { continue }
        if n < 0 { throw .lastErrno("read the serving daemon's status pipe") }
        if n == 0 { break }
        collected.append(contentsOf: chunk[..<n])
    }
    guard let end = collected.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
    return String(decoding: collected[..<end], as: UTF8.self)
}

/// pipe(2) with both ends close-on-exec (pipe2 is out of Glibc's Swift overlay).
public func closeOnExecPipe(_ ends: inout [Int32]) -> Bool {
    guard pipe(&ends) == 0 else { return false }
    for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
    return true
}

/// How a wait status reads in a log line.
public func describe(waitStatus status: Int32) -> String {
    if status & 0x7f == 0 { return "exit status \((status >> 8) & 0xff)" }
    return "killed by signal \(status & 0x7f)"
}

/// A daemon just started and the read end of the pipe it reports on (`DaemonReport`, on its
/// descriptor 3). The write end lives only in the daemon, so the pipe ends when it does.
public struct ReportingDaemon: ~Copyable {
    public let process: DaemonProcess
    public let reports: OwnedDescriptor

    /// Starts `arguments` of our own binary with its report pipe as descriptor 3 and
    /// `descriptors` as 4, 5, ...; output to `logFile` or `logDescriptor`.
    public static func spawn(
        arguments: [String], descriptors: [Int32], logFile: String? = nil, logDescriptor: Int32 = -1
    ) throws(SystemError) -> ReportingDaemon {
        let pipe = try DescriptorPair.pipe()
        let process = try DaemonProcess.spawn(
            arguments: arguments, descriptors: [pipe.second.rawValue] + descriptors, logFile: logFile,
            logDescriptor: logDescriptor)
        return ReportingDaemon(process: process, reports: pipe.first)
    }

    /// Its first report, waiting at most `timeout` seconds; nil when it ended (or closed the
    /// pipe) without a readable one.
    public func report(timeout: Double) throws(SystemError) -> DaemonReport? {
        try DaemonReport.receive(from: reports.rawValue, timeout: timeout)
    }
}
