import FUSEProtocol
import Testing
import TestSupport

/// Deterministic mutation fuzzing of the request decoder: every mutated request either decodes
/// or throws a typed error, never traps, and what decodes is consistent with its bytes.
@Suite struct MutationFuzzTests {
    @Test func mutatedRequestsDecodeOrThrow() {
        var generator = SplitMix64(seed: 0xF05E)
        var decoded = 0
        var refused = 0
        for iteration in 0..<50_000 {
            let input = mutate(validRequests[iteration % validRequests.count], using: &generator)
            do {
                let request = try FUSERequest(decoding: input)
                decoded += 1
                // The header was re-read from the same bytes (all but its 2 padding bytes), and
                // it says their length.
                #expect(request.header.encoded().prefix(38) == input.prefix(38))
                #expect(Int(request.header.length) == input.count)
            } catch {
                refused += 1
                #expect(!error.detail.isEmpty)
            }
        }
        // Most mutations break the length; some must still reach every success path.
        #expect(decoded > 2000)
        #expect(refused > 2000)
    }

    @Test func everyTruncationAndByteChangeOfEachRequestIsHandled() {
        var total = 0
        for valid in validRequests {
            for variant in truncationsAndByteMutations(of: valid) {
                _ = try? FUSERequest(decoding: variant)
                total += 1
            }
        }
        #expect(total > 5000)
    }

    @Test func validSeedsDecode() throws {
        for valid in validRequests { _ = try FUSERequest(decoding: valid) }
    }
}
