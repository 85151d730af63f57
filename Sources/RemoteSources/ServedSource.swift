#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import ImageSources
import SystemCalls
import SystemPackage

/// What a mount daemon serves, as it is handed one in its arguments: a local image by path, or
/// a remote object by its description (which never holds a secret: credentials come from a
/// passwd file or a captured file, see `CredentialSource`). Every daemon (FUSE, nbd) turns it
/// into bytes here and nowhere else; a new kind of source (OCI) is a new `Location` case of
/// `RemoteSourceDescription`, opened by `RemoteSourceDescription.open`.
public enum ServedSource: Sendable, Equatable {
    case local(path: String)
    case remote(RemoteSourceDescription)

    /// The daemon argument: the absolute path, or the description as JSON (`{...}`: no
    /// absolute path starts with `{`).
    public var argument: String {
        switch self {
        case .local(let path): return path
        case .remote(let description):
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            // Encoding plain strings, numbers and enums cannot fail.
            return String(decoding: (try? encoder.encode(description)) ?? Data(), as: UTF8.self)
        }
    }

    public init(argument: String) throws(RemoteError) {
        guard argument.hasPrefix("{") else {
            self = .local(path: argument)
            return
        }
        do {
            self = .remote(try JSONDecoder().decode(RemoteSourceDescription.self, from: Data(argument.utf8)))
        } catch {
            throw RemoteError(.configuration, "source", "not a remote source description: \(error)")
        }
    }

    /// A name for messages and the mount table: the path, or the object without credentials.
    public var displayName: String {
        switch self {
        case .local(let path): return path
        case .remote(let description): return description.displayName
        }
    }

    /// The file of captured credentials this source reads, which its mount removes at the end.
    public var capturedCredentials: String? {
        guard case .remote(let description) = self, case .captured(let path) = description.credentials else {
            return nil
        }
        return path
    }

    /// What a daemon serves, from its argument: a local image from `handedDown` when the
    /// mount handed the descriptor it checked down to it (else the path is opened), a remote
    /// one opened as `open` does. nbd and ublk workers both start here.
    public static func openServed(
        argument: String, handedDown: Int32, warn: (String) -> Void
    ) throws(SystemError) -> (served: ServedSource, source: any RandomAccessSource) {
        let served: ServedSource
        do { served = try ServedSource(argument: argument) } catch {
            throw SystemError(.failed, "serve", underlying: error)
        }
        if case .local(let path) = served, fcntl(handedDown, F_GETFD) >= 0 {
            return (served, try FileSource(descriptor: FileDescriptor(rawValue: handedDown), path: path))
        }
        return (served, try served.open(warn: warn))
    }

    /// Opens the bytes. A remote object is opened with no environment (a daemon's has no
    /// credentials) and must be the version the mount checked (`pinnedVersion`); an image
    /// layer, the manifest and layer digests it pinned (each worker resolves them again, with
    /// a bearer token of its own).
    public func open(warn: (String) -> Void) throws(SystemError) -> any RandomAccessSource {
        switch self {
        case .local(let path):
            return try FileSource(path: path)
        case .remote(let description):
            do { return try description.openPinned(environment: [:], warn: warn).source } catch {
                throw error.systemError
            }
        }
    }
}
