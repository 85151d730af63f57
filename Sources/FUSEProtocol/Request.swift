/// Decoding of requests read from /dev/fuse. The kernel writes them in host byte order; every
/// field is still checked against the header's length, as if the bytes were hostile (a
/// decoder that never traps is one a fuzzer can run).

/// Why a request could not be decoded.
public struct FUSEDecodingError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// Fewer bytes than the header or the operation needs.
        case truncated
        /// The header's length disagrees with the bytes read.
        case lengthMismatch
        /// A name without its terminating NUL, or an empty one.
        case badName
        /// A count that does not fit the body.
        case badCount
    }
    public var kind: Kind
    public var detail: String
    /// The request's unique id when the header could be read (the server may still answer it).
    public var unique: UInt64?

    public init(_ kind: Kind, _ detail: String, unique: UInt64? = nil) {
        self.kind = kind
        self.detail = detail
        self.unique = unique
    }

    public var description: String { "malformed FUSE request: \(detail)" }
}

/// struct fuse_in_header.
public struct FUSEInHeader: Equatable, Sendable {
    public var length: UInt32
    public var opcode: FUSEOpcode
    public var unique: UInt64
    public var nodeID: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var pid: UInt32
    /// Length of the extension headers after the body, in units of 8 bytes.
    public var totalExtensionLength: UInt16

    public init(
        length: UInt32, opcode: FUSEOpcode, unique: UInt64, nodeID: UInt64,
        uid: UInt32 = 0, gid: UInt32 = 0, pid: UInt32 = 0, totalExtensionLength: UInt16 = 0
    ) {
        self.length = length
        self.opcode = opcode
        self.unique = unique
        self.nodeID = nodeID
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.totalExtensionLength = totalExtensionLength
    }

    public func encoded() -> [UInt8] {
        var out = WireWriter(capacity: FUSEWireSize.inHeader)
        out.append(length)
        out.append(opcode.rawValue)
        out.append(unique)
        out.append(nodeID)
        out.append(uid)
        out.append(gid)
        out.append(pid)
        out.append(totalExtensionLength)
        out.append(UInt16(0))
        return out.bytes
    }
}

/// fuse_init_in (the compat 16-byte form, or the full one with flags2).
public struct FUSEInitIn: Equatable, Sendable {
    public var major: UInt32
    public var minor: UInt32
    public var maxReadahead: UInt32
    /// flags, with flags2 in the high half when the kernel set FUSE_INIT_EXT.
    public var flags: FUSEInitFlags

    public init(major: UInt32, minor: UInt32, maxReadahead: UInt32, flags: FUSEInitFlags) {
        self.major = major
        self.minor = minor
        self.maxReadahead = maxReadahead
        self.flags = flags
    }
}

/// fuse_read_in, for READ, READDIR and READDIRPLUS.
public struct FUSEReadIn: Equatable, Sendable {
    public var fileHandle: UInt64
    public var offset: UInt64
    public var size: UInt32
    public var readFlags: UInt32
    public var flags: UInt32

    public init(fileHandle: UInt64, offset: UInt64, size: UInt32, readFlags: UInt32 = 0, flags: UInt32 = 0) {
        self.fileHandle = fileHandle
        self.offset = offset
        self.size = size
        self.readFlags = readFlags
        self.flags = flags
    }
}

/// fuse_lseek_in.
public struct FUSELseekIn: Equatable, Sendable {
    public var fileHandle: UInt64
    public var offset: UInt64
    public var whence: UInt32

    public init(fileHandle: UInt64, offset: UInt64, whence: UInt32) {
        self.fileHandle = fileHandle
        self.offset = offset
        self.whence = whence
    }
}

