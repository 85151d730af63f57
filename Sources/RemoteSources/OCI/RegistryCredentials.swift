import Foundation

/// Credentials for one registry: a user name and password (or a registry token), or an
/// identity token (an OAuth2 refresh token from `docker login`). Never printed, never stored.
public enum RegistryCredentials: Sendable, Equatable {
    case basic(username: String, password: String)
    case identityToken(String)
}

/// Where the credentials of a registry are looked up, in docker's order: `oci.username=` and
/// `oci.password=`, then Docker's config.json: `credHelpers[HOST]`, `auths[HOST]` (`auth`,
/// `identitytoken`), `credsStore`.
public struct DockerConfig: Sendable {
    /// The config file: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    public static func path(environment: [String: String]) -> String? {
        if let directory = environment["DOCKER_CONFIG"], !directory.isEmpty { return directory + "/config.json" }
        if let home = environment["HOME"], !home.isEmpty { return home + "/.docker/config.json" }
        return nil
    }

    private struct Wire: Decodable {
        struct Entry: Decodable {
            var auth: String?
            var username: String?
            var password: String?
            var identitytoken: String?
        }
        var auths: [String: Entry]?
        var credHelpers: [String: String]?
        var credsStore: String?
    }

    /// The key docker uses for a registry, and the one a credential helper is asked about.
    static func serverKey(domain: String) -> String {
        domain == "docker.io" ? "https://index.docker.io/v1/" : domain
    }

    /// A config key reduced to its host[:port]: docker writes `https://index.docker.io/v1/`,
    /// older clients `https://host/v1/`, others `host:port`.
    static func hostOfKey(_ key: String) -> String {
        var text = Substring(key)
        if let scheme = text.range(of: "://") { text = text[scheme.upperBound...] }
        if let slash = text.firstIndex(of: "/") { text = text[..<slash] }
        let host = String(text).lowercased()
        return host == "index.docker.io" || host == "registry-1.docker.io" ? "docker.io" : host
    }

    /// The credentials config.json gives `domain`, nil when none. `helper` runs
    /// `docker-credential-NAME get` (replaceable in tests).
    public static func credentials(
        for domain: String, environment: [String: String],
        runHelper: (String, String) throws(RemoteError) -> RegistryCredentials? = runCredentialHelper
    ) throws(RemoteError) -> RegistryCredentials? {
        guard let path = path(environment: environment) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        guard data.count <= 1 << 20 else { throw RemoteError(.configuration, path, "larger than 1 MiB") }
        let wire: Wire
        do { wire = try JSONDecoder().decode(Wire.self, from: data) } catch {
            throw RemoteError(.configuration, path, "not a valid Docker config.json")
        }
        let wanted = hostOfKey(domain)
        if let helper = wire.credHelpers?.first(where: { hostOfKey($0.key) == wanted })?.value {
            return try runHelper(helper, serverKey(domain: domain))
        }
        if let entry = wire.auths?.first(where: { hostOfKey($0.key) == wanted })?.value {
            if let token = entry.identitytoken, !token.isEmpty { return .identityToken(token) }
            if let auth = entry.auth, !auth.isEmpty {
                guard let decoded = Data(base64Encoded: auth), let text = String(data: decoded, encoding: .utf8),
                    let colon = text.firstIndex(of: ":")
                else {
                    throw RemoteError(.configuration, path, "auths[\(domain)].auth is not base64 of USER:PASSWORD")
                }
                return .basic(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
            }
            if let username = entry.username, let password = entry.password {
                return .basic(username: username, password: password)
            }
        }
        if let store = wire.credsStore, !store.isEmpty { return try runHelper(store, serverKey(domain: domain)) }
        return nil
    }

    /// Runs `docker-credential-NAME get` with the server on stdin (never in argv) and reads its
    /// JSON answer (`Username`, `Secret`; user `<token>` means an identity token). "credentials
    /// not found" is no credentials; anything else fails naming the helper, not the secret.
    public static func runCredentialHelper(_ name: String, _ server: String) throws(RemoteError) -> RegistryCredentials?
    {
        let program = "docker-credential-" + name
        guard name.utf8.allSatisfy({ $0 > 0x20 && $0 != UInt8(ascii: "/") }), !name.isEmpty else {
            throw RemoteError(.configuration, program, "not a credential helper name")
        }
        let search = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin").split(
            separator: ":")
        let candidates = search.map { directory -> String in "\(directory)/\(program)" }
        guard let executable = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw RemoteError(.configuration, program, "credential helper not found in PATH")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["get"]
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch {
            throw RemoteError(.configuration, program, "cannot run: \(error)")
        }
        input.fileHandleForWriting.write(Data((server + "\n").utf8))
        try? input.fileHandleForWriting.close()
        var answer = Data()
        while answer.count <= 1 << 20 {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            answer += chunk
        }
        try? output.fileHandleForReading.close()
        process.waitUntilExit()
        let text = String(decoding: answer.prefix(1 << 20), as: UTF8.self)
        guard process.terminationStatus == 0 else {
            if text.lowercased().contains("credentials not found") { return nil }
            throw RemoteError(.configuration, program, "exited with status \(process.terminationStatus)")
        }
        struct Reply: Decodable {
            var username: String?
            var secret: String?
            enum CodingKeys: String, CodingKey {
                case username = "Username"
                case secret = "Secret"
            }
        }
        guard let reply = try? JSONDecoder().decode(Reply.self, from: Data(text.utf8)), let secret = reply.secret else {
            throw RemoteError(.configuration, program, "answered something that is not {\"Username\",\"Secret\"} JSON")
        }
        if reply.username == "<token>" { return .identityToken(secret) }
        return .basic(username: reply.username ?? "", password: secret)
    }
}
