import Netlink
import SystemCalls
import SystemPackage

/// The kernel's nbd devices through generic netlink: CONNECT, RECONFIGURE, DISCONNECT, STATUS.
/// CONNECT, RECONFIGURE and DISCONNECT need CAP_SYS_ADMIN.
public final class NBDNetlink {
    public let client: GenericNetlinkClient
    public let family: GenericNetlinkFamily

    public init(client: GenericNetlinkClient, family: GenericNetlinkFamily) {
        self.client = client
        self.family = family
    }

    /// Opens a generic netlink socket and resolves the `nbd` family (which may autoload the
    /// module where modules load).
    public static func open() throws(SystemError) -> NBDNetlink {
        let client = try GenericNetlinkClient()
        return NBDNetlink(client: client, family: try client.resolveFamily(NBDNetlinkProtocol.familyName))
    }

    /// Attaches the sockets to a device; returns the device index (the kernel's pick when the
    /// request names none).
    public func connect(_ request: NBDConnectRequest) throws(SystemError) -> UInt32 {
        try request.validate()
        let replies = try send(NBDNetlinkProtocol.connectMessage(request), "nbd CONNECT", index: request.index)
        return try NBDNetlinkProtocol.connectedIndex(from: replies)
    }

    /// Replaces dead sockets and sets client flags. The kernel replaces only sockets marked
    /// dead: with none dead it succeeds and drops the new socket unused. `clientFlags` are
    /// absolute (omitted bits are cleared); nil leaves them as they are. A device connected
    /// with an identifier needs the same identifier here (else EINVAL).
    public func reconfigure(
        index: UInt32, sockets: [Int32] = [], identifier: String? = nil, clientFlags: NBDClientFlags? = nil,
        deadConnectionTimeoutSeconds: UInt64? = nil
    ) throws(SystemError) {
        try send(
            NBDNetlinkProtocol.reconfigureMessage(
                index: index, sockets: sockets, backendIdentifier: identifier, clientFlags: clientFlags,
                deadConnectionTimeoutSeconds: deadConnectionTimeoutSeconds),
            "nbd RECONFIGURE", index: index)
    }

    public func disconnect(index: UInt32) throws(SystemError) {
        try send(NBDNetlinkProtocol.disconnectMessage(index: index), "nbd DISCONNECT", index: index)
    }

    /// STATUS of one device, or of all when `index` is nil.
    public func status(index: UInt32? = nil) throws(SystemError) -> [NBDDeviceStatus] {
        let replies = try send(NBDNetlinkProtocol.statusMessage(index: index), "nbd STATUS", index: index)
        return try NBDNetlinkProtocol.deviceStatuses(from: replies)
    }

    @discardableResult
    private func send(_ message: GenericNetlinkMessage, _ operation: String, index: UInt32?) throws(SystemError)
        -> [GenericNetlinkMessage]
    {
        do {
            return try client.request(family: family.id, message, operation: operation)
        } catch {
            var error = error
            if let index { error.path = "/dev/nbd\(index)" }
            if error.errno == .notPermitted, error.detail == nil { error.detail = "needs CAP_SYS_ADMIN" }
            throw error
        }
    }
}

/// LINK_DEAD notifications: the kernel multicasts one when a netlink-configured device loses
/// its last live socket (its server died). I/O then waits for a RECONFIGURE.
public final class NBDLinkDeadMonitor {
    private let socket: NetlinkSocket
    private let familyID: UInt16
    private var pending: [UInt32] = []

    /// Joins `nbd_mc_group` on a socket of its own (requests on another socket never mix with
    /// the notifications).
    public init(family: GenericNetlinkFamily) throws(SystemError) {
        guard let group = family.multicastGroups[NBDNetlinkProtocol.multicastGroupName] else {
            throw SystemError(
                "nbd LINK_DEAD monitor", errno: .noSuchFileOrDirectory,
                detail: "family \(family.name) has no multicast group \(NBDNetlinkProtocol.multicastGroupName)")
        }
        socket = try NetlinkSocket()
        familyID = family.id
        try socket.joinMulticastGroup(group)
    }

    /// The next device whose link died, or nil when `timeoutMilliseconds` pass first (-1 waits).
    public func nextDeadLink(timeoutMilliseconds: Int32) throws(SystemError) -> UInt32? {
        while pending.isEmpty {
            guard try socket.waitReadable(milliseconds: timeoutMilliseconds) else { return nil }
            for message in try decodeNotifications(try socket.receive(), family: familyID) {
                if let index = try NBDNetlinkProtocol.linkDeadIndex(message) { pending.append(index) }
            }
        }
        return pending.removeFirst()
    }
}
