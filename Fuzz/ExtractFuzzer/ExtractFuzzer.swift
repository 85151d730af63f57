// libFuzzer entry point over `erofs ls --recursive` and `erofs extract`; see Fuzz/README.md and
// scripts/fuzz.sh. The input is a whole image; ExtractExercise (shared with ReaderTests) lists
// it and extracts it into a size-limited tmpfs.
import ExtractFuzzSupport
import FuzzDriver
import ReaderFuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func extractFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    ExtractExercise.run(image: ReaderExercise.image(fromFuzzerInput: data, count: size))
    return 0
}

@_cdecl("ExtractFuzzer_main")
func extractFuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, extractFuzzerTestOneInput)
}
