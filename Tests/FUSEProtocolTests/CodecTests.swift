import FUSEProtocol
import Testing

@Suite struct RequestDecodingTests {
    @Test func lookupNameStopsAtItsNul() throws {
        let decoded = try FUSERequest(
            decoding: request(.lookup, unique: 99, node: 12, body: Array("a\u{1}b".utf8) + [0]))
        #expect(decoded.header.unique == 99)
        #expect(decoded.header.nodeID == 12)
        #expect(decoded.header.pid == 42)
        #expect(decoded.operation == .lookup(name: [0x61, 0x01, 0x62]))
    }

    @Test func nameWithoutNulOrEmptyIsRefused() {
        #expect(throws: FUSEDecodingError.self) { try FUSERequest(decoding: request(.lookup, body: Array("abc".utf8))) }
        #expect(throws: FUSEDecodingError.self) { try FUSERequest(decoding: request(.lookup, body: [0])) }
        #expect(throws: FUSEDecodingError.self) {
            try FUSERequest(decoding: request(.getxattr, body: le(UInt32(0)) + le(UInt32(0)) + Array("user.x".utf8)))
        }
    }

    @Test func headerLengthMustEqualTheBytesRead() throws {
        var bytes = request(.statfs)
        bytes += [0, 0, 0, 0]  // 4 bytes more than the header says
        do {
            _ = try FUSERequest(decoding: bytes)
            Issue.record("a length mismatch decoded")
        } catch {
            #expect(error.kind == .lengthMismatch)
            #expect(error.unique == 7)  // still answerable
        }
        #expect(throws: FUSEDecodingError.self) { try FUSERequest(decoding: Array(request(.statfs).prefix(39))) }
    }

    @Test func extensionHeadersAreNotPartOfTheBody() throws {
        // A LOOKUP whose name is followed by 8 bytes of extension (total_extlen = 1): the name is
        // still found; an extension length beyond the request is refused.
        var header = FUSEInHeader(length: 40 + 4 + 8, opcode: .lookup, unique: 1, nodeID: 1, totalExtensionLength: 1)
        let bytes = header.encoded() + Array("ab".utf8) + [0, 0] + [UInt8](repeating: 0xee, count: 8)
        #expect(try FUSERequest(decoding: bytes).operation == .lookup(name: [0x61, 0x62]))
        header.totalExtensionLength = 2
        #expect(throws: FUSEDecodingError.self) {
            try FUSERequest(
                decoding: header.encoded() + Array("ab".utf8) + [0, 0] + [UInt8](repeating: 0xee, count: 8))
        }
    }

    @Test func initReadsFlags2OnlyWithInitExt() throws {
        guard case .initialize(let full) = try FUSERequest(decoding: validRequests[0]).operation else {
            Issue.record("not INIT"); return
        }
        #expect(full.minor == 41)
        #expect(full.maxReadahead == 131072)
        #expect(full.flags.contains(.initExt) && full.flags.contains(.asyncRead) && full.flags.contains(.hasResend))
        guard case .initialize(let compat) = try FUSERequest(decoding: validRequests[1]).operation else {
            Issue.record("not INIT"); return
        }
        #expect(compat.flags == .asyncRead)
        #expect(throws: FUSEDecodingError.self) { try FUSERequest(decoding: request(.initialize, body: le(UInt32(7)))) }
    }

    @Test func batchForgetCountMustFitTheBody() throws {
        #expect(try FUSERequest(decoding: validRequests[4]).operation == .batchForget(count: 2))
        #expect(throws: FUSEDecodingError.self) {
            try FUSERequest(
                decoding: request(.batchForget, body: le(UInt32(3)) + le(UInt32(0)) + [UInt8](repeating: 0, count: 32)))
        }
        #expect(throws: FUSEDecodingError.self) {
            try FUSERequest(decoding: request(.batchForget, body: le(UInt32.max) + le(UInt32(0))))
        }
    }

    @Test func operationsAreClassified() throws {
        #expect(
            try FUSERequest(decoding: validRequests[9]).operation
                == .read(FUSEReadIn(fileHandle: 0, offset: 4096, size: 131072)))
        #expect(
            try FUSERequest(decoding: validRequests[13]).operation == .getxattr(name: Array("user.a".utf8), size: 0))
        #expect(
            try FUSERequest(decoding: validRequests[17]).operation
                == .lseek(FUSELseekIn(fileHandle: 0, offset: 8192, whence: FUSESeekWhence.data)))
        #expect(try FUSERequest(decoding: validRequests[20]).operation == .modifying(.write))
        #expect(try FUSERequest(decoding: validRequests[21]).operation == .unsupported(FUSEOpcode(rawValue: 4096)))
        #expect(
            try FUSERequest(decoding: request(.flush, body: [UInt8](repeating: 0, count: 24))).operation
                == .sync(.flush))
        #expect(try !FUSERequest(decoding: validRequests[3]).expectsReply)
        #expect(try !FUSERequest(decoding: validRequests[18]).expectsReply)
        #expect(try FUSERequest(decoding: validRequests[19]).expectsReply)
        // GETATTR names a file handle only when FUSE_GETATTR_FH is set.
        #expect(try FUSERequest(decoding: validRequests[5]).operation == .getattr(fileHandle: 9))
        #expect(
            try FUSERequest(decoding: request(.getattr, body: [UInt8](repeating: 0, count: 16))).operation
                == .getattr(fileHandle: nil))
    }
}

