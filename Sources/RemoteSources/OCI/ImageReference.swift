/// An image reference as docker and skopeo read one (distribution/reference's normalized
/// names): `[REGISTRY[:PORT]/]REPO[:TAG][@ALGORITHM:HEX]`.
///
/// - The first path component is a registry when it holds a `.` or a `:`, is `localhost`, or has
///   an upper-case letter; otherwise the registry is Docker Hub (`docker.io`), and a one-component
///   Docker Hub name gets `library/`.
/// - Neither tag nor digest: tag `latest`. Both: the digest is what is fetched.
public struct ImageReference: Sendable, Codable, Equatable, CustomStringConvertible {
    /// `docker.io`, `localhost:5000`, `[::1]:5000`, ...
    public var domain: String
    /// The repository path inside the registry (`library/debian`).
    public var repository: String
    public var tag: String?
    /// `sha256:` and 64 lower-case hex digits (or another algorithm's `ALGO:HEX`).
    public var digest: String?

    /// The host the requests go to (Docker Hub's API lives on `registry-1.docker.io`).
    public var registryHost: String { domain == "docker.io" ? "registry-1.docker.io" : domain }

    /// What the manifest request names: the digest when pinned, else the tag.
    public var manifestReference: String { digest ?? tag ?? "latest" }

    /// The fully qualified form, as `docker pull` prints it.
    public var description: String {
        var text = "\(domain)/\(repository)"
        if let tag { text += ":\(tag)" }
        if let digest { text += "@\(digest)" }
        return text
    }

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public var reference: String
        public var reason: String
        public var description: String { "\(reference): invalid image reference: \(reason)" }
    }

    public init(parsing text: String) throws(ParseError) {
        func fail(_ reason: String) -> ParseError { ParseError(reference: text, reason: reason) }
        guard !text.isEmpty else { throw fail("empty") }
        // docker refuses a bare image ID where a name is expected.
        if text.utf8.count == 64 && text.utf8.allSatisfy({ Self.isLowerAlphanumeric($0) && ($0 <= 0x39 || $0 <= 0x66) })
        {
            throw fail("a 64-digit hexadecimal string is an image ID, not a repository name")
        }
        guard text.utf8.count <= 4096, text.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 }) else {
            throw fail("only printable ASCII without spaces")
        }
        var rest = Substring(text)
        var digest: String?
        if let at = rest.firstIndex(of: "@") {
            digest = String(rest[rest.index(after: at)...])
            rest = rest[..<at]
            guard Self.isValidDigest(digest!) else {
                throw fail("the digest must be ALGORITHM:HEX (sha256: and 64 lower-case hex digits)")
            }
        }
        var tag: String?
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        if let colon = rest.lastIndex(of: ":"), !rest[colon...].contains("/") {
            tag = String(rest[rest.index(after: colon)...])
            rest = rest[..<colon]
            guard Self.isValidTag(tag!) else {
                throw fail("the tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
            }
        }
        var domain = "docker.io"
        var path = rest
        if let slash = rest.firstIndex(of: "/") {
            let first = rest[..<slash]
            if first.contains(".") || first.contains(":") || first == "localhost" || first.lowercased() != first {
                domain = String(first)
                path = rest[rest.index(after: slash)...]
                guard Self.isValidDomain(domain) else { throw fail("invalid registry \(domain)") }
            }
        }
        if domain == "index.docker.io" { domain = "docker.io" }
        guard !path.isEmpty else { throw fail("no repository") }
        if path.contains(where: { $0.isUppercase }) { throw fail("repository name must be lowercase") }
        let components = path.split(separator: "/", omittingEmptySubsequences: false)
        guard components.allSatisfy(Self.isValidPathComponent) else {
            throw fail(
                "each repository component is lower-case letters and digits, separated by '.', '_', '__' or dashes")
        }
        var repository = String(path)
        if domain == "docker.io" && components.count == 1 { repository = "library/" + repository }
        guard domain.utf8.count + 1 + repository.utf8.count <= 255 else {
            throw fail("repository name must not be more than 255 characters")
        }
        if tag == nil && digest == nil { tag = "latest" }
        self.domain = domain
        self.repository = repository
        self.tag = tag
        self.digest = digest
    }

    /// `sha256:` + 64 lower-case hex (the only algorithm registries serve in practice; others
    /// are refused rather than left unverified), as distribution's digest grammar for sha256.
    package static func isValidDigest(_ text: String) -> Bool {
        guard text.hasPrefix("sha256:") else { return false }
        let hex = text.utf8.dropFirst(7)
        return hex.count == 64 && hex.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    static func isValidTag(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard (1...128).contains(bytes.count), bytes[0] != UInt8(ascii: "."), bytes[0] != UInt8(ascii: "-") else {
            return false
        }
        return bytes.allSatisfy {
            isAlphanumeric($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-")
        }
    }

    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
    static func isValidPathComponent(_ component: Substring) -> Bool {
        let bytes = Array(component.utf8)
        guard let first = bytes.first, let last = bytes.last, isLowerAlphanumeric(first), isLowerAlphanumeric(last)
        else { return false }
        var index = 0
        while index < bytes.count {
            if isLowerAlphanumeric(bytes[index]) {
                index += 1
                continue
            }
            var separatorEnd = index
            while separatorEnd < bytes.count && !isLowerAlphanumeric(bytes[separatorEnd]) { separatorEnd += 1 }
            let separator = bytes[index..<separatorEnd]
            let valid =
                separator.elementsEqual([UInt8(ascii: ".")]) || separator.elementsEqual([UInt8(ascii: "_")])
                || separator.elementsEqual([UInt8(ascii: "_"), UInt8(ascii: "_")])
                || separator.allSatisfy { $0 == UInt8(ascii: "-") }
            guard valid else { return false }
            index = separatorEnd
        }
        return true
    }

    /// A host name (labels of letters, digits and inner dashes), an IPv4 address, or a
    /// bracketed IPv6 address, with an optional port.
    static func isValidDomain(_ domain: String) -> Bool {
        var host = Substring(domain)
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return false }
            let inner = host[host.index(after: host.startIndex)..<close]
            guard !inner.isEmpty, inner.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else { return false }
            host = host[host.index(after: close)...]
            if host.isEmpty { return true }
            guard host.hasPrefix(":") else { return false }
            return isValidPort(host.dropFirst())
        }
        if let colon = host.firstIndex(of: ":") {
            guard isValidPort(host[host.index(after: colon)...]) else { return false }
            host = host[..<colon]
        }
        let labels = host.split(separator: ".", omittingEmptySubsequences: false)
        return labels.allSatisfy { label in
            let bytes = Array(label.utf8)
            guard let first = bytes.first, let last = bytes.last, isAlphanumeric(first), isAlphanumeric(last) else {
                return false
            }
            return bytes.allSatisfy { isAlphanumeric($0) || $0 == UInt8(ascii: "-") }
        }
    }

    private static func isValidPort(_ text: Substring) -> Bool {
        guard !text.isEmpty, text.count <= 5, text.allSatisfy({ $0.isASCII && $0.isNumber }), let port = Int(text)
        else { return false }
        return port <= 65535
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        isLowerAlphanumeric(byte) || (byte >= 0x41 && byte <= 0x5a)
    }

    private static func isLowerAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x7a)
    }
}
