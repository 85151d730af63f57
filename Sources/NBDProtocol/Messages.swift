/// A transmission-phase request: 28 bytes, big-endian
/// (magic u32, flags u16, type u16, cookie u64, offset u64, length u32). A WRITE's payload
/// follows the header on the wire and is not part of this value.
public struct Request: Hashable, Sendable {
    public static let size = 28

    public var flags: CommandFlags
    public var type: CommandType
    /// Opaque to the server ("handle" in older texts): echoed in the reply.
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(type: CommandType, flags: CommandFlags = [], cookie: UInt64, offset: UInt64, length: UInt32) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    public init<Bytes: RandomAccessCollection>(decoding bytes: Bytes) throws(NBDProtocolError)
    where Bytes.Element == UInt8, Bytes.Index == Int {
        var reader = ByteReader(bytes)
        try reader.expectMagic(NBDMagic.request, of: "request")
        flags = CommandFlags(rawValue: try reader.readUInt16("request flags"))
        type = CommandType(rawValue: try reader.readUInt16("request type"))
        cookie = try reader.readUInt64("request cookie")
        offset = try reader.readUInt64("request offset")
        length = try reader.readUInt32("request length")
    }

    /// Decodes the header at the start of `raw`, as the generic init does. The server decodes
    /// every request through this one: the generic init runs unspecialized from another module,
    /// and that cost about 100 us per request under emulation.
    public init(decoding raw: UnsafeRawBufferPointer) throws(NBDProtocolError) {
        guard raw.count >= Self.size else {
            self = try Request(decoding: Array(raw))  // to say which field is cut
            return
        }
        func field<Value: FixedWidthInteger>(_ offset: Int, _: Value.Type) -> Value {
            Value(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: Value.self))
        }
        let magic = field(0, UInt32.self)
        guard magic == NBDMagic.request else {
            throw .badMagic("request", expected: UInt64(NBDMagic.request), found: UInt64(magic))
        }
        flags = CommandFlags(rawValue: field(4, UInt16.self))
        type = CommandType(rawValue: field(6, UInt16.self))
        cookie = field(8, UInt64.self)
        offset = field(16, UInt64.self)
        length = field(24, UInt32.self)
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Request.size)
        bytes.appendBigEndian(NBDMagic.request)
        bytes.appendBigEndian(flags.rawValue)
        bytes.appendBigEndian(type.rawValue)
        bytes.appendBigEndian(cookie)
        bytes.appendBigEndian(offset)
        bytes.appendBigEndian(length)
        return bytes
    }
}

/// A simple reply header: 16 bytes (magic u32, error u32, cookie u64); a successful READ's data
/// follows it.
public struct SimpleReply: Hashable, Sendable {
    public static let size = 16

    public var error: NBDErrorCode
    public var cookie: UInt64

    public init(cookie: UInt64, error: NBDErrorCode = .none) {
        self.error = error
        self.cookie = cookie
    }

    public init<Bytes: RandomAccessCollection>(decoding bytes: Bytes) throws(NBDProtocolError)
    where Bytes.Element == UInt8, Bytes.Index == Int {
        var reader = ByteReader(bytes)
        try reader.expectMagic(NBDMagic.simpleReply, of: "simple reply")
        error = NBDErrorCode(rawValue: try reader.readUInt32("simple reply error"))
        cookie = try reader.readUInt64("simple reply cookie")
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(SimpleReply.size)
        bytes.appendBigEndian(NBDMagic.simpleReply)
        bytes.appendBigEndian(error.rawValue)
        bytes.appendBigEndian(cookie)
        return bytes
    }
}

/// The 20-byte header of one structured reply chunk
/// (magic u32, flags u16, type u16, cookie u64, payload length u32).
public struct StructuredReplyChunkHeader: Hashable, Sendable {
    public static let size = 20

    public var flags: StructuredReplyFlags
    public var type: StructuredReplyType
    public var cookie: UInt64
    public var payloadLength: UInt32

    public init(flags: StructuredReplyFlags, type: StructuredReplyType, cookie: UInt64, payloadLength: UInt32) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.payloadLength = payloadLength
    }

    public init<Bytes: RandomAccessCollection>(decoding bytes: Bytes) throws(NBDProtocolError)
    where Bytes.Element == UInt8, Bytes.Index == Int {
        var reader = ByteReader(bytes)
        try reader.expectMagic(NBDMagic.structuredReply, of: "structured reply")
        flags = StructuredReplyFlags(rawValue: try reader.readUInt16("structured reply flags"))
        type = StructuredReplyType(rawValue: try reader.readUInt16("structured reply type"))
        cookie = try reader.readUInt64("structured reply cookie")
        payloadLength = try reader.readUInt32("structured reply length")
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(StructuredReplyChunkHeader.size)
        bytes.appendBigEndian(NBDMagic.structuredReply)
        bytes.appendBigEndian(flags.rawValue)
        bytes.appendBigEndian(type.rawValue)
        bytes.appendBigEndian(cookie)
        bytes.appendBigEndian(payloadLength)
        return bytes
    }

    /// Header plus the 8-byte offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk whose `dataLength`
    /// bytes of data follow.
    public static func offsetData(cookie: UInt64, offset: UInt64, dataLength: UInt32, done: Bool = true) -> [UInt8] {
        var bytes = StructuredReplyChunkHeader(
            flags: done ? .done : [], type: .offsetData, cookie: cookie, payloadLength: dataLength &+ 8
        ).encoded()
        bytes.appendBigEndian(offset)
        return bytes
    }

    /// A complete NBD_REPLY_TYPE_ERROR chunk (error u32, message length u16, message).
    public static func error(cookie: UInt64, error: NBDErrorCode, message: String = "", done: Bool = true) -> [UInt8] {
        let text = Array(message.utf8.prefix(4096))
        var bytes = StructuredReplyChunkHeader(
            flags: done ? .done : [], type: .error, cookie: cookie, payloadLength: UInt32(6 + text.count)
        ).encoded()
        bytes.appendBigEndian(error.rawValue)
        bytes.appendBigEndian(UInt16(text.count))
        bytes.append(contentsOf: text)
        return bytes
    }

    /// A complete NBD_REPLY_TYPE_NONE chunk with the DONE flag: success without data.
    public static func done(cookie: UInt64) -> [UInt8] {
        StructuredReplyChunkHeader(flags: .done, type: .none, cookie: cookie, payloadLength: 0).encoded()
    }
}

