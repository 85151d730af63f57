import Crypto
#if canImport(Glibc)
import Glibc
#endif

/// An access key pair. `description` never shows the secret or the token.
public struct S3Credentials: Sendable, Equatable, CustomStringConvertible {
    public var accessKey: String
    public var secretKey: String
    public var sessionToken: String?

    public init(accessKey: String, secretKey: String, sessionToken: String? = nil) {
        self.accessKey = accessKey
        self.secretKey = secretKey
        self.sessionToken = sessionToken
    }

    public var description: String { "access key \(accessKey)" }
}

/// AWS Signature Version 4 (header form), as the SigV4 documentation and test suite define it.
public enum SigV4 {
    /// SHA-256 of an empty payload: every request here is a GET or HEAD without a body.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    /// The Authorization header value for a request whose `headers` are exactly those that
    /// are sent (Host and X-Amz-Date included). `canonicalURI` is the path as sent (already
    /// percent-encoded; S3 does not encode it twice).
    public static func authorization(
        method: String, canonicalURI: String, canonicalQuery: String = "", headers: [(String, String)],
        payloadHash: String, amzDate: String, region: String, service: String, credentials: S3Credentials
    ) -> String {
        var canonical: [String: String] = [:]
        for (name, value) in headers {
            let key = name.lowercased()
            let trimmed = value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            canonical[key] = canonical[key].map { $0 + "," + trimmed } ?? trimmed
        }
        let names = canonical.keys.sorted()
        let signedHeaders = names.joined(separator: ";")
        let canonicalRequest = [
            method, canonicalURI, canonicalQuery,
            names.map { "\($0):\(canonical[$0]!)\n" }.joined(),
            signedHeaders, payloadHash,
        ].joined(separator: "\n")
        let date = String(amzDate.prefix(8))
        let scope = "\(date)/\(region)/\(service)/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, hex(SHA256.hash(data: Array(canonicalRequest.utf8)))]
            .joined(separator: "\n")
        var key = SymmetricKey(data: Array("AWS4\(credentials.secretKey)".utf8))
        for part in [date, region, service, "aws4_request"] {
            key = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        let signature = hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
        return
            "AWS4-HMAC-SHA256 Credential=\(credentials.accessKey)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
    }

    /// `YYYYMMDDTHHMMSSZ`.
    public static func amzDate(_ time: time_t) -> String {
        let t = utc(time)
        return
            "\(pad(Int(t.tm_year) + 1900, 4))\(pad(Int(t.tm_mon) + 1, 2))\(pad(Int(t.tm_mday), 2))T\(pad(Int(t.tm_hour), 2))\(pad(Int(t.tm_min), 2))\(pad(Int(t.tm_sec), 2))Z"
    }
}

/// AWS Signature Version 2 for S3 (`Authorization: AWS KEY:SIGNATURE`), the scheme s3fs and
/// erofs-utils default to.
public enum SigV2 {
    /// `amzHeaders` are the x-amz-* headers sent; `resource` is `/BUCKET/KEY` (percent-encoded,
    /// the bucket included even for virtual-host addressing).
    public static func authorization(
        method: String, contentMD5: String = "", contentType: String = "", date: String,
        amzHeaders: [(String, String)], resource: String, credentials: S3Credentials
    ) -> String {
        var amz: [String: String] = [:]
        for (name, value) in amzHeaders {
            let key = name.lowercased()
            amz[key] =
                amz[key].map { $0 + "," + value.trimmingCharacters(in: " ") } ?? value.trimmingCharacters(in: " ")
        }
        let canonicalAmz = amz.keys.sorted().map { "\($0):\(amz[$0]!)\n" }.joined()
        let stringToSign = "\(method)\n\(contentMD5)\n\(contentType)\n\(date)\n\(canonicalAmz)\(resource)"
        let code = HMAC<Insecure.SHA1>.authenticationCode(
            for: Array(stringToSign.utf8), using: SymmetricKey(data: Array(credentials.secretKey.utf8)))
        return "AWS \(credentials.accessKey):\(base64(Array(code)))"
    }

    /// RFC 1123 date, as the Date header carries it.
    public static func httpDate(_ time: time_t) -> String {
        let t = utc(time)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        return
            "\(days[Int(t.tm_wday)]), \(pad(Int(t.tm_mday), 2)) \(months[Int(t.tm_mon)]) \(Int(t.tm_year) + 1900) \(pad(Int(t.tm_hour), 2)):\(pad(Int(t.tm_min), 2)):\(pad(Int(t.tm_sec), 2)) GMT"
    }
}

/// Signs S3 requests for one object with SigV4 or SigV2.
struct S3Signer: RequestSigner {
    var credentials: S3Credentials
    var version: Int
    var region: String
    /// The Host header value (with the port when it is not the scheme's default).
    var host: String
    /// The path as sent.
    var canonicalURI: String
    /// `/BUCKET/KEY` for SigV2.
    var resource: String

    func sign(method: String, headers: [(String, String)], now: time_t) -> [(String, String)] {
        var signed = headers
        signed.append(("Host", host))
        if let token = credentials.sessionToken { signed.append(("X-Amz-Security-Token", token)) }
        if version == 2 {
            let date = SigV2.httpDate(now)
            signed.append(("Date", date))
            let amz = signed.filter { $0.0.lowercased().hasPrefix("x-amz-") }
            signed.append(
                (
                    "Authorization",
                    SigV2.authorization(
                        method: method, date: date, amzHeaders: amz, resource: resource, credentials: credentials)
                ))
        } else {
            signed.append(("X-Amz-Date", SigV4.amzDate(now)))
            signed.append(("X-Amz-Content-SHA256", SigV4.emptyPayloadHash))
            signed.append(
                (
                    "Authorization",
                    SigV4.authorization(
                        method: method, canonicalURI: canonicalURI, headers: signed,
                        payloadHash: SigV4.emptyPayloadHash,
                        amzDate: SigV4.amzDate(now), region: region, service: "s3", credentials: credentials)
                ))
        }
        return signed
    }
}

private func utc(_ time: time_t) -> tm {
    var seconds = time
    var result = tm()
    gmtime_r(&seconds, &result)
    return result
}

private func pad(_ value: Int, _ width: Int) -> String { String(value).leftPadded(width) }

func hex<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}

func base64(_ bytes: [UInt8]) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var out: [UInt8] = []
    var index = 0
    while index < bytes.count {
        let chunk = bytes[index..<min(index + 3, bytes.count)]
        let value = chunk.enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (16 - 8 * UInt32($1.offset)) }
        for position in 0..<4 {
            out.append(
                position <= chunk.count ? alphabet[Int((value >> (18 - 6 * UInt32(position))) & 63)] : UInt8(ascii: "=")
            )
        }
        index += 3
    }
    return String(decoding: out, as: UTF8.self)
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` when `keepSlash`),
/// as S3 expects in paths and SigV4 in canonical URIs.
func percentEncoded(_ text: String, keepSlash: Bool) -> String {
    var out = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
            out.unicodeScalars.append(UnicodeScalar(byte))
        case UInt8(ascii: "/") where keepSlash:
            out += "/"
        default:
            out += "%" + hex([byte]).uppercased()
        }
    }
    return out
}
