import CZlib
import ImageSources
import Synchronization
import SystemCalls
import SystemPackage

/// Checkpoints for random access into a gzip stream, as AWS SOCI's zinfo (version 2, what
/// `mkfs.erofs --gzinfo` writes; version 1 too): a 12-byte header (`u32 count`, `u64 span
/// size`), then per checkpoint `u64 in` (the first whole compressed byte), `u64 out` (the
/// uncompressed offset), `u8 bits` (bits of the byte before `in` still to be read) and the 32 KiB
/// of output before `out`, the dictionary to restart inflation with. Version 1 leaves out the
/// first checkpoint (after a 10-byte gzip header, at output 0). All little-endian.
///
/// Only the offsets are kept in memory; windows are read from the file when needed.
public struct GzipCheckpoints: Sendable {
    public struct Checkpoint: Sendable, Equatable {
        /// Bit position in the compressed stream.
        public var inBit: UInt64
        public var out: UInt64
        /// Where its window is in the zinfo file; nil for version 1's implied first checkpoint.
        public var windowOffset: UInt64?
    }
    public static let windowSize = 32768
    static let headerSize = 12
    static let entrySize = 17 + windowSize

    public let checkpoints: [Checkpoint]
    public let spanSize: UInt64

    /// Parses and checks a zinfo of `fileSize` bytes whose first bytes are `header`... for a gzip
    /// blob of `compressedSize` bytes: offsets inside the blob, both increasing, the first at
    /// output 0. `entry(i)` returns the 17 bytes of entry i.
    public init(
        fileSize: UInt64, header: [UInt8], compressedSize: UInt64, entry: (Int) throws(RemoteError) -> [UInt8],
        name: String
    ) throws(RemoteError) {
        func bad(_ message: String) -> RemoteError {
            RemoteError(.configuration, name, "not a usable zinfo: \(message)")
        }
        guard header.count == Self.headerSize else { throw bad("shorter than its 12-byte header") }
        let count = UInt64(littleEndian32(header, 0))
        spanSize = littleEndian64(header, 4)
        guard count > 0 else { throw bad("no checkpoints") }
        let version: Int
        if fileSize == UInt64(Self.headerSize) + count * UInt64(Self.entrySize) {
            version = 2
        } else if fileSize == UInt64(Self.headerSize) + (count - 1) * UInt64(Self.entrySize) {
            version = 1
        } else {
            throw bad("\(fileSize) bytes do not hold the \(count) checkpoints its header announces")
        }
        var checkpoints: [Checkpoint] = []
        checkpoints.reserveCapacity(Int(count))
        if version == 1 { checkpoints.append(Checkpoint(inBit: 10 * 8, out: 0, windowOffset: nil)) }
        for index in 0..<Int(count - (version == 1 ? 1 : 0)) {
            let bytes = try entry(index)
            guard bytes.count == 17 else { throw bad("checkpoint \(index) is cut short") }
            let input = littleEndian64(bytes, 0)
            let out = littleEndian64(bytes, 8)
            let bits = bytes[16]
            guard bits <= 7, input <= compressedSize, input < UInt64.max >> 3, !(bits > 0 && input == 0) else {
                throw bad("checkpoint \(index) is outside the \(compressedSize)-byte blob")
            }
            // The layer's size is computed from the last one: it must leave room for that.
            guard out <= RemoteObject.maximumSize else {
                throw bad("checkpoint \(index) is past 16 TiB of output, the most a layer is read to")
            }
            let position = UInt64(Self.headerSize) + UInt64(index) * UInt64(Self.entrySize)
            checkpoints.append(Checkpoint(inBit: input << 3 | UInt64(bits), out: out, windowOffset: position + 17))
        }
        guard checkpoints[0].out == 0 else { throw bad("the first checkpoint is not at the start of the stream") }
        for index in checkpoints.indices.dropFirst() {
            guard checkpoints[index].out > checkpoints[index - 1].out,
                checkpoints[index].inBit > checkpoints[index - 1].inBit
            else { throw bad("checkpoint \(index) does not follow checkpoint \(index - 1)") }
        }
        self.checkpoints = checkpoints
    }

    /// The last checkpoint at or before `offset`.
    func index(before offset: UInt64) -> Int {
        var low = 0
        var high = checkpoints.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if checkpoints[middle].out <= offset { low = middle } else { high = middle - 1 }
        }
        return low
    }
}

private func littleEndian32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
    (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * $1) }
}

private func littleEndian64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
    (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * $1) }
}

/// The uncompressed stream of a gzip blob, read at any offset by restarting inflation at the
/// zinfo checkpoint before it. Inflated data is kept in 256 KiB chunks (64 at most, least
/// recently used dropped), and up to four inflate streams stay open where they stopped, so a
/// sequential reader inflates each byte once and a random one at most a span.
public final class GzipIndexedSource: RandomAccessSource {
    public let size: UInt64
    public var displayName: String { compressed.displayName + " (inflated)" }
    public var localFileDescriptor: FileDescriptor? { nil }

