import SystemCalls

/// One netlink attribute (`struct nlattr` + payload): a 16-bit type and the payload bytes.
/// On the wire: length (u16, header included, padding excluded), type (u16), payload, zero
/// padding to 4 bytes.
public struct NetlinkAttribute: Sendable, Equatable, CustomStringConvertible {
    /// Set on attributes that hold attributes (NLA_F_NESTED).
    public static let nestedFlag: UInt16 = 1 << 15
    /// Set on attributes whose payload is in network byte order (NLA_F_NET_BYTEORDER).
    public static let networkByteOrderFlag: UInt16 = 1 << 14
    static let headerSize = 4

    /// The type with the flag bits, as on the wire.
    public var rawType: UInt16
    public var payload: [UInt8]

    /// The type without NLA_F_NESTED / NLA_F_NET_BYTEORDER.
    public var type: UInt16 { rawType & ~(Self.nestedFlag | Self.networkByteOrderFlag) }

    public init(rawType: UInt16, payload: [UInt8]) {
        self.rawType = rawType
        self.payload = payload
    }

    public static func u8(_ type: UInt16, _ value: UInt8) -> Self { Self(rawType: type, payload: [value]) }
    public static func u16(_ type: UInt16, _ value: UInt16) -> Self { .integer(type, value) }
    public static func u32(_ type: UInt16, _ value: UInt32) -> Self { .integer(type, value) }
    public static func u64(_ type: UInt16, _ value: UInt64) -> Self { .integer(type, value) }

    /// A NUL-terminated string (NLA_NUL_STRING / NLA_STRING both accept the terminator).
    public static func string(_ type: UInt16, _ value: String) -> Self {
        Self(rawType: type, payload: Array(value.utf8) + [0])
    }

    /// An attribute holding other attributes; NLA_F_NESTED is set as current kernels expect.
    public static func nested(_ type: UInt16, _ children: [NetlinkAttribute]) -> Self {
        Self(rawType: type | nestedFlag, payload: children.encoded())
    }

    private static func integer<T: FixedWidthInteger>(_ type: UInt16, _ value: T) -> Self {
        var payload: [UInt8] = []
        payload.appendNative(value)
        return Self(rawType: type, payload: payload)
    }

    /// Appends header, payload and padding.
    public func encode(into bytes: inout [UInt8]) {
        bytes.appendNative(UInt16(truncatingIfNeeded: Self.headerSize + payload.count))
        bytes.appendNative(rawType)
        bytes.append(contentsOf: payload)
        bytes.padToNetlinkAlignment()
    }

    // MARK: Reading payloads (each checks the payload size: no trusting the kernel's layout)

    public func u8() throws(SystemError) -> UInt8 { try integer(UInt8.self) }
    public func u16() throws(SystemError) -> UInt16 { try integer(UInt16.self) }
    public func u32() throws(SystemError) -> UInt32 { try integer(UInt32.self) }
    public func u64() throws(SystemError) -> UInt64 { try integer(UInt64.self) }

    private func integer<T: FixedWidthInteger>(_: T.Type) throws(SystemError) -> T {
        guard payload.count == T.bitWidth / 8, let value = payload.native(T.self, at: 0) else {
            throw malformed("attribute \(type): expected a \(T.bitWidth)-bit integer, got \(payload.count) bytes")
        }
        return value
    }

    /// The payload as a string, without the NUL terminator and anything after it.
    public func string() -> String {
        String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// The payload parsed as a list of attributes.
    public func nested() throws(SystemError) -> [NetlinkAttribute] {
        try [NetlinkAttribute].decode(payload[...])
    }

    public var description: String {
        "attr(\(type)\(rawType & Self.nestedFlag != 0 ? ", nested" : ""), \(payload.count) bytes)"
    }
}

extension Array where Element == NetlinkAttribute {
    /// The attributes one after another, each padded to 4 bytes.
    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        for attribute in self { attribute.encode(into: &bytes) }
        return bytes
    }

    /// Parses a run of attributes. Every length is checked against what remains; a short
    /// trailing pad after the last attribute is tolerated (the kernel's own nla_for_each_attr
    /// stops there too).
    public static func decode(_ bytes: ArraySlice<UInt8>) throws(SystemError) -> [NetlinkAttribute] {
        var result: [NetlinkAttribute] = []
        var offset = 0
        let total = bytes.count
        while total - offset >= NetlinkAttribute.headerSize {
            let base = bytes.startIndex + offset
            let slice = bytes[base...]
            guard let length = slice.native(UInt16.self, at: 0), let rawType = slice.native(UInt16.self, at: 2)
            else { throw malformed("attribute header at offset \(offset) is cut short") }
            let attributeLength = Int(length)
            guard attributeLength >= NetlinkAttribute.headerSize else {
                throw malformed("attribute at offset \(offset) has length \(attributeLength), below the 4-byte header")
            }
            guard attributeLength <= total - offset else {
                throw malformed(
                    "attribute \(rawType) at offset \(offset) claims \(attributeLength) bytes, only \(total - offset) remain"
                )
            }
            let payload = [UInt8](bytes[(base + NetlinkAttribute.headerSize)..<(base + attributeLength)])
            result.append(NetlinkAttribute(rawType: rawType, payload: payload))
            // Cannot overflow: attributeLength <= 65535 and offset < total.
            offset += Swift.min(netlinkAligned(attributeLength) ?? attributeLength, total - offset)
        }
        guard offset == total || bytes[(bytes.startIndex + offset)...].allSatisfy({ $0 == 0 }) else {
            throw malformed("\(total - offset) stray bytes after the last attribute")
        }
        return result
    }

    /// The first attribute of `type` (flags ignored).
    public func first(_ type: UInt16) -> NetlinkAttribute? {
        first { $0.type == type }
    }
}
