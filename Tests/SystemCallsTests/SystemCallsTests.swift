import CShim
import Glibc
import SystemCalls
import SystemPackage
import Testing

@Suite struct SystemCallsTests {
    @Test func errorNamesOperationPathAndCause() {
        let error = SystemError("open", path: "/nope", errno: .noSuchFileOrDirectory)
        #expect(error.description == "open /nope: No such file or directory")
        let detailed = SystemError("walk", path: "/x", detail: "unknown file type")
        #expect(detailed.description == "walk /x: unknown file type")
    }

    @Test func statReportsMissingPathsWithErrno() {
        #expect(throws: SystemError("stat", path: "/nonexistent/x", errno: .noSuchFileOrDirectory)) {
            try FileStatus.stat("/nonexistent/x")
        }
    }

    @Test func lstatDoesNotFollowSymlinks() throws {
        let dir = try #require(mkdtempPath())
        defer { _ = system("rm -rf '\(dir)'") }
        #expect(symlink("/etc/hostname", dir + "/link") == 0)
        #expect(try FileStatus.lstat(dir + "/link").kind == .symlink)
        #expect(try FileStatus.stat(dir).kind == .dir)
        #expect(try FileStatus.lstat(dir).permissions == 0o700)
    }

    @Test func extendedAttributesRoundTrip() throws {
        let dir = try #require(mkdtempPath())
        defer { _ = system("rm -rf '\(dir)'") }
        let value: [UInt8] = [0, 1, 2, 255]
        guard setxattr(dir, "user.test", value, value.count, 0) == 0 else {
            return  // the filesystem under /tmp has no user xattrs: nothing to check here
        }
        #expect(try ExtendedAttributes.names(dir).contains("user.test"))
        #expect(try ExtendedAttributes.value(dir, name: "user.test") == value)
        #expect(throws: SystemError.self) { try ExtendedAttributes.value(dir, name: "user.absent") }
    }

    @Test func readExactlyStopsAtEndOfFile() throws {
        let fd = try FileDescriptor.open(path: "/proc/self/cmdline", .readOnly)
        defer { try? fd.close() }
        let bytes = try fd.read(exactly: 1 << 20, at: 0)
        #expect(!bytes.isEmpty && bytes.count < 1 << 20)
    }

    func mkdtempPath() -> String? {
        var template = Array("/tmp/syscalls-test-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else { return nil }
        return String(cString: result)
    }
}
