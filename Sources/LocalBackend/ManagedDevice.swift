import KernelAttach
import SystemCalls

/// N of /dev/PREFIXN for TARGET (`kind`: "an nbd device", for messages): the device itself, or
/// the mountpoint of an EROFS mount of one.
/// Both are found by device number, never by a name: a tmpfs or a user's FUSE mount may call
/// its source /dev/nbd0.
public func managedDeviceIndex(of target: String, prefix: String, kind: String) throws(MountFailure) -> Int {
    let canonical = canonicalPath(target)
    let status: FileStatus
    do { status = try FileStatus.stat(canonical) } catch {
        throw MountFailure("cannot use \(target)", cause: error)
    }
    let neither = "\(target) is neither /dev/\(prefix)N nor mounted from one"
    let number: (major: UInt32, minor: UInt32)
    switch status.kind {
    case .block:
        number = (status.rdevMajor, status.rdevMinor)
    case .dir:
        let entry: MountInfoEntry?
        do { entry = try MountTable.mount(at: canonical) } catch {
            throw MountFailure("cannot read the mount table", cause: error)
        }
        guard let entry else { throw MountFailure(neither) }
        guard entry.fsType == "erofs" else {
            throw MountFailure(
                "\(target) is not an EROFS mount of \(kind) (it is \(entry.fsType) from \(entry.source))")
        }
        number = (entry.major, entry.minor)
    default:
        throw MountFailure(neither)
    }
    guard let name = BlockDevice.name(major: number.major, minor: number.minor),
        let index = BlockDevice.index(of: name, prefix: prefix)
    else {
        throw MountFailure(
            "\(neither) (its device \(number.major):\(number.minor) is \(BlockDevice.name(major: number.major, minor: number.minor) ?? "unknown"))"
        )
    }
    return index
}

/// `count` random bytes as lowercase hex: the unique part of a backend identifier.
public func randomHex(bytes count: Int) -> String {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in
        let byte = UInt8.random(in: 0...255, using: &generator)
        return String(byte >> 4, radix: 16) + String(byte & 0xf, radix: 16)
    }.joined()
}
