// Usage: HTTPClientChoice URL SIZE_MIB
// Sequential read of SIZE_MIB MiB in 1 and 4 MiB ranges, then 400 random 4 KiB ranges (QD1),
// with each client used the way a synchronous RandomAccessSource would use it.
import AsyncHTTPClient
import CCurlBench
import Dispatch
import Foundation
import NIOCore

let url = CommandLine.arguments[1]
let total = Int(CommandLine.arguments[2])! << 20

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
/// CPU seconds of the whole process (every thread: AsyncHTTPClient's event loop included).
func cpu() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &spec)
    return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}

protocol RangeClient { func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int }

final class AHCClient: RangeClient {
    let client = HTTPClient(eventLoopGroupProvider: .singleton)
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        var request = try! HTTPClient.Request(url: url)
        request.headers.add(name: "Range", value: "bytes=\(offset)-\(offset + buffer.count - 1)")
        // The synchronous bridge: a future waited on from a thread that is not an event loop.
        let response = try! client.execute(request: request).wait()
        precondition(response.status.code == 206)
        var body = response.body!
        let count = body.readableBytes
        body.withUnsafeReadableBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: count) }
        return count
    }
}

final class CurlClient: RangeClient {
    let handle = curl_easy_init()!
    struct Sink { var buffer: UnsafeMutableRawBufferPointer; var filled: Int }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        var sink = Sink(buffer: buffer, filled: 0)
        bench_setopt_ptr(handle, CURLOPT_URL, url)
        bench_setopt_ptr(handle, CURLOPT_RANGE, "\(offset)-\(offset + buffer.count - 1)")
        bench_setopt_write(handle) { data, size, count, context in
            let sink = context!.assumingMemoryBound(to: Sink.self)
            let n = size * count
            let room = min(n, sink.pointee.buffer.count - sink.pointee.filled)
            (sink.pointee.buffer.baseAddress! + sink.pointee.filled).copyMemory(from: data!, byteCount: room)
            sink.pointee.filled += room
            return n
        }
        withUnsafeMutablePointer(to: &sink) { pointer in
            bench_setopt_ptr(handle, CURLOPT_WRITEDATA, pointer)
            let code = curl_easy_perform(handle)
            precondition(code == CURLE_OK, String(cString: curl_easy_strerror(code)))
        }
        precondition(bench_status(handle) == 206)
        return sink.filled
    }
}

func measure(_ name: String, _ client: RangeClient) {
    for rangeMiB in [1, 4] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: rangeMiB << 20, alignment: 64)
        var offsets = 0
        let start = now(), startCPU = cpu()
        while offsets < total {
            let got = client.read(into: buffer, at: offsets)
            precondition(got > 0, "\(name): empty read at \(offsets)")
            offsets += got
        }
        let seconds = now() - start
        let cpuPerGiB = (cpu() - startCPU) / (Double(total) / 1073741824)
        print("\(name) sequential \(rangeMiB) MiB ranges: \(String(format: "%.0f", Double(total) / seconds / 1048576)) MiB/s, \(String(format: "%.2f", cpuPerGiB)) CPU s/GiB")
        buffer.deallocate()
    }
    // Random ranges one at a time: 4 KiB (a small read), 64 KiB and 1 MiB (what a cold small
    // read costs with each cache block size).
    for size in [4096, 65536, 1 << 20] {
        let small = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        var generator = SystemRandomNumberGenerator()
        var latencies: [Double] = []
        for _ in 0..<200 {
            let offset = Int.random(in: 0..<(total / size), using: &generator) * size
            let start = now()
            _ = client.read(into: small, at: offset)
            latencies.append(now() - start)
        }
        latencies.sort()
        print("\(name) \(size >> 10) KiB ranges QD1: median \(String(format: "%.0f", latencies[100] * 1e6)) us, p90 \(String(format: "%.0f", latencies[180] * 1e6)) us")
        small.deallocate()
    }
}

curl_global_init(Int(CURL_GLOBAL_DEFAULT))
measure("libcurl", CurlClient())
measure("AsyncHTTPClient", AHCClient())
