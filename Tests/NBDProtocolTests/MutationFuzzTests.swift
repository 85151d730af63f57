import NBDProtocol
import Testing
import TestSupport

func mutate(_ seed: [UInt8], using generator: inout SplitMix64) -> [UInt8] {
    var bytes = seed
    for _ in 0..<Int.random(in: 1...4, using: &generator) {
        switch Int.random(in: 0..<5, using: &generator) {
        case 0 where !bytes.isEmpty:  // flip a bit
            let index = Int.random(in: 0..<bytes.count, using: &generator)
            bytes[index] ^= 1 << UInt8.random(in: 0..<8, using: &generator)
        case 1 where !bytes.isEmpty:  // an interesting value
            let index = Int.random(in: 0..<bytes.count, using: &generator)
            bytes[index] = [0x00, 0xFF, 0x7F, 0x80, 0x01].randomElement(using: &generator)!
        case 2:  // truncate
            bytes.removeLast(Int.random(in: 0...bytes.count, using: &generator))
        case 3:  // extend with random bytes
            bytes += (0..<Int.random(in: 1...16, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        default:  // overwrite a 32-bit field with an extreme length
            if bytes.count >= 4 {
                let index = Int.random(in: 0...(bytes.count - 4), using: &generator)
                let value = [UInt32.max, 0x8000_0000, 0x0200_0001].randomElement(using: &generator)!
                for k in 0..<4 { bytes[index + k] = UInt8(truncatingIfNeeded: value >> UInt32(24 - 8 * k)) }
            }
        }
    }
    return bytes
}

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
            let option = Int.random(in: 0..<8, using: &generator) == 0
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
