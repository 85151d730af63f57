import Netlink
import SystemCalls

/// The `nbd` generic netlink family's numbers (include/uapi/linux/nbd-netlink.h) and the
/// messages built from them. No I/O here: `NBDNetlink` sends them.
public enum NBDNetlinkProtocol {
    public static let familyName = "nbd"
    public static let multicastGroupName = "nbd_mc_group"
    public static let version: UInt8 = 1

    public enum Command {
        public static let connect: UInt8 = 1
        public static let disconnect: UInt8 = 2
        public static let reconfigure: UInt8 = 3
        /// Multicast only: a device lost its last live socket.
        public static let linkDead: UInt8 = 4
        public static let status: UInt8 = 5
    }

    public enum Attribute {
        public static let index: UInt16 = 1
        public static let sizeBytes: UInt16 = 2
        public static let blockSizeBytes: UInt16 = 3
        public static let timeout: UInt16 = 4
        public static let serverFlags: UInt16 = 5
        public static let clientFlags: UInt16 = 6
        public static let sockets: UInt16 = 7
        public static let deadConnectionTimeout: UInt16 = 8
        public static let deviceList: UInt16 = 9
        public static let backendIdentifier: UInt16 = 10
    }

    /// Inside SOCKETS: items, each holding one FD.
    public enum SocketAttribute {
        public static let item: UInt16 = 1
        public static let fd: UInt16 = 1
    }

    /// Inside DEVICE_LIST: items, each holding INDEX and CONNECTED.
    public enum DeviceAttribute {
        public static let item: UInt16 = 1
        public static let index: UInt16 = 1
        public static let connected: UInt16 = 2
    }

    static func socketsAttribute(_ sockets: [Int32]) -> NetlinkAttribute {
        .nested(
            Attribute.sockets,
            sockets.map { fd in
                .nested(SocketAttribute.item, [.u32(SocketAttribute.fd, UInt32(bitPattern: fd))])
            })
    }

    public static func connectMessage(_ request: NBDConnectRequest) -> GenericNetlinkMessage {
        var attributes: [NetlinkAttribute] = []
        if let index = request.index { attributes.append(.u32(Attribute.index, index)) }
        attributes.append(.u64(Attribute.sizeBytes, request.sizeBytes))
        if let blockSize = request.blockSizeBytes { attributes.append(.u64(Attribute.blockSizeBytes, blockSize)) }
        if let timeout = request.timeoutSeconds { attributes.append(.u64(Attribute.timeout, timeout)) }
        if let flags = request.serverFlags { attributes.append(.u64(Attribute.serverFlags, flags.rawValue)) }
        if let flags = request.clientFlags { attributes.append(.u64(Attribute.clientFlags, flags.rawValue)) }
        if let dead = request.deadConnectionTimeoutSeconds {
            attributes.append(.u64(Attribute.deadConnectionTimeout, dead))
        }
        if let identifier = request.backendIdentifier {
            attributes.append(.string(Attribute.backendIdentifier, identifier))
        }
        attributes.append(socketsAttribute(request.sockets))
        return GenericNetlinkMessage(command: Command.connect, version: version, attributes: attributes)
    }

    public static func reconfigureMessage(
        index: UInt32, sockets: [Int32], backendIdentifier: String?, clientFlags: NBDClientFlags?,
        deadConnectionTimeoutSeconds: UInt64? = nil
    ) -> GenericNetlinkMessage {
        var attributes: [NetlinkAttribute] = [.u32(Attribute.index, index)]
        if let clientFlags { attributes.append(.u64(Attribute.clientFlags, clientFlags.rawValue)) }
        if let dead = deadConnectionTimeoutSeconds { attributes.append(.u64(Attribute.deadConnectionTimeout, dead)) }
        if let backendIdentifier { attributes.append(.string(Attribute.backendIdentifier, backendIdentifier)) }
        if !sockets.isEmpty { attributes.append(socketsAttribute(sockets)) }
        return GenericNetlinkMessage(command: Command.reconfigure, version: version, attributes: attributes)
    }

    public static func disconnectMessage(index: UInt32) -> GenericNetlinkMessage {
        GenericNetlinkMessage(command: Command.disconnect, version: version, attributes: [.u32(Attribute.index, index)])
    }

    /// STATUS of one device, or of every device when `index` is nil.
    public static func statusMessage(index: UInt32?) -> GenericNetlinkMessage {
        GenericNetlinkMessage(
            command: Command.status, version: version, attributes: index.map { [.u32(Attribute.index, $0)] } ?? [])
    }

    /// The CONNECT reply's INDEX.
    public static func connectedIndex(from replies: [GenericNetlinkMessage]) throws(SystemError) -> UInt32 {
        for reply in replies {
            if let index = reply.attributes.first(Attribute.index) { return try index.u32() }
        }
        throw SystemError("nbd CONNECT", errno: .protocolError, detail: "the kernel's reply names no device index")
    }

