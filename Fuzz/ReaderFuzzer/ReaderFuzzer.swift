// libFuzzer entry point over the EROFS reader; see Fuzz/README.md and scripts/fuzz.sh.
// The input is a whole image; ReaderExercise (shared with ReaderTests) reads all of it.
import FuzzDriver
import ReaderFuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func readerFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    ReaderExercise.run(image: ReaderExercise.image(fromFuzzerInput: data, count: size))
    return 0
}

@_cdecl("ReaderFuzzer_main")
func readerFuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, readerFuzzerTestOneInput)
}
