// libFuzzer entry point over the FUSE request decoder and the request handling; see
// Fuzz/README.md and scripts/fuzz.sh.
//
// The input is what reads of /dev/fuse could return, one request after another (each cut at
// its header's length). Each is decoded; with FUSE_FUZZ_IMAGE naming an EROFS image
// (scripts/fuzz.sh passes one of mkfs.erofs's), each decoded request is also answered by
// FUSEOperations on it, and every answer is checked as the kernel checks it
// (FUSEFuzzSupport). A broken rule stops the fuzzer like a crash.
import EROFSReader
import FUSEFuzzSupport
import FUSEServer
import FuzzDriver

#if canImport(Glibc)
import Glibc
#endif

nonisolated(unsafe) let operations: FUSEOperations? = {
    guard let path = getenv("FUSE_FUZZ_IMAGE").map({ String(cString: $0) }) else { return nil }
    do {
        return FUSEExercise.operations(for: try EROFSFilesystem(path: path))
    } catch {
        fatalError("FUSE_FUZZ_IMAGE \(path): \(error)")
    }
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuseFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    checkOneInput(data, size, "FUSE answer the kernel would refuse") { input throws(FUSEExercise.Violation) in
        _ = try FUSEExercise.run(input, operations: operations)
    }
}

@_cdecl("FUSEFuzzer_main")
func fuseFuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, fuseFuzzerTestOneInput)
}
