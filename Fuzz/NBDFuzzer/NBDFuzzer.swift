// libFuzzer entry point over the NBD wire protocol; see Fuzz/README.md and scripts/fuzz.sh.
//
// The input is everything a network client sends to `erofs serve`: its 4-byte flags, then
// option requests (header and data) driving the handshake state machine, then transmission
// requests (with WRITE payloads), read the way NetworkServer and TransmissionLoop read them.
// Every reply the server would send is decoded again as a client would and checked: a reply
// that does not parse, or that breaks the protocol's rules, stops the fuzzer like a crash.
// The same bytes are also fed to the client-side reply decoders.
import FuzzDriver
import NBDProtocol

let export = ExportDescription(name: "fuzz", description: "fuzzing export", size: 1 << 30)

/// Stops the fuzzer: the server would send something a correct client cannot accept.
func violation(_ message: String) -> Never {
    fatalError("NBD protocol violation: \(message)")
}

/// Reads the input as the server reads its socket; nil at the end of the bytes.
struct ClientBytes {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0

    mutating func take(_ count: Int) -> ArraySlice<UInt8>? {
        guard count >= 0, bytes.count - position >= count else { return nil }
        defer { position += count }
        return ArraySlice(bytes[position..<(position + count)])
    }
}

/// The replies of one negotiator step, decoded as a client decodes them.
func decodeOptionReplies(_ bytes: [UInt8]) -> [OptionReply] {
    var replies: [OptionReply] = []
    var position = 0
    while position < bytes.count {
        let header: (option: OptionCode, type: OptionReplyType, length: UInt32)
        do { header = try OptionReply.decodeHeader(bytes[position...]) } catch {
            violation("option reply header does not decode: \(error)")
        }
        let start = position + OptionReply.headerSize
        guard UInt64(header.length) <= UInt64(bytes.count - start) else {
            violation("option reply says \(header.length) bytes of data, \(bytes.count - start) follow")
        }
        let end = start + Int(header.length)
        replies.append(OptionReply(option: header.option, type: header.type, data: Array(bytes[start..<end])))
        position = end
    }
    return replies
}

func checkStep(_ step: HandshakeNegotiator.Step, option: OptionCode, noZeroes: Bool) {
    if option == .exportName {
        switch step.outcome {
        case .close: if !step.reply.isEmpty { violation("EXPORT_NAME refusal with a reply") }
        case .transmit:
            if step.reply.count != (noZeroes ? 10 : 134) { violation("EXPORT_NAME reply of \(step.reply.count) bytes") }
        case .awaitOption, .startTLS: violation("EXPORT_NAME must end the handshake")
        }
        return
    }
    let replies = decodeOptionReplies(step.reply)
    guard let last = replies.last else { violation("\(option) without a reply") }
    for reply in replies where reply.option != option { violation("reply to \(reply.option) for \(option)") }
    let finals = replies.filter { $0.type == .ack || $0.type.isError }
    if finals.count != 1 || !(last.type == .ack || last.type.isError) {
        violation("\(option): \(finals.count) final replies, the last of type \(last.type.rawValue)")
    }
    if step.outcome == .transmit && (option != .go || last.type != .ack) {
        violation("transmission after \(option) answered by \(last.type.rawValue)")
    }
    if option == .go || option == .info, last.type == .ack {
        // NBD_INFO_EXPORT must be among the replies: type u16, size u64, flags u16.
        let exportInfo = replies.first { $0.type == .info && $0.data.count == 12 && $0.data.prefix(2) == [0, 0] }
        if exportInfo == nil { violation("\(option) acknowledged without NBD_INFO_EXPORT") }
    }
}

/// Encodes the replies the server sends to `request` and decodes them again.
func checkReplyCodecs(for request: Request, structured: Bool) {
    if structured {
        let data = StructuredReplyChunkHeader.offsetData(
            cookie: request.cookie, offset: request.offset, dataLength: request.length)
        guard let header = try? StructuredReplyChunkHeader(decoding: data), header.cookie == request.cookie,
            header.type == .offsetData, header.payloadLength == request.length &+ 8,
            data.count == StructuredReplyChunkHeader.size + 8
        else { violation("OFFSET_DATA chunk does not round-trip") }
        let message = String(decoding: request.encoded(), as: UTF8.self)
        let error = StructuredReplyChunkHeader.error(cookie: request.cookie, error: .invalid, message: message)
        guard let errorHeader = try? StructuredReplyChunkHeader(decoding: error),
            Int(errorHeader.payloadLength) == error.count - StructuredReplyChunkHeader.size
        else { violation("ERROR chunk length does not match its payload") }
    } else {
        let reply = SimpleReply(cookie: request.cookie, error: .notPermitted).encoded()
        guard let decoded = try? SimpleReply(decoding: reply), decoded.cookie == request.cookie else {
            violation("simple reply does not round-trip")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func nbdFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    // The client-side decoders over the raw bytes (what a hostile server could send).
    let raw = Array(input)
    _ = try? SimpleReply(decoding: raw)
    _ = try? StructuredReplyChunkHeader(decoding: raw)
    _ = try? OptionReply.decodeHeader(raw)
    _ = try? InfoRequest(decoding: raw)

    var client = ClientBytes(bytes: input)
    var negotiator = HandshakeNegotiator(export: export)
    guard negotiator.greeting.count == 18 else { violation("greeting of \(negotiator.greeting.count) bytes") }
    guard let flagBytes = client.take(4) else { return 0 }
    do {
        try negotiator.receiveClientFlags(flagBytes.reduce(0) { $0 << 8 | UInt32($1) })
    } catch {
        return 0
    }

    // Handshake: options until one ends it, as NetworkServer.negotiate reads them.
    var structured = false
    negotiation: while true {
        guard let headerBytes = client.take(OptionRequestHeader.size) else { return 0 }
        guard let header = try? OptionRequestHeader(decoding: headerBytes) else { return 0 }
        if header.encoded() != Array(headerBytes) { violation("option header does not round-trip") }
        guard header.length <= NBDLimits.maximumOptionLength, let optionData = client.take(Int(header.length)) else {
            return 0
        }
        let step = negotiator.handle(option: header.option, data: Array(optionData))
        checkStep(step, option: header.option, noZeroes: negotiator.clientFlags.contains(.noZeroes))
        switch step.outcome {
        case .awaitOption: continue
        case .close, .startTLS: return 0  // the fuzzer's negotiator has TLS off
        case .transmit:
            structured = negotiator.structuredReplies
            break negotiation
        }
    }

    // Transmission: requests as TransmissionLoop reads them (payloads skipped, DISC ends).
    while let headerBytes = client.take(Request.size) {
        guard let request = try? Request(decoding: headerBytes) else { return 0 }
        if request.encoded() != Array(headerBytes) { violation("request does not round-trip") }
        if request.length > NBDLimits.maximumRequestLength && (request.type == .read || request.type.carriesPayload) {
            return 0
        }
        checkReplyCodecs(for: request, structured: structured)
        if request.type.carriesPayload {
            guard client.take(Int(request.length)) != nil else { return 0 }
        }
        if request.type == .disconnect { return 0 }
    }
    return 0
}

@_cdecl("NBDFuzzer_main")
func nbdFuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, nbdFuzzerTestOneInput)
}
