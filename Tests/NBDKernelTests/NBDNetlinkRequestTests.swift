import NBDKernel
import Netlink
import NetlinkTestSupport
import SystemCalls
import SystemPackage
import Testing
import TestSupport

#if _endian(little)

/// The nbd family's requests against hand-annotated wire forms, and its replies decoded.
@Suite struct NBDNetlinkRequestTests {
    static let family = GenericNetlinkFamily(name: "nbd", id: 0x1a, version: 1, multicastGroups: ["nbd_mc_group": 5])

    /// An NBDNetlink over a recording transport that answers with `replies`.
    static func session(_ replies: [[UInt8]]) -> (NBDNetlink, RecordingTransport) {
        let transport = RecordingTransport(replies: replies)
        return (NBDNetlink(client: GenericNetlinkClient(transport: transport), family: family), transport)
    }

    /// The kernel's CONNECT reply: the genl header and INDEX.
    static func connectReply(index: UInt32, sequence: UInt32 = 1) -> [UInt8] {
        [UInt8](
            hex:
                "1c000000" + "1a00" + "0000" + hexLE32(sequence) + "78563412"  // nlmsghdr 28 B, family nbd
                + "01010000"  // genl: NBD_CMD_CONNECT v1
                + "08000100" + hexLE32(index))  // NBD_ATTR_INDEX
    }

    @Test func connectWithEveryAttribute() throws {
        let request = NBDConnectRequest(
            index: 3, sizeBytes: 1 << 20, blockSizeBytes: 4096, timeoutSeconds: 30,
            serverFlags: [.hasFlags, .readOnly, .canMultiConnect], clientFlags: .destroyOnDisconnect,
            deadConnectionTimeoutSeconds: 60, backendIdentifier: "img", sockets: [5, 6])
        let expected =
            "88000000" + "1a00" + "0500" + "01000000" + "78563412"  // nlmsghdr: 136 B, nbd, REQUEST|ACK, seq 1
            + "01010000"  // genl: NBD_CMD_CONNECT, version 1
            + "0800" + "0100" + "03000000"  // INDEX 3
            + "0c00" + "0200" + "0000100000000000"  // SIZE_BYTES 1 MiB
            + "0c00" + "0300" + "0010000000000000"  // BLOCK_SIZE_BYTES 4096
            + "0c00" + "0400" + "1e00000000000000"  // TIMEOUT 30 s
            + "0c00" + "0500" + "0301000000000000"  // SERVER_FLAGS HAS_FLAGS|READ_ONLY|CAN_MULTI_CONN
            + "0c00" + "0600" + "0100000000000000"  // CLIENT_FLAGS DESTROY_ON_DISCONNECT
            + "0c00" + "0800" + "3c00000000000000"  // DEAD_CONN_TIMEOUT 60 s
            + "0800" + "0a00" + "696d6700"  // BACKEND_IDENTIFIER "img\0"
            + "1c00" + "0780"  // SOCKETS, nested, 28 B
            + "0c00" + "0180" + "0800" + "0100" + "05000000"  //   SOCK_ITEM { SOCK_FD 5 }
            + "0c00" + "0180" + "0800" + "0100" + "06000000"  //   SOCK_ITEM { SOCK_FD 6 }
        let (nbd, transport) = Self.session([Self.connectReply(index: 3), ackFixture(sequence: 1)])
        #expect(try nbd.connect(request) == 3)
        #expect(transport.sent.map(\.hex) == [expected])
    }

    @Test func connectWithoutIndexReturnsTheKernelsPick() throws {
        let expected =
            "30000000" + "1a00" + "0500" + "01000000" + "78563412"  // nlmsghdr: 48 B
            + "01010000"  // genl: CONNECT
            + "0c00" + "0200" + "0000a00000000000"  // SIZE_BYTES 10 MiB
            + "1000" + "0780" + "0c00" + "0180" + "0800" + "0100" + "04000000"  // SOCKETS { ITEM { FD 4 } }
        let (nbd, transport) = Self.session([Self.connectReply(index: 7), ackFixture(sequence: 1)])
        #expect(try nbd.connect(NBDConnectRequest(sizeBytes: 10 << 20, sockets: [4])) == 7)
        #expect(transport.sent.map(\.hex) == [expected])
    }

