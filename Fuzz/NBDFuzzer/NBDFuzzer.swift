import NBDProtocol
@_cdecl("LLVMFuzzerTestOneInput")
public func nbdFuzzerTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt { 0 }