    let compressed: any RandomAccessSource
    let zinfo: any RandomAccessSource
    let checkpoints: GzipCheckpoints
    static let chunkSize = 256 << 10
    static let maximumChunks = 64
    static let maximumCursors = 4

    private struct State: ~Copyable {
        var chunks: [UInt64: (bytes: [UInt8], used: UInt64)] = [:]
        var cursors: [InflateCursor] = []
        var clock: UInt64 = 0
    }
    private let state = Mutex(State())

    /// Opens the zinfo at `zinfoPath` for `compressed`; the size of the stream is the gzip
    /// trailer's ISIZE (modulo 2^32) placed at or after the last checkpoint.
    public convenience init(compressed: any RandomAccessSource, zinfoPath: String) throws(RemoteError) {
        let zinfo: FileSource
        do { zinfo = try FileSource(path: zinfoPath) } catch {
            throw RemoteError(.configuration, zinfoPath, "cannot open the zinfo: \(error)")
        }
        try self.init(compressed: compressed, zinfo: zinfo)
    }

    /// The same over a zinfo's bytes from any source (`zinfo.displayName` names it in errors).
    public init(compressed: any RandomAccessSource, zinfo: any RandomAccessSource) throws(RemoteError) {
        self.compressed = compressed
        self.zinfo = zinfo
        let name = zinfo.displayName
        func read(_ count: Int, _ offset: UInt64) throws(RemoteError) -> [UInt8] {
            do { return try zinfo.read(count: count, at: offset) } catch {
                throw RemoteError(.configuration, name, "cannot read the zinfo: \(error)")
            }
        }
        checkpoints = try GzipCheckpoints(
            fileSize: zinfo.size, header: try read(GzipCheckpoints.headerSize, 0), compressedSize: compressed.size,
            entry: { index throws(RemoteError) in
                try read(17, UInt64(GzipCheckpoints.headerSize) + UInt64(index) * UInt64(GzipCheckpoints.entrySize))
            }, name: name)
        guard compressed.size >= 18 else {
            throw RemoteError(.protocolViolation, compressed.displayName, "too short for a gzip stream")
        }
        let trailer: [UInt8]
        do { trailer = try compressed.read(count: 4, at: compressed.size - 4) } catch {
            throw RemoteError(.transient, compressed.displayName, "\(error)")
        }
        let modulo = UInt64(littleEndian32(trailer, 0))
        let last = checkpoints.checkpoints.last!.out
        size = last + ((modulo &- last) & 0xffff_ffff)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        guard offset < size, buffer.count > 0 else { return 0 }
        let wanted = Int(min(UInt64(buffer.count), size - offset))
        let chunkSize = UInt64(Self.chunkSize)
        var done = 0
        while done < wanted {
            let position = offset + UInt64(done)
            let chunk = position / chunkSize
            let inside = Int(position % chunkSize)
            let copied = try state.withLock { state throws(SystemError) -> Int in
                let bytes = try chunkBytes(chunk, &state)
                let count = min(wanted - done, bytes.count - inside)
                guard count > 0 else {
                    throw SystemError(
                        "read", path: displayName, errno: .ioError, detail: "the gzip stream ends before its size")
                }
                bytes.withUnsafeBytes {
                    UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + count)]).copyMemory(
                        from: UnsafeRawBufferPointer(rebasing: $0[inside..<(inside + count)]))
                }
                return count
            }
            done += copied
        }
        return wanted
    }

    /// Chunk `chunk`'s bytes, from the cache or inflated (caching every whole chunk passed on
    /// the way).
    private func chunkBytes(_ chunk: UInt64, _ state: inout State) throws(SystemError) -> [UInt8] {
        state.clock += 1
        if let cached = state.chunks[chunk] {
            state.chunks[chunk]!.used = state.clock
            return cached.bytes
        }
        let chunkSize = UInt64(Self.chunkSize)
        let start = chunk * chunkSize
        let checkpoint = checkpoints.index(before: start)
        // A cursor that stopped between the checkpoint and the chunk continues; else a new one.
        var cursor: InflateCursor
        if let found = state.cursors.lastIndex(where: {
            $0.nextOut <= start && $0.nextOut >= checkpoints.checkpoints[checkpoint].out
        }) {
            cursor = state.cursors.remove(at: found)
        } else {
            cursor = try InflateCursor(at: checkpoints.checkpoints[checkpoint], source: self)
        }
        // Kept for the next read only when this one succeeded: after a failed fetch, inflate
        // may have produced output that `nextOut` does not count, and the next chunk made from
        // it would be shifted.
        var succeeded = false
        defer {
            if succeeded {
                state.cursors.append(cursor)
                if state.cursors.count > Self.maximumCursors { state.cursors.removeFirst() }
            }
        }
        var result: [UInt8] = []
        while true {
            let chunkStart = cursor.nextOut / chunkSize * chunkSize
            let chunkEnd = min(size, chunkStart + chunkSize)
            if cursor.nextOut != chunkStart {
                // Fresh from a checkpoint inside a chunk: inflate to its end, unkept.
                _ = try cursor.inflate(count: Int(chunkEnd - cursor.nextOut), source: self)
                continue
            }
            let bytes = try cursor.inflate(count: Int(chunkEnd - chunkStart), source: self)
            state.chunks[chunkStart / chunkSize] = (bytes, state.clock)
            if state.chunks.count > Self.maximumChunks,
                let victim = state.chunks.min(by: { $0.value.used < $1.value.used })?.key
            {
                state.chunks[victim] = nil
            }
            if chunkStart == start {
                result = bytes
                break
            }
        }
        succeeded = true
        return result
    }

    func failure(_ detail: String) -> SystemError {
        SystemError("read", path: displayName, errno: .ioError, detail: detail)
    }
}