/// One decoded request: its header and what it asks.
public struct FUSERequest: Equatable, Sendable {
    public enum Operation: Equatable, Sendable {
        case initialize(FUSEInitIn)
        case lookup(name: [UInt8])
        case forget(lookupCount: UInt64)
        /// BATCH_FORGET: the entries are checked to fit, but a stateless server needs none.
        case batchForget(count: UInt32)
        case getattr(fileHandle: UInt64?)
        case readlink
        case open(flags: UInt32)
        case opendir(flags: UInt32)
        case read(FUSEReadIn)
        case readdir(FUSEReadIn)
        case readdirplus(FUSEReadIn)
        case release(fileHandle: UInt64)
        case releasedir(fileHandle: UInt64)
        case getxattr(name: [UInt8], size: UInt32)
        case listxattr(size: UInt32)
        case statfs
        case access(mask: UInt32)
        case lseek(FUSELseekIn)
        case interrupt(unique: UInt64)
        case destroy
        /// FLUSH, FSYNC, FSYNCDIR, SYNCFS: nothing to do on a read-only image.
        case sync(FUSEOpcode)
        /// Anything that would change the filesystem (answered EROFS).
        case modifying(FUSEOpcode)
        /// An opcode this server does not implement (answered ENOSYS).
        case unsupported(FUSEOpcode)
    }

    public var header: FUSEInHeader
    public var operation: Operation

    public init(header: FUSEInHeader, operation: Operation) {
        self.header = header
        self.operation = operation
    }

    /// Whether the kernel waits for an answer (FORGET, BATCH_FORGET and INTERRUPT get none).
    public var expectsReply: Bool {
        switch operation {
        case .forget, .batchForget, .interrupt: false
        default: true
        }
    }

    /// Decodes exactly one request: `bytes` is what one read(2) of /dev/fuse returned.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(FUSEDecodingError) {
        guard bytes.count >= FUSEWireSize.inHeader else {
            throw FUSEDecodingError(.truncated, "\(bytes.count) bytes, shorter than the 40-byte header")
        }
        var reader = WireReader(bytes)
        let header = FUSEInHeader(
            length: reader.u32(), opcode: FUSEOpcode(rawValue: reader.u32()), unique: reader.u64(),
            nodeID: reader.u64(),
            uid: reader.u32(), gid: reader.u32(), pid: reader.u32(), totalExtensionLength: reader.u16())
        let unique = header.unique
        guard Int(header.length) == bytes.count else {
            throw FUSEDecodingError(
                .lengthMismatch, "header says \(header.length) bytes, \(bytes.count) were read", unique: unique)
        }
        let extensions = Int(header.totalExtensionLength) * 8
        guard extensions <= bytes.count - FUSEWireSize.inHeader else {
            throw FUSEDecodingError(.truncated, "\(extensions) bytes of extension headers do not fit", unique: unique)
        }
        let body = WireReader(
            UnsafeRawBufferPointer(rebasing: bytes[FUSEWireSize.inHeader..<(bytes.count - extensions)]))
        self.header = header
        operation = try FUSERequest.decodeOperation(header.opcode, body: body, unique: unique)
    }

    public init(decoding bytes: [UInt8]) throws(FUSEDecodingError) {
        // The closure form of withUnsafeBytes cannot carry a typed throw out; go through Result.
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(FUSEDecodingError) -> FUSERequest in try FUSERequest(decoding: buffer) }
        }
        self = try result.get()
    }

    private static func decodeOperation(_ opcode: FUSEOpcode, body: WireReader, unique: UInt64)
        throws(FUSEDecodingError) -> Operation
    {
        var body = body
        func need(_ count: Int, _ what: String) throws(FUSEDecodingError) {
            guard body.remaining >= count else {
                throw FUSEDecodingError(
                    .truncated, "\(what): \(body.remaining) bytes of body, \(count) needed", unique: unique)
            }
        }
        func name(_ what: String) throws(FUSEDecodingError) -> [UInt8] {
            guard let name = body.nulTerminated(), !name.isEmpty else {
                throw FUSEDecodingError(.badName, "\(what): name empty or not NUL-terminated", unique: unique)
            }
            return name
        }
        switch opcode {
        case .initialize:
            try need(FUSEWireSize.initInCompat, "INIT")
            let major = body.u32()
            let minor = body.u32()
            let readahead = body.u32()
            var flags = UInt64(body.u32())
            if flags & FUSEInitFlags.initExt.rawValue != 0 && body.remaining >= 4 {
                flags |= UInt64(body.u32()) << 32
            }
            return .initialize(
                FUSEInitIn(major: major, minor: minor, maxReadahead: readahead, flags: FUSEInitFlags(rawValue: flags)))
        case .lookup:
            return .lookup(name: try name("LOOKUP"))
        case .forget:
            try need(FUSEWireSize.forgetIn, "FORGET")
            return .forget(lookupCount: body.u64())
        case .batchForget:
            try need(FUSEWireSize.batchForgetIn, "BATCH_FORGET")
            let count = body.u32()
            _ = body.u32()
            guard UInt64(count) * UInt64(FUSEWireSize.forgetOne) <= UInt64(body.remaining) else {
                throw FUSEDecodingError(
                    .badCount, "BATCH_FORGET of \(count) entries in \(body.remaining) bytes", unique: unique)
            }
            return .batchForget(count: count)
        case .getattr:
            // Before 7.9 GETATTR had no body; accept that too.
            guard body.remaining >= FUSEWireSize.getattrIn else { return .getattr(fileHandle: nil) }
            let getattrFlags = body.u32()
            _ = body.u32()
            let handle = body.u64()
            return .getattr(fileHandle: getattrFlags & 1 != 0 ? handle : nil)
        case .readlink:
            return .readlink
        case .open, .opendir:
            try need(FUSEWireSize.openIn, "OPEN")
            let flags = body.u32()
            return opcode == .open ? .open(flags: flags) : .opendir(flags: flags)
        case .read, .readdir, .readdirplus:
            try need(FUSEWireSize.readIn, "READ")
            let handle = body.u64()
            let offset = body.u64()
            let size = body.u32()
            let readFlags = body.u32()
            _ = body.u64()
            let read = FUSEReadIn(
                fileHandle: handle, offset: offset, size: size, readFlags: readFlags, flags: body.u32())
            switch opcode {
            case .read: return .read(read)
            case .readdir: return .readdir(read)
            default: return .readdirplus(read)
            }
        case .release, .releasedir:
            try need(FUSEWireSize.releaseIn, "RELEASE")
            let handle = body.u64()
            return opcode == .release ? .release(fileHandle: handle) : .releasedir(fileHandle: handle)
        case .getxattr:
            try need(FUSEWireSize.getxattrIn, "GETXATTR")
            let size = body.u32()
            _ = body.u32()
            return .getxattr(name: try name("GETXATTR"), size: size)
        case .listxattr:
            try need(FUSEWireSize.getxattrIn, "LISTXATTR")
            return .listxattr(size: body.u32())
        case .statfs:
            return .statfs
        case .access:
            try need(FUSEWireSize.accessIn, "ACCESS")
            return .access(mask: body.u32())
        case .lseek:
            try need(FUSEWireSize.lseekIn, "LSEEK")
            return .lseek(FUSELseekIn(fileHandle: body.u64(), offset: body.u64(), whence: body.u32()))
        case .interrupt:
            try need(FUSEWireSize.interruptIn, "INTERRUPT")
            return .interrupt(unique: body.u64())
        case .destroy:
            return .destroy
        case .flush, .fsync, .fsyncdir, .syncfs:
            return .sync(opcode)
        default:
            return FUSEOpcode.modifying.contains(opcode) ? .modifying(opcode) : .unsupported(opcode)
        }
    }
}

