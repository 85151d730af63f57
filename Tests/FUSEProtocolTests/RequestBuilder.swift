import FUSEProtocol

/// Builds request bytes as the kernel writes them (host byte order).
func request(_ opcode: FUSEOpcode, unique: UInt64 = 7, node: UInt64 = 1, body: [UInt8] = []) -> [UInt8] {
    let header = FUSEInHeader(
        length: UInt32(40 + body.count), opcode: opcode, unique: unique, nodeID: node, uid: 0, gid: 0, pid: 42)
    return header.encoded() + body
}

func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

func readIn(handle: UInt64 = 0, offset: UInt64, size: UInt32) -> [UInt8] {
    le(handle) + le(offset) + le(size) + le(UInt32(0)) + le(UInt64(0)) + le(UInt32(0)) + le(UInt32(0))
}

/// A valid request of every opcode the server decodes, for the mutation test.
let validRequests: [[UInt8]] = [
    request(
        .initialize,
        body: le(UInt32(7)) + le(UInt32(41)) + le(UInt32(131072)) + le(UInt32(1 << 30 | 1))
            + le(UInt32(1 << 7)) + [UInt8](repeating: 0, count: 44)),
    request(.initialize, body: le(UInt32(7)) + le(UInt32(27)) + le(UInt32(4096)) + le(UInt32(1))),
    request(.lookup, body: Array("file.txt".utf8) + [0]),
    request(.forget, body: le(UInt64(3))),
    request(
        .batchForget,
        body: le(UInt32(2)) + le(UInt32(0)) + le(UInt64(5)) + le(UInt64(1)) + le(UInt64(6)) + le(UInt64(2))),
    request(.getattr, body: le(UInt32(1)) + le(UInt32(0)) + le(UInt64(9))),
    request(.readlink),
    request(.open, body: le(UInt32(0)) + le(UInt32(0))),
    request(.opendir, body: le(UInt32(0o200000)) + le(UInt32(0))),
    request(.read, body: readIn(offset: 4096, size: 131072)),
    request(.readdir, body: readIn(offset: 24, size: 4096)),
    request(.readdirplus, body: readIn(offset: 0, size: 4096)),
    request(.release, body: le(UInt64(0)) + le(UInt32(0)) + le(UInt32(0)) + le(UInt64(0))),
    request(.getxattr, body: le(UInt32(0)) + le(UInt32(0)) + Array("user.a".utf8) + [0]),
    request(.listxattr, body: le(UInt32(256)) + le(UInt32(0))),
    request(.statfs),
    request(.access, body: le(UInt32(4)) + le(UInt32(0))),
    request(.lseek, body: le(UInt64(0)) + le(UInt64(8192)) + le(UInt32(3)) + le(UInt32(0))),
    request(.interrupt, body: le(UInt64(6))),
    request(.destroy),
    request(.write, body: [UInt8](repeating: 1, count: 80)),
    request(FUSEOpcode(rawValue: 4096)),
]
