import EROFSFormat
import Testing

@Suite struct DeviceTableTests {
    /// A minimal valid superblock (4 KiB blocks) with the given device table fields.
    static func superblock(
        extraDevices: UInt16, slotOffset: UInt16, features: IncompatFeatures = [.chunkedFile, .deviceTable]
    ) throws -> Superblock {
        var bytes = [UInt8](repeating: 0, count: 128)
        func put(_ value: UInt64, at offset: Int, width: Int) {
            for index in 0..<width { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        put(UInt64(Superblock.magic), at: 0, width: 4)
        bytes[12] = 12
        put(UInt64(features.rawValue), at: 80, width: 4)
        put(UInt64(extraDevices), at: 86, width: 2)
        put(UInt64(slotOffset), at: 88, width: 2)
        return try Superblock(decoding: bytes)
    }

    static func slotBytes(tag: String, blocksLow: UInt32, addressLow: UInt32, blocksHigh: UInt16, addressHigh: UInt16)
        -> [UInt8]
    {
        var bytes = [UInt8](repeating: 0, count: DeviceSlot.size)
        bytes.replaceSubrange(0..<tag.utf8.count, with: tag.utf8)
        for index in 0..<4 {
            bytes[64 + index] = UInt8(truncatingIfNeeded: blocksLow >> (8 * index))
            bytes[68 + index] = UInt8(truncatingIfNeeded: addressLow >> (8 * index))
        }
        for index in 0..<2 {
            bytes[72 + index] = UInt8(truncatingIfNeeded: blocksHigh >> (8 * index))
            bytes[74 + index] = UInt8(truncatingIfNeeded: addressHigh >> (8 * index))
        }
        bytes[100] = 0xFF  // reserved: ignored
        return bytes
    }

    @Test func slotFieldsAndTheirHighHalves() throws {
        let bytes = Self.slotBytes(
            tag: "blob-0", blocksLow: 0x1234_5678, addressLow: 0x9ABC_DEF0, blocksHigh: 0x12, addressHigh: 0x34)
        let narrow = try DeviceSlot(decoding: bytes, has48BitFields: false)
        #expect(narrow == DeviceSlot(tag: Array(bytes[0..<64]), blocks: 0x1234_5678, mappedBlockAddress: 0x9ABC_DEF0))
        #expect(narrow.tagText == "blob-0")
        let wide = try DeviceSlot(decoding: bytes, has48BitFields: true)
        #expect(wide.blocks == 0x12_1234_5678 && wide.mappedBlockAddress == 0x34_9ABC_DEF0)
        #expect(throws: FormatError.self) { try DeviceSlot(decoding: bytes.prefix(127), has48BitFields: false) }
        var odd = bytes
        odd[0] = 0x01; odd[1] = 0x5C
        #expect(try DeviceSlot(decoding: odd, has48BitFields: false).tagText == "\\x01\\x5cob-0")
    }

    @Test func idMaskIsTheKernels() throws {
        // roundup_pow_of_two(devices + 1) - 1
        for (devices, mask) in [(1, 1), (2, 3), (3, 3), (4, 7), (7, 7), (8, 15), (65535, 65535)] as [(UInt16, UInt16)] {
            let block = try Self.superblock(extraDevices: devices, slotOffset: 16)
            let table = try DeviceTable(
                decoding: [UInt8](repeating: 0, count: Int(devices) * DeviceSlot.size), superblock: block)
            #expect(table.deviceIDMask == mask, "\(devices) devices")
            #expect(table.slots.count == Int(devices))
        }
    }

    @Test func noDeviceTableFeatureMeansNoDevices() throws {
        let block = try Self.superblock(extraDevices: 5, slotOffset: 16, features: [.chunkedFile])
        #expect(DeviceTable.extraDeviceCount(of: block) == 0)
        #expect(try DeviceTable.location(in: block, imageSize: 4096).isEmpty)
        let table = try DeviceTable(decoding: [], superblock: block)
        #expect(table.slots.isEmpty && table.deviceIDMask == 0)
    }

    /// Hostile counts and offsets: an error naming the table, before anything is read.
    @Test(arguments: [(UInt16(65535), UInt16(65535)), (1, 65535), (65535, 9), (32, 9)])
    func tableBeyondTheImageIsRefused(devices: UInt16, slotOffset: UInt16) throws {
        let block = try Self.superblock(extraDevices: devices, slotOffset: slotOffset)
        let error = #expect(throws: FormatError.self) { try DeviceTable.location(in: block, imageSize: 4096) }
        #expect(error?.message.contains("corrupt device table") == true)
        #expect(error?.offset == UInt64(slotOffset) * 128)
    }

    @Test func tableInsideTheImageIsLocated() throws {
        let block = try Self.superblock(extraDevices: 2, slotOffset: 9)
        #expect(try DeviceTable.location(in: block, imageSize: 4096) == 1152..<1408)
        #expect(throws: FormatError.self) {
            try DeviceTable(decoding: [UInt8](repeating: 0, count: 128), superblock: block)
        }
    }
}
