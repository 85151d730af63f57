import SystemCalls
import SystemPackage

/// Request/acknowledge round trips over a generic netlink transport. Each request carries a
/// fresh sequence number and NLM_F_REQUEST|NLM_F_ACK; replies are gathered (multi-part ones
/// until NLMSG_DONE) until the kernel's ACK, and a kernel error becomes a `SystemError` that
/// carries the errno and the extended-ack text. Not for concurrent use: give each thread its
/// own client (sockets are cheap).
public final class GenericNetlinkClient {
    public let transport: any NetlinkTransport
    private var nextSequence: UInt32

    public init(transport: any NetlinkTransport, firstSequence: UInt32 = 1) {
        self.transport = transport
        self.nextSequence = firstSequence
    }

    /// Opens a NETLINK_GENERIC socket.
    public convenience init() throws(SystemError) {
        self.init(transport: try NetlinkSocket())
    }

    /// Sends `message` to `family` and returns the replies' generic netlink payloads.
    /// `operation` names the request in errors (e.g. "nbd CONNECT").
    @discardableResult
    public func request(
        family: UInt16, _ message: GenericNetlinkMessage, flags: NetlinkMessage.Flags = [],
        operation: String
    ) throws(SystemError) -> [GenericNetlinkMessage] {
        let sequence = nextSequence
        nextSequence &+= 1
        let request = NetlinkMessage(
            type: family, flags: flags.union([.request, .ack]), sequence: sequence,
            portID: transport.portID, payload: message.encodedPayload())
        try transport.send(request.encoded())

        var replies: [GenericNetlinkMessage] = []
        var interrupted = false
        while true {
            let datagram = try transport.receive()
            let messages: [NetlinkMessage]
            do { messages = try NetlinkMessage.decode(datagram: datagram) } catch { throw context(error, operation) }
            for reply in messages {
                // Late answers to an earlier request (say, one abandoned on an error) are not ours.
                guard reply.sequence == sequence else { continue }
                switch reply.type {
                case NetlinkMessage.ControlType.error:
                    let status: NetlinkErrorReply
                    do { status = try NetlinkErrorReply(reply) } catch { throw context(error, operation) }
                    if status.error == 0 { return replies }
                    throw SystemError(
                        operation, errno: kernelErrno(status.error),
                        detail: status.message.map { "kernel: \($0)" })
                case NetlinkMessage.ControlType.done:
                    // End of a multi-part answer (a dump is not followed by an ACK). Its payload,
                    // when present, is the dump's status: negative means it failed.
                    if let status = reply.payload.native(Int32.self, at: 0), status < 0 {
                        throw SystemError(
                            operation, errno: kernelErrno(status),
                            detail: "the kernel ended the dump with an error")
                    }
                    if reply.flags.contains(.dumpInterrupted) || interrupted {
                        throw SystemError(
                            operation, errno: .resourceTemporarilyUnavailable,
                            detail: "the dump changed while it was read (NLM_F_DUMP_INTR); ask again")
                    }
                    return replies
                case NetlinkMessage.ControlType.noop:
                    continue
                case NetlinkMessage.ControlType.overrun:
                    throw SystemError(
                        operation, errno: .noBufferSpace, detail: "netlink reported data lost (NLMSG_OVERRUN)")
                default:
                    if reply.flags.contains(.dumpInterrupted) { interrupted = true }
                    guard reply.type == family else {
                        throw context(malformed("reply of type \(reply.type), expected family \(family)"), operation)
                    }
                    do { replies.append(try GenericNetlinkMessage(payload: reply.payload)) } catch {
                        throw context(error, operation)
                    }
                }
            }
        }
    }

    /// CTRL_CMD_GETFAMILY: the id, version and multicast groups of a family by name.
    public func resolveFamily(_ name: String) throws(SystemError) -> GenericNetlinkFamily {
        let operation = "resolve generic netlink family \"\(name)\""
        // GENL_NAMSIZ is 16 with the NUL; the kernel answers a longer name with a bare EINVAL.
        guard (1...15).contains(name.utf8.count) else {
            throw SystemError(operation, errno: .invalidArgument, detail: "family names have 1 to 15 bytes")
        }
        let replies: [GenericNetlinkMessage]
        do {
            replies = try request(
                family: GenericNetlinkController.familyID, GenericNetlinkController.getFamilyRequest(name: name),
                operation: operation)
        } catch  where error.errno == .noSuchFileOrDirectory {
            var missing = error
            missing.detail =
                (error.detail.map { $0 + "; " } ?? "")
                + "the kernel has no such family (is its module loaded?)"
            throw missing
        }
        guard let reply = replies.first(where: { $0.command == GenericNetlinkController.Command.newFamily }) else {
            throw SystemError(operation, errno: .protocolError, detail: "the controller acknowledged without an answer")
        }
        do { return try GenericNetlinkController.family(from: reply) } catch { throw context(error, operation) }
    }

    /// Every registered family: a GETFAMILY dump, answered in several parts.
    public func families() throws(SystemError) -> [GenericNetlinkFamily] {
        let operation = "list generic netlink families"
        let replies = try request(
            family: GenericNetlinkController.familyID,
            GenericNetlinkMessage(
                command: GenericNetlinkController.Command.getFamily, version: GenericNetlinkController.version),
            flags: .dump, operation: operation)
        var families: [GenericNetlinkFamily] = []
        for reply in replies where reply.command == GenericNetlinkController.Command.newFamily {
            do { families.append(try GenericNetlinkController.family(from: reply)) } catch {
                throw context(error, operation)
            }
        }
        return families
    }

    /// The kernel sends errors as negative errno values.
    private func kernelErrno(_ negated: Int32) -> Errno {
        Errno(rawValue: Int32(truncatingIfNeeded: negated.magnitude))
    }

    private func context(_ error: SystemError, _ operation: String) -> SystemError {
        var error = error
        error.operation = "\(operation): \(error.operation)"
        return error
    }
}

/// Decodes a multicast notification datagram (sequence 0, from the kernel) into the generic
/// netlink messages of `family` it holds.
public func decodeNotifications(_ datagram: [UInt8], family: UInt16) throws(SystemError) -> [GenericNetlinkMessage] {
    var result: [GenericNetlinkMessage] = []
    for message in try NetlinkMessage.decode(datagram: datagram) where message.type == family {
        result.append(try GenericNetlinkMessage(payload: message.payload))
    }
    return result
}
