import CShim
import Foundation
import KernelAttach
import Manifest
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// lseek(2) whence values for holes (not in Glibc's Swift overlay).
let seekData: Int32 = 3  // SEEK_DATA
let seekHole: Int32 = 4  // SEEK_HOLE

/// fstests-style checks of the read-only paths through FUSE, on an image made now by
/// mkfs.erofs (chunk-based, so that it has real holes), mounted both through FUSE and by the
/// kernel's own EROFS: reads at odd offsets and past the end, mmap, readdir with
/// telldir/seekdir, SEEK_DATA/SEEK_HOLE, the xattr size probes.
@Suite(.requiresRoot, .serialized) struct FUSEEdgeCaseTests {
    let harness = MountHarness()

    /// The tree, its image, and the image mounted through FUSE (`fuse`) and by the kernel (`kernel`).
    struct Fixture {
        let directory: String
        var tree: String { directory + "/tree" }
        var image: String { directory + "/image.erofs" }
        var fuse: String { directory + "/fuse" }
        var kernel: String { directory + "/kernel" }
        let random: [UInt8]
        static let sparseSize = 5 << 20
        static let sparseData: [(offset: Int, count: Int)] = [(1 << 20, 5000), (3 << 20, 100)]
        static let bigXattr = [UInt8](repeating: 0x61, count: 2000)
        /// posix_acl_xattr form (version 2, then tag, perm, id): owner rw, user 1234 r, group
        /// none, mask r, other none.
        static let accessACL: [UInt8] = {
            func entry(_ tag: UInt16, _ perm: UInt16, _ id: UInt32) -> [UInt8] {
                withUnsafeBytes(of: tag.littleEndian) { Array($0) }
                    + withUnsafeBytes(of: perm.littleEndian) { Array($0) }
                    + withUnsafeBytes(of: id.littleEndian) { Array($0) }
            }
            return [2, 0, 0, 0] + entry(1, 6, .max) + entry(2, 4, 1234) + entry(4, 0, .max) + entry(0x10, 4, .max)
                + entry(0x20, 0, .max)
        }()
    }

    func withFixture(_ body: (Fixture) throws -> Void) throws {
        let directory = try MountHarness.scratchDirectory("fuse-edge")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var generator = SplitMix64(seed: 7)
        let random = (0..<300_001).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        let fixture = Fixture(directory: directory, random: random)
        let manager = FileManager.default
        for path in [fixture.tree + "/many", fixture.fuse, fixture.kernel] {
            try manager.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        try Data(random).write(to: URL(fileURLWithPath: fixture.tree + "/random"))
        for index in 0..<1000 {
            try Data().write(
                to: URL(
                    fileURLWithPath: "\(fixture.tree)/many/entry-\(index)-\(String(repeating: "n", count: index % 50))")
            )
        }
        let sparse = open(fixture.tree + "/sparse", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        try #require(sparse >= 0)
        for (offset, count) in Fixture.sparseData {
            _ = [UInt8](repeating: 0x5a, count: count).withUnsafeBytes {
                pwrite(sparse, $0.baseAddress, count, off_t(offset))
            }
        }
        ftruncate(sparse, off_t(Fixture.sparseSize))
        close(sparse)
        try Data("x".utf8).write(to: URL(fileURLWithPath: fixture.tree + "/xattrs"))
        #expect(setxattr(fixture.tree + "/xattrs", "user.small", "v", 1, 0) == 0)
        #expect(
            Fixture.bigXattr.withUnsafeBytes {
                setxattr(fixture.tree + "/xattrs", "user.big", $0.baseAddress, $0.count, 0)
            } == 0)

        // A file only its owner (root) may read by mode, and uid 1234 by its POSIX ACL.
        try Data("acl\n".utf8).write(to: URL(fileURLWithPath: fixture.tree + "/acl"))
        #expect(chmod(fixture.tree + "/acl", 0o600) == 0)
        #expect(
            Fixture.accessACL.withUnsafeBytes {
                setxattr(fixture.tree + "/acl", "system.posix_acl_access", $0.baseAddress, $0.count, 0)
            } == 0)

        let made = try runProgram("/usr/bin/mkfs.erofs", ["--chunksize=4096", fixture.image, fixture.tree])
        try #require(made.status == 0, "\(made.standardError)")
        try FUSEEdgeCaseTests.punchHoles(in: fixture.image)
        let fuse = try harness.run(["-t", "erofs.fuse", fixture.image, fixture.fuse])
        try #require(fuse.status == 0, "\(fuse.standardError)")
        defer { _ = try? harness.run(["-u", fixture.fuse]) }
        let kernel = try harness.run(["-o", "loop", fixture.image, fixture.kernel])
        try #require(kernel.status == 0, "\(kernel.standardError)")
        defer { _ = try? harness.run(["-u", fixture.kernel]) }
        try body(fixture)
    }

