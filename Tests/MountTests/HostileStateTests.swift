import Foundation
import KernelAttach
import Testing
import TestSupport

/// The real mount.erofs against state and mounts an attacker put in place, each run in a
/// private mount namespace with its own /run (so the host's state is never touched): nothing
/// is trusted by name, nothing of theirs is signalled, nothing traps.
@Suite(.requiresRoot, .serialized) struct HostileMountStateTests {
    let harness = MountHarness()

    /// Runs `script` with bash in a private mount namespace whose /run is an empty tmpfs; $1 is
    /// mount.erofs.
    func inPrivateRun(_ script: String) throws -> ProcessResult {
        try runProgram(
            "/usr/bin/unshare",
            [
                "-m", "--propagation", "private", "/bin/bash", "-c",
                "set -u; mount -t tmpfs tmpfs /run && mkdir -p -m 0700 /run/erofs-mount/nbd || exit 99\n" + script,
                "bash", harness.mountErofs,
            ])
    }

    /// A state the way mount.erofs writes it, for device $2 naming daemon pid $3 with start time $4.
    static let plant = #"""
        plant() {
            cat > "/run/erofs-mount/nbd/$1" <<JSON
        {"version": 1, "index": $2, "source": "/img.erofs", "sizeBytes": 4096, "blockSize": 512,
         "backendIdentifier": "erofs-mount-0123456789abcdef", "attachMethod": "netlink", "deadConnectionTimeout": 60,
         "daemonPID": $3, "daemonStartTime": $4, "servingPID": $3, "servingStartTime": $4, "supervised": true,
         "mountPoint": "/mnt", "mountOptions": "", "createdAt": "2026-01-01T00:00:00Z"}
        JSON
            chmod 0600 "/run/erofs-mount/nbd/$1"
        }
        start_time() { awk '{ sub(/.*\) /, ""); print $20 }' /proc/$1/stat; }

        """#

    /// `nbd-1.json` made `--list` trap (a device index of -1 converted to UInt32).
    @Test func listDoesNotTrapOnHostileNames() throws {
        let result = try inPrivateRun(
            Self.plant + """
                sleep 60 & victim=$!
                plant nbd-1.json -1 $victim 0
                plant nbd01.json 1 $victim 0
                plant nbd5.json -1 $victim 0
                "$1" --list; echo "status $?"
                kill -0 $victim && echo "victim alive"
                kill -9 $victim
                """)
        #expect(result.standardOutput.contains("status 0"), "\(result.standardOutput) \(result.standardError)")
        #expect(result.standardOutput.contains("victim alive"))
        // Only nbd5.json is a state file name; its content names another device.
        let lines = result.standardOutput.split(separator: "\n").filter { $0.hasPrefix("/dev/nbd") }
        #expect(
            lines.count == 1 && lines[0].hasPrefix("/dev/nbd5\t") && lines[0].contains("not a valid state file"),
            "\(lines)")
    }

    /// A state directory another user owns, or a symlink in its place, is refused: it is neither
    /// chmodded and used nor followed.
    @Test func foreignOrSymlinkedStateDirectoryIsRefused() throws {
        let foreign = try inPrivateRun(
            Self.plant + """
                plant nbd3.json 3 4242 1
                chown 65534 /run/erofs-mount/nbd
                "$1" --list; echo "status $?"
                stat -c %a /run/erofs-mount/nbd
                """)
        #expect(foreign.standardOutput.contains("status 32"), "\(foreign.standardOutput) \(foreign.standardError)")
        #expect(
            foreign.standardError.contains("/run/erofs-mount/nbd")
                && foreign.standardError.contains("owned by uid 65534"))
        let symlinked = try inPrivateRun(
            """
            mkdir -m 0700 /run/elsewhere && rmdir /run/erofs-mount/nbd && ln -s /run/elsewhere /run/erofs-mount/nbd
            "$1" --list; echo "status $?"
            """)
        #expect(
            symlinked.standardOutput.contains("status 32"), "\(symlinked.standardOutput) \(symlinked.standardError)")
        #expect(symlinked.standardError.contains("a symlink is not followed"), "\(symlinked.standardError)")
    }

    /// A tmpfs (or a user's FUSE mount) whose source reads /dev/nbd0 is no nbd mount of ours:
    /// --disconnect, --reattach, --upgrade and -u refuse it and signal nobody, even with a state
    /// for nbd0 naming a live process with its true start time, or with 0.
    @Test(arguments: ["true start time", "start time 0"])
    func mountNamedLikeAnNBDDeviceIsRefused(variant: String) throws {
        let result = try inPrivateRun(
            Self.plant + """
                sleep 60 & victim=$!
                plant nbd0.json 0 $victim \(variant == "start time 0" ? "0" : "$(start_time $victim)")
                mkdir -p /run/fake && mount -t tmpfs /dev/nbd0 /run/fake
                for mode in --disconnect --reattach --upgrade -u; do
                    "$1" $mode /run/fake 2>&1; echo "$mode status $?"
                done
                kill -0 $victim && echo "victim alive"
                mountpoint -q /run/fake && echo "still mounted"
                kill -9 $victim
                """)
        let output = result.standardOutput
        for mode in ["--disconnect", "--reattach", "--upgrade", "-u"] {
            #expect(output.contains("\(mode) status 32"), "\(mode): \(output)")
        }
        #expect(output.contains("/run/fake is not an EROFS mount"), "\(output)")
        #expect(output.contains("victim alive"), "\(output)")
        #expect(output.contains("still mounted"), "\(output)")
    }

    /// `-N PID -u` unmounts in PID's namespace (found through our /proc, at PID's root) and
    /// comes back: the mount was never ours to see, and after the -u this namespace is intact.
    @Test func unmountInAnotherNamespace() throws {
        let workspace = try MountHarness.Workspace("namespace", copying: BadInputTests.corpusImage("plain"))
        defer { workspace.remove() }
        let result = try runProgram(
            "/bin/bash",
            [
                "-c",
                """
                unshare -m --propagation private sleep 600 & holder=$!
                until [[ $(readlink /proc/$holder/ns/mnt) != $(readlink /proc/self/ns/mnt) ]]; do sleep 0.05; done
                "$1" -N $holder "$2" "$3"; echo "mount status $?"
                grep -q " $3 " /proc/$holder/mountinfo && echo "mounted there"
                mountpoint -q "$3" || echo "not here"
                "$1" -N $holder -u /; echo "root status $?"
                "$1" -N $holder -u "$3"; echo "unmount status $?"
                grep -q " $3 " /proc/$holder/mountinfo || echo "gone there"
                kill -9 $holder
                """, "bash", harness.mountErofs, workspace.image, workspace.mountPoint,
            ])
        let output = result.standardOutput
        for line in ["mount status 0", "mounted there", "not here", "root status 32", "unmount status 0", "gone there"]
        {
            #expect(output.contains(line), "\(line): \(output) \(result.standardError)")
        }
        #expect(result.standardError.contains("/ is not an EROFS mount"), "\(result.standardError)")
    }

    /// -N is refused, not ignored, where it cannot apply.
    @Test(arguments: ["--list", "--disconnect", "--reattach", "--upgrade"])
    func namespaceIsRefusedWhereItCannotApply(mode: String) throws {
        let result = try harness.run(["-N", "1", mode] + (mode == "--list" ? [] : ["/dev/nbd0"]))
        #expect(result.status == 1, "\(result.standardError)")
        #expect(result.standardError.contains("-N applies to mounting and -u only"), "\(result.standardError)")
    }
}
