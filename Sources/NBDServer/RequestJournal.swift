#if canImport(Glibc)
import Glibc
#endif
import CShim
import NBDProtocol
import SystemCalls
import SystemPackage

/// What a kernel-mode connection has taken off its socket and not yet answered, kept in shared
/// memory (a memfd the supervisor holds) so that when the serving worker dies, a new worker can
/// go on serving **the same socket**: it answers what the dead one had read, completes a reply
/// it was killed in the middle of, and reads on. The kernel never sees a dead link, so nothing
/// waits for its request timer.
///
/// Every change is ordered so that a process killed between any two instructions leaves a
/// journal that says exactly what happened. The two things a process cannot record itself,
/// how many bytes its last recv took and its last send gave, are written by the kernel:
/// transfers go through one-message recvmmsg/sendmmsg whose headers live here, and the kernel
/// stores the byte count in them before the syscall returns (a SIGKILL only acts on the way
/// back to user space). Counts that need two fields alternate between two records, flipped by
/// one release store.
///
/// Threads: the reader thread alone receives and admits requests; sends happen under the reply
/// writer's lock, so at most one send is in progress.
public final class RequestJournal: @unchecked Sendable {
    public let descriptor: Int32
    /// Shared with other processes: every field is read and written with the acquire/release
    /// loads and stores of CShim, in the order the comment above says; no lock can cover it.
    private let memory: UnsafeMutableRawPointer
    /// Guards `freeSlots` (the reader thread takes slots, the reply writer gives them back).
    private let lock = ConditionLock()
    private var freeSlots: [Int32] = []

    /// Requests read and not answered at most: the kernel's nbd has 128 tags per queue.
    static let slotCount = 256
    /// The most replies one send carries (`ReplyBatch.maximumReplies`, with room).
    static let maximumSendSlots = 64
    public static let receiveCapacity = 256 << 10

    // Layout. Header fields:
    static let magicOffset = 0
    static let layoutOffset = 8
    static let poisonedOffset = 16
    static let currentReceiveOffset = 20
    static let consumedOffset = 24
    static let sendActiveOffset = 32
    static let currentSendOffset = 36
    static let sendSlotCountOffset = 40
    static let sendTotalOffset = 48
    /// Two receive records {stream position of the buffer's first byte u64, bytes kept from the
    /// previous buffer u32, ..., transfer record at +64} and two send records {bytes of this
    /// send already sent before the call u64, ..., transfer record at +64}.
    static let receiveRecordsOffset = 64
    static let sendRecordsOffset = 320
    static let recordSize = 128
    static let keptInRecord = 8
    static let transferInRecord = 64
    static let transferSize = Int(CSHIM_RECORDED_TRANSFER_SIZE)
    static let sendSlotListOffset = 576
    /// A send may end with bytes sent by sendfile(2) from the reply file at its own position:
    /// {bytes from the file u64, where they start u64, the position was set u32}. sendfile
    /// moves that position by exactly the bytes it sent, within the syscall, so the position is
    /// the kernel's record of the file part's progress.
    static let sendFileLengthOffset = 704
    static let sendFileStartOffset = 712
    static let sendFilePositionedOffset = 720
    /// Slots {state u32 (0 free, 1 read and unanswered), reply error u32, stream position u64,
    /// the request's 28 bytes as read, fail mark u32 (`failMark`: the supervisor's crash-loop
    /// guard says answer it with EIO; builds before counted takeovers there, below the mark)}.
    static let slotsOffset = 1024
    static let slotSize = 48
    static let errorInSlot = 4
    static let positionInSlot = 8
    static let requestInSlot = 16
    static let failMarkInSlot = 44
    /// The one value of the fail-mark field that means "fail it" (older builds wrote counts
    /// below it there, which mean nothing now).
    static let failMark = UInt32.max
    static let receiveBuffersOffset = 16384
    public static let size = receiveBuffersOffset + 2 * receiveCapacity

