/// SplitMix64: a small seeded generator, so every run of a mutation test tests the same bytes
/// and a failure reproduces.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Every truncation of `sample`, and every byte of it replaced by 0, 0xff, itself + 1 and - 1:
/// the systematic damage a parser of untrusted bytes must survive.
public func truncationsAndByteMutations(of sample: [UInt8]) -> [[UInt8]] {
    var variants: [[UInt8]] = (0..<sample.count).map { Array(sample[..<$0]) }
    for index in sample.indices {
        for replacement in [UInt8(0), 0xff, sample[index] &+ 1, sample[index] &- 1] {
            var mutated = sample
            mutated[index] = replacement
            variants.append(mutated)
        }
    }
    return variants
}

/// One to four random changes to `seed` (bit flips, interesting bytes, truncation, random
/// tail, an extreme 32-bit length): the input of the protocol decoders' mutation tests.
public func mutate(_ seed: [UInt8], using generator: inout SplitMix64) -> [UInt8] {
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
            bytes += (0..<Int.random(in: 1...16, using: &generator)).map { _ in
                UInt8.random(in: 0...255, using: &generator)
            }
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
