import Netlink
import NetlinkTestSupport
import SystemCalls
import SystemPackage
import Testing

#if _endian(little)

@Suite struct NetlinkReplyTests {
    let request = GenericNetlinkMessage(command: 5, version: 1, attributes: [.u32(1, 3)])

    @Test func ackEndsARoundTripWithoutReplies() throws {
        let transport = RecordingTransport(replies: [ackFixture(sequence: 1)])
        let replies = try GenericNetlinkClient(transport: transport).request(family: 0x1a, request, operation: "test")
        #expect(replies.isEmpty)
    }

    @Test func errorWithExtendedAckCarriesTheKernelsMessage() throws {
        // Uncapped: the whole 28-byte request is echoed before the extended-ack attributes.
        let reply = [UInt8](
            hex:
                "54000000" + "0200" + "0002" + "01000000" + "78563412"  // NLMSG_ERROR 84 B, NLM_F_ACK_TLVS
                + "f0ffffff"  // error -16 (EBUSY)
                + "1c000000" + "1a00" + "0500" + "01000000" + "78563412"  // echoed header (28 B request)
                + "05010000" + "08000100" + "03000000"  // echoed genl header + INDEX 3
                // MSG "nbd3 is already in use\0", 27 B + 1 pad
                + "1b00" + "0100" + "6e62643320697320616c726561647920696e2075736500" + "00"
                + "0800" + "0200" + "14000000")  // OFFS 20
        let transport = RecordingTransport(replies: [reply])
        let client = GenericNetlinkClient(transport: transport)
        let error = #expect(throws: SystemError.self) {
            try client.request(family: 0x1a, request, operation: "nbd STATUS")
        }
        #expect(error?.errno == .resourceBusy)
        #expect(error?.detail == "kernel: nbd3 is already in use")
        #expect(error?.description == "nbd STATUS: kernel: nbd3 is already in use: Device or resource busy")
    }

    @Test func errorReplyDecodesCappedAndUncappedForms() throws {
        let capped = NetlinkMessage(
            type: 2, flags: [.capped, .ackTLVs], sequence: 9,
            payload: [UInt8](hex: "eaffffff" + "1c000000" + "1a00" + "0500" + "09000000" + "00000000")
                + [NetlinkAttribute.string(1, "bad attr")].encoded())
        let status = try NetlinkErrorReply(capped)
        #expect(status == NetlinkErrorReply(error: -22, requestSequence: 9, message: "bad attr"))
    }

    @Test func multiPartRepliesAreGatheredUntilDone() throws {
        func part(_ value: UInt32) -> [UInt8] {
            NetlinkMessage(
                type: 0x1a, flags: .multi, sequence: 1, portID: 0x1234_5678,
                payload: GenericNetlinkMessage(command: 5, version: 1, attributes: [.u32(1, value)]).encodedPayload()
            ).encoded()
        }
        let done = [UInt8](hex: "14000000" + "0300" + "0200" + "01000000" + "78563412" + "00000000")
        // Two parts in one datagram, a stale message from another sequence, then DONE alone.
        let stale = NetlinkMessage(type: 0x1a, flags: .multi, sequence: 99, payload: [5, 1, 0, 0]).encoded()
        let transport = RecordingTransport(replies: [part(1) + part(2), stale + part(3), done])
        let replies = try GenericNetlinkClient(transport: transport).request(
            family: 0x1a, request, flags: .dump, operation: "dump")
        #expect(try replies.map { try $0.attributes.first(1)?.u32() } == [1, 2, 3])
        #expect(transport.sent.first.map { Array($0[6..<8]) } == [0x05, 0x03])  // REQUEST|ACK|DUMP
    }

    @Test func sequenceNumbersAdvance() throws {
        let transport = RecordingTransport(replies: [ackFixture(sequence: 7), ackFixture(sequence: 8)])
        let client = GenericNetlinkClient(transport: transport, firstSequence: 7)
        try client.request(family: 0x1a, request, operation: "one")
        try client.request(family: 0x1a, request, operation: "two")
        #expect(transport.sent.map { Array($0[8..<12]) } == [[7, 0, 0, 0], [8, 0, 0, 0]])
    }
}

#endif

#if _endian(little)
extension NetlinkReplyTests {
    @Test func failedOrInterruptedDumpsAreErrors() throws {
        let part = NetlinkMessage(
            type: 0x1a, flags: [.multi, .dumpInterrupted], sequence: 1, portID: 0x1234_5678,
            payload: GenericNetlinkMessage(command: 5, version: 1).encodedPayload()
        ).encoded()
        let done = [UInt8](hex: "14000000" + "0300" + "0200" + "01000000" + "78563412" + "00000000")
        let interrupted = #expect(throws: SystemError.self) {
            try GenericNetlinkClient(transport: RecordingTransport(replies: [part, done]))
                .request(family: 0x1a, request, flags: .dump, operation: "dump")
        }
        #expect(interrupted?.errno == .resourceTemporarilyUnavailable)

        let failedDone = [UInt8](hex: "14000000" + "0300" + "0200" + "01000000" + "78563412" + "f4ffffff")  // -ENOMEM
        let failed = #expect(throws: SystemError.self) {
            try GenericNetlinkClient(transport: RecordingTransport(replies: [failedDone]))
                .request(family: 0x1a, request, flags: .dump, operation: "dump")
        }
        #expect(failed?.errno == .noMemory)
    }
}
#endif