    /// Every field and array of the mapping as (name, byte range): what the layout tests check
    /// does not overlap, fits the mapping and is aligned for the atomic loads and stores.
    static var regions: [(name: String, range: Range<Int>)] {
        func field(_ name: String, _ offset: Int, _ width: Int) -> (name: String, range: Range<Int>) {
            (name, offset..<(offset + width))
        }
        var regions = [
            field("magic", magicOffset, 8), field("layout", layoutOffset, 8), field("poisoned", poisonedOffset, 4),
            field("current receive", currentReceiveOffset, 4), field("consumed", consumedOffset, 8),
            field("send active", sendActiveOffset, 4), field("current send", currentSendOffset, 4),
            field("send slot count", sendSlotCountOffset, 4), field("send total", sendTotalOffset, 8),
            field("send slot list", sendSlotListOffset, 2 * maximumSendSlots),
            field("sendfile length", sendFileLengthOffset, 8), field("sendfile start", sendFileStartOffset, 8),
            field("sendfile positioned", sendFilePositionedOffset, 4),
            field("receive buffers", receiveBuffersOffset, 2 * receiveCapacity),
        ]
        for record in 0..<2 {
            let receive = receiveRecordsOffset + record * recordSize
            let send = sendRecordsOffset + record * recordSize
            regions += [
                field("receive record \(record) position", receive, 8),
                field("receive record \(record) kept", receive + keptInRecord, 4),
                field("receive record \(record) transfer", receive + transferInRecord, transferSize),
                field("send record \(record) sent before", send, 8),
                field("send record \(record) transfer", send + transferInRecord, transferSize),
            ]
        }
        for slot in 0..<slotCount {
            let start = slotsOffset + slot * slotSize
            regions += [
                field("slot \(slot) state", start, 4), field("slot \(slot) error", start + errorInSlot, 4),
                field("slot \(slot) position", start + positionInSlot, 8),
                field("slot \(slot) request", start + requestInSlot, Request.size),
                field("slot \(slot) fail mark", start + failMarkInSlot, 4),
            ]
        }
        return regions
    }

    private static let magic: UInt64 = 0x4a42_4e53_4f52_4545  // "EEROSNBJ", little-endian
    private static let layout = UInt64(slotCount) << 32 | UInt64(receiveCapacity >> 10) << 8 | 1

    /// Creates the shared memory (by the supervisor, which hands the descriptor to each worker).
    public static func create() throws(SystemError) -> RequestJournal {
        let fd = cshim_memfd_create("erofs-nbd-journal")
        guard fd >= 0 else { throw .lastErrno("memfd_create", path: "nbd request journal") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let error = SystemError.lastErrno("ftruncate", path: "nbd request journal")
            close(fd)
            throw error
        }
        do { return try RequestJournal(descriptor: fd) } catch {
            close(fd)
            throw error
        }
    }

