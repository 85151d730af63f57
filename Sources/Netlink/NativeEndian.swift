#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

// Netlink is native endian: integers go on the wire in the host's byte order. These helpers
// spell that out byte by byte (no loading of structs by memory layout) and check bounds.

extension Array where Element == UInt8 {
    @inlinable
    mutating func appendNative<T: FixedWidthInteger>(_ value: T) {
        #if _endian(little)
        let ordered = value.littleEndian
        #else
        let ordered = value.bigEndian
        #endif
        for shift in stride(from: 0, to: T.bitWidth, by: 8) {
            append(UInt8(truncatingIfNeeded: ordered >> shift))
        }
    }

    /// Pads with zero bytes up to the next multiple of 4 (NLMSG_ALIGN / NLA_ALIGN).
    mutating func padToNetlinkAlignment() {
        while count % 4 != 0 { append(0) }
    }

    /// Overwrites a native-endian integer at `offset` (for lengths known only at the end).
    mutating func storeNative<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        var encoded: [UInt8] = []
        encoded.appendNative(value)
        replaceSubrange(offset..<offset + encoded.count, with: encoded)
    }
}

/// Rounds up to a multiple of 4, or nil on overflow.
@inlinable
func netlinkAligned(_ length: Int) -> Int? {
    let (sum, overflow) = length.addingReportingOverflow(3)
    return overflow ? nil : sum & ~3
}

extension Collection where Element == UInt8, Index == Int {
    /// A native-endian integer at `offset` from the start of the collection, or nil when the
    /// collection is too short.
    @inlinable
    func native<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T? {
        let size = T.bitWidth / 8
        guard offset >= 0, offset <= count - size else { return nil }
        var value: T = 0
        let base = startIndex + offset
        for byteIndex in 0..<size {
            value |= T(truncatingIfNeeded: self[base + byteIndex]) << (8 * byteIndex)
        }
        #if _endian(little)
        return T(littleEndian: value)
        #else
        return T(bigEndian: value)
        #endif
    }
}

/// A malformed message: the kernel (or a test) gave us bytes we cannot decode.
func malformed(_ what: String) -> SystemError {
    SystemError("decode netlink message", errno: .protocolError, detail: what)
}
