import Netlink
import SystemCalls

/// A transport that records what is sent and answers with canned datagrams, in order.
public final class RecordingTransport: NetlinkTransport {
    public let portID: UInt32
    public var sent: [[UInt8]] = []
    public var replies: [[UInt8]]

    public init(portID: UInt32 = 0x1234_5678, replies: [[UInt8]]) {
        self.portID = portID
        self.replies = replies
    }

    public func send(_ datagram: [UInt8]) throws(SystemError) { sent.append(datagram) }

    public func receive() throws(SystemError) -> [UInt8] {
        guard !replies.isEmpty else { throw SystemError("receive", detail: "test transport has no more replies") }
        return replies.removeFirst()
    }
}

extension Array where Element == UInt8 {
    /// Bytes from hex digits; spaces and newlines are ignored so fixtures can be laid out.
    public init(hex: String) {
        let digits = hex.filter { $0.isHexDigit }
        precondition(digits.count % 2 == 0, "odd number of hex digits in fixture")
        var bytes: [UInt8] = []
        var index = digits.startIndex
        while index != digits.endIndex {
            let next = digits.index(index, offsetBy: 2)
            bytes.append(UInt8(digits[index..<next], radix: 16)!)
            index = next
        }
        self = bytes
    }

    public var hex: String { map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}

/// Little-endian hex of a u32, for building fixtures.
public func hexLE32(_ value: UInt32) -> String {
    (0..<4).map { shift in
        let byte = UInt8(truncatingIfNeeded: value >> (8 * shift))
        return (byte < 16 ? "0" : "") + String(byte, radix: 16)
    }.joined()
}

/// The kernel's ACK (NLMSG_ERROR with error 0, capped) for request `sequence` from port
/// 0x12345678; the echoed request header's length and type are not looked at.
public func ackFixture(sequence: UInt32) -> [UInt8] {
    [UInt8](
        hex:
            "24000000" + "0200" + "0001" + hexLE32(sequence) + "78563412"  // NLMSG_ERROR, NLM_F_CAPPED
            + "00000000"  // error 0: ACK
            + "14000000" + "1000" + "0500" + hexLE32(sequence) + "78563412")  // echoed request header
}
