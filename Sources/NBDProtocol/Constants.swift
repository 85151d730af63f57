/// Magic numbers of the NBD protocol (doc/proto.md of the NetworkBlockDevice/nbd project).
public enum NBDMagic {
    /// "NBDMAGIC": first 8 bytes the server sends.
    public static let greeting: UInt64 = 0x4e42_444d_4147_4943
    /// "IHAVEOPT": marks the newstyle handshake, and every option request.
    public static let options: UInt64 = 0x4948_4156_454F_5054
    /// Prefix of every option reply.
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    public static let request: UInt32 = 0x2560_9513
    public static let simpleReply: UInt32 = 0x6744_6698
    public static let structuredReply: UInt32 = 0x668e_33ef
}

/// Handshake flags (server to client, u16).
public struct HandshakeFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fixedNewstyle = HandshakeFlags(rawValue: 1 << 0)
    public static let noZeroes = HandshakeFlags(rawValue: 1 << 1)
}

/// Client flags (client to server, u32).
public struct ClientFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let fixedNewstyle = ClientFlags(rawValue: 1 << 0)
    public static let noZeroes = ClientFlags(rawValue: 1 << 1)
}

/// Transmission flags (per export, u16).
public struct TransmissionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
    public static let readOnly = TransmissionFlags(rawValue: 1 << 1)
    public static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
    public static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
    public static let rotational = TransmissionFlags(rawValue: 1 << 4)
    public static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
    public static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
    public static let sendDF = TransmissionFlags(rawValue: 1 << 7)
    public static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)

    /// What a read-only export of an immutable image advertises.
    public static let readOnlyExport: TransmissionFlags = [.hasFlags, .readOnly, .sendFlush, .canMultiConn]
}

/// Option codes of the newstyle handshake. A struct, not an enum: unknown codes must be representable.
public struct OptionCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let exportName = OptionCode(rawValue: 1)
    public static let abort = OptionCode(rawValue: 2)
    public static let list = OptionCode(rawValue: 3)
    public static let peekExport = OptionCode(rawValue: 4)
    public static let startTLS = OptionCode(rawValue: 5)
    public static let info = OptionCode(rawValue: 6)
    public static let go = OptionCode(rawValue: 7)
    public static let structuredReply = OptionCode(rawValue: 8)
    public static let listMetaContext = OptionCode(rawValue: 9)
    public static let setMetaContext = OptionCode(rawValue: 10)
    public static let extendedHeaders = OptionCode(rawValue: 11)

    public var description: String {
        let names: [UInt32: String] = [
            1: "EXPORT_NAME", 2: "ABORT", 3: "LIST", 4: "PEEK_EXPORT", 5: "STARTTLS", 6: "INFO", 7: "GO",
            8: "STRUCTURED_REPLY", 9: "LIST_META_CONTEXT", 10: "SET_META_CONTEXT", 11: "EXTENDED_HEADERS",
        ]
        return names[rawValue] ?? "option \(rawValue)"
    }
}

/// Option reply types; errors have bit 31 set.
public struct OptionReplyType: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let ack = OptionReplyType(rawValue: 1)
    public static let server = OptionReplyType(rawValue: 2)
    public static let info = OptionReplyType(rawValue: 3)
    public static let metaContext = OptionReplyType(rawValue: 4)
    public static let errorUnsupported = OptionReplyType(rawValue: 1 << 31 | 1)
    public static let errorPolicy = OptionReplyType(rawValue: 1 << 31 | 2)
    public static let errorInvalid = OptionReplyType(rawValue: 1 << 31 | 3)
    public static let errorPlatform = OptionReplyType(rawValue: 1 << 31 | 4)
    public static let errorTLSRequired = OptionReplyType(rawValue: 1 << 31 | 5)
    public static let errorUnknown = OptionReplyType(rawValue: 1 << 31 | 6)
    public static let errorShutdown = OptionReplyType(rawValue: 1 << 31 | 7)
    public static let errorBlockSizeRequired = OptionReplyType(rawValue: 1 << 31 | 8)
    public static let errorTooBig = OptionReplyType(rawValue: 1 << 31 | 9)

    public var isError: Bool { rawValue & (1 << 31) != 0 }
}

/// Information types requested by NBD_OPT_INFO/GO and sent in NBD_REP_INFO.
public struct InfoType: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let export = InfoType(rawValue: 0)
    public static let name = InfoType(rawValue: 1)
    public static let description = InfoType(rawValue: 2)
    public static let blockSize = InfoType(rawValue: 3)
}

/// Command types of the transmission phase.
public struct CommandType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let read = CommandType(rawValue: 0)
    public static let write = CommandType(rawValue: 1)
    public static let disconnect = CommandType(rawValue: 2)
    public static let flush = CommandType(rawValue: 3)
    public static let trim = CommandType(rawValue: 4)
    public static let cache = CommandType(rawValue: 5)
    public static let writeZeroes = CommandType(rawValue: 6)
    public static let blockStatus = CommandType(rawValue: 7)
    public static let resize = CommandType(rawValue: 8)

    /// Whether `length` bytes of payload follow the request header.
    public var carriesPayload: Bool { self == .write }

    public var description: String {
        let names: [UInt16: String] = [
            0: "READ", 1: "WRITE", 2: "DISC", 3: "FLUSH", 4: "TRIM", 5: "CACHE", 6: "WRITE_ZEROES",
            7: "BLOCK_STATUS", 8: "RESIZE",
        ]
        return names[rawValue] ?? "command \(rawValue)"
    }
}

/// Command flags (u16 in the request).
public struct CommandFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fua = CommandFlags(rawValue: 1 << 0)
    public static let noHole = CommandFlags(rawValue: 1 << 1)
    public static let dontFragment = CommandFlags(rawValue: 1 << 2)
    public static let requestOne = CommandFlags(rawValue: 1 << 3)
    public static let fastZero = CommandFlags(rawValue: 1 << 4)
}

/// Error values on the wire (fixed by the protocol, not the host's errno numbering).
public struct NBDErrorCode: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let none = NBDErrorCode(rawValue: 0)
    public static let notPermitted = NBDErrorCode(rawValue: 1)  // EPERM
    public static let ioError = NBDErrorCode(rawValue: 5)  // EIO
    public static let outOfMemory = NBDErrorCode(rawValue: 12)  // ENOMEM
    public static let invalid = NBDErrorCode(rawValue: 22)  // EINVAL
    public static let noSpace = NBDErrorCode(rawValue: 28)  // ENOSPC
    public static let overflow = NBDErrorCode(rawValue: 75)  // EOVERFLOW
    public static let notSupported = NBDErrorCode(rawValue: 95)  // ENOTSUP
    public static let shutdown = NBDErrorCode(rawValue: 108)  // ESHUTDOWN
}

/// Structured reply chunk types and flags.
public struct StructuredReplyType: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let none = StructuredReplyType(rawValue: 0)
    public static let offsetData = StructuredReplyType(rawValue: 1)
    public static let offsetHole = StructuredReplyType(rawValue: 2)
    public static let blockStatus = StructuredReplyType(rawValue: 5)
    public static let error = StructuredReplyType(rawValue: 1 << 15 | 1)
    public static let errorOffset = StructuredReplyType(rawValue: 1 << 15 | 2)
}

public struct StructuredReplyFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let done = StructuredReplyFlags(rawValue: 1 << 0)
}
