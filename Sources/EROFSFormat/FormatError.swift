/// Something in an image that is not valid EROFS, with where it was found.
public struct FormatError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    /// Byte offset in the image where the problem was seen, when known.
    public var offset: UInt64?

    public init(_ message: String, offset: UInt64? = nil) {
        self.message = message
        self.offset = offset
    }

    public var description: String {
        guard let offset else { return message }
        return "\(message) at offset \(offset)"
    }
}