/// The 16-byte header of a client's option request ("IHAVEOPT", option u32, length u32); `length`
/// bytes of option data follow.
public struct OptionRequestHeader: Hashable, Sendable {
    public static let size = 16

    public var option: OptionCode
    public var length: UInt32

    public init(option: OptionCode, length: UInt32) {
        self.option = option
        self.length = length
    }

    public init<Bytes: RandomAccessCollection>(decoding bytes: Bytes) throws(NBDProtocolError)
    where Bytes.Element == UInt8, Bytes.Index == Int {
        var reader = ByteReader(bytes)
        try reader.expectMagic(NBDMagic.options, of: "option")
        option = OptionCode(rawValue: try reader.readUInt32("option code"))
        length = try reader.readUInt32("option length")
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(NBDMagic.options)
        bytes.appendBigEndian(option.rawValue)
        bytes.appendBigEndian(length)
        return bytes
    }
}

/// One option reply: magic u64, option u32, reply type u32, length u32, data.
public struct OptionReply: Hashable, Sendable {
    public static let headerSize = 20

    public var option: OptionCode
    public var type: OptionReplyType
    public var data: [UInt8]

    public init(option: OptionCode, type: OptionReplyType, data: [UInt8] = []) {
        self.option = option
        self.type = type
        self.data = data
    }

    /// An error reply whose data is a human-readable message (the spec allows one).
    public static func error(_ type: OptionReplyType, to option: OptionCode, message: String) -> OptionReply {
        OptionReply(option: option, type: type, data: Array(message.utf8))
    }

    /// Decodes the header; returns the data length still to read.
    public static func decodeHeader<Bytes: RandomAccessCollection>(_ bytes: Bytes) throws(NBDProtocolError)
        -> (option: OptionCode, type: OptionReplyType, length: UInt32)
    where Bytes.Element == UInt8, Bytes.Index == Int {
        var reader = ByteReader(bytes)
        try reader.expectMagic(NBDMagic.optionReply, of: "option reply")
        let option = OptionCode(rawValue: try reader.readUInt32("option reply option"))
        let type = OptionReplyType(rawValue: try reader.readUInt32("option reply type"))
        let length = try reader.readUInt32("option reply length")
        return (option, type, length)
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(OptionReply.headerSize + data.count)
        bytes.appendBigEndian(NBDMagic.optionReply)
        bytes.appendBigEndian(option.rawValue)
        bytes.appendBigEndian(type.rawValue)
        bytes.appendBigEndian(UInt32(truncatingIfNeeded: data.count))
        bytes.append(contentsOf: data)
        return bytes
    }
}

/// The data of NBD_OPT_INFO and NBD_OPT_GO: export name length u32, name, count u16, info types.
public struct InfoRequest: Hashable, Sendable {
    public var exportName: String
    public var requested: [InfoType]

    public init(exportName: String, requested: [InfoType] = []) {
        self.exportName = exportName
        self.requested = requested
    }

    public init(decoding data: [UInt8]) throws(NBDProtocolError) {
        var reader = ByteReader(data)
        let nameLength = try reader.readUInt32("export name length")
        guard nameLength <= UInt32(reader.remaining) else {
            throw .truncated("export name", needed: Int(nameLength), available: reader.remaining)
        }
        exportName = try reader.readString(Int(nameLength), "export name")
        let count = try reader.readUInt16("information request count")
        var requested: [InfoType] = []
        for _ in 0..<count { requested.append(InfoType(rawValue: try reader.readUInt16("information request"))) }
        self.requested = requested
        guard reader.remaining == 0 else { throw .trailingBytes("information requests", count: reader.remaining) }
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        let name = Array(exportName.utf8)
        bytes.appendBigEndian(UInt32(name.count))
        bytes.append(contentsOf: name)
        bytes.appendBigEndian(UInt16(truncatingIfNeeded: requested.count))
        for info in requested { bytes.appendBigEndian(info.rawValue) }
        return bytes
    }
}
