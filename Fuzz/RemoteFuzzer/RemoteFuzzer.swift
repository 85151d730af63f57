// libFuzzer entry point over the parsers of what registries, token servers and S3 or HTTP
// servers send; see Fuzz/README.md and scripts/fuzz.sh. What runs is RemoteExercise
// (Fuzz/RemoteFuzzSupport), which RemoteSourcesTests replays on Fuzz/seeds/remote and
// Fuzz/findings/remote. A broken rule stops the fuzzer like a crash.
import FuzzDriver
import RemoteFuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func remoteFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    checkOneInput(data, size, "remote parser broke its contract") { input throws(RemoteExercise.Violation) in
        try RemoteExercise.run(input)
    }
}

@_cdecl("RemoteFuzzer_main")
func remoteFuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, remoteFuzzerTestOneInput)
}
