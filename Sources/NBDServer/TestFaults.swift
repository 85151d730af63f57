#if DEBUG
#if canImport(Glibc)
import Glibc
#endif
import NBDProtocol

/// Debug builds only (a release build has no such code): `EROFS_TEST_CRASH_READ_AT=OFFSET` in a
/// serving worker's environment makes it abort on every READ that covers byte OFFSET of the
/// export, the way a worker with a bug on one request would. What the crash-loop test in
/// vmtests/recovery.sh mounts with: every successor that takes the request over dies too,
/// until the supervisor has the next one fail it with EIO.
enum TestFaults {
    static let crashOffset: UInt64? = getenv("EROFS_TEST_CRASH_READ_AT").flatMap { UInt64(String(cString: $0)) }

    static func crashIfAsked(_ request: Request) {
        guard let offset = crashOffset, offset >= request.offset,
            offset - request.offset < UInt64(request.length)
        else { return }
        abort()
    }
}
#endif
