#if canImport(Glibc)
import Glibc
#endif
import CShim
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
public final class FUSEJournal: @unchecked Sendable {
    public let descriptor: Int32
    public let channels: Int
    private let memory: UnsafeMutableRawPointer

    /// One request buffer per channel, page-aligned.
    static let slotSize = (FUSEServer.bufferSize + 4095) & ~4095
    public static let maximumChannels = 64

    /// A new journal for `channels` channels (a memfd; the caller hands `descriptor` on).
    public static func create(channels: Int) throws(SystemError) -> FUSEJournal {
        let fd = cshim_memfd_create("erofs-fuse-journal")
        guard fd >= 0 else { throw .lastErrno("memfd_create (FUSE request journal)") }
        guard (1...maximumChannels).contains(channels), ftruncate(fd, off_t(channels * slotSize)) == 0 else {
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
        guard (1...Self.maximumChannels).contains(channels), Int(status.st_size) == channels * Self.slotSize else {
            throw SystemError(
                "map the FUSE request journal",
                detail: "\(status.st_size) bytes, expected \(channels) slots of \(Self.slotSize)")
        }
        let mapped = mmap(nil, channels * Self.slotSize, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0)
        guard let mapped, mapped != MAP_FAILED else { throw .lastErrno("mmap (FUSE request journal)") }
        self.descriptor = descriptor
        self.channels = channels
        memory = mapped
    }

    deinit {
        munmap(memory, channels * Self.slotSize)
        close(descriptor)
    }

    /// Channel `index`'s request buffer.
    public func slot(_ index: Int) -> UnsafeMutableRawBufferPointer {
        precondition((0..<channels).contains(index))
        return UnsafeMutableRawBufferPointer(start: memory + index * Self.slotSize, count: FUSEServer.bufferSize)
    }

    /// Marks channel `index`'s slot empty: done before each read into it.
    func clear(_ index: Int) {
        cshim_store_release_u32(memory + index * Self.slotSize, 0)
    }

    /// The request recorded in channel `index`'s slot, if any: its bytes as the kernel wrote them
    /// (their length bounded by the slot; the decoder checks the rest).
    func recorded(_ index: Int) -> UnsafeRawBufferPointer? {
        let length = Int(UInt32(littleEndian: cshim_load_acquire_u32(memory + index * Self.slotSize)))
        guard length > 0 else { return nil }
        return UnsafeRawBufferPointer(start: memory + index * Self.slotSize, count: min(length, FUSEServer.bufferSize))
    }
}
