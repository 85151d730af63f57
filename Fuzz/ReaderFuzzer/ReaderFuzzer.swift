// libFuzzer entry point over the EROFS reader; see Fuzz/README.md and scripts/fuzz.sh.
// The input is a whole image; ReaderExercise (shared with ReaderTests) reads all of it.
import ReaderFuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func readerFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var image = Array(UnsafeBufferPointer(start: data, count: size))
    ReaderExercise.fixSuperblockChecksum(&image)
    ReaderExercise.run(image: image)
    return 0
}

// SwiftPM links an executable's entry point as `<Module>_main` (so tests can link the module);
// libFuzzer's own main is then not used, so ours hands over to libFuzzer's driver.
@_extern(c, "LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

@_cdecl("ReaderFuzzer_main")
func readerFuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, readerFuzzerTestOneInput)
}
