import FUSEBackend
import MountCLI
import Testing

@Suite struct MountCommandLineTests {
    @Test func mountHelperConventions() throws {
        // What mount(8) runs: operands first, then its flags and -o.
        let line = try MountCommandLine.parse(["/img.erofs", "/mnt", "-s", "-f", "-n", "-v", "-o", "ro,nodev"])
        #expect(line.mode == .mount)
        #expect(line.source == "/img.erofs")
        #expect(line.target == "/mnt")
        #expect(line.sloppy && line.fake && line.noMtab && line.verbose)
        #expect(line.options.flags == [.readOnly, .noDev])
        #expect(line.backend == nil)
    }

    @Test func clusteredAndAttachedShortOptions() throws {
        let line = try MountCommandLine.parse(["-fnvoro,noexec", "-terofs.local", "-d7", "a", "b"])
        #expect(line.fake && line.noMtab && line.verbose)
        #expect(line.options.flags == [.readOnly, .noExec])
        #expect(line.backend == .local)
        #expect(line.debugLevel == 7)
    }

    @Test func namespaceTakesAValue() throws {
        let line = try MountCommandLine.parse(["-N", "/proc/1/ns/mnt", "img", "dir"])
        #expect(line.namespace == "/proc/1/ns/mnt")
        #expect(line.source == "img" && line.target == "dir")
    }

    @Test func standardFlagsAndKernelData() throws {
        var options = MountOptions()
        try options.parse("nosuid,nodev,noexec,noatime,nodiratime,sync,dirsync,silent,lazytime")
        #expect(
            options.flags == [
                .readOnly, .noSuid, .noDev, .noExec, .noAtime, .noDirAtime, .synchronous,
                .dirSync, .silent, .lazyTime,
            ])
        try options.parse("suid,dev,exec,atime,diratime,relatime")
        #expect(options.flags == [.readOnly, .synchronous, .dirSync, .silent, .lazyTime, .relAtime])
        try options.parse("strictatime")
        #expect(options.flags.contains(.strictAtime) && !options.flags.contains(.relAtime))
        try options.parse("device=/dev/sdb,domain_id=d,fsid=f,dax,user_xattr,acl,cache_strategy=readahead")
        #expect(
            options.kernelDataString == "device=/dev/sdb,domain_id=d,fsid=f,dax,user_xattr,acl,cache_strategy=readahead"
        )
    }

    @Test func rwIsIgnoredWithAWarning() throws {
        var options = MountOptions()
        try options.parse("rw,nodev")
        #expect(options.flags.contains(.readOnly))
        #expect(options.warnings.count == 1)
        #expect(options.warnings[0].contains("read-only"))
        // What mount(8) passes when the user gave no options at all.
        var implicit = MountOptions()
        try implicit.parse("rw")
        #expect(implicit.flags.contains(.readOnly) && implicit.warnings.isEmpty)
    }

    @Test func userspaceOptionsAreNotKernelData() throws {
        var options = MountOptions()
        try options.parse("defaults,auto,noauto,nofail,_netdev,user,x-systemd.automount,comment=x,loop")
        #expect(options.kernelData.isEmpty)
        #expect(options.forceLoop)
    }

    @Test func ublkSubtypeSelectsTheUblkBackend() throws {
        let line = try MountCommandLine.parse(["-t", "erofs.ublk", "img", "dir"])
        #expect(line.backend == .ublk)
        // ublk.* options go to the backend, not to the kernel's EROFS.
        let tuned = try MountCommandLine.parse([
            "-t", "erofs.ublk", "-o", "ublk.queues=1,ublk.depth=32,noatime", "i", "d",
        ])
        #expect(tuned.options.backendOption("ublk.queues") == .some("1"))
        #expect(tuned.options.backendOption("ublk.depth") == .some("32"))
        #expect(tuned.options.kernelData.isEmpty)
    }

    @Test func backendOptionsAreSeparated() throws {
        let line = try MountCommandLine.parse(["-t", "erofs.nbd", "-o", "nbd.ioctl,oci.platform=linux/arm64", "s", "t"])
        #expect(line.options.kernelData.isEmpty)
        #expect(line.options.backendOption("nbd.ioctl") == .some(nil))
        #expect(line.options.backendOption("oci.platform") == .some("linux/arm64"))
        let fuse = try MountCommandLine.parse([
            "-t", "erofs.fuse", "-o", "fuse.threads=3,cache_strategy=readahead", "s", "t",
        ])
        #expect(fuse.backend == .fuse)
        #expect(fuse.options.backendOption("fuse.threads") == .some("3"))
        #expect(fuse.options.kernelData == ["cache_strategy=readahead"])  // the backend warns about it
    }

    @Test(arguments: [
        (["-t", "erofs.foo", "a", "b"], "invalid filesystem subtype `foo`"),
        (["-t", "ext4", "a", "b"], "unsupported filesystem type `ext4`"),
        (["-t", "erofs.fanotify", "a", "b"], "not built into"),
        (["-t", "erofs.ublk", "-o", "nbd.ioctl", "a", "b"], "conflicting options"),
        (["-t", "erofs.nbd", "-o", "loop", "a", "b"], "conflicting options"),
        (["-t", "erofs.fuse", "-o", "nbd.ioctl", "a", "b"], "conflicting options"),
        (["-o", "fuse.threads=2", "a", "b"], "fuse.* options need -t erofs.fuse"),
        (["-t", "erofs.nbd", "-o", "fuse.threads=2", "a", "b"], "fuse.* options need -t erofs.fuse"),
        (["-o", "ublk.queues=1", "a", "b"], "ublk.* options need -t erofs.ublk"),
        (["-t", "erofs.nbd", "-o", "ublk.depth=32", "a", "b"], "ublk.* options need -t erofs.ublk"),
        (["-t", "erofs.fuse", "-o", "loop", "a", "b"], "conflicting options"),
        (["-o", "loop,oci.blob=sha256:00", "a", "b"], "conflicting options"),
        (["-o", "oci.blob=x,oci.layer=1", "a", "b"], "oci.blob and oci.layer"),
        (["-u", "--reattach", "x"], "conflicting options"),
        (["-u", "--disconnect", "x"], "conflicting options"),
        (["img"], "missing argument: MOUNTPOINT"),
        ([], "missing argument: SOURCE"),
        (["a", "b", "c"], "unexpected argument: c"),
        (["-u"], "missing argument: TARGET"),
        (["-d", "12", "a", "b"], "invalid debug level"),
        (["-x", "a", "b"], "unknown option `-x`"),
        (["--bogus", "a", "b"], "unknown option `--bogus`"),
        (["-o"], "needs a value"),
        (["-o", "offset=4096", "a", "b"], "not supported"),
    ])
    func usageErrors(arguments: [String], message: String) {
        #expect {
            _ = try MountCommandLine.parse(arguments)
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test func modes() throws {
        #expect(try MountCommandLine.parse(["-u", "/mnt"]).mode == .unmount)
        #expect(try MountCommandLine.parse(["--reattach", "/dev/nbd0"]).mode == .reattach)
        #expect(try MountCommandLine.parse(["--upgrade", "/mnt/x"]).target == "/mnt/x")
        #expect(try MountCommandLine.parse(["--upgrade", "/mnt/x"]).mode == .upgrade)
        #expect(try MountCommandLine.parse(["--disconnect", "/dev/nbd0"]).mode == .disconnect)
        #expect(try MountCommandLine.parse(["--list"]).mode == .list)
        #expect(try MountCommandLine.parse(["-h"]).mode == .help)
        #expect(try MountCommandLine.parse(["-V"]).mode == .version)
        #expect(try MountCommandLine.parse(["--", "-img", "dir"]).source == "-img")
    }
}