/// A cursor over received bytes; callers check `remaining` before reading fixed fields.
struct WireReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var position = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remaining: Int { bytes.count - position }

    private mutating func load<T: FixedWidthInteger>(_: T.Type) -> T {
        precondition(remaining >= MemoryLayout<T>.size, "FUSE decoder read past a checked length")
        defer { position += MemoryLayout<T>.size }
        return bytes.loadUnaligned(fromByteOffset: position, as: T.self)
    }

    mutating func u16() -> UInt16 { load(UInt16.self) }
    mutating func u32() -> UInt32 { load(UInt32.self) }
    mutating func u64() -> UInt64 { load(UInt64.self) }

    /// The bytes up to the next NUL (consumed with it), or nil when there is no NUL.
    mutating func nulTerminated() -> [UInt8]? {
        let rest = bytes[position...]
        guard let zero = rest.firstIndex(of: 0) else { return nil }
        defer { position = zero + 1 }
        return Array(bytes[position..<zero])
    }
}

/// Builds wire structures in host byte order, as the kernel reads them.
struct WireWriter {
    private(set) var bytes: [UInt8]

    init(capacity: Int) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) }
    }

    mutating func append(contentsOf data: some Collection<UInt8>) { bytes.append(contentsOf: data) }

    mutating func pad(to alignment: Int) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }
}