@Suite struct ReplyEncodingTests {
    func outHeader(_ bytes: [UInt8]) -> (length: UInt32, error: Int32, unique: UInt64) {
        bytes.withUnsafeBytes {
            (
                $0.loadUnaligned(as: UInt32.self), $0.loadUnaligned(fromByteOffset: 4, as: Int32.self),
                $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            )
        }
    }

    let attr = FUSEAttr(
        ino: 36, size: 5000, blocks: 16, mtime: 1_700_000_000, mtimeNanoseconds: 5, mode: 0o100644,
        linkCount: 2, uid: 1000, gid: 100, rdev: 0, blockSize: 4096)

    @Test func errorsAreNegatedWithAnEmptyBody() {
        let reply = FUSEReply.error(unique: 77, errno: 2)
        #expect(reply.count == 16)
        #expect(outHeader(reply) == (16, -2, 77))
    }

    @Test func structureSizesMatchTheKernelHeader() {
        // Sizes of include/uapi/linux/fuse.h: entry_out 128, attr_out 104, init_out 64,
        // open_out 16, kstatfs 80, getxattr_out 8, lseek_out 8; plus the 16-byte out header.
        let entry = FUSEReply.entry(
            unique: 1, FUSEEntryOut(nodeID: 38, entryValidity: .forever, attrValidity: .forever, attr: attr))
        #expect(entry.count == 16 + 128 && outHeader(entry).length == 144)
        #expect(FUSEReply.attr(unique: 1, validity: .forever, attr).count == 16 + 104)
        let initOut = FUSEInitOut(
            major: 7, minor: 38, maxReadahead: 1 << 20, flags: [.asyncRead, .initExt, .hasResend],
            maxBackground: 64, congestionThreshold: 48, maxWrite: 4096, timeGranularity: 1, maxPages: 256)
        #expect(FUSEReply.initialize(unique: 1, initOut).count == 16 + 64)
        #expect(FUSEReply.open(unique: 1, fileHandle: 0, flags: .keepCache).count == 16 + 16)
        #expect(FUSEReply.statfs(unique: 1, FUSEStatfs(blocks: 10, files: 3, blockSize: 4096)).count == 16 + 80)
        #expect(FUSEReply.xattrSize(unique: 1, size: 9).count == 16 + 8)
        #expect(FUSEReply.lseek(unique: 1, offset: 4096).count == 16 + 8)
    }

