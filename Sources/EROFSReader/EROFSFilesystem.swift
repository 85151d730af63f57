import EROFSFormat
import ImageSources
import Synchronization
import SystemCalls

/// A read-only EROFS filesystem over a random-access source. Safe to share between threads:
/// decoded state is immutable and the caches sit behind locks.
public final class EROFSFilesystem: Sendable {
    public let source: any RandomAccessSource
    /// The extra devices given, in slot order (`-o device=` order); may be fewer than the slots.
    public let devices: [any RandomAccessSource]
    public let superblock: Superblock
    /// The extra devices the image says its data may live on (empty for single-device images).
    public let deviceTable: DeviceTable
    /// Long xattr name prefixes (the superblock's prefix table), already expanded to full prefixes.
    public var longXattrPrefixes: [ByteString] { longXattrPrefixTable.withLock { $0 } }
    let longXattrPrefixTable = Mutex<[ByteString]>([])

    let blockSize: Int
    let metadataBlocks: BoundedCache<UInt64, [UInt8]>
    let inodes: BoundedCache<UInt64, Inode>
    let compressionInfos: BoundedCache<UInt64, CompressionInfo>
    /// Decompressed extents, by inode and logical start (only those up to 1 MiB are kept).
    let decodedExtents: BoundedCache<ExtentKey, [UInt8]>
    var compressionSettings: CompressionSettings { compressionSettingsStorage.withLock { $0 } }
    let compressionSettingsStorage = Mutex(CompressionSettings(availableAlgorithms: 1, decompression: .init()))

    /// Reads and validates the superblock (and its checksum), the device table and the long
    /// xattr prefix table. `devices` are the image's extra devices in slot order, like the
    /// kernel's `-o device=`: with none, data on extra devices is read from the primary at the
    /// slots' unified addresses (the kernel's flat mode), where it is when the blobs were
    /// concatenated onto the image; a device not given fails the read that needs it.
    public init(source: any RandomAccessSource, devices: [any RandomAccessSource] = []) throws(EROFSError) {
        self.source = source
        self.devices = devices
        let head: [UInt8]
        do {
            head = try source.read(count: 4096, at: UInt64(Superblock.offset))
        } catch {
            throw EROFSError(.io, "cannot read the superblock of \(source.displayName): \(error)")
        }
        let superblock: Superblock
        do {
            superblock = try Superblock(decoding: head)
            try superblock.verifyChecksum(firstBlockFromSuperblock: head)
        } catch {
            throw EROFSError(error)
        }
        self.superblock = superblock
        blockSize = superblock.blockSize
        metadataBlocks = BoundedCache(capacity: 1024)
        inodes = BoundedCache(capacity: 4096)
        compressionInfos = BoundedCache(capacity: 4096)
        decodedExtents = BoundedCache(capacity: 64)
        let (claimedBytes, overflow) = superblock.blocks.multipliedReportingOverflow(by: UInt64(blockSize))
        if overflow || claimedBytes > source.size {
            throw EROFSError(
                .corrupt,
                "image truncated: the superblock says \(superblock.blocks) blocks of \(blockSize) bytes, the image has \(source.size) bytes"
            )
        }
        deviceTable = try EROFSFilesystem.readDeviceTable(superblock, source: source, devices: devices)
        if superblock.featureIncompat.contains(.metabox) && superblock.metaboxNid == 0 {
            throw EROFSError(.corrupt, "metabox feature without a metabox inode")
        }
        // Reading the metabox inode from the metabox would recurse forever (the kernel's
        // "self-loop detection").
        if superblock.metaboxNid & Inode.metaboxBit != 0 {
            throw EROFSError(.corrupt, "the metabox inode is inside the metabox", nid: superblock.metaboxNid)
        }
        let settings = try readCompressionSettings()
        compressionSettingsStorage.withLock { $0 = settings }
        let prefixes = try readLongXattrPrefixes()
        longXattrPrefixTable.withLock { $0 = prefixes }
    }

