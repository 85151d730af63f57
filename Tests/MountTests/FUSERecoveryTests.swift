import CShim
import Foundation
import KernelAttach
import Manifest
import Synchronization
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Crash recovery of `-t erofs.fuse` on this kernel, for real: readers verify every file of a
/// corpus image against its manifest's sha256 while the serving worker is SIGKILLed and
/// hot-upgraded; no read may fail or return wrong bytes, and each event's stall (the longest a
/// request waited across it) is measured.
@Suite(.requiresRoot, .serialized) struct FUSERecoveryTests {
    let harness = MountHarness()

    /// Files of the manifest with their sha256.
    static func files(of image: Corpus.Image) throws -> [(path: String, sha256: String)] {
        try image.expectedManifest().split(separator: "\n").compactMap { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            guard object?["type"] as? String == "file", let path = object?["path"] as? String,
                let digest = object?["sha256"] as? String
            else { return nil }
            return (path, digest)
        }
    }

    /// What the load saw. Shared by the reader, prober and event threads.
    final class Load: Sendable {
        struct Counts {
            var filesVerified = 0
            var readErrors: [String] = []
            var mismatches: [String] = []
            var longestReadMicroseconds = 0
            /// Every probe: when it started and how long it took (seconds).
            var probes: [(start: Double, duration: Double)] = []
        }
        let counts = Mutex(Counts())
        let stop = Atomic<Bool>(false)
    }

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    /// Reads every file in turn (in a different order per reader), forever, checking its sha256.
    static func reader(
        _ mountPoint: String, files: [(path: String, sha256: String)], seed: Int, load: Load
    ) -> Thread {
        Thread {
            var order = Array(files.indices)
            var generator = SplitMix64(seed: UInt64(seed))
            order.shuffle(using: &generator)
            var buffer = [UInt8](repeating: 0, count: 256 << 10)
            while !load.stop.load(ordering: .relaxed) {
                for index in order where !load.stop.load(ordering: .relaxed) {
                    let file = files[index]
                    let path = mountPoint + file.path
                    let fd = open(path, O_RDONLY | O_CLOEXEC)
                    if fd < 0 {
                        let error = String(cString: strerror(errno))
                        load.counts.withLock { $0.readErrors.append("open \(file.path): \(error)") }
                        continue
                    }
                    var digest = SHA256()
                    var failure: String?
                    var longest = 0
                    while true {
                        let started = now()
                        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                        longest = max(longest, Int((now() - started) * 1e6))
                        if n < 0 {
                            failure = "read \(file.path): \(String(cString: strerror(errno)))"
                            break
                        }
                        if n == 0 { break }
                        buffer.withUnsafeBytes { digest.update(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
                    }
                    close(fd)
                    let matches = Hex.encode(digest.finalize()) == file.sha256
                    load.counts.withLock { counts in
                        counts.longestReadMicroseconds = max(counts.longestReadMicroseconds, longest)
                        if let failure {
                            counts.readErrors.append(failure)
                        } else if !matches {
                            counts.mismatches.append(file.path)
                        } else {
                            counts.filesVerified += 1
                        }
                    }
                }
            }
        }
    }

    /// One request to the worker every millisecond that no cache answers (listxattr: FUSE
    /// caches no xattr), each timed: the stall of an event is the longest probe across it.
    static func prober(_ path: String, load: Load) -> Thread {
        Thread {
            var names = [CChar](repeating: 0, count: 4096)
            while !load.stop.load(ordering: .relaxed) {
                let started = now()
                let result = listxattr(path, &names, names.count)
                let duration = now() - started
                let error = result < 0 ? String(cString: strerror(errno)) : nil
                load.counts.withLock { counts in
                    counts.probes.append((started, duration))
                    if let error { counts.readErrors.append("listxattr \(path): \(error)") }
                }
                usleep(1000)
            }
        }
    }

    /// Drops the page, dentry and inode caches every `interval` seconds: reads and lookups reach
    /// the worker again.
    static func cacheDropper(interval: Double, load: Load) -> Thread {
        Thread {
            while !load.stop.load(ordering: .relaxed) {
                usleep(UInt32(interval * 1e6))
                let fd = open("/proc/sys/vm/drop_caches", O_WRONLY)
                if fd >= 0 {
                    _ = write(fd, "3", 1)
                    close(fd)
                }
            }
        }
    }

    /// The longest probe that overlapped [from, to] (milliseconds).
    static func stall(from: Double, to: Double, probes: [(start: Double, duration: Double)]) -> Double {
        probes.filter { $0.start <= to && $0.start + $0.duration >= from }.map { $0.duration * 1000 }.max() ?? 0
    }

    static func isServingWorker(_ pid: Int32) -> Bool {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return data.split(separator: 0).contains { String(decoding: $0, as: UTF8.self) == "--serve-fuse" }
    }

    /// Copies `from` over `to` as a new file (a new inode, as an installation does).
    static func install(_ from: String, at to: String) throws {
        let temporary = to + ".new"
        try? FileManager.default.removeItem(atPath: temporary)
        try FileManager.default.copyItem(atPath: from, toPath: temporary)
        guard rename(temporary, to) == 0 else { throw POSIXError(.init(rawValue: errno)!) }
    }

    /// 20 SIGKILLs of the serving worker and 10 hot upgrades under two verifying readers, a
    /// prober and cache drops, with the kernel's resend and with the journal (the path 6.1 and
    /// 6.12 take): no error, no wrong byte, every stall measured; `-u` then leaves nothing.
    @Test(arguments: ["resend", "journal"])
    func workerKillsAndUpgradesUnderLoad(recovery: String) throws {
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "lz4" }, "the corpus is missing")
        let workspace = try MountHarness.Workspace("fuse-recovery", copying: image.path)
        defer { workspace.remove() }
        // A private copy of the binary: an upgrade installs a new file at its path.
        let binary = workspace.directory + "/mount.erofs"
        try FUSERecoveryTests.install(harness.mountErofs, at: binary)
        let mounted = try runProgram(
            binary,
            [
                "-t", "erofs.fuse", "-o", "fuse.threads=2,fuse.recovery=\(recovery)", workspace.image,
                workspace.mountPoint,
            ])
        try #require(mounted.status == 0, "\(mounted.standardError)")
        let entry = try #require(try MountHarness.mounts(at: workspace.mountPoint).first)
        #expect(try FUSEMountTests.state(of: entry)["recovery"] as? String == recovery)

        let files = try FUSERecoveryTests.files(of: image)
        try #require(files.count > 100)
        let load = Load()
        let threads = [
            FUSERecoveryTests.reader(workspace.mountPoint, files: files, seed: 1, load: load),
            FUSERecoveryTests.reader(workspace.mountPoint, files: files, seed: 2, load: load),
            FUSERecoveryTests.prober(workspace.mountPoint + files[0].path, load: load),
            FUSERecoveryTests.cacheDropper(interval: 0.7, load: load),
        ]
        for thread in threads { thread.start() }
        var events: [(kind: String, from: Double, to: Double, supervisorMilliseconds: Int)] = []
        for index in 0..<30 {
            usleep(500_000)
            let worker = try FUSEMountTests.servingWorker(of: entry)
            try #require(FUSERecoveryTests.isServingWorker(worker), "the state names \(worker), not a worker")
            let kind: String
            let from: Double
            if index % 3 == 2 {
                kind = "upgrade"
                try FUSERecoveryTests.install(harness.mountErofs, at: binary)
                from = FUSERecoveryTests.now()
                let upgraded = try runProgram(binary, ["--upgrade", workspace.mountPoint])
                #expect(upgraded.status == 0, "\(upgraded.standardError)")
                let serving = try FUSEMountTests.servingWorker(of: entry)
                #expect(serving != worker)
                // The new worker runs the file now installed (not the one it replaced).
                #expect(
                    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(serving)/exe")) == binary)
            } else {
                kind = "SIGKILL"
                from = FUSERecoveryTests.now()
                #expect(kill(worker, SIGKILL) == 0)
                // Until the supervisor names the next worker.
                for _ in 0..<500 where (try? FUSEMountTests.servingWorker(of: entry)) == worker { usleep(1000) }
            }
            let to = FUSERecoveryTests.now()
            // The supervisor times recoveries (a worker's death seen to its successor serving).
            let measured =
                kind == "upgrade" ? -1 : try FUSEMountTests.state(of: entry)["lastRecoveryMilliseconds"] as? Int ?? -1
            events.append((kind, from, to, measured))
        }
        usleep(1_000_000)
        load.stop.store(true, ordering: .relaxed)
        // A request lost with a worker leaves its reader waiting forever, and not even killable
        // (the kernel waits out a request userspace has read). Ending the connection (killing
        // every process holding it) frees it, so that the test fails instead of hanging.
        for _ in 0..<1000 where threads.contains(where: { !$0.isFinished }) { usleep(10_000) }
        let stuck = threads.filter { !$0.isFinished }.count
        if stuck > 0 {
            for pid in FUSEMountTests.daemons(serving: workspace.image) { kill(pid, SIGKILL) }
            for _ in 0..<1000 where threads.contains(where: { !$0.isFinished }) { usleep(10_000) }
            _ = try? runProgram(binary, ["-u", workspace.mountPoint])
        }
        try #require(stuck == 0, "\(stuck) thread(s) stuck: a request was lost with a worker")

        let counts = load.counts.withLock { $0 }
        let state = try FUSEMountTests.state(of: entry)
        #expect(state["recoveries"] as? Int == 20)
        #expect(state["upgrades"] as? Int == 10)
        #expect(counts.readErrors.isEmpty, "\(counts.readErrors.count) errors: \(counts.readErrors.prefix(5))")
        #expect(counts.mismatches.isEmpty, "\(counts.mismatches.count) mismatches: \(counts.mismatches.prefix(5))")
        #expect(counts.filesVerified >= files.count * 2, "only \(counts.filesVerified) files verified")

        var report =
            "FUSE recovery (\(recovery)), \(files.count) files of \(image.name): \(counts.filesVerified) verified, "
        report +=
            "\(counts.readErrors.count) errors, \(counts.mismatches.count) mismatches, \(counts.probes.count) probes, "
        report += "longest read(2) \(counts.longestReadMicroseconds / 1000) ms\n"
        // What the journal answered for dead workers (a worker logs "replayed(N)" as it takes over).
        let logFile = try #require(state["logFile"] as? String)
        let replayed = try String(contentsOfFile: logFile, encoding: .utf8).split(separator: "\n").compactMap { line in
            line.firstRange(of: "replayed(").flatMap { Int(line[$0.upperBound...].prefix { $0.isNumber }) }
        }.reduce(0, +)
        if recovery == "journal" { report += "  requests answered from the journal for dead workers: \(replayed)\n" }
        // Away from every event: what a probe costs under this load anyway.
        let quiet = counts.probes.filter { probe in
            !events.contains { probe.start <= $0.to + 0.02 && probe.start + probe.duration >= $0.from }
        }
        report += String(
            format: "  probes away from events: worst %.1f ms\n", (quiet.map(\.duration).max() ?? 0) * 1000)
        var stalls: [String: [Double]] = [:]
        for (number, event) in events.enumerated() {
            let stall = FUSERecoveryTests.stall(from: event.from, to: event.to + 0.02, probes: counts.probes)
            stalls[event.kind, default: []].append(stall)
            report += String(
                format: "  event %2d %-7@ stall %7.1f ms%@\n", number + 1, event.kind as NSString, stall,
                event.supervisorMilliseconds < 0 ? "" : " (supervisor: \(event.supervisorMilliseconds) ms)" as NSString)
        }
        for (kind, values) in stalls.sorted(by: { $0.key < $1.key }) {
            let sorted = values.sorted()
            report += String(
                format: "  %@: median %.1f ms, worst %.1f ms over %d\n", kind as NSString, sorted[sorted.count / 2],
                sorted.last ?? 0, sorted.count)
        }
        print(report)
        try? report.write(toFile: "/tmp/fuse-recovery-\(recovery).txt", atomically: true, encoding: .utf8)
        // The goal is a worst stall under 200 ms as applications see it, which a quiet host
        // meets (BENCHMARKS.md); on a loaded one the probes wait that long away from any event
        // too (the report says how long). What is held to 200 ms is the typical switch as the
        // supervisor times it (old worker's end to new one serving); what applications saw,
        // to two seconds.
        let worst = stalls.values.joined().max() ?? 0
        let switches = events.filter { $0.kind == "SIGKILL" }.map(\.supervisorMilliseconds).sorted()
        #expect(switches.allSatisfy { $0 >= 0 }, "a recovery left no timing in the state")
        #expect(switches[switches.count / 2] < 200, "median switch \(switches[switches.count / 2]) ms: \(switches)")
        #expect(worst < 2000, "worst stall \(worst) ms")

        let unmounted = try runProgram(binary, ["-u", workspace.mountPoint])
        #expect(unmounted.status == 0, "\(unmounted.standardError)")
        try MountHarness.expectNothingLeft(mountPoint: workspace.mountPoint, image: workspace.image)
        #expect(FUSEMountTests.daemons(serving: workspace.image).isEmpty, "a FUSE process outlived -u")
    }

