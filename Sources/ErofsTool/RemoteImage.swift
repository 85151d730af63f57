import EROFSReader
import ImageSources
import RemoteSources
#if canImport(Glibc)
import Glibc
#endif

/// Opens IMAGE for the reading commands: a local path, an `http(s)://` URL, an S3 `BUCKET/KEY`
/// when an `s3.` option is given, or an image reference in a registry when an `oci.` option is
/// (`-o`, mount's spelling).
func openImage(_ image: String, devicePaths: [String], options: [String]) throws(EROFSError) -> EROFSFilesystem {
    let pairs = options.flatMap { $0.split(separator: ",") }.map { item -> (key: String, value: String?) in
        guard let equals = item.firstIndex(of: "=") else { return (String(item), nil) }
        return (String(item[..<equals]), String(item[item.index(after: equals)...]))
    }
    if let foreign = pairs.first(where: { !RemoteSourceDescription.owns($0.key) && !OCISourceDescription.owns($0.key) })
    {
        throw EROFSError(
            .notFound, "-o \(foreign.key): the erofs tool takes only http.*, s3.*, oci.* and remote.* options")
    }
    let environment = ProcessEnvironment.current()
    let warn = { (message: String) in FileHandleStandardError.write("erofs: warning: \(message)\n") }
    let source: (any RandomAccessSource)?
    do throws(RemoteError) {
        if let (oci, credentials) = try OCISourceDescription.parse(source: image, options: pairs, warn: warn) {
            source = try oci.open(credentials: credentials, environment: environment, warn: warn)
        } else if let description = try RemoteSourceDescription.parse(
            source: image, options: pairs, environment: environment)
        {
            source = try description.open(environment: environment, warn: warn)
        } else {
            source = nil
        }
    } catch {
        throw EROFSError(.io, error.description)
    }
    guard let source else { return try EROFSFilesystem(path: image, devicePaths: devicePaths) }
    var devices: [any RandomAccessSource] = []
    for path in devicePaths {
        do { devices.append(try FileSource(path: path)) } catch {
            throw EROFSError(.device, "cannot open extra device \(devices.count + 1): \(error)", path: path)
        }
    }
    return try EROFSFilesystem(source: source, devices: devices)
}
