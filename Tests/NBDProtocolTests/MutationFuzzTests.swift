import NBDProtocol
import Testing
import TestSupport

/// Deterministic mutation fuzzing of the parsers that take untrusted bytes: each input either
/// decodes or throws a typed error, never traps; every negotiator reply stays well-formed.
@Suite struct MutationFuzzTests {
    @Test func requestAndReplyDecodersNeverTrap() {
        var generator = SplitMix64(seed: 0x5EED)
        let seeds = [
            Request(type: .read, cookie: 1, offset: 4096, length: 4096).encoded(),
            Request(type: .write, flags: .fua, cookie: .max, offset: .max, length: .max).encoded(),
            SimpleReply(cookie: 5, error: .invalid).encoded(),
            StructuredReplyChunkHeader.offsetData(cookie: 2, offset: 0, dataLength: 8),
        ]
        var decoded = 0
        for iteration in 0..<20_000 {
            let input = mutate(seeds[iteration % seeds.count], using: &generator)
            if let request = try? Request(decoding: input) {
                decoded += 1
                #expect(request.encoded() == Array(input.prefix(Request.size)))
            }
            _ = try? SimpleReply(decoding: input)
            _ = try? StructuredReplyChunkHeader(decoding: input)
            _ = try? OptionRequestHeader(decoding: input)
        }
        #expect(decoded > 1000)  // the fuzzer reaches the success path too, not only errors
    }

    @Test func negotiatorAnswersMutatedOptionsWithWellFormedReplies() throws {
        var generator = SplitMix64(seed: 0xF00D)
        let export = ExportDescription(name: "e", size: 1 << 20)
        let seeds: [(OptionCode, [UInt8])] = [
            (.go, InfoRequest(exportName: "e", requested: [.blockSize, .name]).encoded()),
            (.info, InfoRequest(exportName: "", requested: [.description]).encoded()),
            (.list, []), (.structuredReply, []), (.exportName, Array("e".utf8)),
        ]
        for iteration in 0..<20_000 {
            var negotiator = HandshakeNegotiator(export: export)
            let (seedOption, seedData) = seeds[iteration % seeds.count]
            let option =
                Int.random(in: 0..<8, using: &generator) == 0
                ? OptionCode(rawValue: UInt32.random(in: 0...12, using: &generator)) : seedOption
            let step = negotiator.handle(option: option, data: mutate(seedData, using: &generator))
            if option == .exportName {
                #expect(step.outcome != .awaitOption)
                continue
            }
            let replies = try decodeOptionReplies(step.reply)
            #expect(!replies.isEmpty)
            #expect(replies.allSatisfy { $0.option == option })
            // Exactly one final reply (ACK or an error), and it comes last.
            let finals = replies.filter { $0.type == .ack || $0.type.isError }
            #expect(finals.count == 1 && (replies.last.map { $0.type == .ack || $0.type.isError } ?? false))
        }
    }
}
