import Netlink
import SystemCalls

/// A transport that records what is sent and answers with canned datagrams, in order.
final class RecordingTransport: NetlinkTransport {
    let portID: UInt32
    var sent: [[UInt8]] = []
    var replies: [[UInt8]]

    init(portID: UInt32 = 0x1234_5678, replies: [[UInt8]]) {
        self.portID = portID
        self.replies = replies
    }

    func send(_ datagram: [UInt8]) throws(SystemError) { sent.append(datagram) }

    func receive() throws(SystemError) -> [UInt8] {
        guard !replies.isEmpty else { throw SystemError("receive", detail: "test transport has no more replies") }
        return replies.removeFirst()
    }
}

extension Array where Element == UInt8 {
    /// Bytes from hex digits; spaces and newlines are ignored so fixtures can be laid out.
    init(hex: String) {
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

    var hex: String { map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}
