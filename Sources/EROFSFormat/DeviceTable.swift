/// One slot of the device table: an extra device (blob) that chunk-based data may live on.
/// Layout per erofs-utils 1.9.3's `struct erofs_deviceslot` (128 bytes): tag[64], blocks_lo
/// (le32), uniaddr_lo (le32), blocks_hi (le16), uniaddr_hi (le16), 52 reserved bytes. The high
/// halves count only when the image has the 48BIT feature (older images leave them as reserved).
public struct DeviceSlot: Sendable, Equatable {
    /// EROFS_DEVT_SLOT_SIZE: sizeof(struct erofs_deviceslot)
    public static let size = 128
    /// sizeof(erofs_deviceslot.tag)
    public static let tagSize = 64

    /// Identifies the device (mkfs.erofs 1.9.3 writes a digest or a name; 1.5 leaves it zero).
    public var tag: [UInt8]
    /// Size of the device in blocks (0 when mkfs did not record it).
    public var blocks: UInt64
    /// First block of the device in the unified address space (0: not mapped there).
    public var mappedBlockAddress: UInt64

    public init(tag: [UInt8], blocks: UInt64, mappedBlockAddress: UInt64) {
        self.tag = tag
        self.blocks = blocks
        self.mappedBlockAddress = mappedBlockAddress
    }

    /// Decodes one 128-byte slot.
    public init(decoding bytes: some Collection<UInt8>, has48BitFields: Bool) throws(FormatError) {
        let raw = Array(bytes)
        guard raw.count >= DeviceSlot.size else {
            throw FormatError("device slot truncated: \(raw.count) of \(DeviceSlot.size) bytes")
        }
        tag = Array(raw[0..<DeviceSlot.tagSize])
        let blocksHigh: UInt64 = has48BitFields ? UInt64(raw.le16(at: 72)) << 32 : 0
        let addressHigh: UInt64 = has48BitFields ? UInt64(raw.le16(at: 74)) << 32 : 0
        blocks = UInt64(raw.le32(at: 64)) | blocksHigh
        mappedBlockAddress = UInt64(raw.le32(at: 68)) | addressHigh
    }

    /// The tag as text: up to its first NUL, non-printable bytes escaped; "" when empty.
    public var tagText: String {
        var text = ""
        for byte in tag.prefix(while: { $0 != 0 }) {
            if (0x20..<0x7F).contains(byte) && byte != 0x5C {
                text.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return text
    }
}

/// Where the device table sits and how to decode it, checked against the image before anything
/// is allocated: a hostile count or offset yields an error, never a trap or a huge read.
public struct DeviceTable: Sendable, Equatable {
    public var slots: [DeviceSlot]
    /// `device_id` bits that select a device: the kernel's `device_id_mask`,
    /// roundup_pow_of_two(extra devices + 1) - 1.
    public var deviceIDMask: UInt16

    /// The number of extra devices the kernel honours: 0 unless the DEVICE_TABLE feature is set.
    public static func extraDeviceCount(of superblock: Superblock) -> Int {
        superblock.featureIncompat.contains(.deviceTable) ? Int(superblock.extraDevices) : 0
    }

    /// Byte range of the table in the primary image (empty when there are no extra devices).
    /// Throws when the table does not fit inside an image of `imageSize` bytes.
    public static func location(in superblock: Superblock, imageSize: UInt64) throws(FormatError) -> Range<UInt64> {
        let count = UInt64(extraDeviceCount(of: superblock))
        let start = UInt64(superblock.deviceTableSlotOffset) * UInt64(DeviceSlot.size)
        // Both factors are 16-bit, so neither product can overflow.
        let end = start + count * UInt64(DeviceSlot.size)
        guard count > 0 else { return start..<start }
        guard end <= imageSize else {
            throw FormatError(
                "corrupt device table: \(count) slots at offset \(start) end at \(end), beyond the image (\(imageSize) bytes)",
                offset: start)
        }
        return start..<end
    }

    /// Decodes the table from its bytes (exactly the range `location` returned).
    public init(decoding bytes: [UInt8], superblock: Superblock) throws(FormatError) {
        let count = DeviceTable.extraDeviceCount(of: superblock)
        guard bytes.count == count * DeviceSlot.size else {
            throw FormatError("device table: \(bytes.count) bytes for \(count) slots of \(DeviceSlot.size)")
        }
        let has48Bit = superblock.featureIncompat.contains(.bits48)
        var slots: [DeviceSlot] = []
        slots.reserveCapacity(count)
        for index in 0..<count {
            let start = index * DeviceSlot.size
            slots.append(try DeviceSlot(decoding: bytes[start..<(start + DeviceSlot.size)], has48BitFields: has48Bit))
        }
        self.slots = slots
        var mask: UInt32 = 1
        while mask < UInt32(count) + 1 { mask <<= 1 }
        deviceIDMask = UInt16(truncatingIfNeeded: mask - 1)
    }
}