    /// Opens the image at `path` and its extra devices at `devicePaths` (in slot order).
    public convenience init(path: String, devicePaths: [String] = []) throws(EROFSError) {
        let source: FileSource
        do {
            source = try FileSource(path: path)
        } catch {
            throw EROFSError(.io, "cannot open image: \(error)", path: path)
        }
        var devices: [any RandomAccessSource] = []
        for devicePath in devicePaths {
            do {
                devices.append(try FileSource(path: devicePath))
            } catch {
                throw EROFSError(.device, "cannot open extra device \(devices.count + 1): \(error)", path: devicePath)
            }
        }
        try self.init(source: source, devices: devices)
    }

    public var rootNid: UInt64 { superblock.rootNid }

    // MARK: Raw reads

    /// Exactly `count` bytes of the image at `offset`, or an error naming the offset.
    func imageBytes(at offset: UInt64, count: Int) throws(EROFSError) -> [UInt8] {
        guard count >= 0 else { throw EROFSError(.corrupt, "negative length", offset: offset) }
        let end = try checkedSum(offset, UInt64(count), "image offset")
        guard end <= source.size else {
            throw EROFSError(
                .corrupt, "reference beyond the end of the image (\(source.size) bytes), length \(count)",
                offset: offset)
        }
        let bytes: [UInt8]
        do {
            bytes = try source.read(count: count, at: offset)
        } catch {
            throw EROFSError(.io, "read failed: \(error)", offset: offset)
        }
        guard bytes.count == count else {
            throw EROFSError(.io, "short read: \(bytes.count) of \(count) bytes", offset: offset)
        }
        return bytes
    }

    /// One block of the metadata space, cached. `inMetabox` selects the metabox inode's data.
    func metadataBlock(_ number: UInt64, inMetabox: Bool) throws(EROFSError) -> [UInt8] {
        let key = inMetabox ? number | Inode.metaboxBit : number
        if let cached = metadataBlocks.value(for: key) { return cached }
        let offset = try checkedProduct(number, UInt64(blockSize), "metadata block address")
        let block: [UInt8]
        if inMetabox {
            let metabox = try inode(nid: superblock.metaboxNid)
            guard offset < metabox.size else {
                throw EROFSError(.corrupt, "metadata offset beyond the metabox (\(metabox.size) bytes)", offset: offset)
            }
            var bytes = try read(metabox, at: offset, count: blockSize)
            bytes.append(contentsOf: [UInt8](repeating: 0, count: blockSize - bytes.count))
            block = bytes
        } else {
            let available = source.size > offset ? min(UInt64(blockSize), source.size - offset) : 0
            guard available > 0 else {
                throw EROFSError(.corrupt, "metadata block \(number) beyond the end of the image", offset: offset)
            }
            var bytes = try imageBytes(at: offset, count: Int(available))
            bytes.append(contentsOf: [UInt8](repeating: 0, count: blockSize - bytes.count))
            block = bytes
        }
        metadataBlocks.insert(block, for: key)
        return block
    }

    /// `count` bytes of the metadata space at `offset` (may span blocks).
    func metadataBytes(at offset: UInt64, count: Int, inMetabox: Bool) throws(EROFSError) -> [UInt8] {
        guard count >= 0, count <= 1 << 20 else {
            throw EROFSError(.corrupt, "absurd metadata length \(count)", offset: offset)
        }
        _ = try checkedSum(offset, UInt64(count), "metadata offset")
        var result: [UInt8] = []
        result.reserveCapacity(count)
        var position = offset
        while result.count < count {
            let block = try metadataBlock(position / UInt64(blockSize), inMetabox: inMetabox)
            let within = Int(position % UInt64(blockSize))
            let take = min(blockSize - within, count - result.count)
            result.append(contentsOf: block[within..<(within + take)])
            position += UInt64(take)
        }
        return result
    }

