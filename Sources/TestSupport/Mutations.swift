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
