#if canImport(Glibc)
import Glibc
#endif
import IOURing
import SystemCalls

/// The ublk driver's user interface (include/uapi/linux/ublk_cmd.h), as value types that
/// encode themselves to the kernel's little-endian layout.
public enum Ublk {
    public static let controlPath = "/dev/ublk-control"
    public static func characterDevice(_ id: UInt32) -> String { "/dev/ublkc\(id)" }
    public static func blockDevice(_ id: UInt32) -> String { "/dev/ublkb\(id)" }

    /// Control command numbers (legacy opcodes; the ioctl-encoded form wraps them).
    public enum ControlCommand: UInt32, Sendable {
        case getDeviceInfo = 0x02, addDevice = 0x04, deleteDevice = 0x05, startDevice = 0x06, stopDevice = 0x07
        case setParameters = 0x08, getParameters = 0x09, startUserRecovery = 0x10, endUserRecovery = 0x11
        case getFeatures = 0x13

        /// _IOR for the getters, _IOWR for the rest, on 'u' with a 32-byte ublksrv_ctrl_cmd.
        public var ioctlEncoded: UInt32 {
            let readOnly: Bool =
                switch self {
                case .getDeviceInfo, .getParameters, .getFeatures: true;
                default: false
                }
            return ioctlCode(direction: readOnly ? 2 : 3, number: rawValue, size: ControlCommandHeader.size)
        }
    }

    /// I/O command numbers, sent on /dev/ublkcN.
    public enum IOCommand: UInt32, Sendable {
        case fetchRequest = 0x20, commitAndFetchRequest = 0x21, needGetData = 0x22
        public var ioctlEncoded: UInt32 { ioctlCode(direction: 3, number: rawValue, size: IOCommandPayload.size) }
    }

    static func ioctlCode(direction: UInt32, number: UInt32, size: Int) -> UInt32 {
        direction << 30 | UInt32(size) << 16 | UInt32(UInt8(ascii: "u")) << 8 | number
    }

    /// UBLK_F_*: device features (ADD_DEV flags, GET_FEATURES bits).
    public struct Features: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let supportZeroCopy = Features(rawValue: 1 << 0)
        public static let uringCommandCompletionInTask = Features(rawValue: 1 << 1)
        public static let needGetData = Features(rawValue: 1 << 2)
        public static let userRecovery = Features(rawValue: 1 << 3)
        public static let userRecoveryReissue = Features(rawValue: 1 << 4)
        public static let unprivilegedDevice = Features(rawValue: 1 << 5)
        public static let commandIoctlEncode = Features(rawValue: 1 << 6)
        public static let userCopy = Features(rawValue: 1 << 7)
        public static let autoBufferRegistration = Features(rawValue: 1 << 11)
    }

    /// UBLK_S_DEV_*.
    public enum DeviceState: UInt16, Sendable { case dead = 0, live = 1, quiesced = 2, failIO = 3 }

    /// Completion results of FETCH_REQ / COMMIT_AND_FETCH_REQ.
    public static let resultOK: Int32 = 0
    public static let resultNeedGetData: Int32 = 1
    public static let resultAbort: Int32 = -ENODEV
    public static let maxQueueDepth = 4096
    /// Each queue's descriptor array sits at this stride in /dev/ublkcN's mapping.
    public static var descriptorAreaStride: Int {
        let bytes = maxQueueDepth * IODescriptor.size
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        return (bytes + page - 1) / page * page
    }
}

/// struct ublksrv_ctrl_cmd (32 bytes): dev_id, queue_id, len, addr, data[2].
public struct ControlCommandHeader: Sendable, Equatable {
    public static let size = 32
    public static let anyDevice = UInt32.max
    public var deviceID: UInt32
    public var queueID: UInt16 = .max
    public var length: UInt16 = 0
    public var address: UInt64 = 0
    public var data: (UInt64, UInt64) = (0, 0)

    public init(deviceID: UInt32) { self.deviceID = deviceID }

    public var bytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: deviceID.littleEndian, toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: queueID.littleEndian, toByteOffset: 4, as: UInt16.self)
            raw.storeBytes(of: length.littleEndian, toByteOffset: 6, as: UInt16.self)
            raw.storeBytes(of: address.littleEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: data.0.littleEndian, toByteOffset: 16, as: UInt64.self)
            raw.storeBytes(of: data.1.littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        return bytes
    }

    public static func == (a: Self, b: Self) -> Bool { a.bytes == b.bytes }
}

/// struct ublksrv_ctrl_dev_info (64 bytes).
public struct DeviceInfo: Sendable, Equatable {
    public static let size = 64
    public var queueCount: UInt16
    public var queueDepth: UInt16
    public var state: UInt16 = 0
    public var maxIOBufferBytes: UInt32
    public var deviceID: UInt32 = ControlCommandHeader.anyDevice
    public var serverPID: Int32 = 0
    public var flags: Ublk.Features

