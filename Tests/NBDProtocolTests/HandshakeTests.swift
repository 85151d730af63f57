import NBDProtocol
import Testing

/// Option replies split back out of the bytes a negotiator produced.
func decodeOptionReplies(_ bytes: [UInt8]) throws -> [OptionReply] {
    var replies: [OptionReply] = []
    var position = 0
    while position < bytes.count {
        let header = try OptionReply.decodeHeader(bytes[position...])
        let start = position + OptionReply.headerSize
        let end = start + Int(header.length)
        guard end <= bytes.count else {
            throw NBDProtocolError.truncated("option reply", needed: end - start, available: bytes.count - start)
        }
        replies.append(OptionReply(option: header.option, type: header.type, data: Array(bytes[start..<end])))
        position = end
    }
    return replies
}

@Suite struct HandshakeTests {
    let export = ExportDescription(name: "disk", description: "an image", size: 1 << 30)

    @Test func greetingIsFixedNewstyleWithNoZeroes() {
        let greeting = HandshakeNegotiator(export: export).greeting
        #expect(greeting == Array("NBDMAGICIHAVEOPT".utf8) + [0, 3])
    }

    @Test func unknownClientFlagsAreRefused() {
        var negotiator = HandshakeNegotiator(export: export)
        #expect(throws: HandshakeError.unknownClientFlags(4)) { try negotiator.receiveClientFlags(4) }
        #expect(throws: Never.self) { try negotiator.receiveClientFlags(3) }
    }

    @Test func goAnswersExportInfoRequestedInfoThenAckAndTransmits() throws {
        var negotiator = HandshakeNegotiator(export: export)
        let step = negotiator.handle(
            option: .go, data: InfoRequest(exportName: "disk", requested: [.blockSize, .name, .description]).encoded())
        #expect(step.outcome == .transmit)
        let replies = try decodeOptionReplies(step.reply)
        #expect(replies.map(\.type) == [.info, .info, .info, .info, .ack])
        #expect(replies[0].data == [0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0x01, 0x07])
        #expect(replies[1].data == [0, 1] + Array("disk".utf8))
        #expect(replies[2].data == [0, 2] + Array("an image".utf8))
        #expect(replies[3].data == [0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0])
    }

    @Test func emptyNameReachesTheExportAndUnknownNamesDoNot() throws {
        var negotiator = HandshakeNegotiator(export: export)
        let info = negotiator.handle(option: .info, data: InfoRequest(exportName: "").encoded())
        #expect(info.outcome == .awaitOption)
        #expect(try decodeOptionReplies(info.reply).last?.type == .ack)
        let unknown = negotiator.handle(option: .go, data: InfoRequest(exportName: "other").encoded())
        #expect(unknown.outcome == .awaitOption)
        #expect(try decodeOptionReplies(unknown.reply).map(\.type) == [.errorUnknown])
        let refused = negotiator.handle(option: .exportName, data: Array("other".utf8))
        #expect(refused.reply.isEmpty && refused.outcome == .close)
    }

    @Test func exportNameRepliesWithSizeFlagsAndZeroPaddingUnlessNoZeroes() throws {
        var plain = HandshakeNegotiator(export: export)
        try plain.receiveClientFlags(ClientFlags.fixedNewstyle.rawValue)
        #expect(plain.handle(option: .exportName, data: Array("disk".utf8)).reply.count == 8 + 2 + 124)
        var terse = HandshakeNegotiator(export: export)
        try terse.receiveClientFlags(3)
        let step = terse.handle(option: .exportName, data: [])
        #expect(step.outcome == .transmit)
        #expect(step.reply == [0, 0, 0, 0, 0x40, 0, 0, 0, 1, 7])
    }

