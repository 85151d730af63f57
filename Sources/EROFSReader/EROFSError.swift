import EROFSFormat

/// Why an image could not be read, with where: the path being resolved, the inode (nid) and the
/// byte offset in the image (or in the inode's data) when known.
public struct EROFSError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// The image contradicts the format (bad field, out-of-range offset, cycle).
        case corrupt
        /// The image uses something this reader does not implement.
        case unsupported
        /// The underlying source failed (I/O error) or ended early.
        case io
        /// An extra device (blob) the image needs is missing, surplus or shorter than its slot.
        case device
        /// The caller asked for something that is not there (no such path, not a directory).
        case notFound
        case notDirectory
        case notSymlink
    }

    public var kind: Kind
    public var message: String
    public var path: String?
    public var nid: UInt64?
    public var offset: UInt64?

    public init(_ kind: Kind, _ message: String, path: String? = nil, nid: UInt64? = nil, offset: UInt64? = nil) {
        self.kind = kind
        self.message = message
        self.path = path
        self.nid = nid
        self.offset = offset
    }

    init(_ error: FormatError) {
        self.init(.corrupt, error.message, offset: error.offset)
    }

    /// The same error with the context of an outer step filled in where still unknown.
    func adding(path: String? = nil, nid: UInt64? = nil) -> EROFSError {
        var copy = self
        if copy.path == nil { copy.path = path }
        if copy.nid == nil { copy.nid = nid }
        return copy
    }

    public var description: String {
        var context: [String] = []
        if let path { context.append("path \(path)") }
        if let nid { context.append("nid \(nid)") }
        if let offset { context.append("offset \(offset)") }
        return context.isEmpty ? message : "\(message) (\(context.joined(separator: ", ")))"
    }
}

/// Overflow-checked arithmetic on values that came from disk.
@inline(__always)
func checkedSum(_ lhs: UInt64, _ rhs: UInt64, _ what: @autoclosure () -> String) throws(EROFSError) -> UInt64 {
    let (sum, overflow) = lhs.addingReportingOverflow(rhs)
    if overflow { throw EROFSError(.corrupt, "\(what()) overflows 64 bits") }
    return sum
}

@inline(__always)
func checkedProduct(_ lhs: UInt64, _ rhs: UInt64, _ what: @autoclosure () -> String) throws(EROFSError) -> UInt64 {
    let (product, overflow) = lhs.multipliedReportingOverflow(by: rhs)
    if overflow { throw EROFSError(.corrupt, "\(what()) overflows 64 bits") }
    return product
}

/// ⌈value / divisor⌉ without the overflow of `(value + divisor - 1) / divisor`.
@inline(__always)
func dividingRoundingUp(_ value: UInt64, _ divisor: UInt64) -> UInt64 {
    value / divisor + (value % divisor == 0 ? 0 : 1)
}