/// Every option the kernel's EROFS takes (6.18), as `-t erofs.fuse` sorts it: honoured, ignored
/// with a warning naming it, or refused with a reason naming it. None is dropped silently.
@Suite struct FUSEKernelOptionTests {
    enum Fate: Equatable { case honoured, warned, refused }

    @Test(arguments: [
        ("device=/dev/blob", Fate.honoured),
        ("user_xattr", .warned), ("acl", .warned),
        ("cache_strategy=disabled", .warned), ("cache_strategy=readahead", .warned),
        ("cache_strategy=readaround", .warned),
        ("dax", .warned), ("dax=always", .warned), ("dax=never", .warned), ("dax=inode", .warned),
        ("directio", .warned), ("nodirectio", .warned),
        ("nouser_xattr", .refused), ("noacl", .refused), ("fsid=abc", .refused), ("domain_id=d", .refused),
        ("fsoffset=4096", .refused), ("device=", .refused), ("bogus", .refused),
    ])
    func kernelOption(option: String, fate: Fate) throws {
        let line = try MountCommandLine.parse(["-t", "erofs.fuse", "-o", option, "image", "dir"])
        #expect(line.options.kernelData == [option], "the CLI hands \(option) to the backend")
        switch FUSEBackend.Options.parse(
            kernelData: line.options.kernelData, backendOptions: line.options.backendOptions)
        {
        case .success(let options):
            switch fate {
            case .honoured:
                #expect(options.devices == ["/dev/blob"] && options.warnings.isEmpty)
            case .warned:
                #expect(
                    options.warnings.count == 1 && options.warnings[0].contains("`\(option)`"), "\(options.warnings)")
            case .refused:
                Issue.record("\(option) accepted: \(options)")
            }
        case .failure(let error):
            #expect(fate == .refused, "\(option) refused: \(error)")
            #expect(error.description.contains("`\(option)`"), "\(error)")
        }
    }
}