    public init(queueCount: UInt16, queueDepth: UInt16, maxIOBufferBytes: UInt32, flags: Ublk.Features) {
        self.queueCount = queueCount
        self.queueDepth = queueDepth
        self.maxIOBufferBytes = maxIOBufferBytes
        self.flags = flags
    }

    public var bytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: queueCount.littleEndian, toByteOffset: 0, as: UInt16.self)
            raw.storeBytes(of: queueDepth.littleEndian, toByteOffset: 2, as: UInt16.self)
            raw.storeBytes(of: state.littleEndian, toByteOffset: 4, as: UInt16.self)
            raw.storeBytes(of: maxIOBufferBytes.littleEndian, toByteOffset: 8, as: UInt32.self)
            raw.storeBytes(of: deviceID.littleEndian, toByteOffset: 12, as: UInt32.self)
            raw.storeBytes(of: serverPID.littleEndian, toByteOffset: 16, as: Int32.self)
            raw.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        return bytes
    }

    public init(bytes: [UInt8]) {
        precondition(bytes.count >= Self.size)
        func load<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
        }
        queueCount = load(0, UInt16.self)
        queueDepth = load(2, UInt16.self)
        state = load(4, UInt16.self)
        maxIOBufferBytes = load(8, UInt32.self)
        deviceID = load(12, UInt32.self)
        serverPID = load(16, Int32.self)
        flags = Ublk.Features(rawValue: load(24, UInt64.self))
    }
}

/// struct ublk_params with only struct ublk_param_basic (types = UBLK_PARAM_TYPE_BASIC): no
/// discard parameters, so the device offers no discard.
public struct DeviceParameters: Sendable, Equatable {
    /// len, types, then ublk_param_basic (32 bytes) at offset 8; the kernel copies `len` bytes.
    public static let size = 8 + 32
    public static let typeBasic: UInt32 = 1 << 0
    public static let attributeReadOnly: UInt32 = 1 << 0
    public var attributes: UInt32 = DeviceParameters.attributeReadOnly
    public var logicalBlockShift: UInt8
    public var physicalBlockShift: UInt8
    public var optimalIOShift: UInt8
    public var minimumIOShift: UInt8
    public var maxSectors: UInt32
    public var deviceSectors: UInt64

    public init(
        logicalBlockShift: UInt8, physicalBlockShift: UInt8, optimalIOShift: UInt8, minimumIOShift: UInt8,
        maxSectors: UInt32, deviceSectors: UInt64, readOnly: Bool = true
    ) {
        self.logicalBlockShift = logicalBlockShift
        self.physicalBlockShift = physicalBlockShift
        self.optimalIOShift = optimalIOShift
        self.minimumIOShift = minimumIOShift
        self.maxSectors = maxSectors
        self.deviceSectors = deviceSectors
        self.attributes = readOnly ? Self.attributeReadOnly : 0
    }

    public var bytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(Self.size).littleEndian, toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: Self.typeBasic.littleEndian, toByteOffset: 4, as: UInt32.self)
            raw.storeBytes(of: attributes.littleEndian, toByteOffset: 8, as: UInt32.self)
            raw.storeBytes(of: logicalBlockShift, toByteOffset: 12, as: UInt8.self)
            raw.storeBytes(of: physicalBlockShift, toByteOffset: 13, as: UInt8.self)
            raw.storeBytes(of: optimalIOShift, toByteOffset: 14, as: UInt8.self)
            raw.storeBytes(of: minimumIOShift, toByteOffset: 15, as: UInt8.self)
            raw.storeBytes(of: maxSectors.littleEndian, toByteOffset: 16, as: UInt32.self)
            // chunk_sectors (20) 0, dev_sectors at 24, virt_boundary_mask (32) 0.
            raw.storeBytes(of: deviceSectors.littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        return bytes
    }
}

/// struct ublksrv_io_desc (24 bytes), read from the shared descriptor array of a queue.
public struct IODescriptor: Sendable, Equatable {
    public static let size = 24
    public enum Operation: UInt8, Sendable {
        case read = 0, write = 1, flush = 2, discard = 3, writeSame = 4, writeZeroes = 5
    }
    /// op in bits 0-7, flags above.
    public var operationAndFlags: UInt32
    public var sectorCount: UInt32
    public var startSector: UInt64
    public var address: UInt64

    public var operation: Operation? { Operation(rawValue: UInt8(truncatingIfNeeded: operationAndFlags)) }

