/// Explicit little-endian decoding of on-disk fields, independent of Swift's struct layout.
extension Collection where Element == UInt8, Index == Int {
    @inlinable
    public func le16(at offset: Int) -> UInt16 {
        let base = startIndex + offset
        return UInt16(self[base]) | UInt16(self[base + 1]) << 8
    }

    @inlinable
    public func le32(at offset: Int) -> UInt32 {
        let base = startIndex + offset
        return UInt32(self[base]) | UInt32(self[base + 1]) << 8 | UInt32(self[base + 2]) << 16
            | UInt32(self[base + 3]) << 24
    }

    @inlinable
    public func le64(at offset: Int) -> UInt64 {
        UInt64(le32(at: offset)) | UInt64(le32(at: offset + 4)) << 32
    }
}

/// An on-disk structure of fixed size that the caller reads whole before decoding it.
public protocol FixedSizeStructure {
    /// sizeof the C structure.
    static var size: Int { get }
    /// Its name in erofs_fs.h.
    static var cName: String { get }
}

extension FixedSizeStructure {
    /// The structure's bytes at the start of `bytes`. The caller read exactly `size` bytes for
    /// it, so fewer is a bug in the caller, not a property of the image.
    static func structureBytes(_ bytes: some Collection<UInt8>) -> [UInt8] {
        let raw = Array(bytes.prefix(size))
        precondition(raw.count == size, "\(cName) needs \(size) bytes, got \(raw.count)")
        return raw
    }
}
