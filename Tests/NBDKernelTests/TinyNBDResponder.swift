#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// The server end of a kernel-mode NBD socket, reduced to what the attachment tests need:
/// READ replies from an in-memory image, NBD_CMD_DISC ends it without a reply. The project's
/// serving loop lives in NBDServer; this stand-in only lets NBDKernel be tested on its own.
final class TinyNBDResponder: @unchecked Sendable {
    let image: [UInt8]
    let descriptor: Int32
    private var thread = pthread_t()
    private(set) var servedReads = 0
    private(set) var sawDisconnect = false
    /// A well-behaved server closes its end after NBD_CMD_DISC; a stubborn one keeps it open
    /// (the kernel's receive thread then waits until the client shuts the socket down).
    let closesOnDisconnect: Bool

    /// A socketpair: the responder keeps one end; `kernelEnd` is handed to the kernel.
    static func pair(image: [UInt8], closesOnDisconnect: Bool = true) throws -> (
        responder: TinyNBDResponder, kernelEnd: Int32
    ) {
        var ends: [Int32] = [0, 0]
        try retryingOnInterrupt("socketpair") {
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends)
        }
        let responder = TinyNBDResponder(image: image, descriptor: ends[0], closesOnDisconnect: closesOnDisconnect)
        responder.start()
        return (responder, ends[1])
    }

    private init(image: [UInt8], descriptor: Int32, closesOnDisconnect: Bool) {
        self.image = image
        self.descriptor = descriptor
        self.closesOnDisconnect = closesOnDisconnect
    }

    private func start() {
        let context = Unmanaged.passRetained(self).toOpaque()
        pthread_create(
            &thread, nil,
            { raw in
                let responder = Unmanaged<TinyNBDResponder>.fromOpaque(raw!).takeRetainedValue()
                responder.serve()
                if responder.closesOnDisconnect { shutdown(responder.descriptor, Int32(SHUT_RDWR)) }
                return nil
            }, context)
    }

    /// Simulates the server's death: the kernel sees EOF on its end.
    func kill() {
        shutdown(descriptor, Int32(SHUT_RDWR))
    }

    /// Waits for the serving thread to end and closes the socket.
    func join() {
        pthread_join(thread, nil)
        close(descriptor)
    }

    private func serve() {
        var header = [UInt8](repeating: 0, count: 28)
        while readFully(&header) {
            let magic = bigEndian(header, 0, 4)
            let type = bigEndian(header, 6, 2)
            let offset = bigEndian(header, 16, 8)
            let length = bigEndian(header, 24, 4)
            guard magic == 0x2560_9513 else { return }
            if type == 2 { sawDisconnect = true; return }  // NBD_CMD_DISC: no reply
            var reply: [UInt8] = [0x67, 0x44, 0x66, 0x98]  // simple reply magic
            let inRange = type == 0 && offset <= UInt64(image.count) && length <= UInt64(image.count) - offset
            reply += inRange ? [0, 0, 0, 0] : [0, 0, 0, 5]  // EIO otherwise
            reply += header[8..<16]  // the cookie, as sent
            if inRange {
                reply += image[Int(offset)..<Int(offset + length)]
                servedReads += 1
            }
            guard writeFully(reply) else { return }
        }
    }

    private func bigEndian(_ bytes: [UInt8], _ offset: Int, _ count: Int) -> UInt64 {
        bytes[offset..<offset + count].reduce(0) { $0 << 8 | UInt64($1) }
    }

    private func readFully(_ buffer: inout [UInt8]) -> Bool {
        var filled = 0
        while filled < buffer.count {
            let got = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress! + filled, $0.count - filled) }
            if got < 0 && errno == EINTR { continue }
            if got <= 0 { return false }
            filled += got
        }
        return true
    }

    private func writeFully(_ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let put = bytes.withUnsafeBytes {
                send(descriptor, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
            }
            if put < 0 && errno == EINTR { continue }
            if put <= 0 { return false }
            sent += put
        }
        return true
    }
}