    public init(operationAndFlags: UInt32, sectorCount: UInt32, startSector: UInt64, address: UInt64 = 0) {
        self.operationAndFlags = operationAndFlags
        self.sectorCount = sectorCount
        self.startSector = startSector
        self.address = address
    }

    /// Decodes descriptor `tag` of an array the kernel maps read-only.
    public init(array: UnsafeRawPointer, tag: Int) {
        let base = array + tag * Self.size
        operationAndFlags = UInt32(littleEndian: base.loadUnaligned(as: UInt32.self))
        sectorCount = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        startSector = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        address = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
    }
}

/// struct ublksrv_io_cmd (16 bytes): q_id, tag, result, addr (the tag's buffer).
public struct IOCommandPayload: Sendable, Equatable {
    public static let size = 16
    public var queueID: UInt16
    public var tag: UInt16
    public var result: Int32
    public var bufferAddress: UInt64

    public init(queueID: UInt16, tag: UInt16, result: Int32, bufferAddress: UInt64) {
        self.queueID = queueID
        self.tag = tag
        self.result = result
        self.bufferAddress = bufferAddress
    }

    /// Writes the payload into a 16-byte area (a stack buffer; the SQE copies it).
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeTemporaryAllocation(byteCount: Self.size, alignment: 8) { raw in
            raw.storeBytes(of: queueID.littleEndian, toByteOffset: 0, as: UInt16.self)
            raw.storeBytes(of: tag.littleEndian, toByteOffset: 2, as: UInt16.self)
            raw.storeBytes(of: result.littleEndian, toByteOffset: 4, as: Int32.self)
            raw.storeBytes(of: bufferAddress.littleEndian, toByteOffset: 8, as: UInt64.self)
            return body(UnsafeRawBufferPointer(raw))
        }
    }
}

/// /dev/ublk-control with an io_uring of 128-byte SQEs: control commands go as URING_CMD,
/// ioctl-encoded where the kernel says it takes them (UBLK_F_CMD_IOCTL_ENCODE), else the
/// legacy opcodes (Linux 6.1).
public final class UblkControl {
    public let descriptor: Int32
    let ring: IOURing
    /// What GET_FEATURES reported; empty on kernels without it (before 6.5).
    public let features: Ublk.Features
    public let ioctlEncoding: Bool

    /// Opens the control device; a missing device (no ublk_drv) is ENOENT.
    public init() throws(SystemError) {
        let fd = open(Ublk.controlPath, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .lastErrno("open", path: Ublk.controlPath) }
        let ring: IOURing
        do { ring = try IOURing(entries: 4, flags: .sqe128) } catch { close(fd); throw error }
        self.descriptor = fd
        self.ring = ring
        var found: Ublk.Features?
        var encoded = false
        for ioctl in [true, false] {
            var value: UInt64 = 0
            let result = withUnsafeMutableBytes(of: &value) { out in
                Self.send(
                    ring: ring, fd: fd, .getFeatures, ioctl: ioctl, deviceID: ControlCommandHeader.anyDevice,
                    buffer: out)
            }
            if result == 0 {
                found = Ublk.Features(rawValue: UInt64(littleEndian: value))
                encoded = ioctl || found!.contains(.commandIoctlEncode)
                break
            }
        }
        self.features = found ?? []
        self.ioctlEncoding = encoded
    }

    deinit { close(descriptor) }

    private static func send(
        ring: IOURing, fd: Int32, _ command: Ublk.ControlCommand, ioctl: Bool, deviceID: UInt32,
        buffer: UnsafeMutableRawBufferPointer?, data: UInt64 = 0
    ) -> Int32 {
        var header = ControlCommandHeader(deviceID: deviceID)
        if let buffer {
            header.address = UInt64(UInt(bitPattern: buffer.baseAddress))
            header.length = UInt16(buffer.count)
        }
        header.data.0 = data
        let opcode = ioctl ? command.ioctlEncoded : command.rawValue
        return header.bytes.withUnsafeBytes { payload in
            do throws(SystemError) { return try ring.run(fd: fd, command: opcode, payload: payload) } catch {
                return -Int32(error.errno?.rawValue ?? EIO)
            }
        }
    }