    @Test func listNamesTheExportAndAbortAcksThenCloses() throws {
        var negotiator = HandshakeNegotiator(export: export)
        let list = try decodeOptionReplies(negotiator.handle(option: .list, data: []).reply)
        #expect(list.map(\.type) == [.server, .ack])
        #expect(list[0].data == [0, 0, 0, 4] + Array("disk".utf8) + Array("an image".utf8))
        #expect(
            try decodeOptionReplies(negotiator.handle(option: .list, data: [1]).reply).map(\.type) == [.errorInvalid])
        let abort = negotiator.handle(option: .abort, data: [])
        #expect(abort.outcome == .close)
        #expect(try decodeOptionReplies(abort.reply).map(\.type) == [.ack])
    }

    @Test func structuredRepliesNegotiateOnce() throws {
        var negotiator = HandshakeNegotiator(export: export)
        #expect(
            try decodeOptionReplies(negotiator.handle(option: .structuredReply, data: []).reply).map(\.type) == [.ack])
        #expect(negotiator.structuredReplies)
        #expect(
            try decodeOptionReplies(negotiator.handle(option: .structuredReply, data: []).reply).map(\.type) == [
                .errorInvalid
            ])
    }

    @Test(arguments: [
        OptionCode.startTLS, .peekExport, .listMetaContext, .setMetaContext, .extendedHeaders,
        OptionCode(rawValue: 0xDEAD),
    ])
    func everythingElseIsUnsupported(option: OptionCode) throws {
        var negotiator = HandshakeNegotiator(export: export)
        let step = negotiator.handle(option: option, data: [1, 2, 3])
        #expect(step.outcome == .awaitOption)
        let replies = try decodeOptionReplies(step.reply)
        #expect(replies.map(\.type) == [.errorUnsupported])
        #expect(replies[0].option == option)
    }

    /// With TLS required, every option but STARTTLS and ABORT is refused with TLS_REQD (and
    /// EXPORT_NAME, which has no error reply, closes) until TLS is up; then they work, and what
    /// was negotiated in plain text is forgotten.
    @Test func requiredTLSRefusesOptionsUntilStartTLS() throws {
        var negotiator = HandshakeNegotiator(export: export, tls: .require)
        for option in [OptionCode.list, .info, .go, .structuredReply, .listMetaContext, OptionCode(rawValue: 0xDEAD)] {
            let data = option == .info || option == .go ? InfoRequest(exportName: "disk").encoded() : []
            let step = negotiator.handle(option: option, data: data)
            #expect(step.outcome == .awaitOption)
            #expect(try decodeOptionReplies(step.reply).map(\.type) == [.errorTLSRequired], "\(option)")
        }
        #expect(!negotiator.structuredReplies)
        let exportName = negotiator.handle(option: .exportName, data: Array("disk".utf8))
        #expect(exportName.reply.isEmpty && exportName.outcome == .close)
        #expect(
            try decodeOptionReplies(negotiator.handle(option: .startTLS, data: [0]).reply).map(\.type) == [
                .errorInvalid
            ])
        let start = negotiator.handle(option: .startTLS, data: [])
        #expect(start.outcome == .startTLS)
        #expect(try decodeOptionReplies(start.reply).map(\.type) == [.ack])
        negotiator.tlsEstablished()
        #expect(
            try decodeOptionReplies(negotiator.handle(option: .startTLS, data: []).reply).map(\.type) == [.errorInvalid]
        )
        let go = negotiator.handle(option: .go, data: InfoRequest(exportName: "disk").encoded())
        #expect(go.outcome == .transmit)
    }

    @Test func abortIsAllowedBeforeRequiredTLS() throws {
        var negotiator = HandshakeNegotiator(export: export, tls: .require)
        let abort = negotiator.handle(option: .abort, data: [])
        #expect(abort.outcome == .close)
        #expect(try decodeOptionReplies(abort.reply).map(\.type) == [.ack])
    }

    /// Structured replies negotiated before STARTTLS do not survive it.
    @Test func optionalTLSServesPlainClientsAndResetsStateOnUpgrade() throws {
        var negotiator = HandshakeNegotiator(export: export, tls: .on)
        _ = negotiator.handle(option: .structuredReply, data: [])
        #expect(negotiator.structuredReplies)
        #expect(negotiator.handle(option: .startTLS, data: []).outcome == .startTLS)
        negotiator.tlsEstablished()
        #expect(!negotiator.structuredReplies && negotiator.tlsActive)
        var plain = HandshakeNegotiator(export: export, tls: .on)
        #expect(plain.handle(option: .go, data: InfoRequest(exportName: "").encoded()).outcome == .transmit)
    }
}
