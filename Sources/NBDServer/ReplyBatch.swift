#if canImport(Glibc)
import Glibc
#endif
import SystemCalls

/// Replies to cached READs that the reader thread collects while more requests are already in
/// its buffer, then sends in order with one sendmsg(2): a pipelined burst of small READs costs
/// one send and one wake-up of the peer instead of one each. Owned by the reader thread alone.
final class ReplyBatch {
    /// Replies per batch: two vectors each, well under IOV_MAX.
    static let maximumReplies = 64
    /// Room for the longest reply header (a structured OFFSET_DATA chunk: 28 bytes).
    private static let headerSlot = 32

    private let headers: UnsafeMutableRawBufferPointer
    private let data: UnsafeMutableRawBufferPointer
    private let vectors: UnsafeMutableBufferPointer<iovec>
    private(set) var count = 0
    private var dataUsed = 0
    /// The journal slots the collected replies answer.
    private var answers: [ReplyWriter.Answer] = []

    init(dataCapacity: Int) {
        headers = .allocate(byteCount: Self.maximumReplies * Self.headerSlot, alignment: 16)
        data = .allocate(byteCount: dataCapacity, alignment: 4096)
        vectors = .allocate(capacity: 2 * Self.maximumReplies)
    }

    deinit {
        headers.deallocate()
        data.deallocate()
        vectors.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    /// Where the data of a reply of `length` bytes goes, or nil when the batch has no room.
    func space(for length: Int) -> UnsafeMutableRawBufferPointer? {
        guard count < Self.maximumReplies, length <= data.count - dataUsed else { return nil }
        return UnsafeMutableRawBufferPointer(rebasing: data[dataUsed..<(dataUsed + length)])
    }

    /// Adds a reply whose `length` data bytes were just written into `space(for: length)`.
    /// `journalSlot`: the request's slot in the connection's journal, -1 when not journaled.
    func append(header: [UInt8], length: Int, answering journalSlot: Int32) {
        precondition(header.count <= Self.headerSlot && length <= data.count - dataUsed && count < Self.maximumReplies)
        let slot = headers.baseAddress! + count * Self.headerSlot
        header.withUnsafeBytes { slot.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        vectors[2 * count] = iovec(iov_base: slot, iov_len: header.count)
        vectors[2 * count + 1] = iovec(iov_base: data.baseAddress! + dataUsed, iov_len: length)
        dataUsed += length
        count += 1
        if journalSlot >= 0 { answers.append(.init(slot: journalSlot)) }
    }

    /// Sends every collected reply and empties the batch (also when the send fails).
    func send(through writer: ReplyWriter) throws(SystemError) {
        guard count > 0 else { return }
        defer {
            count = 0
            dataUsed = 0
            answers.removeAll(keepingCapacity: true)
        }
        try writer.send(gathering: UnsafeMutableBufferPointer(rebasing: vectors[0..<(2 * count)]), answering: answers)
    }
}
