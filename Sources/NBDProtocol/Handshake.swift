/// What a server says about its one export during the handshake.
public struct ExportDescription: Hashable, Sendable {
    public var name: String
    public var description: String
    public var size: UInt64
    public var flags: TransmissionFlags
    public var minimumBlockSize: UInt32
    public var preferredBlockSize: UInt32
    public var maximumBlockSize: UInt32

    public init(
        name: String, description: String = "", size: UInt64, flags: TransmissionFlags = .readOnlyExport,
        minimumBlockSize: UInt32 = 1, preferredBlockSize: UInt32 = 4096,
        maximumBlockSize: UInt32 = NBDLimits.maximumRequestLength
    ) {
        self.name = name
        self.description = description
        self.size = size
        self.flags = flags
        self.minimumBlockSize = minimumBlockSize
        self.preferredBlockSize = preferredBlockSize
        self.maximumBlockSize = maximumBlockSize
    }

    /// The empty name is the default export (what `nbd+unix:///?socket=` asks for).
    public func answers(to requested: String) -> Bool { requested.isEmpty || requested == name }
}

public enum NBDLimits {
    /// The largest READ (or WRITE payload) this server accepts; larger requests close the
    /// connection, since the stream may be out of step.
    public static let maximumRequestLength: UInt32 = 32 << 20
    /// The largest option data accepted during the handshake.
    public static let maximumOptionLength: UInt32 = 64 << 10
}

/// Whether a server offers TLS (NBD_OPT_STARTTLS), and whether it insists on it.
public enum TLSPolicy: String, Sendable, CaseIterable {
    /// STARTTLS is refused as unsupported.
    case off
    /// Clients may upgrade with STARTTLS or go on in plain text.
    case on
    /// Every option but STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD until TLS is up
    /// (EXPORT_NAME, which has no error reply, closes the connection).
    case require
}

/// The server side of the fixed newstyle handshake as a pure state machine: it consumes decoded
/// client input and produces the bytes to send, so it is tested (and fuzzed) without sockets.
public struct HandshakeNegotiator: Sendable {
    public enum Outcome: Equatable, Sendable {
        /// Read the next option.
        case awaitOption
        /// Send the reply, then close the connection (ABORT, or EXPORT_NAME of an unknown export).
        case close
        /// Send the reply, then enter the transmission phase.
        case transmit
        /// Send the reply (in plain text), then run the TLS handshake on the socket and call
        /// `tlsEstablished()`; the options go on inside TLS.
        case startTLS
    }

    public struct Step: Equatable, Sendable {
        public var reply: [UInt8]
        public var outcome: Outcome
    }

    public let export: ExportDescription
    public let tls: TLSPolicy
    public private(set) var clientFlags: ClientFlags = []
    public private(set) var structuredReplies = false
    public private(set) var tlsActive = false

    public init(export: ExportDescription, tls: TLSPolicy = .off) {
        self.export = export
        self.tls = tls
    }

    /// The TLS handshake after STARTTLS succeeded. What was negotiated in plain text is
    /// forgotten, as the protocol asks: an attacker in the middle could have chosen it.
    public mutating func tlsEstablished() {
        tlsActive = true
        structuredReplies = false
    }

    /// NBDMAGIC, IHAVEOPT, handshake flags.
    public var greeting: [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(NBDMagic.greeting)
        bytes.appendBigEndian(NBDMagic.options)
        bytes.appendBigEndian(HandshakeFlags([.fixedNewstyle, .noZeroes]).rawValue)
        return bytes
    }

    /// The client's 32-bit flags. Unknown bits mean a client we cannot understand: the spec says
    /// to close.
    public mutating func receiveClientFlags(_ raw: UInt32) throws(HandshakeError) {
        let flags = ClientFlags(rawValue: raw)
        guard flags.subtracting([.fixedNewstyle, .noZeroes]).isEmpty else { throw .unknownClientFlags(raw) }
        clientFlags = flags
    }

