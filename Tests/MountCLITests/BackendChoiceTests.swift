#if canImport(Glibc)
import Glibc
#endif
import LocalBackend
@testable import MountCLI
import RemoteSources
import SystemCalls
import SystemPackage
import Testing

/// Which backend a mount goes to: remote sources only to daemons, and plain `-t erofs` falls
/// back to FUSE only for the kernel refusals FUSE can do better on.
@Suite struct BackendChoiceTests {
    @Test func fallbackOnlyForTheKernelsOwnRefusals() {
        func failure(_ operation: String, _ code: Int32) -> MountFailure {
            MountFailure("cannot mount", cause: SystemError(operation, path: "/mnt", errno: Errno(rawValue: code)))
        }
        #expect(failure("mount /img.erofs on", ENODEV).kernelRefused)
        #expect(failure("mount /img.erofs on", EPERM).kernelRefused)
        #expect(failure("mount /dev/loop0 on", EOPNOTSUPP).kernelRefused)
        // A corrupt image, a busy mountpoint, an open that failed: FUSE would fail the same way.
        #expect(!failure("mount /img.erofs on", EINVAL).kernelRefused)
        #expect(!failure("mount /img.erofs on", EBUSY).kernelRefused)
        #expect(!failure("open", EPERM).kernelRefused)
        #expect(!MountFailure("no cause").kernelRefused)
    }

    @Test func remoteSourcesGoToDaemonsOnly() throws {
        let remote = try MountCommandLine.parse(["-t", "erofs.fuse", "http://host/image.erofs", "/mnt"])
        #expect(try MountTool.chooseBackend(remote, remote: true) == .fuse)
        let ublk = try MountCommandLine.parse(["-t", "erofs.ublk", "http://host/image.erofs", "/mnt"])
        #expect(try MountTool.chooseBackend(ublk, remote: true) == .ublk)
        let line = try MountCommandLine.parse(["-t", "erofs.local", "http://host/image.erofs", "/mnt"])
        #expect(throws: UsageError.self) { _ = try MountTool.chooseBackend(line, remote: true) }
        let local = try MountCommandLine.parse(["/img.erofs", "/mnt"])
        #expect(try MountTool.chooseBackend(local, remote: false) == .local)
    }

    @Test func remoteOptionsAreParsedOnceForEveryBackend() throws {
        let s3 = try MountCommandLine.parse([
            "bucket/key.erofs", "/mnt", "-o", "s3.region=eu-west-3,remote.verify=full",
        ])
        let description = try #require(
            try RemoteMount.description(source: s3.source!, options: s3.options, environment: [:])?.description)
        #expect(description.displayName == "s3://bucket/key.erofs")
        #expect(description.verifyFully)
        // oci.*: an image reference; oci.username/password come back apart from the description.
        let oci = try MountCommandLine.parse([
            "localhost:5000/repo:v1", "/mnt", "-o",
            "oci.layer=1,oci.username=u,oci.password=p,remote.cache=none,remote.verify=full",
        ])
        let planned = try #require(
            try RemoteMount.description(source: oci.source!, options: oci.options, environment: [:]))
        #expect(planned.description.displayName == "localhost:5000/repo:v1")
        #expect(planned.registry == .basic(username: "u", password: "p"))
        #expect(planned.description.verifyFully)
        #expect(!ServedSource.remote(planned.description).argument.contains("\"p\""))
        // A remote option on a local path, a bad value: usage errors (exit 1), nothing opened.
        let stray = try MountCommandLine.parse(["/img.erofs", "/mnt", "-o", "remote.cache=none"])
        #expect(throws: UsageError.self) {
            _ = try RemoteMount.description(source: stray.source!, options: stray.options, environment: [:])
        }
        let bad = try MountCommandLine.parse(["bucket/key", "/mnt", "-o", "s3.sig=3"])
        #expect(throws: UsageError.self) {
            _ = try RemoteMount.description(source: bad.source!, options: bad.options, environment: [:])
        }
        #expect(
            try RemoteMount.description(source: "/img.erofs", options: MountOptions(), environment: [:]) == nil)
    }
}
