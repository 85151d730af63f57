import ImageSources
import SystemCalls
import SystemPackage

/// Sources read one after another as one device: a tar index followed by its tar.
public final class ConcatenatedSource: RandomAccessSource {
    public let parts: [any RandomAccessSource]
    /// Where each part starts.
    private let starts: [UInt64]
    public let size: UInt64
    public let displayName: String
    public var localFileDescriptor: FileDescriptor? { nil }

    public init(_ parts: [any RandomAccessSource], displayName: String) {
        self.parts = parts
        var starts: [UInt64] = []
        var total: UInt64 = 0
        for part in parts {
            starts.append(total)
            total += part.size
        }
        self.starts = starts
        self.size = total
        self.displayName = displayName
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(SystemError) -> Int {
        var done = 0
        while done < buffer.count, offset + UInt64(done) < size {
            let position = offset + UInt64(done)
            let index = parts.indices.last { starts[$0] <= position && position - starts[$0] < parts[$0].size }!
            let part = parts[index]
            let inside = position - starts[index]
            let count = Int(min(UInt64(buffer.count - done), part.size - inside))
            let got = try part.read(
                into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + count)]), at: inside)
            guard got == count else {
                throw SystemError(
                    "read", path: part.displayName, errno: .ioError, detail: "short read inside the source")
            }
            done += got
        }
        return done
    }

    /// Passes the hint to each part it covers.
    public func readAhead(at offset: UInt64, count: Int) {
        guard let span = span(at: offset, count: count) else { return }
        for (part, start) in zip(parts, starts) where start < span.upperBound && span.lowerBound < start + part.size {
            let from = max(span.lowerBound, start)
            part.readAhead(at: from - start, count: Int(min(span.upperBound, start + part.size) - from))
        }
    }
}