    public mutating func handle(option: OptionCode, data: [UInt8]) -> Step {
        func reply(_ replies: [OptionReply], then outcome: Outcome = .awaitOption) -> Step {
            Step(reply: replies.flatMap { $0.encoded() }, outcome: outcome)
        }
        func error(_ type: OptionReplyType, _ message: String) -> Step {
            reply([.error(type, to: option, message: message)])
        }

        if tls == .require && !tlsActive && option != .startTLS && option != .abort {
            // EXPORT_NAME has no error reply: the connection closes, as nbdkit does.
            if option == .exportName { return Step(reply: [], outcome: .close) }
            return error(.errorTLSRequired, "TLS is required: send STARTTLS first")
        }
        switch option {
        case .startTLS:
            guard tls != .off else { return error(.errorUnsupported, "TLS is not configured on this server") }
            guard data.isEmpty else { return error(.errorInvalid, "STARTTLS takes no data") }
            guard !tlsActive else { return error(.errorInvalid, "TLS is already active") }
            return reply([OptionReply(option: option, type: .ack)], then: .startTLS)

        case .exportName:
            // No error reply exists for EXPORT_NAME: an unknown name closes the connection.
            guard let name = String(validating: data, as: UTF8.self), export.answers(to: name) else {
                return Step(reply: [], outcome: .close)
            }
            var bytes: [UInt8] = []
            bytes.appendBigEndian(export.size)
            bytes.appendBigEndian(export.flags.rawValue)
            if !clientFlags.contains(.noZeroes) { bytes.append(contentsOf: repeatElement(0, count: 124)) }
            return Step(reply: bytes, outcome: .transmit)

        case .abort:
            return reply([OptionReply(option: option, type: .ack)], then: .close)

        case .list:
            guard data.isEmpty else { return error(.errorInvalid, "LIST takes no data") }
            var server: [UInt8] = []
            let name = Array(export.name.utf8)
            server.appendBigEndian(UInt32(name.count))
            server.append(contentsOf: name)
            server.append(contentsOf: export.description.utf8)
            return reply([
                OptionReply(option: option, type: .server, data: server), OptionReply(option: option, type: .ack),
            ])

        case .info, .go:
            let request: InfoRequest
            do { request = try InfoRequest(decoding: data) } catch { return self.reply(error, option) }
            guard export.answers(to: request.exportName) else {
                return error(.errorUnknown, "no export named \"\(request.exportName)\"")
            }
            var replies = [OptionReply(option: option, type: .info, data: exportInfo)]
            for info in Set(request.requested).sorted(by: { $0.rawValue < $1.rawValue }) {
                switch info {
                case .name:
                    replies.append(
                        OptionReply(option: option, type: .info, data: infoData(.name, Array(export.name.utf8))))
                case .description where !export.description.isEmpty:
                    replies.append(
                        OptionReply(
                            option: option, type: .info, data: infoData(.description, Array(export.description.utf8))))
                case .blockSize:
                    var sizes: [UInt8] = []
                    sizes.appendBigEndian(export.minimumBlockSize)
                    sizes.appendBigEndian(export.preferredBlockSize)
                    sizes.appendBigEndian(export.maximumBlockSize)
                    replies.append(OptionReply(option: option, type: .info, data: infoData(.blockSize, sizes)))
                default:
                    break  // unknown or empty information is silently skipped, as the spec allows
                }
            }
            replies.append(OptionReply(option: option, type: .ack))
            return reply(replies, then: option == .go ? .transmit : .awaitOption)

        case .structuredReply:
            guard data.isEmpty else { return error(.errorInvalid, "STRUCTURED_REPLY takes no data") }
            guard !structuredReplies else { return error(.errorInvalid, "structured replies already negotiated") }
            structuredReplies = true
            return reply([OptionReply(option: option, type: .ack)])

        default:
            return error(.errorUnsupported, "\(option) is not supported")
        }
    }

    private func reply(_ decodeError: NBDProtocolError, _ option: OptionCode) -> Step {
        Step(
            reply: OptionReply.error(.errorInvalid, to: option, message: decodeError.description).encoded(),
            outcome: .awaitOption)
    }

    /// NBD_INFO_EXPORT: size u64, transmission flags u16. Always sent for INFO and GO.
    private var exportInfo: [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(export.size)
        bytes.appendBigEndian(export.flags.rawValue)
        return infoData(.export, bytes)
    }

    private func infoData(_ type: InfoType, _ payload: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(type.rawValue)
        bytes.append(contentsOf: payload)
        return bytes
    }
}

public enum HandshakeError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownClientFlags(UInt32)

    public var description: String {
        switch self {
        case .unknownClientFlags(let raw): "client sent unknown flags 0x\(String(raw, radix: 16))"
        }
    }
}
