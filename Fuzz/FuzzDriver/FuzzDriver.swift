// SwiftPM links an executable's entry point as `<Module>_main` (so tests can link the module),
// which displaces libFuzzer's own main: each fuzzer's `<Module>_main` hands over to libFuzzer's
// driver through this.

@_extern(c, "LLVMFuzzerRunDriver")
func llvmFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// Runs libFuzzer with the process's arguments, calling `testOneInput` for every input.
public func runLibFuzzer(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
    _ testOneInput: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt {
    var argc = argc
    var argv = argv
    return llvmFuzzerRunDriver(&argc, &argv, testOneInput)
}

/// Runs `check` on one input. A thrown error is a finding (a broken rule of the code under test,
/// not a refused input): it stops the fuzzer like a crash, with `what` and the error.
public func checkOneInput<Failure: Error>(
    _ data: UnsafePointer<UInt8>, _ size: Int, _ what: String,
    _ check: (UnsafeRawBufferPointer) throws(Failure) -> Void
) -> CInt {
    do {
        try check(UnsafeRawBufferPointer(start: data, count: size))
    } catch {
        fatalError("\(what): \(error)")
    }
    return 0
}
