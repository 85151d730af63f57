/// A file name or path as the kernel holds it: bytes, not necessarily UTF-8. Names travel as
/// this from an image or a readdir to the syscall that uses them, so two names that differ
/// only in bytes that are not UTF-8 stay two names.
public struct ByteString: Hashable, Sendable, Comparable, ExpressibleByStringLiteral, CustomStringConvertible {
    public var bytes: [UInt8]

    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public init(_ bytes: some Sequence<UInt8>) { self.bytes = Array(bytes) }
    public init(_ string: String) { bytes = Array(string.utf8) }
    public init(stringLiteral value: String) { self.init(value) }

    /// Byte order, which for UTF-8 is Unicode code-point order.
    public static func < (lhs: ByteString, rhs: ByteString) -> Bool {
        lhs.bytes.lexicographicallyPrecedes(rhs.bytes)
    }

    public static func + (lhs: ByteString, rhs: ByteString) -> ByteString { ByteString(lhs.bytes + rhs.bytes) }

    /// `self/name`, where `self` is an absolute path ("/" has no trailing slash added).
    public func appending(component name: ByteString) -> ByteString {
        var result = bytes
        if result.last != UInt8(ascii: "/") { result.append(UInt8(ascii: "/")) }
        result += name.bytes
        return ByteString(result)
    }

    /// The text when the bytes are valid UTF-8.
    public var validString: String? { String(validating: bytes, as: UTF8.self) }

    /// The bytes NUL-terminated, for a syscall. A NUL inside ends the name there, as it would
    /// for the kernel; callers that take names from an image reject such names first.
    public func withCString<Result, Failure>(
        _ body: (UnsafePointer<CChar>) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        let terminated = bytes.map { CChar(bitPattern: $0) } + [0]
        return try terminated.withUnsafeBufferPointer { (buffer) throws(Failure) -> Result in
            try body(buffer.baseAddress!)
        }
    }

    /// One piece of the bytes: a Unicode scalar from a well-formed UTF-8 sequence, or a byte
    /// that is not part of one.
    public enum Piece: Equatable, Sendable {
        case scalar(Unicode.Scalar, utf8: ArraySlice<UInt8>)
        case invalidByte(UInt8)
    }

    /// Splits the bytes into well-formed UTF-8 scalars (Unicode table 3-7: no overlong forms,
    /// no surrogates, nothing above U+10FFFF) and single bytes that are not part of one. Each
    /// ill-formed byte is its own piece, which is how Python's `surrogateescape` decodes.
    public func forEachPiece(_ body: (Piece) -> Void) {
        var index = 0
        while index < bytes.count {
            if let (scalar, length) = ByteString.scalar(in: bytes, at: index) {
                body(.scalar(scalar, utf8: bytes[index..<(index + length)]))
                index += length
            } else {
                body(.invalidByte(bytes[index]))
                index += 1
            }
        }
    }

    private static func scalar(in bytes: [UInt8], at index: Int) -> (Unicode.Scalar, Int)? {
        let lead = bytes[index]
        if lead < 0x80 { return (Unicode.Scalar(lead), 1) }
        let length: Int
        let secondRange: ClosedRange<UInt8>
        let initial: UInt32
        switch lead {
        case 0xc2...0xdf: (length, secondRange, initial) = (2, 0x80...0xbf, UInt32(lead & 0x1f))
        case 0xe0: (length, secondRange, initial) = (3, 0xa0...0xbf, 0)
        case 0xe1...0xec, 0xee...0xef: (length, secondRange, initial) = (3, 0x80...0xbf, UInt32(lead & 0x0f))
        case 0xed: (length, secondRange, initial) = (3, 0x80...0x9f, 0x0d)
        case 0xf0: (length, secondRange, initial) = (4, 0x90...0xbf, 0)
        case 0xf1...0xf3: (length, secondRange, initial) = (4, 0x80...0xbf, UInt32(lead & 0x07))
        case 0xf4: (length, secondRange, initial) = (4, 0x80...0x8f, 4)
        default: return nil
        }
        guard index + length <= bytes.count, secondRange.contains(bytes[index + 1]) else { return nil }
        var value = initial
        for offset in 1..<length {
            let byte = bytes[index + offset]
            guard byte & 0xc0 == 0x80 else { return nil }
            value = value << 6 | UInt32(byte & 0x3f)
        }
        return Unicode.Scalar(value).map { ($0, length) }
    }

    /// The bytes as GNU `ls -b` (`--quoting-style=escape`) prints them, so that a name cannot
    /// move a terminal's cursor, change its colours or hide behind another: C escapes for
    /// \a \b \t \n \v \f \r, three-digit octal for every other control character (C0, DEL, C1)
    /// and every byte that is not UTF-8, `\\` for a backslash and `\ ` for a space; any other
    /// character as itself. The escape is unambiguous, so distinct names print distinctly.
    public var escaped: String {
        var out = ""
        func octal(_ byte: UInt8) {
            out += "\\" + String(byte >> 6) + String((byte >> 3) & 7) + String(byte & 7)
        }
        forEachPiece { piece in
            switch piece {
            case .invalidByte(let byte): octal(byte)
            case .scalar(let scalar, let utf8):
                switch scalar {
                case "\u{07}": out += "\\a"
                case "\u{08}": out += "\\b"
                case "\t": out += "\\t"
                case "\n": out += "\\n"
                case "\u{0B}": out += "\\v"
                case "\u{0C}": out += "\\f"
                case "\r": out += "\\r"
                case "\\": out += "\\\\"
                case " ": out += "\\ "
                case _ where scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value): utf8.forEach(octal)
                default: out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    /// The escaped form (`escaped`): safe in messages on a terminal.
    public var description: String { escaped }
}
