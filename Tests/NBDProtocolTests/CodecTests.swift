import NBDProtocol
import Testing

@Suite struct CodecTests {
    @Test func requestEncodesBigEndianFieldsInWireOrder() throws {
        let request = Request(
            type: .read, flags: .fua, cookie: 0x0102_0304_0506_0708, offset: 0x1122_3344_5566_7788, length: 0x99AA_BBCC)
        let bytes = request.encoded()
        #expect(
            bytes == [
                0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x00,
                0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
                0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
                0x99, 0xAA, 0xBB, 0xCC,
            ])
        #expect(try Request(decoding: bytes) == request)
    }

    @Test func requestWithBadMagicOrTooFewBytesIsRejected() {
        var bytes = Request(type: .read, cookie: 1, offset: 0, length: 512).encoded()
        #expect(throws: NBDProtocolError.truncated("request length", needed: 4, available: 3)) {
            try Request(decoding: bytes.dropLast())
        }
        bytes[0] = 0x26
        #expect(throws: NBDProtocolError.badMagic("request", expected: 0x2560_9513, found: 0x2660_9513)) {
            try Request(decoding: bytes)
        }
    }

    /// The server's raw-bytes decoder agrees with the generic one on every input: valid
    /// requests of random fields, corrupted magic, short buffers.
    @Test func rawRequestDecoderAgreesWithTheGenericOne() {
        var generator = SystemRandomNumberGenerator()
        for round in 0..<2000 {
            var bytes = Request(
                type: CommandType(rawValue: .random(in: 0...20, using: &generator)),
                flags: CommandFlags(rawValue: .random(in: 0...UInt16.max, using: &generator)),
                cookie: .random(in: 0...UInt64.max, using: &generator),
                offset: .random(in: 0...UInt64.max, using: &generator),
                length: .random(in: 0...UInt32.max, using: &generator)
            ).encoded()
            if round % 4 == 1 {
                bytes[Int.random(in: 0..<4, using: &generator)] ^= UInt8.random(in: 1...255, using: &generator)
            }
            if round % 4 == 2 { bytes.removeLast(Int.random(in: 1...Request.size, using: &generator)) }
            let generic = Swift.Result { () throws(NBDProtocolError) -> Request in try Request(decoding: bytes) }
            let raw = bytes.withUnsafeBytes { raw in
                Swift.Result { () throws(NBDProtocolError) -> Request in try Request(decoding: raw) }
            }
            #expect(raw == generic, "\(bytes)")
        }
    }

    @Test func requestDecodesFromASliceWithNonZeroStartIndex() throws {
        let bytes = [0xFF, 0xFF] + Request(type: .flush, cookie: 7, offset: 0, length: 0).encoded()
        #expect(try Request(decoding: bytes[2...]).type == .flush)
    }

    @Test func simpleReplyRoundTrips() throws {
        let reply = SimpleReply(cookie: 42, error: .notPermitted)
        let bytes = reply.encoded()
        #expect(bytes == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 42])
        #expect(try SimpleReply(decoding: bytes) == reply)
    }

    @Test func structuredOffsetDataCountsTheOffsetInItsLength() throws {
        let bytes = StructuredReplyChunkHeader.offsetData(cookie: 9, offset: 4096, dataLength: 512)
        #expect(bytes.count == StructuredReplyChunkHeader.size + 8)
        let header = try StructuredReplyChunkHeader(decoding: bytes)
        #expect(header == StructuredReplyChunkHeader(flags: .done, type: .offsetData, cookie: 9, payloadLength: 520))
        #expect(Array(bytes[20...]) == [0, 0, 0, 0, 0, 0, 0x10, 0])
    }

    @Test func structuredErrorCarriesCodeAndMessage() throws {
        let bytes = StructuredReplyChunkHeader.error(cookie: 3, error: .invalid, message: "past end")
        let header = try StructuredReplyChunkHeader(decoding: bytes)
        #expect(header.type == .error && header.flags == .done)
        #expect(Int(header.payloadLength) == bytes.count - StructuredReplyChunkHeader.size)
        #expect(Array(bytes[20..<26]) == [0, 0, 0, 22, 0, 8])
        #expect(String(decoding: bytes[26...], as: UTF8.self) == "past end")
    }

    @Test func infoRequestRejectsANameLongerThanTheData() throws {
        var data: [UInt8] = [0, 0, 0x10, 0]  // claims a 4096-byte name
        data += Array("abc".utf8)
        #expect(throws: NBDProtocolError.self) { try InfoRequest(decoding: data) }
        let valid = InfoRequest(exportName: "x", requested: [.blockSize, .name])
        #expect(try InfoRequest(decoding: valid.encoded()) == valid)
        #expect(throws: NBDProtocolError.trailingBytes("information requests", count: 1)) {
            try InfoRequest(decoding: valid.encoded() + [0])
        }
    }
}