    @Test func reconfigure() throws {
        let expected =
            "40000000" + "1a00" + "0500" + "01000000" + "78563412"  // nlmsghdr: 64 B
            + "03010000"  // genl: NBD_CMD_RECONFIGURE
            + "0800" + "0100" + "03000000"  // INDEX 3
            + "0c00" + "0600" + "0200000000000000"  // CLIENT_FLAGS DISCONNECT_ON_CLOSE (absolute)
            + "0800" + "0a00" + "696d6700"  // BACKEND_IDENTIFIER "img" (must match CONNECT's)
            + "1000" + "0780" + "0c00" + "0180" + "0800" + "0100" + "07000000"  // SOCKETS { ITEM { FD 7 } }
        let (nbd, transport) = Self.session([ackFixture(sequence: 1)])
        try nbd.reconfigure(index: 3, sockets: [7], identifier: "img", clientFlags: .disconnectOnClose)
        #expect(transport.sent.map(\.hex) == [expected])
    }

    @Test func disconnect() throws {
        let expected =
            "1c000000" + "1a00" + "0500" + "01000000" + "78563412"  // nlmsghdr: 28 B
            + "02010000"  // genl: NBD_CMD_DISCONNECT
            + "0800" + "0100" + "09000000"  // INDEX 9
        let (nbd, transport) = Self.session([ackFixture(sequence: 1)])
        try nbd.disconnect(index: 9)
        #expect(transport.sent.map(\.hex) == [expected])
    }

    /// STATUS reply for nbd0 (connected) and nbd1 (not). The kernel nests with
    /// nla_nest_start_noflag: no NLA_F_NESTED bit on DEVICE_LIST or DEVICE_ITEM.
    static let statusReply = [UInt8](
        hex:
            "40000000" + "1a00" + "0000" + "01000000" + "78563412"  // nlmsghdr: 64 B
            + "05010000"  // genl: NBD_CMD_STATUS
            + "2c00" + "0900"  // DEVICE_LIST, 44 B
            + "1400" + "0100"  //   DEVICE_ITEM, 20 B
            + "0800" + "0100" + "00000000"  //     DEVICE_INDEX 0
            + "0500" + "0200" + "01" + "000000"  //     DEVICE_CONNECTED 1 (u8 + pad)
            + "1400" + "0100"  //   DEVICE_ITEM
            + "0800" + "0100" + "01000000"  //     DEVICE_INDEX 1
            + "0500" + "0200" + "00" + "000000"  //     DEVICE_CONNECTED 0
    )

