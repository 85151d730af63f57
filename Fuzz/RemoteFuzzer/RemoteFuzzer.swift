// libFuzzer entry point over the parsers of what registries, token servers and S3 or HTTP
// servers send; see Fuzz/README.md and scripts/fuzz.sh. What runs is RemoteExercise
// (Fuzz/RemoteFuzzSupport), which RemoteSourcesTests replays on Fuzz/seeds/remote and
// Fuzz/findings/remote. A broken rule stops the fuzzer like a crash.
import FuzzDriver
import RemoteFuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func remoteFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    do {
        try RemoteExercise.run(UnsafeRawBufferPointer(start: data, count: size))
    } catch {
        fatalError("remote parser broke its contract: \(error)")
    }
    return 0
}

@_cdecl("RemoteFuzzer_main")
func remoteFuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, remoteFuzzerTestOneInput)
}
