import SystemCalls

/// One netlink message (`struct nlmsghdr` + payload). On the wire: length (u32, header
/// included), type (u16), flags (u16), sequence (u32), port id (u32), payload, padding to 4.
public struct NetlinkMessage: Sendable, Equatable {
    public static let headerSize = 16

    public var type: UInt16
    public var flags: Flags
    public var sequence: UInt32
    public var portID: UInt32
    public var payload: [UInt8]

    public init(type: UInt16, flags: Flags, sequence: UInt32, portID: UInt32 = 0, payload: [UInt8]) {
        self.type = type
        self.flags = flags
        self.sequence = sequence
        self.portID = portID
        self.payload = payload
    }

    /// NLM_F_* bits. Their meaning depends on the message: 0x100 is NLM_F_ROOT on a request
    /// and NLM_F_CAPPED on an ACK.
    public struct Flags: OptionSet, Sendable, Hashable {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        public static let request = Flags(rawValue: 0x1)
        public static let multi = Flags(rawValue: 0x2)
        public static let ack = Flags(rawValue: 0x4)
        public static let echo = Flags(rawValue: 0x8)
        public static let dumpInterrupted = Flags(rawValue: 0x10)
        public static let dump = Flags(rawValue: 0x300)
        /// On NLMSG_ERROR: the echoed request is only its header.
        public static let capped = Flags(rawValue: 0x100)
        /// On NLMSG_ERROR: extended-ack attributes follow.
        public static let ackTLVs = Flags(rawValue: 0x200)
    }

    /// Message types every netlink family shares.
    public enum ControlType {
        public static let noop: UInt16 = 1
        public static let error: UInt16 = 2
        public static let done: UInt16 = 3
        public static let overrun: UInt16 = 4
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.headerSize + payload.count + 3)
        bytes.appendNative(UInt32(truncatingIfNeeded: Self.headerSize + payload.count))
        bytes.appendNative(type)
        bytes.appendNative(flags.rawValue)
        bytes.appendNative(sequence)
        bytes.appendNative(portID)
        bytes.append(contentsOf: payload)
        bytes.padToNetlinkAlignment()
        return bytes
    }

    /// Splits one received datagram into its messages, checking each length.
    public static func decode(datagram bytes: [UInt8]) throws(SystemError) -> [NetlinkMessage] {
        var messages: [NetlinkMessage] = []
        var offset = 0
        while bytes.count - offset >= headerSize {
            let slice = bytes[offset...]
            guard let length32 = slice.native(UInt32.self, at: 0),
                let type = slice.native(UInt16.self, at: 4),
                let flags = slice.native(UInt16.self, at: 6),
                let sequence = slice.native(UInt32.self, at: 8),
                let portID = slice.native(UInt32.self, at: 12)
            else { throw malformed("message header at offset \(offset) is cut short") }
            guard length32 >= UInt32(headerSize), length32 <= UInt32(bytes.count - offset) else {
                throw malformed("message at offset \(offset) claims \(length32) bytes; \(bytes.count - offset) remain")
            }
            let length = Int(length32)
            let payload = Array(bytes[(offset + headerSize)..<(offset + length)])
            messages.append(
                NetlinkMessage(
                    type: type, flags: Flags(rawValue: flags), sequence: sequence, portID: portID, payload: payload))
            offset += min(netlinkAligned(length) ?? length, bytes.count - offset)
        }
        guard offset == bytes.count else {
            throw malformed("\(bytes.count - offset) stray bytes after the last message")
        }
        return messages
    }
}

/// The payload of an NLMSG_ERROR message: an ACK when `error` is 0, a failure otherwise,
/// with the kernel's extended-ack text when it gave one.
public struct NetlinkErrorReply: Sendable, Equatable {
    /// A negative errno, or 0 for an ACK.
    public var error: Int32
    /// The header of the request this answers.
    public var requestSequence: UInt32
    /// NLMSGERR_ATTR_MSG: the kernel's words on what was wrong.
    public var message: String?
    /// NLMSGERR_ATTR_OFFS: offset of the offending attribute in the request.
    public var offendingAttributeOffset: UInt32?

    enum ExtendedAckAttribute {
        static let message: UInt16 = 1
        static let offset: UInt16 = 2
    }

    public init(error: Int32, requestSequence: UInt32, message: String? = nil, offendingAttributeOffset: UInt32? = nil)
    {
        self.error = error
        self.requestSequence = requestSequence
        self.message = message
        self.offendingAttributeOffset = offendingAttributeOffset
    }

    /// `struct nlmsgerr` (error + echoed request header, then the echoed request payload unless
    /// capped), then extended-ack attributes when NLM_F_ACK_TLVS is set.
    public init(_ message: NetlinkMessage) throws(SystemError) {
        let payload = message.payload
        guard let error = payload.native(Int32.self, at: 0),
            let echoedLength = payload.native(UInt32.self, at: 4),
            let echoedSequence = payload.native(UInt32.self, at: 12)
        else { throw malformed("NLMSG_ERROR payload of \(payload.count) bytes is shorter than struct nlmsgerr") }
        self.init(error: error, requestSequence: echoedSequence)

        guard message.flags.contains(.ackTLVs) else { return }
        let echoed = message.flags.contains(.capped) ? NetlinkMessage.headerSize : Int(echoedLength)
        guard echoed >= NetlinkMessage.headerSize, let alignedEcho = netlinkAligned(echoed),
            alignedEcho <= payload.count - 4
        else { throw malformed("NLMSG_ERROR echoes \(echoed) bytes of request but carries \(payload.count - 4)") }
        let attributes = try [NetlinkAttribute].decode(payload[(4 + alignedEcho)...])
        if let text = attributes.first(ExtendedAckAttribute.message) { self.message = text.string() }
        if let offset = attributes.first(ExtendedAckAttribute.offset) {
            self.offendingAttributeOffset = try offset.u32()
        }
    }
}
