/// Network byte order (big-endian) helpers for the NBD wire formats. Every structure is encoded
/// and decoded field by field; nothing is loaded by memory layout.
extension Array where Element == UInt8 {
    @inlinable mutating func appendBigEndian(_ value: UInt16) {
        append(UInt8(truncatingIfNeeded: value >> 8))
        append(UInt8(truncatingIfNeeded: value))
    }

    @inlinable mutating func appendBigEndian(_ value: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    @inlinable mutating func appendBigEndian(_ value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }
}

/// A bounds-checked cursor over received bytes.
public struct ByteReader<Bytes: RandomAccessCollection> where Bytes.Element == UInt8, Bytes.Index == Int {
    public let bytes: Bytes
    public private(set) var position: Int

    public init(_ bytes: Bytes) {
        self.bytes = bytes
        self.position = bytes.startIndex
    }

    public var remaining: Int { bytes.endIndex - position }

    mutating func take(_ count: Int, for what: String) throws(NBDProtocolError) -> Bytes.SubSequence {
        guard count >= 0, remaining >= count else {
            throw .truncated(what, needed: count, available: remaining)
        }
        defer { position += count }
        return bytes[position..<(position + count)]
    }

    public mutating func readUInt16(_ what: String) throws(NBDProtocolError) -> UInt16 {
        try take(2, for: what).reduce(0) { $0 << 8 | UInt16($1) }
    }

    public mutating func readUInt32(_ what: String) throws(NBDProtocolError) -> UInt32 {
        try take(4, for: what).reduce(0) { $0 << 8 | UInt32($1) }
    }

    public mutating func readUInt64(_ what: String) throws(NBDProtocolError) -> UInt64 {
        try take(8, for: what).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Reads the magic number that opens `what` (a request, a reply...) and checks it.
    public mutating func expectMagic(_ expected: UInt32, of what: String) throws(NBDProtocolError) {
        let found = try readUInt32("\(what) magic")
        guard found == expected else { throw .badMagic(what, expected: UInt64(expected), found: UInt64(found)) }
    }

    public mutating func expectMagic(_ expected: UInt64, of what: String) throws(NBDProtocolError) {
        let found = try readUInt64("\(what) magic")
        guard found == expected else { throw .badMagic(what, expected: expected, found: found) }
    }

    public mutating func readBytes(_ count: Int, _ what: String) throws(NBDProtocolError) -> [UInt8] {
        Array(try take(count, for: what))
    }

    /// A UTF-8 string of `count` bytes; NBD names are UTF-8 by the spec.
    public mutating func readString(_ count: Int, _ what: String) throws(NBDProtocolError) -> String {
        let raw = try take(count, for: what)
        guard let text = String(validating: raw, as: UTF8.self) else { throw .invalidUTF8(what) }
        return text
    }
}

/// Why received bytes are not a valid NBD message.
public enum NBDProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    case badMagic(String, expected: UInt64, found: UInt64)
    case truncated(String, needed: Int, available: Int)
    case invalidUTF8(String)
    case trailingBytes(String, count: Int)
    case lengthTooLarge(String, length: UInt64, limit: UInt64)

    public var description: String {
        switch self {
        case .badMagic(let what, let expected, let found):
            "bad \(what) magic 0x\(String(found, radix: 16)) (expected 0x\(String(expected, radix: 16)))"
        case .truncated(let what, let needed, let available):
            "truncated \(what): needs \(needed) bytes, \(available) left"
        case .invalidUTF8(let what): "\(what) is not valid UTF-8"
        case .trailingBytes(let what, let count): "\(count) unexpected bytes after \(what)"
        case .lengthTooLarge(let what, let length, let limit): "\(what) length \(length) exceeds the limit \(limit)"
        }
    }
}
