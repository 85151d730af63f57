import EROFSReader
import FUSEProtocol
import FUSEServer
import Logging

/// What the FUSE fuzzer does with an input, shared with the tests that replay its findings.
///
/// The input is what read(2) of /dev/fuse could return, request after request: each is cut at
/// the length its header claims (or the bytes left), decoded, and, when an image is given,
/// answered by `FUSEOperations` as a worker would. Decoding must throw or agree with the bytes;
/// every answer must be one the kernel accepts (fuse_dev_do_write): a header whose length is
/// the message's, the request's unique, an errno in 1...511 without payload, and no more bytes
/// than the request asked for where it set a size.
public enum FUSEExercise {
    /// A broken rule: the fuzzer stops on it, the tests fail.
    public struct Violation: Error, CustomStringConvertible, Equatable {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    public struct Counts: Equatable, Sendable {
        public var decoded = 0
        public var refused = 0
        public var answered = 0
        /// FUSE_NOTIFY_STORE messages the reads would have been followed by.
        public var pushed = 0
        public init() {}
    }

    /// A stateless server over `filesystem`, as the daemon builds it (errors go nowhere).
    public static func operations(for filesystem: EROFSFilesystem) -> FUSEOperations {
        var logger = Logger(label: "fuse-fuzz", factory: { _ in SwiftLogNoOpLogHandler() })
        logger.logLevel = .critical
        return FUSEOperations(filesystem: filesystem, logger: logger)
    }

    @discardableResult
    public static func run(_ input: UnsafeRawBufferPointer, operations: FUSEOperations?) throws(Violation) -> Counts {
        var counts = Counts()
        var position = 0
        while position < input.count {
            let rest = input.count - position
            var length = rest
            if rest >= 4 {
                let claimed = Int(input.loadUnaligned(fromByteOffset: position, as: UInt32.self))
                length = claimed > 0 && claimed <= rest ? claimed : rest
            }
            let bytes = UnsafeRawBufferPointer(rebasing: input[position..<(position + length)])
            position += length
            let request: FUSERequest
            do {
                request = try FUSERequest(decoding: bytes)
            } catch {
                counts.refused += 1
                if error.detail.isEmpty { throw Violation("a refusal without a reason") }
                continue
            }
            counts.decoded += 1
            try checkDecoded(request, bytes)
            guard let operations else { continue }
            try checkResponse(operations.respond(to: request), to: request)
            counts.answered += 1
            // What the pushing thread would send after this request (SiblingPrefetch), and the
            // listing it would make next.
            let pastListing = operations.askedPastListing(request).flatMap { operations.claimListingAhead($0) }
            for (place, wholeListing) in [
                (operations.prefetchPlace(for: request), false), (operations.listedToEnd(request), true),
                (pastListing, true),
            ] {
                guard let place else { continue }
                var messages: [FUSEResponse] = []
                operations.prefetchNotifications(from: place, wholeListing: wholeListing) { messages.append($0) }
                for message in messages {
                    try checkNotifyStore(message)
                    counts.pushed += 1
                }
                operations.prepareListing(after: place.directory)
            }
        }
        return counts
    }

    public static func run(_ input: [UInt8], operations: FUSEOperations?) throws(Violation) -> Counts {
        let result = input.withUnsafeBytes { bytes in
            Result { () throws(Violation) -> Counts in try run(bytes, operations: operations) }
        }
        return try result.get()
    }

    static func checkDecoded(_ request: FUSERequest, _ bytes: UnsafeRawBufferPointer) throws(Violation) {
        guard Int(request.header.length) == bytes.count else {
            throw Violation("decoded a request of \(bytes.count) bytes whose header says \(request.header.length)")
        }
        // The header re-encodes to the bytes it came from (all but its 2 padding bytes).
        guard request.header.encoded().prefix(38).elementsEqual(bytes.prefix(38)) else {
            throw Violation("the header of \(request.header.opcode) does not round-trip")
        }
        let body = bytes.count - FUSEWireSize.inHeader - Int(request.header.totalExtensionLength) * 8
        switch request.operation {
        case .lookup(let name), .getxattr(let name, _):
            guard !name.isEmpty, name.count < body, !name.contains(0) else {
                throw Violation("a name of \(name.count) bytes from a body of \(body)")
            }
        default:
            break
        }
    }

    /// A FUSE_NOTIFY_STORE as fuse_notify_store takes it: unique 0, the store code, a length
    /// that is the header's, the store header's and the data's, a valid node id, offset 0.
    static func checkNotifyStore(_ message: FUSEResponse) throws(Violation) {
        guard case .data(let header, let payload) = message,
            header.count == FUSEWireSize.outHeader + FUSEWireSize.notifyStoreOut
        else { throw Violation("a push that is not a store header and its data") }
        func field<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
        }
        guard Int(field(0, UInt32.self)) == header.count + payload.count, field(4, Int32.self) == FUSENotifyCode.store,
            field(8, UInt64.self) == 0, field(16, UInt64.self) >= 1, field(24, UInt64.self) == 0,
            Int(field(32, UInt32.self)) == payload.count, !payload.isEmpty
        else { throw Violation("a malformed FUSE_NOTIFY_STORE header") }
    }

    static func checkResponse(_ response: FUSEResponse, to request: FUSERequest) throws(Violation) {
        let message: [UInt8]
        switch response {
        case .none:
            guard !request.expectsReply else { throw Violation("no answer to \(request.header.opcode)") }
            return
        case .message(let bytes):
            message = bytes
        case .data(let header, let payload):
            guard header.count == FUSEWireSize.outHeader else {
                throw Violation("a data answer with a \(header.count)-byte header")
            }
            message = header + payload
        }
        guard request.expectsReply else { throw Violation("an answer to \(request.header.opcode), which takes none") }
        guard message.count >= FUSEWireSize.outHeader else { throw Violation("an answer of \(message.count) bytes") }
        let length = message.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt32.self) }
        let error = message.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: Int32.self) }
        let unique = message.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) }
        let opcode = request.header.opcode
        guard Int(length) == message.count else {
            throw Violation("\(opcode): the header says \(length) bytes, the answer has \(message.count)")
        }
        guard unique == request.header.unique else { throw Violation("\(opcode): answered with another unique") }
        if error != 0 {
            guard error < 0, error > -512, message.count == FUSEWireSize.outHeader else {
                throw Violation("\(opcode): error \(error) with \(message.count - FUSEWireSize.outHeader) bytes")
            }
            return
        }
        let payload = message.count - FUSEWireSize.outHeader
        let limit: Int? =
            switch request.operation {
            case .read(let read), .readdir(let read), .readdirplus(let read): Int(read.size)
            case .getxattr(_, let size) where size > 0: Int(size)
            case .listxattr(let size) where size > 0: Int(size)
            default: nil
            }
        if let limit, payload > limit {
            throw Violation("\(opcode): \(payload) bytes for a request of \(limit)")
        }
    }
}