    /// Runs `command` with `bytes` as its in/out buffer.
    func run(_ command: Ublk.ControlCommand, deviceID: UInt32, bytes: inout [UInt8]) throws(SystemError) {
        var failure: SystemError?
        bytes.withUnsafeMutableBytes { raw in
            do throws(SystemError) { try run(command, deviceID: deviceID, buffer: raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    func run(
        _ command: Ublk.ControlCommand, deviceID: UInt32, buffer: UnsafeMutableRawBufferPointer? = nil,
        data: UInt64 = 0
    ) throws(SystemError) {
        let result = Self.send(
            ring: ring, fd: descriptor, command, ioctl: ioctlEncoding, deviceID: deviceID, buffer: buffer, data: data)
        guard result >= 0 else {
            throw SystemError(
                "ublk \(command)",
                path: deviceID == ControlCommandHeader.anyDevice ? Ublk.controlPath : Ublk.characterDevice(deviceID),
                errno: .init(rawValue: -result))
        }
    }

    /// ADD_DEV: returns the device as the kernel made it (its id, the flags it kept).
    public func addDevice(_ info: DeviceInfo) throws(SystemError) -> DeviceInfo {
        var bytes = info.bytes
        try run(.addDevice, deviceID: info.deviceID, bytes: &bytes)
        return DeviceInfo(bytes: bytes)
    }

    public func setParameters(_ parameters: DeviceParameters, deviceID: UInt32) throws(SystemError) {
        var bytes = parameters.bytes
        try run(.setParameters, deviceID: deviceID, bytes: &bytes)
    }

    public func deviceInfo(_ deviceID: UInt32) throws(SystemError) -> DeviceInfo {
        var bytes = [UInt8](repeating: 0, count: DeviceInfo.size)
        try run(.getDeviceInfo, deviceID: deviceID, bytes: &bytes)
        return DeviceInfo(bytes: bytes)
    }

    /// START_DEV: waits in the kernel until every tag of every queue has a FETCH_REQ, so the
    /// serving process sends it once its queues are armed. `serverPID` is that process.
    public func start(_ deviceID: UInt32, serverPID: Int32) throws(SystemError) {
        try run(.startDevice, deviceID: deviceID, data: UInt64(serverPID))
    }

    public func stop(_ deviceID: UInt32) throws(SystemError) { try run(.stopDevice, deviceID: deviceID) }

    /// DEL_DEV: waits until /dev/ublkcN is closed by every process.
    public func delete(_ deviceID: UInt32) throws(SystemError) { try run(.deleteDevice, deviceID: deviceID) }
}

extension DeviceInfo {
    /// The driver's UBLK_S_DEV_* word; nil for a value this code does not know.
    public var deviceState: Ublk.DeviceState? { Ublk.DeviceState(rawValue: state) }
}

extension UblkControl {
    /// START_USER_RECOVERY: a device whose server died (UBLK_F_USER_RECOVERY) takes a new one.
    public func startUserRecovery(_ deviceID: UInt32) throws(SystemError) {
        try run(.startUserRecovery, deviceID: deviceID)
    }

    /// START_USER_RECOVERY once the device allows it, waiting at most `timeout` seconds.
    ///
    /// The driver takes it only when (a) the dead server's /dev/ublkcN is closed (its
    /// io_uring's requests hold the file until they are cancelled at the task's exit and
    /// freed) and (b) the device is QUIESCED: the cancel function that ran at that exit has
    /// requeued what the server held (REISSUE) and queued the quiesce work. Both follow the
    /// server's death by a little, during which the driver answers EBUSY (6.12's
    /// ublk_ctrl_start_recovery). A server still alive keeps the device LIVE: that EBUSY lasts
    /// until the timeout. A stopped device (DEAD) cannot be recovered: that fails at once.
    public func startUserRecovery(_ deviceID: UInt32, waitingUpTo timeout: Double) throws(SystemError) {
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        var pause: UInt32 = 1000
        while true {
            do throws(SystemError) {
                try startUserRecovery(deviceID)
                return
            } catch {
                guard error.errno?.rawValue == EBUSY else { throw error }
                if let state = try? deviceInfo(deviceID).deviceState, state == .dead {
                    throw SystemError(
                        "ublk \(Ublk.ControlCommand.startUserRecovery)", path: Ublk.characterDevice(deviceID),
                        detail: "the device was stopped: it cannot take a new server")
                }
                var now = timespec()
                clock_gettime(CLOCK_MONOTONIC, &now)
                let waited = Double(now.tv_sec - start.tv_sec) + Double(now.tv_nsec - start.tv_nsec) / 1e9
                guard waited < timeout else {
                    let live = (try? deviceInfo(deviceID).deviceState) == .live
                    throw SystemError(
                        "ublk \(Ublk.ControlCommand.startUserRecovery)", path: Ublk.characterDevice(deviceID),
                        detail: live
                            ? "the device is still served (its server is alive) after \(Int(timeout)) s"
                            : "the device did not become recoverable within \(Int(timeout)) s")
                }
                usleep(pause)
                pause = min(pause * 2, 20_000)
            }
        }
    }

    /// END_USER_RECOVERY: the new server (`serverPID`) has fetched every tag.
    public func endUserRecovery(_ deviceID: UInt32, serverPID: Int32) throws(SystemError) {
        try run(.endUserRecovery, deviceID: deviceID, data: UInt64(serverPID))
    }
}
