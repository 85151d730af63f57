import EROFSFormat
import ImageSources

/// Extra devices: the device table, and reading data by device id or unified address the way
/// the kernel's `erofs_map_dev` maps it.
extension EROFSFilesystem {
    static func readDeviceTable(
        _ superblock: Superblock, source: any RandomAccessSource, devices: [any RandomAccessSource]
    ) throws(EROFSError) -> DeviceTable {
        let range: Range<UInt64>
        do {
            range = try DeviceTable.location(in: superblock, imageSize: source.size)
        } catch {
            throw EROFSError(error)
        }
        var bytes: [UInt8] = []
        if !range.isEmpty {
            do {
                bytes = try source.read(count: Int(range.count), at: range.lowerBound)
            } catch {
                throw EROFSError(.io, "cannot read the device table: \(error)", offset: range.lowerBound)
            }
            guard bytes.count == range.count else {
                throw EROFSError(.io, "short read of the device table", offset: range.lowerBound)
            }
        }
        let table: DeviceTable
        do {
            table = try DeviceTable(decoding: bytes, superblock: superblock)
        } catch {
            throw EROFSError(error)
        }
        // The kernel refuses a device count that differs from the image's; fewer are accepted
        // here so that what lives on the primary stays readable, and a read that needs a missing
        // device fails naming it.
        guard devices.count <= table.slots.count else {
            throw EROFSError(.device, "\(devices.count) extra devices given, the image has \(table.slots.count)")
        }
        let blockSize = UInt64(superblock.blockSize)
        for (index, device) in devices.enumerated() {
            let slot = table.slots[index]
            let (needed, overflow) = slot.blocks.multipliedReportingOverflow(by: blockSize)
            if overflow || device.size < needed {
                throw EROFSError(
                    .device,
                    "\(describeDevice(index, slot)) is \(device.size) bytes, its slot says \(slot.blocks) blocks of \(blockSize) bytes",
                    path: device.displayName)
            }
        }
        return table
    }

    /// "extra device N (tag "...")", as messages name a slot (N counts from 1, as device ids do).
    static func describeDevice(_ index: Int, _ slot: DeviceSlot) -> String {
        let tag = slot.tagText
        return "extra device \(index + 1) (slot \(index), tag \(tag.isEmpty ? "empty" : "\"\(tag)\""))"
    }

    /// Exactly `count` bytes of file data at byte `address` of device `deviceID`: 0 is the
    /// primary image, whose addresses may fall in an extra device's unified range; N is the
    /// device in slot N - 1.
    func dataBytes(at address: UInt64, device deviceID: UInt16 = 0, count: Int) throws(EROFSError) -> [UInt8] {
        let slots = deviceTable.slots
        guard !slots.isEmpty else { return try imageBytes(at: address, count: count) }
        let blockSize = UInt64(self.blockSize)
        if deviceID != 0 {
            let index = Int(deviceID) - 1
            guard index < slots.count else {
                throw EROFSError(
                    .corrupt, "data on device \(deviceID), the image has \(slots.count) extra devices", offset: address)
            }
            guard devices.isEmpty else { return try extraDeviceBytes(index, at: address, count: count) }
            // Flat mode: the primary holds each device at its unified address. A slot without
            // one (mkfs.erofs 1.5 writes none) cannot be there; the kernel would read unrelated
            // bytes of the primary, we say which device is needed instead.
            let slot = slots[index]
            let base = slot.mappedBlockAddress.multipliedReportingOverflow(by: blockSize)
            let start = base.partialValue.addingReportingOverflow(address)
            let end = start.partialValue.addingReportingOverflow(UInt64(count))
            guard slot.mappedBlockAddress != 0, !base.overflow, !start.overflow, !end.overflow,
                end.partialValue <= source.size
            else { throw missingDevice(index, address: address) }
            return try imageBytes(at: start.partialValue, count: count)
        }
        if !devices.isEmpty {
            for (index, slot) in slots.enumerated() where slot.mappedBlockAddress != 0 {
                let start = slot.mappedBlockAddress.multipliedReportingOverflow(by: blockSize)
                let length = slot.blocks.multipliedReportingOverflow(by: blockSize)
                guard !start.overflow, !length.overflow, address >= start.partialValue,
                    address - start.partialValue < length.partialValue
                else { continue }
                return try extraDeviceBytes(index, at: address - start.partialValue, count: count)
            }
        }
        return try imageBytes(at: address, count: count)
    }

    private func extraDeviceBytes(_ index: Int, at offset: UInt64, count: Int) throws(EROFSError) -> [UInt8] {
        guard index < devices.count else { throw missingDevice(index, address: offset) }
        let device = devices[index]
        let slot = deviceTable.slots[index]
        let end = try checkedSum(offset, UInt64(count), "extra device offset")
        guard end <= device.size else {
            throw EROFSError(
                .device,
                "data beyond the end of \(Self.describeDevice(index, slot)) (\(device.size) bytes), length \(count)",
                path: device.displayName, offset: offset)
        }
        let bytes: [UInt8]
        do {
            bytes = try device.read(count: count, at: offset)
        } catch {
            throw EROFSError(
                .io, "read of \(Self.describeDevice(index, slot)) failed: \(error)", path: device.displayName,
                offset: offset)
        }
        guard bytes.count == count else {
            throw EROFSError(
                .io, "short read of \(Self.describeDevice(index, slot)): \(bytes.count) of \(count) bytes",
                path: device.displayName, offset: offset)
        }
        return bytes
    }

    private func missingDevice(_ index: Int, address: UInt64) -> EROFSError {
        let given =
            devices.isEmpty
            ? "no extra devices were given and the image does not hold it at its unified address"
            : "only \(devices.count) of \(deviceTable.slots.count) extra devices were given"
        return EROFSError(
            .device,
            "data is on \(Self.describeDevice(index, deviceTable.slots[index])), which is missing: \(given) (--device PATH)",
            offset: address)
    }
}