/// One raw-inflate stream restarted at a checkpoint, and the compressed input it reads ahead.
private final class InflateCursor {
    let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    var nextOut: UInt64
    /// The next compressed byte to fetch.
    var nextIn: UInt64
    var input = [UInt8](repeating: 0, count: 128 << 10)
    var ended = false

    init(at checkpoint: GzipCheckpoints.Checkpoint, source: GzipIndexedSource) throws(SystemError) {
        stream.initialize(to: z_stream())
        nextOut = checkpoint.out
        let bits = Int32(checkpoint.inBit & 7)
        nextIn = (checkpoint.inBit >> 3) - (bits > 0 ? 1 : 0)
        guard inflateInit2_(stream, -15, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            stream.deallocate()
            throw source.failure("inflateInit2 failed")
        }
        if bits > 0 {
            // The checkpoint starts inside a byte: its last `bits` bits come first.
            let first = try source.compressed.read(count: 1, at: nextIn)
            guard first.count == 1 else { throw source.failure("the gzip blob ends at a checkpoint") }
            inflatePrime(stream, bits, Int32(first[0] >> (8 - bits)))
            nextIn += 1
        }
        if checkpoint.out > 0, let windowOffset = checkpoint.windowOffset {
            let window = try source.zinfo.read(count: GzipCheckpoints.windowSize, at: windowOffset)
            guard window.count == GzipCheckpoints.windowSize else {
                throw source.failure("the zinfo's window is cut short")
            }
            _ = window.withUnsafeBufferPointer { inflateSetDictionary(stream, $0.baseAddress, UInt32($0.count)) }
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deallocate()
    }

    /// The next `count` uncompressed bytes.
    func inflate(count: Int, source: GzipIndexedSource) throws(SystemError) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: count)
        var produced = 0
        while produced < count {
            guard !ended else { throw source.failure("the gzip stream ends before its size") }
            if stream.pointee.avail_in == 0 {
                let want = Int(min(UInt64(input.count), source.compressed.size - min(nextIn, source.compressed.size)))
                guard want > 0 else { throw source.failure("the gzip blob ends inside the deflate stream") }
                let got = try input.withUnsafeMutableBytes { buffer in
                    Result { () throws(SystemError) in
                        try source.compressed.read(
                            into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: nextIn)
                    }
                }.get()
                guard got > 0 else { throw source.failure("the gzip blob ends inside the deflate stream") }
                nextIn += UInt64(got)
                lastFill = got
                stream.pointee.avail_in = UInt32(got)
            }
            let result = input.withUnsafeMutableBufferPointer { inputBuffer in
                output.withUnsafeMutableBufferPointer { outputBuffer -> Int32 in
                    // next_in is set again each time: the array's address holds only inside
                    // this closure. The unread input is the last `avail_in` bytes of the fill.
                    let consumedEnd = inputBuffer.baseAddress! + lastFill
                    stream.pointee.next_in = consumedEnd - Int(stream.pointee.avail_in)
                    stream.pointee.next_out = outputBuffer.baseAddress! + produced
                    stream.pointee.avail_out = UInt32(count - produced)
                    let code = CZlib.inflate(stream, Z_NO_FLUSH)
                    produced = count - Int(stream.pointee.avail_out)
                    return code
                }
            }
            switch result {
            case Z_OK, Z_BUF_ERROR: break
            case Z_STREAM_END: ended = true
            default: throw source.failure("corrupt deflate data after the checkpoint (zlib \(result))")
            }
        }
        nextOut += UInt64(count)
        return output
    }

    /// How many bytes the last fetch put in `input`.
    var lastFill = 0
}
