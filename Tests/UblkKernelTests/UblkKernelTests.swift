#if canImport(Glibc)
import Glibc
#endif
import IOURing
import Testing
import UblkKernel

/// The byte layouts and command codes against include/uapi/linux/ublk_cmd.h (values printed by
/// a C program built against the header: _IOWR('u', UBLK_CMD_ADD_DEV, struct ublksrv_ctrl_cmd)...).
@Suite struct UblkLayoutTests {
    @Test func ioctlEncodedCommandsMatchTheHeader() {
        #expect(Ublk.ControlCommand.addDevice.ioctlEncoded == 0xC020_7504)
        #expect(Ublk.ControlCommand.getDeviceInfo.ioctlEncoded == 0x8020_7502)
        #expect(Ublk.ControlCommand.getFeatures.ioctlEncoded == 0x8020_7513)
        #expect(Ublk.ControlCommand.stopDevice.ioctlEncoded == 0xC020_7507)
        #expect(Ublk.IOCommand.fetchRequest.ioctlEncoded == 0xC010_7520)
        #expect(Ublk.IOCommand.commitAndFetchRequest.ioctlEncoded == 0xC010_7521)
        // UBLK_U_IO_NEED_GET_DATA: _IOWR('u', 0x22, struct ublksrv_io_cmd).
        #expect(Ublk.IOCommand.needGetData.ioctlEncoded == 0xC010_7522)
    }

    @Test func controlCommandLayout() {
        var header = ControlCommandHeader(deviceID: 7)
        header.length = 64
        header.address = 0x1122_3344_5566_7788
        header.data = (42, 0)
        let bytes = header.bytes
        #expect(bytes.count == 32)
        #expect(Array(bytes[0..<4]) == [7, 0, 0, 0])
        #expect(Array(bytes[4..<6]) == [0xff, 0xff])  // queue_id: none
        #expect(Array(bytes[6..<8]) == [64, 0])
        #expect(Array(bytes[8..<16]) == [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        #expect(bytes[16] == 42)
    }

    @Test func deviceInfoRoundTrips() {
        var info = DeviceInfo(
            queueCount: 2, queueDepth: 64, maxIOBufferBytes: 512 * 1024, flags: [.userRecovery, .userRecoveryReissue])
        info.deviceID = 3
        info.serverPID = 1234
        let bytes = info.bytes
        #expect(bytes.count == 64)
        #expect(bytes[24] == 0x18)  // flags at offset 24: bits 3 and 4
        #expect(DeviceInfo(bytes: bytes) == info)
    }

    @Test func parametersLayout() {
        let parameters = DeviceParameters(
            logicalBlockShift: 9, physicalBlockShift: 12, optimalIOShift: 12, minimumIOShift: 9,
            maxSectors: 1024, deviceSectors: 0x1_0000_0001)
        let bytes = parameters.bytes
        #expect(bytes.count == DeviceParameters.size)
        #expect(Array(bytes[0..<8]) == [40, 0, 0, 0, 1, 0, 0, 0])  // len, types = BASIC
        #expect(Array(bytes[8..<16]) == [1, 0, 0, 0, 9, 12, 12, 9])  // READ_ONLY, shifts
        #expect(Array(bytes[16..<20]) == [0, 4, 0, 0])  // max_sectors
        #expect(Array(bytes[24..<32]) == [1, 0, 0, 0, 1, 0, 0, 0])  // dev_sectors
    }

    @Test func ioDescriptorDecodes() {
        var raw: [UInt8] = Array(repeating: 0, count: 48)
        raw[24] = 0; raw[25] = 0x20  // tag 1: op READ, flag bit 13 (FUA)
        raw[28] = 8  // 8 sectors
        raw[32] = 0x10  // start sector 16
        let descriptor = raw.withUnsafeBytes { IODescriptor(array: $0.baseAddress!, tag: 1) }
        #expect(descriptor.operation == .read)
        #expect(descriptor.sectorCount == 8)
        #expect(descriptor.startSector == 16)
    }
}

@Suite struct IOURingTests {
    /// A NOP goes through the real rings and comes back with its user data.
    @Test func nopRoundTrip() throws {
        let ring = try IOURing(entries: 4, flags: .sqe128)
        for value in [UInt64(1), 0xdead_beef] {
            #expect(
                ring.prepare { sqe in
                    sqe.storeBytes(of: IOURing.Opcode.nop.rawValue, toByteOffset: 0, as: UInt8.self)
                    sqe.storeBytes(of: value, toByteOffset: 32, as: UInt64.self)
                })
        }
        try ring.submit(waitFor: 2)
        var seen: [IOURing.Completion] = []
        ring.reap { seen.append($0) }
        #expect(seen.map(\.userData) == [1, 0xdead_beef])
        #expect(seen.allSatisfy { $0.result == 0 })
    }

    /// The ring refuses a fifth SQE before a submit rather than overwrite one.
    @Test func fullRingRefuses() throws {
        let ring = try IOURing(entries: 4)
        for _ in 0..<4 { #expect(ring.prepare { _ in }) }
        #expect(!ring.prepare { _ in })
        try ring.submit(waitFor: 4)
        ring.reap { _ in }
        #expect(ring.prepare { _ in })
    }
}