    // MARK: Inodes

    /// The inode numbered `nid` (bit 63 set: in the metabox).
    public func inode(nid: UInt64) throws(EROFSError) -> Inode {
        if let cached = inodes.value(for: nid) { return cached }
        let inMetabox = nid & Inode.metaboxBit != 0
        if inMetabox && !superblock.featureIncompat.contains(.metabox) {
            throw EROFSError(.corrupt, "metabox nid in an image without a metabox", nid: nid)
        }
        let index = nid & ~Inode.metaboxBit
        guard index < 1 << 48 else { throw EROFSError(.corrupt, "absurd nid", nid: nid) }
        let base = inMetabox ? 0 : UInt64(superblock.metaBlockAddress) * UInt64(blockSize)
        let location = base + index * UInt64(DiskInode.slotSize)
        let bytes = try withContext(nid: nid) { () throws(EROFSError) -> [UInt8] in
            let compact = try metadataBytes(at: location, count: DiskInode.compactSize, inMetabox: inMetabox)
            guard InodeFormat(rawValue: compact.le16(at: 0)).isExtended else { return compact }
            return try metadataBytes(at: location, count: DiskInode.extendedSize, inMetabox: inMetabox)
        }
        let decoded = try Inode(nid: nid, location: location, bytes: bytes, superblock: superblock)
        inodes.insert(decoded, for: nid)
        return decoded
    }
}

extension EROFSFilesystem {
    /// Asks the source to start reading the blocks that hold the inodes of `entries` and that
    /// are not cached yet, all at once: a listing that reports each entry's attributes
    /// (READDIRPLUS) then waits for the disk about once, not once per entry. The
    /// subdirectories of a tree's root lie all over the image: read one by one, cold, they
    /// cost a walk 60 ms.
    public func readAheadInodes(of entries: ArraySlice<DirectoryEntry>) {
        let base = UInt64(superblock.metaBlockAddress) * UInt64(blockSize)
        let size = UInt64(blockSize)
        var blocks: [UInt64] = []
        blocks.reserveCapacity(entries.count)
        for entry in entries where entry.nid & Inode.metaboxBit == 0 && entry.nid < 1 << 48 {
            let location = base + entry.nid * UInt64(DiskInode.slotSize)
            blocks.append(location / size)
            // An extended inode may end in the next block.
            let end = (location + UInt64(DiskInode.extendedSize) - 1) / size
            if end != blocks.last! { blocks.append(end) }
        }
        blocks.sort()
        var last = UInt64.max
        for block in blocks where block != last {
            last = block
            if block * size < source.size && !metadataBlocks.contains(block) {
                source.readAhead(at: block * size, count: blockSize)
            }
        }
    }
}

/// Runs `body`, adding the path and nid to an error that does not name them yet.
public func withContext<T>(
    path: @autoclosure () -> String? = nil, nid: UInt64? = nil, _ body: () throws(EROFSError) -> T
)
    throws(EROFSError) -> T
{
    do {
        return try body()
    } catch {
        throw error.adding(path: path(), nid: nid)
    }
}

/// A small bounded map behind a lock: when full, the oldest half of the entries is dropped.
final class BoundedCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct State {
        var values: [Key: Value] = [:]
        var order: [Key] = []
    }
    private let state = Mutex(State())
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func value(for key: Key) -> Value? {
        state.withLock { $0.values[key] }
    }

    func contains(_ key: Key) -> Bool {
        state.withLock { $0.values[key] != nil }
    }

    func insert(_ value: Value, for key: Key) {
        state.withLock { state in
            if state.values.updateValue(value, forKey: key) == nil { state.order.append(key) }
            if state.order.count > capacity {
                let evicted = state.order.prefix(capacity / 2)
                for old in evicted { state.values[old] = nil }
                state.order.removeFirst(evicted.count)
            }
        }
    }
}