    /// mkfs.erofs 1.5 stores zero chunks as references to one shared zero block, never as
    /// holes: turn the first 1 MiB of the sparse file's chunk table (the first run of 256 equal
    /// 4-byte block addresses) into null entries (EROFS_NULL_ADDR), which read as zeros.
    static func punchHoles(in image: String) throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        let words = bytes.count / 4
        func word(_ index: Int) -> UInt32 {
            bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self) }
        }
        var start = 0
        while start + 256 <= words {
            let value = word(start)
            if value != 0, value != .max, (start..<(start + 256)).allSatisfy({ word($0) == value }) { break }
            start += 1
        }
        try #require(start + 256 <= words, "no chunk table of the sparse file in \(image)")
        for index in start..<(start + 256) {
            bytes.replaceSubrange((index * 4)..<(index * 4 + 4), with: [0xff, 0xff, 0xff, 0xff])
        }
        try Data(bytes).write(to: URL(fileURLWithPath: image))
    }

    @Test func bothMountsShowTheSameTree() throws {
        try withFixture { fixture in
            let fuse = try DirectoryWalker.manifest(ofTreeAt: fixture.fuse).manifestText
            let kernel = try DirectoryWalker.manifest(ofTreeAt: fixture.kernel).manifestText
            #expect(manifestDifference(actual: fuse, expected: kernel) == nil)
        }
    }

    /// The fixture with its random file opened through FUSE.
    func withRandomFile(_ body: (Fixture, _ fd: Int32, _ size: Int) throws -> Void) throws {
        try withFixture { fixture in
            let fd = open(fixture.fuse + "/random", O_RDONLY)
            try #require(fd >= 0)
            defer { close(fd) }
            try body(fixture, fd, fixture.random.count)
        }
    }

    @Test func preadAtOddOffsetsAndPastTheEnd() throws {
        try withRandomFile { fixture, fd, size in
            for offset in [
                0, 1, 511, 4095, 4096, 4097, 65_535, 131_073, size - 1, size, size + 1, size + 100_000, 1 << 40,
            ] {
                for count in [1, 7, 4096, 65_537, 1 << 20] {
                    var buffer = [UInt8](repeating: 0xee, count: count)
                    let n = pread(fd, &buffer, count, off_t(offset))
                    let expected = offset >= size ? [] : Array(fixture.random[offset..<min(size, offset + count)])
                    #expect(n == expected.count, "pread(\(count) at \(offset)) returned \(n)")
                    if n > 0 {
                        #expect(Array(buffer[..<n]) == expected, "pread(\(count) at \(offset)) returned other bytes")
                    }
                }
            }
        }
    }

    @Test func mmapSeesTheFile() throws {
        try withRandomFile { fixture, fd, size in
            let mapped = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0)
            try #require(mapped != MAP_FAILED)
            defer { munmap(mapped, size) }
            let bytes = UnsafeRawBufferPointer(start: mapped, count: size)
            #expect(Array(bytes) == fixture.random)
            // A writable shared mapping of a read-only filesystem is refused.
            #expect(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED)
        }
    }

    /// Names with the telldir position after each; seekdir to any of them resumes right after.
    @Test func readdirResumesAtEveryTelldirPosition() throws {
        try withFixture { fixture in
            func name(_ entry: UnsafeMutablePointer<dirent>) -> String {
                withUnsafeBytes(of: entry.pointee.d_name) {
                    String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
                }
            }
            func list(_ path: String) -> [(name: String, position: Int)] {
                guard let stream = opendir(path) else { return [] }
                defer { closedir(stream) }
                var entries: [(String, Int)] = []
                while let entry = readdir(stream) { entries.append((name(entry), telldir(stream))) }
                return entries
            }
            let fuse = list(fixture.fuse + "/many")
            let kernel = list(fixture.kernel + "/many")
            #expect(fuse.count == 1002)  // 1000 entries, "." and ".."
            #expect(fuse.map(\.name) == kernel.map(\.name), "not the kernel's order")
            guard let stream = opendir(fixture.fuse + "/many") else { Issue.record("opendir failed"); return }
            defer { closedir(stream) }
            for index in [0, 1, 2, 57, 300, 700, 1000, 1001] {
                seekdir(stream, fuse[index].position)
                var rest: [String] = []
                while let entry = readdir(stream) { rest.append(name(entry)) }
                #expect(rest == fuse[(index + 1)...].map(\.name), "seekdir to the position after entry \(index)")
            }
            rewinddir(stream)
            #expect(readdir(stream) != nil)
        }
    }

    @Test func seekDataAndHoleDescribeTheSparseFile() throws {
        try withFixture { fixture in
            let fd = open(fixture.fuse + "/sparse", O_RDONLY)
            try #require(fd >= 0)
            defer { close(fd) }
            var content = [UInt8](repeating: 0, count: Fixture.sparseSize)
            #expect(pread(fd, &content, content.count, 0) == content.count)
            for (offset, count) in Fixture.sparseData {
                #expect(content[offset..<(offset + count)].allSatisfy { $0 == 0x5a })
            }
            // Valid answers: SEEK_DATA lands at or before the next written byte with only zeros
            // skipped; SEEK_HOLE lands after the data it starts in; both stay inside the file.
            for start in stride(from: 0, to: Fixture.sparseSize, by: 256 * 1024) {
                let data = lseek(fd, off_t(start), seekData)
                let next = Fixture.sparseData.first { $0.offset + $0.count > start }
                if let next {
                    #expect(data >= start && data <= max(start, next.offset), "SEEK_DATA from \(start) gave \(data)")
                } else if data >= 0 {
                    #expect(content[start..<Int(data)].allSatisfy { $0 == 0 })
                } else {
                    #expect(errno == ENXIO)
                }
                if data >= 0 { #expect(content[start..<Int(data)].allSatisfy { $0 == 0 }) }
                let hole = lseek(fd, off_t(start), seekHole)
                #expect(hole >= start && hole <= Fixture.sparseSize, "SEEK_HOLE from \(start) gave \(hole)")
                for (offset, count) in Fixture.sparseData where start >= offset && start < offset + count {
                    #expect(hole >= offset + count, "SEEK_HOLE inside data at \(start) gave \(hole)")
                }
            }
            // The first hole is before the first data (chunk-based nulls), not only at the end.
            #expect(lseek(fd, 0, seekHole) == 0)
            #expect(lseek(fd, 0, seekData) == off_t(Fixture.sparseData[0].offset))
            #expect(lseek(fd, off_t(Fixture.sparseSize), seekData) == -1 && errno == ENXIO)
            #expect(lseek(fd, off_t(Fixture.sparseSize + 1), seekHole) == -1 && errno == ENXIO)
        }
    }

    /// A result as a test compares it across the two mounts: the value, or the errno.
    enum Outcome: Equatable, CustomStringConvertible {
        case value(Int)
        case failed(errno: Int32)

        /// `call`'s result, or errno when it returned -1.
        static func of(_ call: () -> Int) -> Outcome {
            errno = 0
            let result = call()
            return result == -1 ? .failed(errno: errno) : .value(result)
        }

        var description: String {
            switch self {
            case .value(let value): "\(value)"
            case .failed(let code): "errno \(code) (\(String(cString: strerror(code))))"
            }
        }
    }

    /// Every way of asking to change the tree fails with EROFS, on both mounts alike (the
    /// kernel's VFS answers some before the filesystem sees them: FUSE must agree).
    @Test func writesOfEveryKindFailWithEROFSAsOnTheKernelMount() throws {
        try withFixture { fixture in
            func attempts(_ root: String) -> [String: Outcome] {
                func opened(_ path: String, _ flags: Int32) -> Outcome {
                    .of {
                        let fd = open(root + path, flags, 0o644)
                        if fd >= 0 { close(fd) }
                        return fd >= 0 ? 0 : -1
                    }
                }
                return [
                    "O_WRONLY": opened("/random", O_WRONLY),
                    "O_RDWR": opened("/random", O_RDWR),
                    "O_RDONLY|O_TRUNC": opened("/random", O_RDONLY | O_TRUNC),
                    "O_WRONLY|O_APPEND": opened("/random", O_WRONLY | O_APPEND),
                    "O_CREAT new": opened("/new-file", O_WRONLY | O_CREAT),
                    "O_CREAT existing": opened("/random", O_RDONLY | O_CREAT),
                    "truncate": .of { Int(truncate(root + "/random", 0)) },
                    "mkdir": .of { Int(mkdir(root + "/new-dir", 0o755)) },
                    "rmdir": .of { Int(rmdir(root + "/many")) },
                    "unlink": .of { Int(unlink(root + "/random")) },
                    "rename": .of { Int(rename(root + "/random", root + "/renamed")) },
                    "symlink": .of { Int(symlink("random", root + "/new-link")) },
                    "link": .of { Int(link(root + "/random", root + "/new-hardlink")) },
                    "chmod": .of { Int(chmod(root + "/random", 0o600)) },
                    "chown": .of { Int(chown(root + "/random", 1, 1)) },
                    "utimes": .of { Int(utimes(root + "/random", nil)) },
                    "setxattr": .of { Int(setxattr(root + "/xattrs", "user.new", "v", 1, 0)) },
                    "removexattr": .of { Int(removexattr(root + "/xattrs", "user.small")) },
                    "mknod": .of { Int(mknod(root + "/new-fifo", S_IFIFO | 0o644, 0)) },
                ]
            }
            let fuse = attempts(fixture.fuse)
            let kernel = attempts(fixture.kernel)
            for (name, outcome) in fuse.sorted(by: { $0.key < $1.key }) {
                #expect(
                    outcome == kernel[name], "\(name): FUSE \(outcome), kernel \(kernel[name].map { "\($0)" } ?? "-")")
            }
            // Whatever the VFS lets through to the filesystem is refused as EROFS, never
            // ENOSYS or EIO; opening for reading with O_CREAT of an existing file is allowed.
            #expect(fuse["O_WRONLY"] == .failed(errno: EROFS) && fuse["mkdir"] == .failed(errno: EROFS))
            #expect(fuse["O_CREAT existing"] == .value(0))
            #expect(FileManager.default.fileExists(atPath: fixture.fuse + "/random"))
        }
    }

    /// Reads the two mounts must answer alike: O_DIRECT reads (aligned, unaligned, past the
    /// end), reads of a directory, pread at offsets up to the largest off_t and negative,
    /// lseek to the end and past it.
    @Test func directAndOddReadsAnswerAsOnTheKernelMount() throws {
        try withFixture { fixture in
            let oDirect: Int32 = 0o40000  // O_DIRECT on x86_64 and arm64 Linux
            func outcomes(_ root: String) -> [String: Outcome] {
                var results: [String: Outcome] = [:]
                let fd = open(root + "/random", O_RDONLY | oDirect)
                results["open O_DIRECT"] = fd >= 0 ? .value(0) : .failed(errno: errno)
                if fd >= 0 {
                    defer { close(fd) }
                    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
                    defer { buffer.deallocate() }
                    for (offset, count) in [(0, 4096), (4096, 65_536), (290_816, 65_536), (1 << 30, 4096), (1, 4096)] {
                        let outcome = Outcome.of { pread(fd, buffer, count, off_t(offset)) }
                        results["O_DIRECT pread \(count) at \(offset)"] = outcome
                        if case .value(let n) = outcome, n > 0 {
                            let bytes = Array(UnsafeRawBufferPointer(start: buffer, count: n))
                            #expect(
                                bytes == Array(fixture.random[offset..<(offset + n)]),
                                "\(root): O_DIRECT bytes at \(offset)")
                        }
                    }
                }
                let file = open(root + "/random", O_RDONLY)
                defer { close(file) }
                var byte: UInt8 = 0
                results["pread at Int64.max - 1"] = .of { pread(file, &byte, 1, off_t.max - 1) }
                results["pread at -1"] = .of { pread(file, &byte, 1, -1) }
                results["SEEK_END"] = .of { Int(lseek(file, 0, SEEK_END)) }
                results["SEEK_END + 10"] = .of { Int(lseek(file, 10, SEEK_END)) }
                results["read after SEEK_END + 10"] = .of { read(file, &byte, 1) }
                results["SEEK_SET -1"] = .of { Int(lseek(file, -1, SEEK_SET)) }
                let directory = open(root + "/many", O_RDONLY | O_DIRECTORY)
                defer { close(directory) }
                results["read of a directory"] = .of { read(directory, &byte, 1) }
                results["open a file as O_DIRECTORY"] = .of {
                    let fd = open(root + "/random", O_RDONLY | O_DIRECTORY)
                    if fd >= 0 { close(fd) }
                    return fd >= 0 ? 0 : -1
                }
                return results
            }
            let fuse = outcomes(fixture.fuse)
            let kernel = outcomes(fixture.kernel)
            #expect(fuse.count == kernel.count)
            for (name, outcome) in fuse.sorted(by: { $0.key < $1.key }) {
                #expect(
                    outcome == kernel[name], "\(name): FUSE \(outcome), kernel \(kernel[name].map { "\($0)" } ?? "-")")
            }
            #expect(fuse["read of a directory"] == .failed(errno: EISDIR))
            #expect(fuse["SEEK_END"] == .value(fixture.random.count))
        }
    }

    /// A file mapped and then read, read and then mapped, and a private writable mapping
    /// (copy-on-write, allowed on a read-only file): the same bytes everywhere, the file
    /// unchanged, as on the kernel's mount.
    @Test func mmapAndReadAgreeInEitherOrder() throws {
        try withFixture { fixture in
            for root in [fixture.fuse, fixture.kernel] {
                let fd = open(root + "/random", O_RDONLY)
                try #require(fd >= 0)
                defer { close(fd) }
                let size = fixture.random.count
                let mapped = try #require(mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), "\(root)")
                try #require(mapped != MAP_FAILED)
                defer { munmap(mapped, size) }
                // Touch the middle of the mapping first, then read the whole file through read(2).
                #expect(mapped.load(fromByteOffset: 150_000, as: UInt8.self) == fixture.random[150_000])
                var read = [UInt8](repeating: 0, count: size)
                #expect(pread(fd, &read, size, 0) == size)
                #expect(read == fixture.random, "\(root): read after mmap")
                #expect(Array(UnsafeRawBufferPointer(start: mapped, count: size)) == fixture.random)

                let copy = try #require(mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0))
                try #require(copy != MAP_FAILED, "\(root): private writable mapping refused")
                defer { munmap(copy, size) }
                copy.storeBytes(of: ~fixture.random[10], toByteOffset: 10, as: UInt8.self)
                var again: UInt8 = 0
                #expect(pread(fd, &again, 1, 10) == 1 && again == fixture.random[10], "\(root): private write leaked")
                // A mapping past the end of the file: the page after the last faults (SIGBUS), so
                // only its length is checked here: the mapping itself is allowed.
                let beyond = mmap(nil, size + (1 << 20), PROT_READ, MAP_SHARED, fd, 0)
                #expect(beyond != MAP_FAILED)
                if beyond != MAP_FAILED { munmap(beyond, size + (1 << 20)) }
            }
        }
    }

    /// ACLs are enforced as the kernel's EROFS enforces them (FUSE_POSIX_ACL with
    /// default_permissions): uid 1234 reads by its ACL entry, uid 4321 is refused, on both mounts.
    @Test func posixACLsGrantAndDenyAsOnTheKernelMount() throws {
        try withFixture { fixture in
            for root in [fixture.fuse, fixture.kernel] {
                let allowed = try runProgram(
                    "/usr/bin/setpriv", ["--reuid=1234", "--regid=1234", "--clear-groups", "/bin/cat", root + "/acl"])
                #expect(allowed.status == 0 && allowed.standardOutput == "acl\n", "\(root): \(allowed.standardError)")
                let refused = try runProgram(
                    "/usr/bin/setpriv", ["--reuid=4321", "--regid=4321", "--clear-groups", "/bin/cat", root + "/acl"])
                #expect(
                    refused.status != 0 && refused.standardError.contains("Permission denied"),
                    "\(root): \(refused.standardError)")
            }
            var fuse = [UInt8](repeating: 0, count: 256)
            var kernel = [UInt8](repeating: 0, count: 256)
            let fuseLength = getxattr(fixture.fuse + "/acl", "system.posix_acl_access", &fuse, fuse.count)
            let kernelLength = getxattr(fixture.kernel + "/acl", "system.posix_acl_access", &kernel, kernel.count)
            #expect(fuseLength == Fixture.accessACL.count && fuseLength == kernelLength)
            #expect(fuse == kernel)
        }
    }

    @Test func xattrSizeProbesAndShortBuffers() throws {
        try withFixture { fixture in
            let path = fixture.fuse + "/xattrs"
            #expect(getxattr(path, "user.big", nil, 0) == Fixture.bigXattr.count)
            var small = [UInt8](repeating: 0, count: 10)
            #expect(getxattr(path, "user.big", &small, small.count) == -1 && errno == ERANGE)
            var value = [UInt8](repeating: 0, count: 4096)
            let length = getxattr(path, "user.big", &value, value.count)
            #expect(length == Fixture.bigXattr.count && Array(value[..<max(0, length)]) == Fixture.bigXattr)
            #expect(getxattr(path, "user.absent", &value, value.count) == -1 && errno == ENODATA)

            func names(_ path: String) -> [String] {
                let size = listxattr(path, nil, 0)
                guard size > 0 else { return [] }
                var buffer = [CChar](repeating: 0, count: size)
                #expect(listxattr(path, &buffer, 3) == -1 && errno == ERANGE)
                #expect(listxattr(path, &buffer, size) == size)
                return buffer.split(separator: 0).map {
                    String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                }.sorted()
            }
            #expect(names(path) == ["user.big", "user.small"])
            #expect(names(path) == names(fixture.kernel + "/xattrs"))
        }
    }
}
