import CShim
import Foundation
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

    /// A caller tells the kernel's refusals from ours, a broken peer and a corrupt file by the
    /// kind, not the message; an underlying error is kept and says why when nothing else does.
    @Test func errorsHaveAKindAndKeepTheirCause() {
        #expect(SystemError("open", path: "/nope", errno: .noSuchFileOrDirectory).kind == .system)
        #expect(SystemError.lastErrno("x").kind == .system)
        #expect(SystemError("walk", detail: "unknown file type").kind == .failed)
        struct Decoding: Error, CustomStringConvertible { var description: String { "bad byte at 3" } }
        let corrupt = SystemError(.corrupt, "read state", path: "/run/s.json", underlying: Decoding())
        #expect(corrupt.kind == .corrupt)
        #expect(corrupt.underlying is Decoding)
        #expect(corrupt.description == "read state /run/s.json: bad byte at 3")
        let detailed = SystemError(.corrupt, "read state", detail: "not a valid state file", underlying: Decoding())
        #expect(detailed.description == "read state: not a valid state file")
        // The kind is part of what is equal: a refusal is not a protocol violation.
        #expect(
            SystemError(.refused, "standby", detail: "no") != SystemError(.protocolViolation, "standby", detail: "no"))
        #expect(SystemError(.refused, "standby", detail: "no") == SystemError(.refused, "standby", detail: "no"))
    }

    @Test func statReportsMissingPathsWithErrno() {
        #expect(throws: SystemError("stat", path: "/nonexistent/x", errno: .noSuchFileOrDirectory)) {
            try FileStatus.stat("/nonexistent/x")
        }
    }

    /// A regular file can be read by sendfile (the probe leaves its position alone); a socket
    /// cannot, nor can a directory.
    @Test func sendfileProbeTellsFilesFromWhatCannotBeSpliced() throws {
        let dir = try #require(mkdtempPath())
        defer { _ = system("rm -rf '\(dir)'") }
        #expect(FileManager.default.createFile(atPath: dir + "/image", contents: Data([1, 2, 3])))
        let file = try FileDescriptor.open(path: dir + "/image", .readOnly)
        defer { try? file.close() }
        #expect(file.supportsSendfile)
        #expect(lseek(file.rawValue, 0, SEEK_CUR) == 0)
        let directory = try FileDescriptor.open(path: dir, .readOnly)
        defer { try? directory.close() }
        #expect(!directory.supportsSendfile)
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        #expect(!FileDescriptor(rawValue: ends[0]).supportsSendfile)
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
        #expect(try ExtendedAttributes.names(ByteString(dir)).contains("user.test"))
        #expect(try ExtendedAttributes.value(ByteString(dir), name: "user.test") == value)
        #expect(throws: SystemError.self) { try ExtendedAttributes.value(ByteString(dir), name: "user.absent") }
        // Names are bytes: one that is not UTF-8 comes back as it went in.
        let name = ByteString("user.caf") + ByteString([0xe9])
        #expect(name.withCString { setxattr(dir, $0, value, value.count, 0) } == 0)
        #expect(try ExtendedAttributes.names(ByteString(dir)).contains(name))
        #expect(try ExtendedAttributes.value(ByteString(dir), name: name) == value)
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

    /// A standby maps its code before a takeover needs it: afterwards every page of this
    /// executable's code is mapped (its resident set covers the whole mapping).
    @Test func populatingTheExecutableCodeMapsEveryPage() throws {
        #expect(cshim_populate_executable_code() == 0, "errno \(errno)")
        let executable = try #require(
            realpath("/proc/self/exe", nil).map { path in
                defer { free(path) }; return String(cString: path)
            })
        let smaps = try String(contentsOfFile: "/proc/self/smaps", encoding: .utf8)
        var inCode = false
        var size = 0
        var checked = 0
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.first?.contains("-") == true, fields.count >= 5, !fields[0].hasSuffix(":") {
                inCode =
                    fields.count >= 6 && fields[1].contains("x") && fields[5...].joined(separator: " ") == executable
            } else if inCode, fields.count >= 2, let kilobytes = Int(fields[1]) {
                if fields[0] == "Size:" { size = kilobytes }
                if fields[0] == "Rss:" {
                    #expect(kilobytes == size, "\(kilobytes) of \(size) KiB of code mapped")
                    checked += 1
                }
            }
        }
        #expect(checked > 0, "no code mapping of \(executable) in /proc/self/smaps")
    }
}