    /// The supervisor killed: what cannot be recovered. The worker serves on (the standby
    /// leaves: it must not hold a connection nobody supervises), --list says recovery is
    /// gone; once the worker dies too the connection ends (ENOTCONN), and `-u` still removes
    /// the mount, the processes and the state.
    @Test func supervisorKilledLeavesTheWorkerServingAndUClean() throws {
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "lz4" }, "the corpus is missing")
        let workspace = try MountHarness.Workspace("fuse-supervisor-killed", copying: image.path)
        defer { workspace.remove() }
        let mounted = try harness.run(["-t", "erofs.fuse", workspace.image, workspace.mountPoint])
        try #require(mounted.status == 0, "\(mounted.standardError)")
        let entry = try #require(try MountHarness.mounts(at: workspace.mountPoint).first)
        let supervisor = try #require(try FUSEMountTests.state(of: entry)["daemonPID"] as? Int).map(Int32.init)!
        let worker = try FUSEMountTests.servingWorker(of: entry)
        #expect(FUSEMountTests.daemons(serving: workspace.image, awaiting: 3).count == 3)

        #expect(kill(supervisor, SIGKILL) == 0)
        var left = FUSEMountTests.daemons(serving: workspace.image)
        for _ in 0..<200 where left.count > 1 {
            usleep(10_000)
            left = FUSEMountTests.daemons(serving: workspace.image)
        }
        #expect(left == [worker], "left: \(left), worker \(worker)")
        let files = try FUSERecoveryTests.files(of: image)
        let first = try Data(contentsOf: URL(fileURLWithPath: workspace.mountPoint + files[0].path))
        var digest = SHA256()
        digest.update([UInt8](first))
        #expect(Hex.encode(digest.finalize()) == files[0].sha256)
        let list = try harness.run(["--list"])
        let lines = list.standardOutput.split(separator: "\n")
        let row = try #require(lines.first { $0.hasSuffix(workspace.image) })
        // The nbd columns, WORKER the serving process.
        #expect(row.split(separator: "\t").count == lines[0].split(separator: "\t").count, "\(lines[0])\n\(row)")
        #expect(row.contains("none (supervisor gone)") && row.contains("\(supervisor) (gone)"), "\(row)")
        #expect(row.contains("\t\(worker)\tconnected\t"), "\(row)")

        #expect(kill(worker, SIGKILL) == 0)
        usleep(200_000)
        // listxattr: no cache answers it.
        var names = [CChar](repeating: 0, count: 4096)
        let listed = listxattr(workspace.mountPoint + files[1].path, &names, names.count)
        #expect(listed < 0 && errno == ENOTCONN, "listxattr gave \(listed), errno \(errno)")

        let unmounted = try harness.run(["-u", workspace.mountPoint])
        #expect(unmounted.status == 0, "\(unmounted.standardError)")
        try MountHarness.expectNothingLeft(mountPoint: workspace.mountPoint, image: workspace.image)
        #expect(FUSEMountTests.daemons(serving: workspace.image).isEmpty)
        #expect(!FUSEMountTests.stateOutlived(entry, image: workspace.image))
    }

    /// A request that kills every worker it reaches (a debug build's fault: abort on READ of one
    /// inode) is not resent forever: after three deaths in a row with it in flight, the
    /// supervisor has the next worker fail it with EIO. The reader gets EIO, never a hang or
    /// ENOTCONN; the rest of the mount serves on; `-u` leaves nothing.
    @Test(arguments: ["resend", "journal"])
    func requestThatKillsEveryWorkerFailsWithEIO(recovery: String) throws {
        #if DEBUG
        let image = try #require(Corpus.imagesOrEmpty.first { $0.name == "lz4" }, "the corpus is missing")
        let workspace = try MountHarness.Workspace("fuse-crash-loop", copying: image.path)
        defer { workspace.remove() }
        let options = ["-t", "erofs.fuse", "-o", "fuse.threads=2,fuse.recovery=\(recovery)"]
        let poisoned = workspace.mountPoint + "/sizes/text-4097"
        // The file's inode (its nid), from a first mount without the fault.
        try #require(try harness.run(options + [workspace.image, workspace.mountPoint]).status == 0)
        var status = stat()
        try #require(stat(poisoned, &status) == 0)
        #expect(try harness.run(["-u", workspace.mountPoint]).status == 0)

        setenv("EROFS_TEST_CRASH_READ_INODE", String(status.st_ino), 1)
        let mounted = try harness.run(options + [workspace.image, workspace.mountPoint])
        unsetenv("EROFS_TEST_CRASH_READ_INODE")
        try #require(mounted.status == 0, "\(mounted.standardError)")
        let entry = try #require(try MountHarness.mounts(at: workspace.mountPoint).first)
        let read = try runProgram("/usr/bin/timeout", ["30", "/bin/cat", poisoned])
        #expect(
            read.status == 1 && read.standardError.contains("Input/output error"),
            "\(read.status) \(read.standardError)")
        let state = try FUSEMountTests.state(of: entry)
        #expect((state["recoveries"] as? Int ?? 0) >= 3)
        let other = try Data(contentsOf: URL(fileURLWithPath: workspace.mountPoint + "/sizes/text-4096"))
        #expect(other.count == 4096)
        let log = try String(contentsOfFile: try #require(state["logFile"] as? String), encoding: .utf8)
        #expect(log.contains("worker deaths in a row; failing it with EIO"), "\(log)")

        #expect(try harness.run(["-u", workspace.mountPoint]).status == 0)
        try MountHarness.expectNothingLeft(mountPoint: workspace.mountPoint, image: workspace.image)
        #expect(FUSEMountTests.daemons(serving: workspace.image).isEmpty)
        #endif
    }
}
