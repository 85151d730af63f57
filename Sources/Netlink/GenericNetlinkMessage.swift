import SystemCalls

/// A generic netlink message: the family id is the netlink message type, and the payload is
/// `struct genlmsghdr` (command u8, version u8, reserved u16) followed by attributes.
public struct GenericNetlinkMessage: Sendable, Equatable {
    static let headerSize = 4

    public var command: UInt8
    public var version: UInt8
    public var attributes: [NetlinkAttribute]

    public init(command: UInt8, version: UInt8, attributes: [NetlinkAttribute] = []) {
        self.command = command
        self.version = version
        self.attributes = attributes
    }

    /// The netlink payload: genlmsghdr + attributes.
    public func encodedPayload() -> [UInt8] {
        var bytes: [UInt8] = [command, version, 0, 0]
        for attribute in attributes { attribute.encode(into: &bytes) }
        return bytes
    }

    public init(payload: [UInt8]) throws(SystemError) {
        guard payload.count >= Self.headerSize else {
            throw malformed("generic netlink payload of \(payload.count) bytes has no genlmsghdr")
        }
        self.init(
            command: payload[0], version: payload[1],
            attributes: try [NetlinkAttribute].decode(payload[Self.headerSize...]))
    }
}

/// A resolved generic netlink family: what CTRL_CMD_GETFAMILY reports.
public struct GenericNetlinkFamily: Sendable, Equatable {
    public var name: String
    public var id: UInt16
    public var version: UInt32
    /// Multicast group name → group id (for NETLINK_ADD_MEMBERSHIP).
    public var multicastGroups: [String: UInt32]

    public init(name: String, id: UInt16, version: UInt32, multicastGroups: [String: UInt32]) {
        self.name = name
        self.id = id
        self.version = version
        self.multicastGroups = multicastGroups
    }
}

/// The generic netlink controller ("nlctrl"), which maps family names to ids.
public enum GenericNetlinkController {
    /// GENL_ID_CTRL: the controller's fixed family id.
    public static let familyID: UInt16 = 0x10
    public static let version: UInt8 = 2

    public enum Command {
        public static let newFamily: UInt8 = 1
        public static let getFamily: UInt8 = 3
    }

    public enum Attribute {
        public static let familyID: UInt16 = 1
        public static let familyName: UInt16 = 2
        public static let version: UInt16 = 3
        public static let multicastGroups: UInt16 = 7
    }

    public enum MulticastGroupAttribute {
        public static let name: UInt16 = 1
        public static let id: UInt16 = 2
    }

    public static func getFamilyRequest(name: String) -> GenericNetlinkMessage {
        GenericNetlinkMessage(
            command: Command.getFamily, version: version, attributes: [.string(Attribute.familyName, name)])
    }

    /// Decodes CTRL_CMD_NEWFAMILY (the answer to GETFAMILY).
    public static func family(from reply: GenericNetlinkMessage) throws(SystemError) -> GenericNetlinkFamily {
        let attributes = reply.attributes
        guard let id = attributes.first(Attribute.familyID) else {
            throw malformed("GETFAMILY reply without CTRL_ATTR_FAMILY_ID")
        }
        var groups: [String: UInt32] = [:]
        if let list = attributes.first(Attribute.multicastGroups) {
            // A nested array: each item's type is its index, its payload the group's attributes.
            for item in try list.nested() {
                let fields = try item.nested()
                guard let name = fields.first(MulticastGroupAttribute.name),
                    let groupID = fields.first(MulticastGroupAttribute.id)
                else { throw malformed("GETFAMILY multicast group without name or id") }
                groups[name.string()] = try groupID.u32()
            }
        }
        return GenericNetlinkFamily(
            name: attributes.first(Attribute.familyName)?.string() ?? "",
            id: try id.u16(),
            version: try attributes.first(Attribute.version)?.u32() ?? 0,
            multicastGroups: groups)
    }
}