    /// Maps a journal made by `create()` (a worker, given the descriptor).
    public init(descriptor: Int32) throws(SystemError) {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .lastErrno("fstat", path: "nbd request journal") }
        guard status.st_size == off_t(Self.size) else {
            throw SystemError(
                .corrupt, "map the nbd request journal",
                detail: "it has \(status.st_size) bytes, this build expects \(Self.size)"
            )
        }
        guard let mapped = mmap(nil, Self.size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0), mapped != MAP_FAILED
        else {
            throw .lastErrno("mmap", path: "nbd request journal")
        }
        self.descriptor = descriptor
        memory = mapped
    }

    deinit { munmap(memory, Self.size) }

    // MARK: Fresh start

    /// Forgets everything: a new connection, or a socket handed over at a request boundary.
    public func reset() {
        cshim_store_release_u64(memory + Self.magicOffset, 0)
        memset(memory, 0, Self.receiveBuffersOffset)
        for record in 0..<2 {
            cshim_recorded_reset(receiveTransfer(record))
            cshim_recorded_reset(sendTransfer(record))
        }
        store64(Self.layoutOffset, Self.layout)
        cshim_store_release_u64(memory + Self.magicOffset, Self.magic)
        lock.withLock { freeSlots = Array((0..<Int32(Self.slotCount)).reversed()) }
    }

    // MARK: Receiving (reader thread)

    public func receiveBuffer(_ record: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(
            start: memory + Self.receiveBuffersOffset + record * Self.receiveCapacity, count: Self.receiveCapacity)
    }

    var currentReceive: Int { Int(load32(Self.currentReceiveOffset) & 1) }

    /// Reads what the socket has into the other receive buffer, after `kept` (the unparsed tail
    /// of the current one, starting at stream position `keptPosition`). Returns the bytes read
    /// (0 at end of stream, -1 with errno) and the buffer they are in, which becomes current.
    func receive(from socket: Int32, keeping kept: UnsafeRawBufferPointer, at keptPosition: UInt64) -> (
        count: Int, buffer: Int
    ) {
        let next = 1 - currentReceive
        let buffer = receiveBuffer(next)
        if let from = kept.baseAddress, kept.count > 0 {
            buffer.baseAddress!.copyMemory(from: from, byteCount: kept.count)
        }
        let record = Self.receiveRecordsOffset + next * Self.recordSize
        store64(record, keptPosition)
        store32(record + Self.keptInRecord, UInt32(kept.count))
        cshim_recorded_reset(receiveTransfer(next))
        cshim_store_release_u32(memory + Self.currentReceiveOffset, UInt32(next))
        let count = cshim_recorded_receive(
            socket, receiveTransfer(next), buffer.baseAddress! + kept.count, buffer.count - kept.count,
            Int32(MSG_DONTWAIT))
        return (count, next)
    }

    /// Records `request`, read at stream `position`, as taken and unanswered; returns its slot.
    /// With no slot free (more requests than the kernel can have in flight) the journal gives
    /// up: recovery then falls back to a new socket.
    func admit(_ request: Request, at position: UInt64) -> Int32 {
        guard let slot = lock.withLock({ freeSlots.popLast() }) else {
            poison()
            advance(to: position + UInt64(Request.size))
            return -1
        }
        let base = Self.slotsOffset + Int(slot) * Self.slotSize
        store32(base + Self.errorInSlot, 0)
        store64(base + Self.positionInSlot, position)
        store32(base + Self.failMarkInSlot, 0)
        // The request as it was on the wire (28 bytes, big-endian), written in place.
        let raw = memory + base + Self.requestInSlot
        raw.storeBytes(of: NBDMagic.request.bigEndian, toByteOffset: 0, as: UInt32.self)
        raw.storeBytes(of: request.flags.rawValue.bigEndian, toByteOffset: 4, as: UInt16.self)
        raw.storeBytes(of: request.type.rawValue.bigEndian, toByteOffset: 6, as: UInt16.self)
        raw.storeBytes(of: request.cookie.bigEndian, toByteOffset: 8, as: UInt64.self)
        raw.storeBytes(of: request.offset.bigEndian, toByteOffset: 16, as: UInt64.self)
        raw.storeBytes(of: request.length.bigEndian, toByteOffset: 24, as: UInt32.self)
        cshim_store_release_u32(memory + base, 1)
        advance(to: position + UInt64(Request.size))
        return slot
    }

    /// Everything before stream `position` has been taken in hand.
    func advance(to position: UInt64) {
        cshim_store_release_u64(memory + Self.consumedOffset, position)
    }

    /// From now on the journal cannot describe the stream (a WRITE payload, a full slot table):
    /// a recovery must not trust it.
    func poison() { cshim_store_release_u32(memory + Self.poisonedOffset, 1) }

    // MARK: Sending (under the reply writer's lock)

    /// A reply to one journaled request: its slot and the NBD error it carries.
    struct Answer {
        var slot: Int32
        var error: UInt32 = 0
    }

    /// `total` counts every byte of the send, `fileLength` of them from the reply file at
    /// `fileStart` after the vectors.
    func beginSend(answering answers: [Answer], total: Int, fileStart: UInt64 = 0, fileLength: Int = 0) {
        var count = 0
        for answer in answers where answer.slot >= 0 {
            guard count < Self.maximumSendSlots else {
                poison()
                return
            }
            store32(Self.slotsOffset + Int(answer.slot) * Self.slotSize + Self.errorInSlot, answer.error)
            memory.storeBytes(
                of: UInt16(answer.slot).littleEndian, toByteOffset: Self.sendSlotListOffset + 2 * count, as: UInt16.self
            )
            count += 1
        }
        store32(Self.sendSlotCountOffset, UInt32(count))
        store64(Self.sendTotalOffset, UInt64(total))
        store64(Self.sendFileLengthOffset, UInt64(fileLength))
        store64(Self.sendFileStartOffset, fileStart)
        store32(Self.sendFilePositionedOffset, 0)
        store64(Self.sendRecordsOffset, 0)
        cshim_recorded_reset(sendTransfer(0))
        store32(Self.currentSendOffset, 0)
        cshim_store_release_u32(memory + Self.sendActiveOffset, 1)
    }

    /// One sendmsg of the send begun with `beginSend`, counted by the kernel in the journal.
    func send(on socket: Int32, _ vectors: UnsafeMutablePointer<iovec>, count: Int, flags: Int32 = 0) -> Int {
        var current = Int(load32(Self.currentSendOffset) & 1)
        let moved = cshim_recorded_count(sendTransfer(current))
        if moved >= 0 {
            // A continuation: the other record starts where this one ended.
            current = switchSendRecord(
                sentBefore: load64(Self.sendRecordsOffset + current * Self.recordSize) + UInt64(moved))
        }
        return cshim_recorded_send(socket, sendTransfer(current), vectors, count, Int32(MSG_NOSIGNAL) | flags)
    }

    /// The reply file's position is now `beginSend`'s `fileStart`: from here on it counts the
    /// file part's progress.
    func filePositioned() { store32(Self.sendFilePositionedOffset, 1) }

    /// The send begun with `beginSend` went out whole: its requests are answered.
    func endSend() {
        guard load32(Self.sendActiveOffset) == 1 else { return }
        let count = min(Int(load32(Self.sendSlotCountOffset)), Self.maximumSendSlots)
        lock.withLock {
            for index in 0..<count {
                let slot = Int32(
                    UInt16(
                        littleEndian: memory.loadUnaligned(
                            fromByteOffset: Self.sendSlotListOffset + 2 * index, as: UInt16.self)))
                guard slot < Self.slotCount else { continue }
                cshim_store_release_u32(memory + Self.slotsOffset + Int(slot) * Self.slotSize, 0)
                freeSlots.append(slot)
            }
            cshim_store_release_u32(memory + Self.sendActiveOffset, 0)
        }
    }

    // MARK: Recovery (a new worker, the old one dead)

    /// The requests read and not answered, as the dead worker left them (the supervisor's
    /// crash-loop guard looks, between a worker's death and its successor's start).
    public func unansweredRequests() -> [Request] {
        guard cshim_load_acquire_u64(memory + Self.magicOffset) == Self.magic else { return [] }
        return (0..<Self.slotCount).compactMap { slot in
            let base = Self.slotsOffset + slot * Self.slotSize
            guard cshim_load_acquire_u32(memory + base) == 1 else { return nil }
            return try? Request(
                decoding: UnsafeRawBufferPointer(start: memory + base + Self.requestInSlot, count: Request.size))
        }
    }

    /// Makes the next worker that resumes from the journal answer the unanswered requests that
    /// `matches` picks with EIO instead of serving them (`TransmissionLoop.resume`): what the
    /// supervisor's crash-loop guard, the one counter of deaths, decided. Returns how many it
    /// marked.
    @discardableResult
    public func failOnResume(where matches: (Request) -> Bool) -> Int {
        var marked = 0
        for slot in 0..<Self.slotCount {
            let base = Self.slotsOffset + slot * Self.slotSize
            guard cshim_load_acquire_u32(memory + base) == 1,
                let request = try? Request(
                    decoding: UnsafeRawBufferPointer(start: memory + base + Self.requestInSlot, count: Request.size)),
                matches(request)
            else { continue }
            store32(base + Self.failMarkInSlot, Self.failMark)
            marked += 1
        }
        return marked
    }

    /// What the dead worker left: the reply it was killed in the middle of, the requests it
    /// read and never answered, and the bytes it read and had not parsed yet.
    public struct Recovery: Sendable {
        public struct Entry: Sendable {
            public var slot: Int32
            public var request: Request
            public var error: UInt32
            /// The supervisor's crash-loop guard marked it (`failOnResume`): it killed the
            /// workers before, so it is answered with EIO rather than served
            /// (`TransmissionLoop.resume`).
            public var failOnResume: Bool
        }
        /// A send that reached the socket in part: `sent` of its `total` bytes. The replies to
        /// `answers`, rebuilt in order, must be completed from byte `sent` before anything else.
        public var unfinishedSend: (answers: [Entry], sent: Int, total: Int)?
        /// Read, never answered (in stream order).
        public var unanswered: [Entry]
        /// The receive buffer holding unparsed bytes `start..<end`; `position` is the stream
        /// position of its first byte.
        public var buffer: Int
        public var start: Int
        public var end: Int
        public var position: UInt64
    }

    /// Reads what the dead worker left, checking every field (the bytes are ours, but a journal
    /// that makes no sense must cost a slow recovery, never a wrong reply). Throws when the
    /// journal cannot be trusted; the caller then gives the device a new socket instead.
    /// `replyFilePosition`: the current position of the reply file the dead worker sent file
    /// parts from (the supervisor's copy of it shares the position).
    public func recover(replyFilePosition: UInt64?) throws(SystemError) -> Recovery {
        func distrust(_ why: String) -> SystemError {
            SystemError(.corrupt, "resume from the nbd request journal", detail: why)
        }
        guard cshim_load_acquire_u64(memory + Self.magicOffset) == Self.magic else {
            throw distrust("no journal (another version, or never started)")
        }
        guard load64(Self.layoutOffset) == Self.layout else {
            throw distrust("journal layout \(load64(Self.layoutOffset)) differs from \(Self.layout)")
        }
        guard load32(Self.poisonedOffset) == 0 else { throw distrust("the journal gave up describing the stream") }

        // Received bytes.
        let current = currentReceive
        let record = Self.receiveRecordsOffset + current * Self.recordSize
        let bufferPosition = load64(record)
        let kept = Int(load32(record + Self.keptInRecord))
        let received = max(0, Int(cshim_recorded_count(receiveTransfer(current))))
        guard kept <= Self.receiveCapacity, received <= Self.receiveCapacity - kept else {
            throw distrust("receive record out of range")
        }
        let filled = bufferPosition + UInt64(kept + received)
        let consumed = load64(Self.consumedOffset)
        guard consumed >= bufferPosition, consumed <= filled else {
            throw distrust("parsed position \(consumed) outside the buffer \(bufferPosition)..<\(filled)")
        }

        typealias Entry = Recovery.Entry
        func entry(_ slot: Int32) throws(SystemError) -> Entry {
            let base = Self.slotsOffset + Int(slot) * Self.slotSize
            let bytes = UnsafeRawBufferPointer(start: memory + base + Self.requestInSlot, count: Request.size)
            guard let request = try? Request(decoding: bytes) else { throw distrust("slot \(slot) holds no request") }
            return Entry(
                slot: slot, request: request, error: load32(base + Self.errorInSlot),
                failOnResume: load32(base + Self.failMarkInSlot) == Self.failMark)
        }

        // The send in progress, if any.
        var inSend = Set<Int32>()
        var unfinished: (answers: [Entry], sent: Int, total: Int)?
        var answered: [Int32] = []
        if load32(Self.sendActiveOffset) == 1 {
            let count = Int(load32(Self.sendSlotCountOffset))
            guard count <= Self.maximumSendSlots else { throw distrust("send record lists \(count) replies") }
            var answers: [Entry] = []
            for index in 0..<count {
                let slot = Int32(
                    UInt16(
                        littleEndian: memory.loadUnaligned(
                            fromByteOffset: Self.sendSlotListOffset + 2 * index, as: UInt16.self)))
                guard slot < Self.slotCount, !inSend.contains(slot) else {
                    throw distrust("send record names slot \(slot)")
                }
                inSend.insert(slot)
                answers.append(try entry(slot))
            }
            let sendRecord = Int(load32(Self.currentSendOffset) & 1)
            var sent =
                Int(load64(Self.sendRecordsOffset + sendRecord * Self.recordSize))
                + max(0, Int(cshim_recorded_count(sendTransfer(sendRecord))))
            let total = Int(load64(Self.sendTotalOffset))
            let fileLength = Int(load64(Self.sendFileLengthOffset))
            guard fileLength <= total, sent <= total - fileLength else {
                throw distrust("send record says \(sent) of \(total - fileLength) bytes went out")
            }
            if fileLength > 0, sent == total - fileLength, load32(Self.sendFilePositionedOffset) == 1 {
                let start = load64(Self.sendFileStartOffset)
                guard let position = replyFilePosition, position >= start, position - start <= UInt64(fileLength) else {
                    throw distrust(
                        "the reply file's position \(replyFilePosition.map(String.init) ?? "unknown") is outside the file part \(start)+\(fileLength)"
                    )
                }
                sent += Int(position - start)
            }
            if sent == total {
                answered = Array(inSend)
            } else if sent > 0 {
                unfinished = (answers, sent, total)
            } else {
                inSend = []  // nothing went out: those are plain unanswered requests
            }
        }

        var unanswered: [(position: UInt64, entry: Entry)] = []
        var free: [Int32] = []
        for slot in (0..<Int32(Self.slotCount)).reversed() {
            let base = Self.slotsOffset + Int(slot) * Self.slotSize
            let position = load64(base + Self.positionInSlot)
            // A slot written for a request the dead worker had not yet counted as parsed is
            // still in the buffer: it will be read again.
            guard load32(base) == 1, position < consumed, !answered.contains(slot) else {
                free.append(slot)
                continue
            }
            if inSend.contains(slot) { continue }  // completed with the unfinished send
            unanswered.append((position, try entry(slot)))
        }
        unanswered.sort { $0.position < $1.position }

        // From here on this process owns the journal: the state it resumes from is recorded
        // before it serves any request.
        for slot in free { cshim_store_release_u32(memory + Self.slotsOffset + Int(slot) * Self.slotSize, 0) }
        if unfinished == nil { cshim_store_release_u32(memory + Self.sendActiveOffset, 0) }
        lock.withLock { freeSlots = free }
        return Recovery(
            unfinishedSend: unfinished, unanswered: unanswered.map(\.entry),
            buffer: current, start: Int(consumed - bufferPosition), end: kept + received, position: bufferPosition)
    }

    /// Goes on with the send a dead worker left unfinished (`recover()`'s `unfinishedSend`):
    /// counted from `sent`, so the journal stays exact if this process dies too.
    func resumeSend(sent: Int) {
        // What is left goes from memory, so no file part remains.
        store64(Self.sendFileLengthOffset, 0)
        switchSendRecord(sentBefore: UInt64(sent))
    }

    /// Makes the other send record current, counting from `sentBefore` bytes of the send; the
    /// flip is one release store, so a crash sees either record whole. Returns its index.
    @discardableResult
    private func switchSendRecord(sentBefore: UInt64) -> Int {
        let next = 1 - Int(load32(Self.currentSendOffset) & 1)
        store64(Self.sendRecordsOffset + next * Self.recordSize, sentBefore)
        cshim_recorded_reset(sendTransfer(next))
        cshim_store_release_u32(memory + Self.currentSendOffset, UInt32(next))
        return next
    }

    // MARK: Raw fields

    private func receiveTransfer(_ record: Int) -> UnsafeMutableRawPointer {
        memory + Self.receiveRecordsOffset + record * Self.recordSize + Self.transferInRecord
    }

    private func sendTransfer(_ record: Int) -> UnsafeMutableRawPointer {
        memory + Self.sendRecordsOffset + record * Self.recordSize + Self.transferInRecord
    }

    private func load32(_ offset: Int) -> UInt32 { cshim_load_acquire_u32(memory + offset) }
    private func load64(_ offset: Int) -> UInt64 { cshim_load_acquire_u64(memory + offset) }
    func store32(_ offset: Int, _ value: UInt32) { cshim_store_release_u32(memory + offset, value) }
    private func store64(_ offset: Int, _ value: UInt64) { cshim_store_release_u64(memory + offset, value) }
}
