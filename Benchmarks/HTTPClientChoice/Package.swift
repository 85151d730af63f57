// swift-tools-version: 6.1
// The measurement behind the HTTP client choice (BENCHMARKS.md, "Remote sources: HTTP client"):
// AsyncHTTPClient bridged to a synchronous read against libcurl easy handles, same server,
// same ranges. Its own package so that the main build never compiles AsyncHTTPClient.
import PackageDescription

let package = Package(
    name: "HTTPClientChoice",
    dependencies: [
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        .systemLibrary(name: "CCurlBench", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .executableTarget(name: "HTTPClientChoice", dependencies: [
            "CCurlBench", .product(name: "AsyncHTTPClient", package: "async-http-client"),
        ]),
    ]
)
