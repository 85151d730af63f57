import SystemCalls

/// One path of a filesystem tree as the corpus manifests describe it
/// (../shared/corpus/README.md): what the kernel shows for it, in a form that can be diffed.
public struct ManifestEntry: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case file, dir, symlink, char, block, fifo, socket
    }

    /// Bytes, as the kernel names it (not necessarily UTF-8).
    public var path: ByteString
    public var kind: Kind
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    public var permissions: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    public var mtimeNanoseconds: Int64
    public var linkCount: UInt64
    /// Major and minor, for character and block devices only.
    public var rdev: (major: UInt32, minor: UInt32)?
    /// For symlinks only.
    public var target: ByteString?
    /// Attribute name (bytes, as file names) to raw value.
    public var xattrs: [ByteString: [UInt8]]
    /// Lowercase hex SHA-256 of the contents, for regular files only.
    public var sha256: String?

    public init(
        path: ByteString, kind: Kind, permissions: UInt32, uid: UInt32, gid: UInt32, size: UInt64,
        mtimeNanoseconds: Int64, linkCount: UInt64, rdev: (major: UInt32, minor: UInt32)? = nil,
        target: ByteString? = nil, xattrs: [ByteString: [UInt8]] = [:], sha256: String? = nil
    ) {
        self.path = path
        self.kind = kind
        self.permissions = permissions
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtimeNanoseconds = mtimeNanoseconds
        self.linkCount = linkCount
        self.rdev = rdev
        self.target = target
        self.xattrs = xattrs
        self.sha256 = sha256
    }

    public static func == (lhs: ManifestEntry, rhs: ManifestEntry) -> Bool {
        lhs.jsonLine == rhs.jsonLine
    }

    /// The entry as one line of JSON, exactly as Python's
    /// `json.dumps(entry, sort_keys=True, ensure_ascii=False)` writes it; bytes of the path,
    /// target or xattr names that are not UTF-8 as `\udcXX` (see `JSONText.quoted(_: ByteString)`).
    public var jsonLine: String {
        // Keys in sorted order: gid, mode, mtime_ns, nlink, path, rdev, sha256, size, target, type, uid, xattrs.
        var members: [String] = [
            "\"gid\": \(gid)",
            "\"mode\": \"\(octal4(permissions))\"",
            "\"mtime_ns\": \(mtimeNanoseconds)",
            "\"nlink\": \(linkCount)",
            "\"path\": \(JSONText.quoted(path))",
        ]
        if let rdev { members.append("\"rdev\": [\(rdev.major), \(rdev.minor)]") }
        if let sha256 { members.append("\"sha256\": \"\(sha256)\"") }
        members.append("\"size\": \(size)")
        if let target { members.append("\"target\": \(JSONText.quoted(target))") }
        members.append("\"type\": \"\(kind.rawValue)\"")
        members.append("\"uid\": \(uid)")
        let attributes = xattrs.keys.sorted().map { name in
            "\(JSONText.quoted(name)): \"\(Hex.encode(xattrs[name]!))\""
        }
        members.append("\"xattrs\": {\(attributes.joined(separator: ", "))}")
        return "{" + members.joined(separator: ", ") + "}"
    }

    private func octal4(_ value: UInt32) -> String {
        let digits = String(value, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}

extension Array where Element == ManifestEntry {
    /// Sorted by path bytes (for UTF-8, Unicode code-point order), root first.
    public func sortedByPath() -> [ManifestEntry] {
        sorted { $0.path < $1.path }
    }

    /// The whole manifest: one line per entry, each ending in a newline.
    public var manifestText: String {
        map { $0.jsonLine + "\n" }.joined()
    }
}

public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.underestimatedCount * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// JSON text as Python's json module writes it with `ensure_ascii=False`.
public enum JSONText {
    public static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars { append(scalar, to: &out) }
        return out + "\""
    }

    /// Bytes that may not be UTF-8 (a file name): well-formed UTF-8 as `quoted(_: String)`
    /// writes it, and each other byte B (0x80-0xff) as the escape `\udcBB`, the lone surrogate
    /// U+DC00+B that Python's `surrogateescape` decodes it to (`os.fsdecode`). Well-formed UTF-8
    /// never holds a surrogate, so the escape is unambiguous, and reversible: `json.loads` then
    /// `os.fsencode` gives the bytes back. The line stays valid UTF-8.
    public static func quoted(_ bytes: ByteString) -> String {
        // Nearly every name is UTF-8: the standard library validates it faster than pieces.
        if let text = bytes.validString { return quoted(text) }
        var out = "\""
        bytes.forEachPiece { piece in
            switch piece {
            case .scalar(let scalar, _): append(scalar, to: &out)
            case .invalidByte(let byte): out += "\\udc" + Hex.encode([byte])
            }
        }
        return out + "\""
    }

    private static func append(_ scalar: Unicode.Scalar, to out: inout String) {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }

    /// Code-point order (Swift's `<` on String uses canonical equivalence instead).
    public static func codePointOrder(_ lhs: String, _ rhs: String) -> Bool {
        lhs.utf8.lexicographicallyPrecedes(rhs.utf8)
    }
}
