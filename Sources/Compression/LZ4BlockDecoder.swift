/// A decoder for the LZ4 block format (https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md)
/// with the semantics of liblz4's `LZ4_decompress_safe` (full) and `LZ4_decompress_safe_partial`.
///
/// The hot loop works on raw pointers with integer positions that are checked against the buffer
/// ends before every access; wide copies may write up to 16 bytes past the current sequence, but
/// only when those bytes are inside the output (later sequences overwrite them).
enum LZ4BlockDecoder {
    /// The block format's end rules, checked as liblz4 (and the kernel) check them: the last 5
    /// output bytes are literals; the last match starts at least 12 bytes before the output end;
    /// a non-final sequence's literals end at least 8 bytes (2 offset
    /// + 1 token + 5 literals) before the input end; a literal length extension ends at least 15
    /// bytes, a match length extension at least 4 bytes, before the input end.
    static let lastLiterals = 5
    static let minimumSequenceTail = 8
    static let literalExtensionTail = 15
    static let matchExtensionTail = lastLiterals - 1
    static let minimumMatchLength = 4
    /// The last match starts at least 12 bytes before the end of the output.
    static let lastMatchStartLimit = 12

    /// Decodes `input` into `output`; returns how many bytes were produced. In full mode the
    /// block must end where the input ends; in partial mode decoding stops when output is full.
    @inline(never)
    static func decode(
        _ input: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer,
        partial: Bool
    ) throws(DecompressionError) -> Int {
        guard let source = input.baseAddress, !input.isEmpty else { throw failure("empty input") }
        let inputEnd = input.count
        guard let target = output.baseAddress, !output.isEmpty else {
            // Only the empty block (a lone zero token) decodes to nothing.
            if partial || (inputEnd == 1 && source.load(as: UInt8.self) == 0) { return 0 }
            throw failure("block decodes to more than the empty output")
        }
        let outputEnd = output.count
        var ip = 0
        var op = 0

        while true {
            guard ip < inputEnd else { throw failure("truncated input: missing token at \(ip)") }
            let token = Int(source.load(fromByteOffset: ip, as: UInt8.self))
            ip &+= 1

            // Literals.
            var literalLength = token &>> 4
            if literalLength != 15 && ip &+ 16 &+ minimumSequenceTail <= inputEnd && op &+ 32 <= outputEnd {
                // Common case: a short run well inside both buffers; copy 16 bytes blindly.
                copy16(to: target + op, from: source + ip)
                ip &+= literalLength
                op &+= literalLength
            } else {
                if literalLength == 15 {
                    literalLength &+= try readLengthExtension(
                        source, &ip, limit: inputEnd &- literalExtensionTail, what: "literal length")
                }
                // Both positions are at most the buffer sizes and the extension at most 255 times
                // the input size, so these sums cannot overflow.
                let literalEnd = ip &+ literalLength
                if partial {
                    // Like LZ4_decompress_safe_partial, literals cut by the input end decode as
                    // far as they go; the output must still fill up.
                    let count = min(literalLength, outputEnd &- op, inputEnd &- ip)
                    (target + op).copyMemory(from: source + ip, byteCount: count)
                    op &+= count
                    ip = min(literalEnd, inputEnd)
                    // liblz4 also ends the block when no offset and token can follow.
                    if op == outputEnd || ip &+ 2 >= inputEnd { return op }
                } else {
                    guard literalEnd <= inputEnd else {
                        throw failure(
                            "truncated input: \(literalLength) literals at \(ip) run past the input end \(inputEnd)")
                    }
                    guard literalLength <= outputEnd &- op else {
                        throw failure("\(literalLength) literals at output \(op) overflow the output size \(outputEnd)")
                    }
                    copyLiterals(
                        to: target + op, from: source + ip, count: literalLength,
                        wideCopyAllowed: literalEnd &+ 16 <= inputEnd && op &+ literalLength &+ 16 <= outputEnd)
                    op &+= literalLength
                    if literalEnd &+ minimumSequenceTail > inputEnd || op &+ lastMatchStartLimit > outputEnd {
                        // Only the final sequence may end this close to either end.
                        guard literalEnd == inputEnd else {
                            throw failure("sequence at \(ip) ends \(inputEnd &- literalEnd) bytes before the input end")
                        }
                        return op
                    }
                    ip = literalEnd
                }
            }

            // Match.
            guard ip &+ 2 <= inputEnd else { throw failure("truncated input: missing match offset at \(ip)") }
            let offset = Int(UInt16(littleEndian: source.loadUnaligned(fromByteOffset: ip, as: UInt16.self)))
            ip &+= 2
            // One unsigned comparison for both 0 < offset and offset <= op.
            guard UInt(bitPattern: offset &- 1) < UInt(bitPattern: op) else {
                throw failure(
                    offset == 0
                        ? "zero match offset at input \(ip &- 2)"
                        : "match offset \(offset) at output \(op) reaches before the output start")
            }
            var matchLength = token & 15
            if matchLength != 15 && offset >= 8 && op &+ 24 <= outputEnd {
                // Common case: a match of at most 18 bytes that overlaps itself by no less than
                // 8 bytes, far from the output end: copies of 8, 8 and 2 bytes cover it.
                let from = target + (op &- offset)
                let to = target + op
                copy8(to: to, from: from)
                copy8(to: to + 8, from: from + 8)
                (to + 16).storeBytes(of: (from + 16).loadUnaligned(as: UInt16.self), as: UInt16.self)
                op &+= matchLength &+ minimumMatchLength
                continue
            }
            if matchLength == 15 {
                matchLength &+= try readLengthExtension(
                    source, &ip, limit: inputEnd &- matchExtensionTail, what: "match length")
            }
            matchLength &+= minimumMatchLength
            let room = outputEnd &- op
            if partial {
                matchLength = min(matchLength, room)
            } else if matchLength &+ lastLiterals > room {
                throw failure(
                    "match of \(matchLength) bytes at output \(op) leaves fewer than \(lastLiterals) bytes for the final literals"
                )
            }
            copyMatch(target, at: op, offset: offset, count: matchLength, outputEnd: outputEnd)
            op &+= matchLength
            if op == outputEnd {
                // Full mode cannot get here (the final literals are still missing).
                return op
            }
        }
    }

