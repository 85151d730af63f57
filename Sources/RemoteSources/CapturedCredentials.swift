import Foundation
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The environment's S3 credentials, or a registry's, captured for the daemons of one mount: a
/// 0600 file of `KEY=VALUE` lines in a root-only directory under /run (tmpfs: never on disk), so
/// that no secret travels in a daemon's argv or environment and a recovered daemon finds them again.
/// The mount removes the file when it ends (or fails).
public enum CapturedCredentials {
    public static let directory = "/run/erofs-mount/credentials"
    static let keys = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] + registryKeys
    /// A registry's credentials, base64 (a password may hold any byte, a newline too):
    /// `USER:PASSWORD` as in config.json's `auth`, or an identity token. A bearer token is never
    /// captured: it expires within minutes, and each daemon asks the realm for its own.
    static let registryKeys = ["OCI_AUTH", "OCI_IDENTITY_TOKEN"]

    /// The description a daemon is handed: `.environment` credentials become `.captured(path)`
    /// (the file written here); any other description is returned as it is, with no file.
    public static func capture(_ description: RemoteSourceDescription, environment: [String: String])
        throws(RemoteError) -> (description: RemoteSourceDescription, file: String?)
    {
        guard description.credentials == .environment else { return (description, nil) }
        var text = ""
        for key in keys { if let value = environment[key], !value.isEmpty { text += "\(key)=\(value)\n" } }
        return try write(text, for: description)
    }

    /// The description of an image layer a daemon is handed: the registry credentials the mount
    /// resolved (from oci.username/password, config.json or a credential helper) captured, or
    /// anonymous; a daemon never looks at config.json (its environment has no HOME or
    /// DOCKER_CONFIG, and a helper may need the user's session).
    public static func capture(_ description: RemoteSourceDescription, registry: RegistryCredentials?)
        throws(RemoteError) -> (description: RemoteSourceDescription, file: String?)
    {
        var anonymous = description
        anonymous.credentials = .anonymous
        let line: String
        switch registry {
        case nil: return (anonymous, nil)
        case .basic(let username, let password):
            line = "OCI_AUTH=" + Data("\(username):\(password)".utf8).base64EncodedString()
        case .identityToken(let token):
            line = "OCI_IDENTITY_TOKEN=" + Data(token.utf8).base64EncodedString()
        }
        return try write(line + "\n", for: description)
    }

    /// The registry credentials of a captured file (nil: none were captured).
    static func registryCredentials(_ path: String) throws(RemoteError) -> RegistryCredentials? {
        let values = try read(path)
        func decoded(_ key: String) throws(RemoteError) -> String? {
            guard let text = values[key] else { return nil }
            guard let data = Data(base64Encoded: text) else {
                throw RemoteError(.configuration, path, "\(key) is not base64")
            }
            return String(decoding: data, as: UTF8.self)
        }
        if let token = try decoded("OCI_IDENTITY_TOKEN") { return .identityToken(token) }
        guard let auth = try decoded("OCI_AUTH") else { return nil }
        guard let colon = auth.firstIndex(of: ":") else {
            throw RemoteError(.configuration, path, "OCI_AUTH is not base64 of USER:PASSWORD")
        }
        return .basic(username: String(auth[..<colon]), password: String(auth[auth.index(after: colon)...]))
    }

    /// Writes `text` into a new 0600 file and returns `description` reading it.
    private static func write(_ text: String, for description: RemoteSourceDescription)
        throws(RemoteError) -> (description: RemoteSourceDescription, file: String)
    {
        func failure(_ what: String, _ path: String) -> RemoteError {
            RemoteError(.configuration, path, "cannot \(what): \(String(cString: strerror(errno)))")
        }
        var name = ""
        for _ in 0..<16 { name += String(UInt8.random(in: 0...255), radix: 16).leftPadded(2) }
        let path = directory + "/" + name
        let file: FileDescriptor?
        do {
            file = try PrivateDirectory.open(directory, creating: true, purpose: "use credentials directory")?
                .openFile(name, O_WRONLY | O_CREAT | O_EXCL)
        } catch {
            throw RemoteError(.configuration, error.path ?? directory, error.reason)
        }
        guard let fd = file?.rawValue else { throw failure("create the credentials file", path) }
        let written = text.utf8.withContiguousStorageIfAvailable { Glibc.write(fd, $0.baseAddress, $0.count) } ?? -1
        close(fd)
        guard written == text.utf8.count else {
            unlink(path)
            throw failure("write the credentials file", path)
        }
        var handed = description
        handed.credentials = .captured(path: path)
        return (handed, path)
    }

    /// The variables in a captured file. Messages name the file, never a value.
    static func read(_ path: String) throws(RemoteError) -> [String: String] {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            throw RemoteError(
                .configuration, path, "cannot open the captured credentials: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64 << 10)
        let got = Glibc.read(fd, &bytes, bytes.count)
        guard got >= 0 else {
            throw RemoteError(
                .configuration, path, "cannot read the captured credentials: \(String(cString: strerror(errno)))")
        }
        var result: [String: String] = [:]
        for line in String(decoding: bytes[..<got], as: UTF8.self).split(separator: "\n") {
            guard let equals = line.firstIndex(of: "="), keys.contains(String(line[..<equals])) else { continue }
            result[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return result
    }

    /// Removes a captured file (a path outside the directory is never touched).
    public static func remove(_ path: String?) {
        guard let path, path.hasPrefix(directory + "/"), !path.dropFirst(directory.count + 1).contains("/") else {
            return
        }
        unlink(path)
    }
}

/// The process environment as a dictionary: where S3 credentials and defaults come from.
public enum ProcessEnvironment {
    public static func current() -> [String: String] {
        var result: [String: String] = [:]
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            entry += 1
        }
        return result
    }
}
