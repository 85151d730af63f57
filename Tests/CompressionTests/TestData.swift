import TestSupport
enum DataKind: String, CaseIterable, CustomStringConvertible, Sendable {
    case random, zeros, text, mixed, shortPeriods, farMatches
    var description: String { rawValue }
}

enum TestData {
    static let sizes = [0, 1, 4095, 4096, 65536, 1 << 20]

    static func make(_ kind: DataKind, count: Int, seed: UInt64 = 1) -> [UInt8] {
        var rng = SplitMix64(seed: seed &+ UInt64(count))
        switch kind {
        case .random:
            return randomBytes(count, using: &rng)
        case .zeros:
            return [UInt8](repeating: 0, count: count)
        case .text:
            return text(count: count, using: &rng)
        case .mixed:
            // Alternating runs of text, random bytes, repeats, and short-period patterns.
            var out: [UInt8] = []
            out.reserveCapacity(count)
            while out.count < count {
                let run = Int.random(in: 1...3000, using: &rng)
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: out += text(count: run, using: &rng)
                case 1: out += randomBytes(run, using: &rng)
                case 2:
                    if out.count > 16 {
                        let start = Int.random(in: 0..<(out.count - 8), using: &rng)
                        out += out[start..<min(out.count, start + run)]
                    }
                default:
                    let pattern = randomBytes(Int.random(in: 1...20, using: &rng), using: &rng)
                    out += (0..<run).map { pattern[$0 % pattern.count] }
                }
            }
            return Array(out.prefix(count))
        case .shortPeriods:
            // Every offset from 1 to 24 as an overlapping match, with random breaks between.
            var out: [UInt8] = []
            var period = 1
            while out.count < count {
                let pattern = randomBytes(period, using: &rng)
                out += (0..<Int.random(in: 20...700, using: &rng)).map { pattern[$0 % period] }
                out += randomBytes(Int.random(in: 1...9, using: &rng), using: &rng)
                period = period % 24 + 1
            }
            return Array(out.prefix(count))
        case .farMatches:
            // Random blocks whose bytes repeat at distances just below the 64 KiB window.
            var out: [UInt8] = []
            while out.count < count {
                out += randomBytes(65500, using: &rng)
                let back = Int.random(in: 65400...min(65535, out.count), using: &rng)
                for _ in 0..<Int.random(in: 4...400, using: &rng) {
                    out.append(out[out.count - back])
                }
            }
            return Array(out.prefix(count))
        }
    }

    static func randomBytes<G: RandomNumberGenerator>(_ count: Int, using rng: inout G) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    }

    private static let words = [
        "erofs", "superblock", "inode", "the", "of", "compressed", "cluster", "mount", "kernel",
        "block", "device", "a", "read", "only", "filesystem", "and", "with", "lz4", "image", "data",
    ]

    static func text<G: RandomNumberGenerator>(count: Int, using rng: inout G) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count + 16)
        while out.count < count {
            out += Array(words[Int.random(in: 0..<words.count, using: &rng)].utf8)
            out.append(Int.random(in: 0..<12, using: &rng) == 0 ? 10 : 32)
        }
        return Array(out.prefix(count))
    }
}