    private static func failure(_ message: String) -> DecompressionError {
        DecompressionError(algorithm: .lz4, message: message)
    }

    /// Reads the 255-continued length bytes that follow a nibble of 15; the position after each
    /// byte may not pass `limit` (at most the input end).
    @inline(__always)
    private static func readLengthExtension(
        _ source: UnsafeRawPointer, _ ip: inout Int, limit: Int, what: String
    ) throws(DecompressionError) -> Int {
        var total = 0
        while true {
            guard ip < limit else {
                throw failure("truncated input: \(what) at \(ip) runs too close to the input end")
            }
            let byte = Int(source.load(fromByteOffset: ip, as: UInt8.self))
            ip &+= 1
            total &+= byte
            if byte != 255 { return total }
        }
    }

    /// Copies a literal run; with room past its end in both buffers, short and medium runs go in
    /// 16-byte steps instead of a memcpy call.
    @inline(__always)
    private static func copyLiterals(
        to destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer, count: Int, wideCopyAllowed: Bool
    ) {
        if wideCopyAllowed && count <= 128 {
            var copied = 0
            repeat {
                copy16(to: destination + copied, from: source + copied)
                copied &+= 16
            } while copied < count
        } else {
            destination.copyMemory(from: source, byteCount: count)
        }
    }

    @inline(__always)
    private static func copy8(to destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer) {
        destination.storeBytes(of: source.loadUnaligned(as: UInt64.self), as: UInt64.self)
    }

    @inline(__always)
    private static func copy16(to destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer) {
        destination.storeBytes(of: source.loadUnaligned(as: SIMD16<UInt8>.self), as: SIMD16<UInt8>.self)
    }

    /// For an overlapping match with offset below 8, the smallest multiple of the offset that is
    /// at least 8: the repeated pattern can then be copied 8 bytes at a time from that distance.
    @inline(__always)
    private static func patternDistance(_ offset: Int) -> Int {
        switch offset {
        case 3: 9
        case 5: 10
        case 6: 12
        case 7: 14
        default: 8  // 1, 2, 4
        }
    }

    /// Copies `count` bytes from `offset` bytes back (possibly overlapping) to `position`.
    /// Requires 0 < offset <= position and position + count <= outputEnd.
    @inline(__always)
    private static func copyMatch(
        _ target: UnsafeMutableRawPointer, at position: Int, offset: Int, count: Int, outputEnd: Int
    ) {
        var destination = position
        let end = position &+ count
        var distance = offset
        if offset < 8 {
            // Lay down the first 8 bytes of the repeating period, then copy 8 bytes at a time from
            // a multiple of the period that is at least 8 back.
            distance = patternDistance(offset)
            if position &+ 8 <= outputEnd {
                // Widen the period's bytes into one 8-byte word (bytes past the period are masked
                // off; any bytes written past the match end are rewritten by later sequences).
                let period = UInt64(
                    littleEndian: target.loadUnaligned(fromByteOffset: position &- offset, as: UInt64.self))
                var pattern = period & ((1 &<< UInt64(offset &* 8)) &- 1)
                var filled = offset
                while filled < 8 {
                    pattern |= pattern &<< UInt64(filled &* 8)
                    filled &*= 2
                }
                target.storeBytes(of: pattern.littleEndian, toByteOffset: position, as: UInt64.self)
                destination = position &+ 8
            } else {
                let prefixEnd = min(end, position &+ distance)
                while destination < prefixEnd {
                    target.storeBytes(
                        of: target.load(fromByteOffset: destination &- offset, as: UInt8.self),
                        toByteOffset: destination, as: UInt8.self)
                    destination &+= 1
                }
            }
        }
        if offset < 16 && count >= 32 {
            // A long run of a short period: once the first 16 bytes are right, store them as one
            // pattern at every multiple of the period (the first 24 bytes are inside the match).
            while destination < position &+ 16 {
                copy8(to: target + destination, from: target + (destination &- distance))
                destination &+= 8
            }
            let pattern = (target + position).loadUnaligned(as: SIMD16<UInt8>.self)
            distance = 16 &- 16 % offset  // a multiple of the period, at least 8
            destination = position &+ distance
            while destination < end && destination &+ 16 <= outputEnd {
                (target + destination).storeBytes(of: pattern, as: SIMD16<UInt8>.self)
                destination &+= distance
            }
            // The tail near the output end continues below, from the same period multiple.
        }
        if distance >= 16 {
            while destination < end && destination &+ 16 <= outputEnd {
                copy16(to: target + destination, from: target + (destination &- distance))
                destination &+= 16
            }
        }
        while destination < end && destination &+ 8 <= outputEnd {
            copy8(to: target + destination, from: target + (destination &- distance))
            destination &+= 8
        }
        while destination < end {
            target.storeBytes(
                of: target.load(fromByteOffset: destination &- distance, as: UInt8.self),
                toByteOffset: destination, as: UInt8.self)
            destination &+= 1
        }
    }
}
