import Foundation
import Glibc
import SystemCalls
import Testing

/// The directory root keeps files in that it later trusts or overwrites: what it refuses, and
/// what it accepts.
@Suite struct PrivateDirectoryTests {
    let base: String

    init() throws {
        // Under /tmp (sticky): the components above the scratch directory pass the checks.
        base = "/tmp/private-directory-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        #expect(mkdir(base, 0o755) == 0)
    }

    func remove() { try? FileManager.default.removeItem(atPath: base) }

    func refusal(_ path: String, creating: Bool = true) -> String? {
        do {
            _ = try PrivateDirectory.open(path, creating: creating, purpose: "use test directory")
            return nil
        } catch {
            #expect(error.kind == .refused)
            return "\(error)"
        }
    }

    @Test func createsMissingComponentsClosedToOthers() throws {
        defer { remove() }
        let directory = try #require(try PrivateDirectory.open("\(base)/a/b", creating: true, purpose: "use test"))
        var status = stat()
        #expect(fstat(directory.descriptor.rawValue, &status) == 0)
        #expect(status.st_mode & 0o7777 == 0o700)
        #expect(try PrivateDirectory.open("\(base)/missing", creating: false, purpose: "use test") == nil)
        // An existing directory of ours is used as it is when others cannot write in it, or
        // when it is sticky; never chmodded (it may be one the user named).
        #expect(mkdir("\(base)/readable", 0o755) == 0 && chmod("\(base)/readable", 0o755) == 0)
        #expect(refusal("\(base)/readable", creating: false) == nil)
        #expect(stat("\(base)/readable", &status) == 0 && status.st_mode & 0o7777 == 0o755)
        #expect(mkdir("\(base)/writable", 0o777) == 0 && chmod("\(base)/writable", 0o777) == 0)
        #expect(refusal("\(base)/writable")?.contains("mode 777: others could plant files in it") == true)
        #expect(stat("\(base)/writable", &status) == 0 && status.st_mode & 0o7777 == 0o777)
        #expect(chmod("\(base)/writable", 0o1777) == 0)
        #expect(refusal("\(base)/writable") == nil)
    }

    @Test func aSymlinkInPlaceOfTheDirectoryIsNotFollowed() throws {
        defer { remove() }
        #expect(mkdir("\(base)/real", 0o700) == 0)
        #expect(symlink("\(base)/real", "\(base)/link") == 0)
        #expect(refusal("\(base)/link")?.contains("a symlink is not followed") == true)
        #expect(refusal("\(base)/link//")?.contains("a symlink is not followed") == true)
        // Above the last component, a symlink is resolved and what it reaches is checked.
        #expect(mkdir("\(base)/real/cache", 0o700) == 0)
        let through = try #require(try PrivateDirectory.open("\(base)/link/cache", creating: false, purpose: "use"))
        #expect(through.path == "\(base)/link/cache")
    }

    @Test func aComponentOthersMayWriteIsRefusedUnlessSticky() throws {
        defer { remove() }
        #expect(mkdir("\(base)/shared", 0o777) == 0)
        #expect(chmod("\(base)/shared", 0o777) == 0)
        #expect(refusal("\(base)/shared/cache")?.contains("others could replace what lies under it") == true)
        #expect(access("\(base)/shared/cache", F_OK) != 0)
        #expect(chmod("\(base)/shared", 0o1777) == 0)
        #expect(refusal("\(base)/shared/cache") == nil)
        #expect(refusal("relative/cache")?.contains("not an absolute path") == true)
        #expect(refusal("\(base)/../etc")?.contains("`.` or `..`") == true)
    }

    @Test(.enabled(if: geteuid() == 0)) func aDirectoryAnotherUserOwnsIsRefused() throws {
        defer { remove() }
        #expect(mkdir("\(base)/theirs", 0o755) == 0)
        #expect(chown("\(base)/theirs", 65534, 65534) == 0)
        #expect(refusal("\(base)/theirs")?.contains("owned by uid 65534") == true)
        // Nor is anything under it reached.
        #expect(refusal("\(base)/theirs/cache")?.contains("owned by uid 65534") == true)
        // In a directory of ours, a file of theirs is not opened.
        let ours = try #require(try PrivateDirectory.open("\(base)/ours", creating: true, purpose: "use test"))
        #expect(FileManager.default.createFile(atPath: "\(base)/ours/state", contents: Data("x".utf8)))
        #expect(chown("\(base)/ours/state", 65534, 65534) == 0)
        #expect { try ours.openFile("state", O_RDONLY) } throws: { "\($0)".contains("owned by uid 65534") }
    }

    @Test func filesAreOpenedWithoutFollowingSymlinksAndMustBeOurs() throws {
        defer { remove() }
        let directory = try #require(try PrivateDirectory.open("\(base)/d", creating: true, purpose: "use test"))
        let victim = "\(base)/victim"
        #expect(FileManager.default.createFile(atPath: victim, contents: Data("keep".utf8)))
        #expect(symlink(victim, "\(base)/d/planted") == 0)
        #expect(throws: SystemError.self) { try directory.openFile("planted", O_RDWR | O_CREAT | O_TRUNC) }
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "keep")
        let linked = try #require(try directory.openFile("linked", O_RDWR | O_CREAT))
        try linked.close()
        #expect(link("\(base)/d/linked", "\(base)/second-name") == 0)
        #expect { try directory.openFile("linked", O_RDWR) } throws: { "\($0)".contains("2 links") }
        try directory.remove("linked")
        #expect(mkfifo("\(base)/d/fifo", 0o600) == 0)
        #expect { try directory.openFile("fifo", O_RDONLY | O_NONBLOCK) } throws: {
            "\($0)".contains("not a regular file")
        }
        #expect(try directory.openFile("absent", O_RDONLY) == nil)
        let made = try #require(try directory.openFile("made", O_RDWR | O_CREAT))
        try made.close()
        #expect(try directory.names().sorted() == ["fifo", "made", "planted"])
        #expect(directory.status(of: "planted").map { $0.st_mode & S_IFMT == S_IFLNK } == true)
        try directory.remove("made")
        try directory.remove("made")
        #expect(try directory.names().sorted() == ["fifo", "planted"])
    }
}