    @Test func statusOfAllDevices() throws {
        let expected =
            "14000000" + "1a00" + "0500" + "01000000" + "78563412"  // nlmsghdr: 20 B
            + "05010000"  // genl: NBD_CMD_STATUS, no INDEX: every device
        let (nbd, transport) = Self.session([Self.statusReply, ackFixture(sequence: 1)])
        #expect(
            try nbd.status() == [
                NBDDeviceStatus(index: 0, connected: true), NBDDeviceStatus(index: 1, connected: false),
            ])
        #expect(transport.sent.map(\.hex) == [expected])
    }

    @Test func statusOfOneDevice() throws {
        let expected =
            "1c000000" + "1a00" + "0500" + "01000000" + "78563412"  // nlmsghdr: 28 B
            + "05010000" + "0800" + "0100" + "02000000"  // STATUS, INDEX 2
        let (nbd, transport) = Self.session([ackFixture(sequence: 1)])
        #expect(try nbd.status(index: 2) == [])
        #expect(transport.sent.map(\.hex) == [expected])
    }

    @Test func kernelErrorNamesTheDevice() throws {
        let busy = [UInt8](
            hex:
                "24000000" + "0200" + "0001" + "01000000" + "78563412"  // NLMSG_ERROR, capped, no TLVs
                + "f0ffffff"  // -EBUSY
                + "1c000000" + "1a00" + "0500" + "01000000" + "78563412")
        let (nbd, _) = Self.session([busy])
        let error = #expect(throws: SystemError.self) {
            try nbd.connect(NBDConnectRequest(index: 0, sizeBytes: 4096, sockets: [3]))
        }
        #expect(error?.description == "nbd CONNECT /dev/nbd0: Device or resource busy")
    }

    @Test func permissionErrorSaysWhatIsNeeded() throws {
        let denied = [UInt8](
            hex:
                "24000000" + "0200" + "0001" + "01000000" + "78563412" + "ffffffff"  // -EPERM
                + "1c000000" + "1a00" + "0500" + "01000000" + "78563412")
        let (nbd, _) = Self.session([denied])
        let error = #expect(throws: SystemError.self) { try nbd.disconnect(index: 4) }
        #expect(error?.description == "nbd DISCONNECT /dev/nbd4: needs CAP_SYS_ADMIN: Operation not permitted")
    }

    @Test func invalidConnectRequestsAreRefusedBeforeSending() {
        let cases: [(NBDConnectRequest, String)] = [
            (NBDConnectRequest(sizeBytes: 4096, sockets: []), "at least one socket is needed"),
            (NBDConnectRequest(sizeBytes: 0, sockets: [3]), "the device size must not be 0"),
            (
                NBDConnectRequest(sizeBytes: 4096, blockSizeBytes: 1000, sockets: [3]),
                "block size 1000 is not a power of two from 512 to 65536"
            ),
            (NBDConnectRequest(sizeBytes: 4096, sockets: [3, 4]), "2 sockets need the server flag CAN_MULTI_CONN"),
        ]
        for (request, why) in cases {
            let (nbd, transport) = Self.session([])
            let error = #expect(throws: SystemError.self) { try nbd.connect(request) }
            #expect(error?.detail == why)
            #expect(error?.errno == .invalidArgument)
            #expect(transport.sent.isEmpty)
        }
    }

    @Test func linkDeadNotificationDecodes() throws {
        let notification = [UInt8](
            hex:
                "1c000000" + "1a00" + "0000" + "00000000" + "00000000"  // multicast: seq 0, port 0
                + "04010000"  // genl: NBD_CMD_LINK_DEAD
                + "0800" + "0100" + "05000000")  // INDEX 5
        let messages = try decodeNotifications(notification, family: 0x1a)
        #expect(try messages.map { try NBDNetlinkProtocol.linkDeadIndex($0) } == [5])
        // Another family's message in the same group is not ours.
        #expect(try decodeNotifications(notification, family: 0x1b).isEmpty)
    }

    /// Every one-byte mutation and truncation of a STATUS reply and a CONNECT reply: errors or
    /// values, never a trap.
    @Test func mutatedRepliesNeverTrap() {
        var outcomes = (decoded: 0, rejected: 0)
        for sample in [Self.statusReply, Self.connectReply(index: 3)] {
            let variants = truncationsAndByteMutations(of: sample)
            for variant in variants {
                do {
                    let replies = try NetlinkMessage.decode(datagram: variant).map { message throws(SystemError) in
                        try GenericNetlinkMessage(payload: message.payload)
                    }
                    _ = try NBDNetlinkProtocol.deviceStatuses(from: replies)
                    _ = try? NBDNetlinkProtocol.connectedIndex(from: replies)
                    outcomes.decoded += 1
                } catch {
                    outcomes.rejected += 1
                }
            }
        }
        #expect(outcomes.decoded > 0)
        #expect(outcomes.rejected > 0)
    }
}

#endif
