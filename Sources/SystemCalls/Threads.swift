#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// A started pthread that can be joined (the NBD and FUSE serving loops use threads with blocking syscalls).
public struct JoinableThread: @unchecked Sendable {
    private let thread: pthread_t

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    public init(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { raw in
                guard let raw else { return nil }
                Unmanaged<Body>.fromOpaque(raw).takeRetainedValue().run()
                return nil
            }, context)
        guard result == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            throw SystemError("pthread_create", errno: Errno(rawValue: result))
        }
        self.thread = thread
    }

    public func join() { pthread_join(thread, nil) }
}
