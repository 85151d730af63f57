import Netlink
import NetlinkTestSupport
import SystemCalls
import Testing
import TestSupport

#if _endian(little)

/// Every decoder fed damaged bytes must throw or return, never trap.
@Suite struct MalformedReplyTests {
    @Test func truncatedAndOverlongAttributesAreErrors() {
        // Header cut short.
        #expect(throws: SystemError.self) { try [NetlinkAttribute].decode([0x08, 0x00, 0x01][...] + [0x00, 0x05]) }
        // Claims 12 bytes, 8 present.
        #expect(throws: SystemError.self) { try [NetlinkAttribute].decode([UInt8](hex: "0c000100" + "01000000")[...]) }
        // Length below the header.
        #expect(throws: SystemError.self) { try [NetlinkAttribute].decode([UInt8](hex: "02000100" + "01000000")[...]) }
        // A message whose length runs past the datagram.
        #expect(throws: SystemError.self) {
            try NetlinkMessage.decode(datagram: [UInt8](hex: "40000000" + "0200" + "0000" + "01000000" + "00000000"))
        }
        // NLMSG_ERROR too short for struct nlmsgerr.
        #expect(throws: SystemError.self) {
            try NetlinkErrorReply(NetlinkMessage(type: 2, flags: [], sequence: 1, payload: [0, 0, 0, 0]))
        }
        // Extended-ack flag with an echoed length past the payload.
        #expect(throws: SystemError.self) {
            try NetlinkErrorReply(
                NetlinkMessage(
                    type: 2, flags: .ackTLVs, sequence: 1,
                    payload: [UInt8](hex: "f0ffffff" + "ff000000" + "1a000500" + "01000000" + "00000000")))
        }
    }

    /// Deterministic mutation: every single-byte change (to 0x00, 0xff, and ±1) and every
    /// truncation of realistic replies goes through the whole decoding path.
    @Test func mutatedRepliesNeverTrap() throws {
        let samples: [[UInt8]] = [
            NetlinkEncodingTests.nbdFamilyReply,
            ackFixture(sequence: 1),
            NetlinkMessage(
                type: 2, flags: .ackTLVs, sequence: 1,
                payload: [UInt8](hex: "eaffffff" + "14000000" + "1a000500" + "01000000" + "78563412")
                    + [NetlinkAttribute.string(1, "why"), .u32(2, 20)].encoded()
            ).encoded(),
        ]
        var decodedCount = 0
        var rejectedCount = 0
        for sample in samples {
            let variants = truncationsAndByteMutations(of: sample)
            for variant in variants {
                if Self.decodeEverything(variant) { decodedCount += 1 } else { rejectedCount += 1 }
            }
        }
        #expect(rejectedCount > 0)
        #expect(decodedCount > 0)
    }

    /// Runs the decoders the client runs; true when all of it decoded.
    static func decodeEverything(_ datagram: [UInt8]) -> Bool {
        do {
            for message in try NetlinkMessage.decode(datagram: datagram) {
                if message.type == NetlinkMessage.ControlType.error {
                    _ = try NetlinkErrorReply(message)
                } else if message.type >= 0x10 {
                    let generic = try GenericNetlinkMessage(payload: message.payload)
                    _ = try GenericNetlinkController.family(from: generic)
                    for attribute in generic.attributes where attribute.rawType & NetlinkAttribute.nestedFlag != 0 {
                        _ = try attribute.nested()
                    }
                }
            }
            return true
        } catch {
            return false
        }
    }
}

#endif
