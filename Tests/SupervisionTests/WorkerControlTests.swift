@testable import Supervision
import Foundation
import Glibc
import SystemCalls
import Testing

@Suite struct WorkerControlTests {
    @Test func wordsWithoutDescriptors() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        try worker.send(.prepared)
        #expect(try supervisor.receive(timeout: 2) == .prepared)
        try supervisor.send(.reconnect)
        #expect(try worker.receive(timeout: 2) == .reconnect)
        try worker.send(.resumed(true))
        #expect(try supervisor.receive(timeout: 2) == .resumed(true))
        try worker.send(.resumed(false))
        #expect(try supervisor.receive(timeout: 2) == .resumed(false))
        for index: UInt32 in [0, 7, 0x0102_0304, .max] {
            try supervisor.send(.device(index))
            #expect(try worker.receive(timeout: 2) == .device(index))
        }
    }

    /// Each word that carries a socket arrives with it, and without one it is refused.
    @Test func socketWordsCarryTheirDescriptor() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        try worker.send(.serving(ends[1]))
        guard case .serving(let kept)? = try supervisor.receive(timeout: 2) else { Issue.record("no serving"); return }
        #expect(kept.rawValue >= 0)
        try supervisor.send(.resume(ends[1]))
        guard case .resume(let live)? = try worker.receive(timeout: 2) else { Issue.record("no resume"); return }
        #expect(live.rawValue >= 0)
        #expect(ControlMessage(code: UInt8(ascii: "J"), descriptor: -1) == nil)
        #expect(ControlMessage(code: UInt8(ascii: "K"), descriptor: -1) == nil)
        #expect(ControlMessage(code: UInt8(ascii: "Y"), descriptor: 7) == nil)
        #expect(ControlMessage(code: UInt8(ascii: "I"), payload: [1, 2], descriptor: -1) == nil, "a short index")
        #expect(
            ControlMessage(code: UInt8(ascii: "P"), payload: [1], descriptor: -1) == nil, "bytes after a one-byte word")
    }

    /// The socket handed over is the same open socket: bytes written into one copy come out of
    /// the other, as the kernel's requests do after a hot upgrade.
    @Test func handOffPassesTheLiveSocket() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]) }
        try worker.send(.handOff(ends[1]))
        close(ends[1])
        guard case .handOff(let carried)? = try supervisor.receive(timeout: 2) else {
            Issue.record("no hand-off")
            return
        }
        let received = carried.take()
        defer { close(received) }
        #expect(fcntl(received, F_GETFD) & FD_CLOEXEC != 0)
        #expect(write(ends[0], "req", 3) == 3)
        var buffer = [UInt8](repeating: 0, count: 3)
        #expect(read(received, &buffer, 3) == 3)
        #expect(buffer == Array("req".utf8))
    }

    /// A descriptor that comes with a word is the receiver's: one it does not take is closed
    /// with the word (here the last write end of a pipe, whose reader then sees the end), and
    /// one it takes stays open.
    @Test func receivedDescriptorsAreClosedUnlessTaken() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        for taken in [false, true] {
            var ends: [Int32] = [-1, -1]
            #expect(pipe(&ends) == 0)
            defer { close(ends[0]) }
            try worker.send(.replyFile(ends[1]))
            close(ends[1])
            var kept: Int32 = -1
            do {
                guard case .replyFile(let file)? = try supervisor.receive(timeout: 2) else {
                    Issue.record("no reply file")
                    return
                }
                #expect(file.rawValue >= 0)
                if taken { kept = file.take() }
            }
            var poller = pollfd(fd: ends[0], events: Int16(POLLIN), revents: 0)
            #expect(poll(&poller, 1, 1000) == (taken ? 0 : 1), "taken: \(taken)")
            #expect((poller.revents & Int16(POLLHUP) != 0) == !taken)
            if kept >= 0 { close(kept) }
        }
    }

    @Test func peerGoneIsNil() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close() }
        worker.close()
        #expect(try supervisor.receive(timeout: 2) == nil)
    }

    @Test func silenceTimesOut() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        #expect { try supervisor.receive(timeout: 0.1) } throws: { ($0 as? SystemError)?.kind == .timedOut }
    }

    /// A word the protocol does not have is the peer's fault, told apart from a timeout.
    @Test func unknownWordIsAProtocolViolation() throws {
        let (supervisor, worker) = try ControlChannel.pair()
        defer { supervisor.close(); worker.close() }
        #expect(send(worker.descriptor, "Z", 1, 0) == 1)
        #expect { try supervisor.receive(timeout: 2) } throws: { ($0 as? SystemError)?.kind == .protocolViolation }
    }
}
