#if canImport(Glibc)
import Glibc
#endif
import CShim
import FUSEProtocol
import SystemCalls

/// What each channel's worker thread has read and not answered, in shared memory (a memfd the
/// supervisor holds), for kernels without FUSE_NOTIFY_RESEND (before 6.9): a new worker answers
/// those requests itself, on the channel they were read from (the kernel looks a reply up in
/// that channel's processing queue only).
///
/// Nothing is copied to keep it: every thread reads its requests straight into its own slot,
/// and clears the slot's length word before each read. So whenever the worker dies, a slot
/// holds nothing (length 0: the read had not happened) or the last request read on that
/// channel, answered or not. Answering it again is harmless: the kernel never reuses a unique
/// on a connection, so a reply to an answered request is refused (ENOENT) and reaches no one.
/// A slot is cleared again once its request is answered.
///
/// A header page before the slots holds the requests the next worker must fail with EIO
/// instead of serving (the supervisor's crash-loop guard: they killed the workers before it).
public final class FUSEJournal: @unchecked Sendable {
    public let descriptor: Int32
    public let channels: Int
    /// Shared with other processes, so no lock: each channel's thread writes only its own
    /// slot, the header is written between workers, and every length and count goes through
    /// CShim's acquire/release loads and stores.
    private let memory: UnsafeMutableRawPointer

    /// One request buffer per channel, page-aligned, after the header page.
    static let slotSize = (FUSEServer.bufferSize + 4095) & ~4095
    static let headerSize = 4096
    public static let maximumChannels = 64
    /// The header: how many uniques follow (u32), then the uniques (u64 each, from offset 8).
    static let maximumFailures = 32
    static func size(channels: Int) -> Int { headerSize + channels * slotSize }

    /// A new journal for `channels` channels (a memfd; the caller hands `descriptor` on).
    public static func create(channels: Int) throws(SystemError) -> FUSEJournal {
        let fd = cshim_memfd_create("erofs-fuse-journal")
        guard fd >= 0 else { throw .lastErrno("memfd_create (FUSE request journal)") }
        guard (1...maximumChannels).contains(channels), ftruncate(fd, off_t(size(channels: channels))) == 0 else {
            let error = SystemError.lastErrno("ftruncate (FUSE request journal)")
            close(fd)
            throw error
        }
        do { return try FUSEJournal(descriptor: fd, channels: channels) } catch {
            close(fd)
            throw error
        }
    }

    /// Maps an inherited journal (and owns `descriptor` from now on); it must be exactly the size
    /// `channels` slots take.
    public init(descriptor: Int32, channels: Int) throws(SystemError) {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .lastErrno("fstat (FUSE request journal)") }
        guard (1...Self.maximumChannels).contains(channels), Int(status.st_size) == Self.size(channels: channels) else {
            throw SystemError(
                "map the FUSE request journal",
                detail: "\(status.st_size) bytes, expected \(channels) slots of \(Self.slotSize)")
        }
        let mapped = mmap(nil, Self.size(channels: channels), PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0)
        guard let mapped, mapped != MAP_FAILED else { throw .lastErrno("mmap (FUSE request journal)") }
        self.descriptor = descriptor
        self.channels = channels
        memory = mapped
    }

    deinit {
        munmap(memory, Self.size(channels: channels))
        close(descriptor)
    }

    private func slotStart(_ index: Int) -> UnsafeMutableRawPointer {
        memory + Self.headerSize + index * Self.slotSize
    }

    /// Channel `index`'s request buffer.
    public func slot(_ index: Int) -> UnsafeMutableRawBufferPointer {
        precondition((0..<channels).contains(index))
        return UnsafeMutableRawBufferPointer(start: slotStart(index), count: FUSEServer.bufferSize)
    }

    /// Marks channel `index`'s slot empty: done before each read into it.
    func clear(_ index: Int) {
        cshim_store_release_u32(slotStart(index), 0)
    }

    /// The request recorded in channel `index`'s slot, if any: its bytes as the kernel wrote them
    /// (their length bounded by the slot; the decoder checks the rest).
    func recorded(_ index: Int) -> UnsafeRawBufferPointer? {
        let length = Int(UInt32(littleEndian: cshim_load_acquire_u32(slotStart(index))))
        guard length > 0 else { return nil }
        return UnsafeRawBufferPointer(start: slotStart(index), count: min(length, FUSEServer.bufferSize))
    }

    /// The headers of the requests read and not answered (whole headers only): what a dead
    /// worker was busy with.
    public func unanswered() -> [FUSEInHeader] {
        (0..<channels).compactMap { index in
            guard let bytes = recorded(index), bytes.count >= FUSEWireSize.inHeader else { return nil }
            return FUSEInHeader(
                length: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)),
                opcode: FUSEOpcode(
                    rawValue: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))),
                unique: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                nodeID: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self)))
        }
    }

    /// Has every later worker answer the requests with these uniques (the resend bit ignored)
    /// with EIO. False when the list is full.
    public func failFromNowOn(_ uniques: [UInt64]) -> Bool {
        let count = Int(cshim_load_acquire_u32(memory))
        guard count + uniques.count <= Self.maximumFailures else { return false }
        for (offset, unique) in uniques.enumerated() {
            cshim_store_release_u64(memory + 8 + (count + offset) * 8, unique & ~fuseUniqueResend)
        }
        cshim_store_release_u32(memory, UInt32(count + uniques.count))
        return true
    }

    /// Whether the request `unique` is one to fail (see `failFromNowOn`).
    func mustFail(_ unique: UInt64) -> Bool {
        let count = min(Int(cshim_load_acquire_u32(memory)), Self.maximumFailures)
        guard count > 0 else { return false }
        let key = unique & ~fuseUniqueResend
        return (0..<count).contains { cshim_load_acquire_u64(memory + 8 + $0 * 8) == key }
    }
}
