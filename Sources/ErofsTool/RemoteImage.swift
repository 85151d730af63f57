import EROFSReader
import ImageSources
import RemoteSources
#if canImport(Glibc)
import Glibc
#endif

/// Opens IMAGE for the reading commands: a local path, an `http(s)://` URL, or an S3
/// `BUCKET/KEY` when an `s3.` option is given (`-o`, mount's spelling).
func openImage(_ image: String, devicePaths: [String], options: [String]) throws(EROFSError) -> EROFSFilesystem {
    let pairs = options.flatMap { $0.split(separator: ",") }.map { item -> (key: String, value: String?) in
        guard let equals = item.firstIndex(of: "=") else { return (String(item), nil) }
        return (String(item[..<equals]), String(item[item.index(after: equals)...]))
    }
    if let foreign = pairs.first(where: { !RemoteSourceDescription.owns($0.key) }) {
        throw EROFSError(.notFound, "-o \(foreign.key): the erofs tool takes only http.*, s3.* and remote.* options")
    }
    let environment = ProcessEnvironment.current()
    let description: RemoteSourceDescription?
    do {
        description = try RemoteSourceDescription.parse(source: image, options: pairs, environment: environment)
    } catch {
        throw EROFSError(.io, error.description)
    }
    guard let description else { return try EROFSFilesystem(path: image, devicePaths: devicePaths) }
    let source: RemoteSource
    do {
        source = try description.open(environment: environment) {
            FileHandleStandardError.write("erofs: warning: \($0)\n")
        }
    } catch {
        throw EROFSError(.io, error.description)
    }
    var devices: [any RandomAccessSource] = []
    for path in devicePaths {
        do { devices.append(try FileSource(path: path)) } catch {
            throw EROFSError(.device, "cannot open extra device \(devices.count + 1): \(error)", path: path)
        }
    }
    return try EROFSFilesystem(source: source, devices: devices)
}