    @Test func fieldsLandAtTheirOffsets() {
        let entry = FUSEReply.entry(
            unique: 1, FUSEEntryOut(nodeID: 38, entryValidity: .forever, attrValidity: .forever, attr: attr))
        entry.withUnsafeBytes { bytes in
            #expect(bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self) == 38)  // nodeid
            #expect(bytes.loadUnaligned(fromByteOffset: 16 + 16, as: UInt64.self) == FUSEValidity.forever.seconds)
            let attrStart = 16 + 40
            #expect(bytes.loadUnaligned(fromByteOffset: attrStart, as: UInt64.self) == 36)  // ino
            #expect(bytes.loadUnaligned(fromByteOffset: attrStart + 8, as: UInt64.self) == 5000)  // size
            #expect(bytes.loadUnaligned(fromByteOffset: attrStart + 32, as: UInt64.self) == 1_700_000_000)  // mtime
            #expect(bytes.loadUnaligned(fromByteOffset: attrStart + 52, as: UInt32.self) == 5)  // mtimensec
            #expect(bytes.loadUnaligned(fromByteOffset: attrStart + 60, as: UInt32.self) == 0o100644)  // mode
            #expect(bytes.loadUnaligned(fromByteOffset: attrStart + 64, as: UInt32.self) == 2)  // nlink
            #expect(bytes.loadUnaligned(fromByteOffset: attrStart + 68, as: UInt32.self) == 1000)  // uid
            #expect(bytes.loadUnaligned(fromByteOffset: attrStart + 80, as: UInt32.self) == 4096)  // blksize
        }
        let initOut = FUSEReply.initialize(
            unique: 1,
            FUSEInitOut(
                major: 7, minor: 38, maxReadahead: 1 << 20, flags: [.asyncRead, .hasResend], maxBackground: 64,
                congestionThreshold: 48, maxWrite: 4096, timeGranularity: 1, maxPages: 256))
        initOut.withUnsafeBytes { bytes in
            #expect(bytes.loadUnaligned(fromByteOffset: 16 + 12, as: UInt32.self) == 1)  // flags
            #expect(bytes.loadUnaligned(fromByteOffset: 16 + 28, as: UInt16.self) == 256)  // max_pages
            #expect(bytes.loadUnaligned(fromByteOffset: 16 + 32, as: UInt32.self) == 1 << 7)  // flags2: HAS_RESEND
        }
    }

    @Test func direntsAreAlignedAndStopAtTheCapacity() {
        var list = FUSEDirentList(capacity: 80, plus: false)
        // 24 + 5 = 29 -> 32 bytes each: two fit in 80, the third does not.
        let appended1 = list.append(
            name: Array("first".utf8), ino: 40, type: FUSEDirentType.regular, nextOffset: 24, entry: nil)
        #expect(appended1)
        let appended2 = list.append(
            name: Array("other".utf8), ino: 41, type: FUSEDirentType.directory, nextOffset: 36, entry: nil)
        #expect(appended2)
        let appended3 = list.append(
            name: Array("third".utf8), ino: 42, type: FUSEDirentType.regular, nextOffset: 48, entry: nil)
        #expect(!appended3)
        #expect(list.count == 2 && list.bytes.count == 64)
        list.bytes.withUnsafeBytes { bytes in
            #expect(bytes.loadUnaligned(fromByteOffset: 32, as: UInt64.self) == 41)
            #expect(bytes.loadUnaligned(fromByteOffset: 40, as: UInt64.self) == 36)
            #expect(bytes.loadUnaligned(fromByteOffset: 52, as: UInt32.self) == FUSEDirentType.directory)
        }
        var plus = FUSEDirentList(capacity: 4096, plus: true)
        let appended4 = plus.append(name: [0x2e], ino: 1, type: FUSEDirentType.directory, nextOffset: 12, entry: nil)
        #expect(appended4)
        #expect(plus.bytes.count == FUSEDirentList.entrySize(nameLength: 1, plus: true))
        #expect(plus.bytes.count == 128 + 32)
    }
}
