import Netlink
import NetlinkTestSupport
import SystemCalls
import Testing

// Fixtures are little-endian: these tests pin the wire form on x86_64 and arm64 hosts.
#if _endian(little)

@Suite struct NetlinkEncodingTests {
    @Test func getFamilyRequestMatchesTheWireForm() throws {
        let expected =
            // nlmsghdr: 28 B, GENL_ID_CTRL, REQUEST|ACK, seq 1, port
            "1c000000" + "1000" + "0500" + "01000000" + "78563412"
            + "03020000"  // genlmsghdr: CTRL_CMD_GETFAMILY, version 2
            + "08000200" + "6e626400"  // CTRL_ATTR_FAMILY_NAME "nbd\0" (8 B, no padding needed)
        let transport = RecordingTransport(replies: [Self.nbdFamilyReply, ackFixture(sequence: 1)])
        let family = try GenericNetlinkClient(transport: transport).resolveFamily("nbd")
        #expect(transport.sent.map(\.hex) == [expected])
        #expect(family == GenericNetlinkFamily(name: "nbd", id: 0x1a, version: 1, multicastGroups: ["nbd_mc_group": 5]))
    }

    /// CTRL_CMD_NEWFAMILY for nbd, as the kernel sends it (trimmed to the attributes we read,
    /// plus one we do not, CTRL_ATTR_HDRSIZE, which must be skipped).
    static let nbdFamilyReply = [UInt8](
        hex:
            "58000000" + "1000" + "0000" + "01000000" + "78563412"  // nlmsghdr: 88 B, seq 1
            + "01020000"  // genlmsghdr: CTRL_CMD_NEWFAMILY
            + "0600" + "0100" + "1a00" + "0000"  // CTRL_ATTR_FAMILY_ID u16 0x1a, 2 B padding
            + "0800" + "0200" + "6e626400"  // CTRL_ATTR_FAMILY_NAME "nbd"
            + "0800" + "0300" + "01000000"  // CTRL_ATTR_VERSION 1
            + "0800" + "0400" + "00000000"  // CTRL_ATTR_HDRSIZE 0 (ignored)
            + "2400" + "0780"  // CTRL_ATTR_MCAST_GROUPS, nested, 36 B
            + "2000" + "0180"  //   group #1, nested, 32 B
            + "1100" + "0100" + "6e62645f6d635f67726f757000" + "000000"  //     NAME "nbd_mc_group\0" + 3 B pad
            + "0800" + "0200" + "05000000"  //     ID 5
    )

    @Test func nestedAttributesArePaddedAndFlagged() {
        let attribute = NetlinkAttribute.nested(7, [.nested(1, [.u32(1, 9)]), .u8(2, 0xab)])
        var bytes: [UInt8] = []
        attribute.encode(into: &bytes)
        #expect(
            bytes.hex == "1800" + "0780"  // type 7 | NLA_F_NESTED, 24 B
                + "0c00" + "0180"  //   type 1 | NLA_F_NESTED, 12 B
                + "0800" + "0100" + "09000000"  //     u32 9
                + "0500" + "0200" + "ab" + "000000")  //   u8 0xab, length 5, padded to 8
    }

    @Test func attributesRoundTrip() throws {
        let attributes: [NetlinkAttribute] = [
            .u8(1, 7), .u16(2, 0xbeef), .u32(3, 0xdead_beef), .u64(4, 0x0123_4567_89ab_cdef), .string(5, "hello"),
            .nested(6, [.u32(1, 42)]),
        ]
        let decoded = try [NetlinkAttribute].decode(attributes.encoded()[...])
        #expect(decoded == attributes)
        #expect(try decoded[0].u8() == 7)
        #expect(try decoded[1].u16() == 0xbeef)
        #expect(try decoded[2].u32() == 0xdead_beef)
        #expect(try decoded[3].u64() == 0x0123_4567_89ab_cdef)
        #expect(decoded[4].string() == "hello")
        #expect(decoded[5].type == 6)
        #expect(try decoded[5].nested() == [.u32(1, 42)])
        #expect(throws: SystemError.self) { try decoded[2].u64() }  // wrong width is an error
    }
}

#endif