    /// DEVICE_LIST → devices, from every STATUS reply.
    public static func deviceStatuses(from replies: [GenericNetlinkMessage]) throws(SystemError) -> [NBDDeviceStatus] {
        var devices: [NBDDeviceStatus] = []
        for reply in replies {
            guard let list = reply.attributes.first(Attribute.deviceList) else { continue }
            for item in try list.nested() where item.type == DeviceAttribute.item {
                let fields = try item.nested()
                guard let index = fields.first(DeviceAttribute.index),
                    let connected = fields.first(DeviceAttribute.connected)
                else {
                    throw SystemError(
                        "nbd STATUS", errno: .protocolError, detail: "device item without INDEX or CONNECTED")
                }
                devices.append(NBDDeviceStatus(index: try index.u32(), connected: try connected.u8() != 0))
            }
        }
        return devices
    }

    /// The device index of a LINK_DEAD notification, nil for other messages.
    public static func linkDeadIndex(_ message: GenericNetlinkMessage) throws(SystemError) -> UInt32? {
        guard message.command == Command.linkDead else { return nil }
        guard let index = message.attributes.first(Attribute.index) else {
            throw SystemError("nbd LINK_DEAD", errno: .protocolError, detail: "notification without INDEX")
        }
        return try index.u32()
    }
}

/// NBD_CFLAG_*: how the kernel treats the device beyond the protocol.
public struct NBDClientFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// Remove the device when it disconnects.
    public static let destroyOnDisconnect = NBDClientFlags(rawValue: 1 << 0)
    /// Disconnect when the last opener closes the device. Set it by RECONFIGURE once the mount
    /// holds the device: at CONNECT it races with udev's probing open/close.
    public static let disconnectOnClose = NBDClientFlags(rawValue: 1 << 1)
}

/// NBD_FLAG_* transmission flags, as the server advertises them.
public struct NBDServerFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let hasFlags = NBDServerFlags(rawValue: 1 << 0)
    public static let readOnly = NBDServerFlags(rawValue: 1 << 1)
    public static let sendFlush = NBDServerFlags(rawValue: 1 << 2)
    public static let sendFUA = NBDServerFlags(rawValue: 1 << 3)
    public static let sendTrim = NBDServerFlags(rawValue: 1 << 5)
    /// Needed for more than one socket per device.
    public static let canMultiConnect = NBDServerFlags(rawValue: 1 << 8)
}

/// What CONNECT needs: the sockets (the kernel's ends) and the size; the rest is optional.
public struct NBDConnectRequest: Sendable, Equatable {
    /// A device to use, or nil to let the kernel pick (or create) a free one.
    public var index: UInt32?
    public var sizeBytes: UInt64
    public var blockSizeBytes: UInt64?
    /// Request timeout in seconds; expiry marks a slow socket dead.
    public var timeoutSeconds: UInt64?
    public var serverFlags: NBDServerFlags?
    public var clientFlags: NBDClientFlags?
    /// How long I/O waits for a RECONFIGURE once no live socket remains.
    public var deadConnectionTimeoutSeconds: UInt64?
    /// Ignored by kernels before 5.14; see `NBDDevice.hasBackendIdentifier`.
    public var backendIdentifier: String?
    public var sockets: [Int32]

    public init(
        index: UInt32? = nil, sizeBytes: UInt64, blockSizeBytes: UInt64? = nil, timeoutSeconds: UInt64? = nil,
        serverFlags: NBDServerFlags? = nil, clientFlags: NBDClientFlags? = nil,
        deadConnectionTimeoutSeconds: UInt64? = nil, backendIdentifier: String? = nil, sockets: [Int32]
    ) {
        self.index = index
        self.sizeBytes = sizeBytes
        self.blockSizeBytes = blockSizeBytes
        self.timeoutSeconds = timeoutSeconds
        self.serverFlags = serverFlags
        self.clientFlags = clientFlags
        self.deadConnectionTimeoutSeconds = deadConnectionTimeoutSeconds
        self.backendIdentifier = backendIdentifier
        self.sockets = sockets
    }

    /// Catches what the kernel would refuse with a bare EINVAL, with words instead.
    public func validate() throws(SystemError) {
        func invalid(_ why: String) -> SystemError { SystemError("nbd CONNECT", errno: .invalidArgument, detail: why) }
        if sockets.isEmpty { throw invalid("at least one socket is needed") }
        if sockets.contains(where: { $0 < 0 }) { throw invalid("socket descriptors must not be negative") }
        if sizeBytes == 0 { throw invalid("the device size must not be 0") }
        if let blockSize = blockSizeBytes, !(512...65536).contains(blockSize) || blockSize & (blockSize - 1) != 0 {
            throw invalid("block size \(blockSize) is not a power of two from 512 to 65536")
        }
        if sockets.count > 1, !(serverFlags ?? []).contains(.canMultiConnect) {
            throw invalid("\(sockets.count) sockets need the server flag CAN_MULTI_CONN")
        }
    }
}

/// One device in a STATUS answer. "Connected" stays true while the device waits on a dead
/// link: whether the serving process lives is the caller's to track.
public struct NBDDeviceStatus: Sendable, Equatable {
    public var index: UInt32
    public var connected: Bool
    public init(index: UInt32, connected: Bool) {
        self.index = index
        self.connected = connected
    }
}
