#if canImport(Glibc)
import Glibc
#endif
import CShim

/// Extended attributes of a path, without following a final symlink. Paths and attribute
/// names are bytes: neither need be UTF-8.
public enum ExtendedAttributes {
    /// Names from `llistxattr(2)`, in the order the kernel gives them.
    public static func names(_ path: ByteString) throws(SystemError) -> [ByteString] {
        while true {
            let size = try path.withCString { (cPath) throws(SystemError) in
                try retryingOnInterrupt("llistxattr", path: path.description) { llistxattr(cPath, nil, 0) }
            }
            if size == 0 { return [] }
            var buffer = [CChar](repeating: 0, count: size)
            let got = path.withCString { llistxattr($0, &buffer, size) }
            if got == -1 && errno == ERANGE { continue }  // grew between the two calls
            if got == -1 { throw .lastErrno("llistxattr", path: path.description) }
            return buffer[..<got].split(separator: 0).map { ByteString($0.map { UInt8(bitPattern: $0) }) }
        }
    }

    /// The value of one attribute from `lgetxattr(2)`.
    public static func value(_ path: ByteString, name: ByteString) throws(SystemError) -> [UInt8] {
        while true {
            let size = try path.withCString { (cPath) throws(SystemError) in
                try name.withCString { (cName) throws(SystemError) in
                    try retryingOnInterrupt("lgetxattr \(name)", path: path.description) {
                        lgetxattr(cPath, cName, nil, 0)
                    }
                }
            }
            if size == 0 { return [] }
            var buffer = [UInt8](repeating: 0, count: size)
            let got = path.withCString { cPath in name.withCString { lgetxattr(cPath, $0, &buffer, size) } }
            if got == -1 && errno == ERANGE { continue }
            if got == -1 { throw .lastErrno("lgetxattr \(name)", path: path.description) }
            return Array(buffer[..<got])
        }
    }
}
