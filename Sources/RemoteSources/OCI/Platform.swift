#if canImport(Glibc)
import Glibc
#endif

/// An image platform, `OS/ARCH[/VARIANT]`, matched the way containerd does: both sides are
/// normalized (`aarch64` is `arm64`, arm64's `v8` is no variant, arm's missing variant is `v7`,
/// amd64's `v1` is none), and a host accepts, best first, its own platform, the lower variants of
/// its architecture, and the 32-bit architecture it runs (containerd's `platforms.Only`).
public struct Platform: Sendable, Codable, Equatable, CustomStringConvertible {
    public var os: String
    public var architecture: String
    public var variant: String?

    public var description: String {
        [os, architecture, variant].compactMap { $0 }.joined(separator: "/")
    }

    public init(os: String, architecture: String, variant: String? = nil) {
        self.os = os
        self.architecture = architecture
        self.variant = variant?.isEmpty == true ? nil : variant
    }

    /// `OS/ARCH[/VARIANT]` (`oci.platform=`); an error names what is wrong.
    public init(parsing text: String) throws(RemoteError) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard (2...3).contains(parts.count),
            parts.allSatisfy({ part in
                !part.isEmpty && part.utf8.count <= 64 && part.utf8.allSatisfy { Self.isNameByte($0) }
            })
        else {
            throw RemoteError(.configuration, "-o", "oci.platform=\(text): OS/ARCH[/VARIANT], e.g. linux/arm64/v8")
        }
        self.init(
            os: parts[0].lowercased(), architecture: parts[1].lowercased(),
            variant: parts.count == 3 ? parts[2].lowercased() : nil)
    }

    private static func isNameByte(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
            || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".")
    }

    /// The platform this process runs on (uname's machine, in Go's architecture names).
    public static var host: Platform {
        var name = utsname()
        uname(&name)
        let machine = withUnsafeBytes(of: &name.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return Platform(os: "linux", architecture: machine).normalized
    }

    /// containerd's `platforms.Normalize`.
    public var normalized: Platform {
        var architecture = self.architecture.lowercased()
        var variant = self.variant?.lowercased()
        switch architecture {
        case "i386", "i486", "i586", "i686":
            architecture = "386"
            variant = nil
        case "x86_64", "x86-64", "amd64":
            architecture = "amd64"
            if variant == "v1" { variant = nil }
        case "aarch64", "arm64":
            architecture = "arm64"
            if variant == "8" || variant == "v8" || variant == "v8.0" { variant = nil }
        case "armhf":
            architecture = "arm"
            variant = "v7"
        case "armel":
            architecture = "arm"
            variant = "v6"
        case "arm", "armv7l", "armv7":
            if architecture != "arm" { variant = "v7" }
            architecture = "arm"
            switch variant {
            case nil, "7": variant = "v7"
            case "5", "6", "8": variant = "v" + variant!
            default: break
            }
        case "armv6l":
            architecture = "arm"
            variant = "v6"
        default: break
        }
        return Platform(
            os: os.lowercased() == "macos" ? "darwin" : os.lowercased(), architecture: architecture, variant: variant)
    }

    /// The platforms this one runs, best first (containerd's `platformVector`).
    public var compatible: [Platform] {
        let own = normalized
        var result = [own]
        func number(_ variant: String?) -> Int? { variant.flatMap { $0.hasPrefix("v") ? Int($0.dropFirst()) : nil } }
        switch own.architecture {
        case "amd64":
            if let level = number(own.variant), level > 1 {
                for lower in stride(from: level - 1, through: 2, by: -1) {
                    result.append(Platform(os: own.os, architecture: "amd64", variant: "v\(lower)"))
                }
                result.append(Platform(os: own.os, architecture: "amd64"))
            }
            result.append(Platform(os: own.os, architecture: "386"))
        case "arm64":
            result += Platform(os: own.os, architecture: "arm", variant: "v8").compatible
        case "arm":
            if let level = number(own.variant), level > 5 {
                for lower in stride(from: level - 1, through: 5, by: -1) {
                    result.append(Platform(os: own.os, architecture: "arm", variant: "v\(lower)"))
                }
            }
        default: break
        }
        return result
    }

    /// The rank of `candidate` among what this platform runs (0 = itself), nil when it does not
    /// run it.
    public func rank(of candidate: Platform) -> Int? {
        compatible.firstIndex(of: candidate.normalized)
    }
}
