#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// What a supervisor passes to the binary it replaces itself with (execve, same pid, same
/// children) at the end of a hot upgrade, as one command-line argument: the link, the serving
/// worker with its status pipe and control channel, the copies of its link and reply file, and
/// the descriptors every worker shares. Descriptors keep their numbers across the exec.
public struct SupervisorHandover: Sendable, Equatable {
    public static let flag = "--resume-supervision"

    public var link: UInt32
    public var recovers: Bool
    public var worker: DaemonProcess
    public var workerStatus: Int32
    public var workerControl: Int32
    /// -1: none.
    public var liveLink: Int32
    public var liveReplyFile: Int32
    /// The backend's `sharedDescriptors`, as they were.
    public var shared: [Int32]

    public init(
        link: UInt32, recovers: Bool, worker: DaemonProcess, workerStatus: Int32, workerControl: Int32,
        liveLink: Int32, liveReplyFile: Int32, shared: [Int32]
    ) {
        self.link = link
        self.recovers = recovers
        self.worker = worker
        self.workerStatus = workerStatus
        self.workerControl = workerControl
        self.liveLink = liveLink
        self.liveReplyFile = liveReplyFile
        self.shared = shared
    }

    /// Every descriptor the new binary must find open.
    var descriptors: [Int32] { ([workerStatus, workerControl, liveLink, liveReplyFile] + shared).filter { $0 >= 0 } }

    /// `link=5,recovers=1,worker=PID:START,status=FD,control=FD,live=FD,reply=FD,shared=FD:FD`.
    public var argument: String {
        [
            "link=\(link)", "recovers=\(recovers ? 1 : 0)", "worker=\(worker.pid):\(worker.startTime)",
            "status=\(workerStatus)", "control=\(workerControl)", "live=\(liveLink)", "reply=\(liveReplyFile)",
            "shared=\(shared.map(String.init).joined(separator: ":"))",
        ].joined(separator: ",")
    }

    /// Parses `argument`; nil for anything else (every field present, numbers in range, and
    /// the descriptors open: the handover is our own, but a wrong one must not be acted on).
    public init?(argument: String) {
        var fields: [Substring: Substring] = [:]
        for field in argument.split(separator: ",") {
            let parts = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, fields[parts[0]] == nil else { return nil }
            fields[parts[0]] = parts[1]
        }
        func descriptor(_ text: Substring?) -> Int32? {
            guard let text, let value = Int32(text), value >= -1 else { return nil }
            return value
        }
        let process = fields["worker"]?.split(separator: ":")
        guard fields.count == 8, let link = fields["link"].flatMap({ UInt32($0) }),
            let recovers = fields["recovers"], recovers == "0" || recovers == "1",
            let process, process.count == 2, let pid = Int32(process[0]), pid > 1,
            let startTime = UInt64(process[1]),
            let status = descriptor(fields["status"]), status >= 0,
            let control = descriptor(fields["control"]), control >= 0,
            let live = descriptor(fields["live"]), let reply = descriptor(fields["reply"]),
            let sharedText = fields["shared"]
        else { return nil }
        let sharedFields = sharedText.isEmpty ? [] : sharedText.split(separator: ":", omittingEmptySubsequences: false)
        let shared = sharedFields.compactMap { descriptor($0) }
        guard shared.count == sharedFields.count else { return nil }
        self.init(
            link: link, recovers: recovers == "1", worker: DaemonProcess(pid: pid, startTime: startTime),
            workerStatus: status, workerControl: control, liveLink: live, liveReplyFile: reply, shared: shared)
        guard descriptors.allSatisfy({ fcntl($0, F_GETFD) >= 0 }) else { return nil }
    }

    /// A supervisor's command line split into its own arguments and the handover an upgraded
    /// binary is exec'd with (`FLAG HANDOVER` at the end; nil when there is none); nil when the
    /// handover is there but malformed.
    public static func split(_ arguments: [String]) -> (arguments: [String], handover: SupervisorHandover?)? {
        guard arguments.count >= 2, arguments[arguments.count - 2] == flag else { return (arguments, nil) }
        guard let handover = SupervisorHandover(argument: arguments[arguments.count - 1]) else { return nil }
        return (Array(arguments.dropLast(2)), handover)
    }

    /// Lets the descriptors survive the exec (`inherit`), or makes them close-on-exec again
    /// after an exec that failed.
    func setInherited(_ inherit: Bool) {
        for descriptor in descriptors {
            let flags = fcntl(descriptor, F_GETFD)
            guard flags >= 0 else { continue }
            _ = fcntl(descriptor, F_SETFD, inherit ? flags & ~FD_CLOEXEC : flags | FD_CLOEXEC)
        }
    }
}
