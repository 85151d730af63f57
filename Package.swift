// swift-tools-version: 6.1
import PackageDescription

// One module per concern; see README.md ("Module map").
let package = Package(
    name: "erofs-mount",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "mount.erofs", targets: ["MountErofsTool"]),
        .executable(name: "erofs", targets: ["ErofsTool"]),
        .executable(name: "lz4-bench", targets: ["LZ4Bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.0.0"),
    ],
    targets: [
        // C shim: only what Swift cannot reach (variadic ioctl with unsigned long, _IO codes, CMSG).
        .target(name: "CShim"),

        // System libraries for the decompressors (Debian -dev packages).
        .systemLibrary(name: "CLZMA", pkgConfig: "liblzma", providers: [.apt(["liblzma-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        // TLS for `erofs serve` (NBD STARTTLS).
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // HTTP(S) for remote sources (BENCHMARKS.md says why libcurl and not AsyncHTTPClient),
        // loaded with dlopen on first use (Sources/CCurl/include/ccurl.h says why); the build
        // needs only its header (libcurl4-openssl-dev).
        .target(name: "CCurl", linkerSettings: [.linkedLibrary("dl")]),

        // Thin, typed wrappers over syscalls: SystemError, file descriptors, mount, loop devices.
        .target(
            name: "SystemCalls",
            dependencies: [
                "CShim",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // Random-access sources of image bytes: local files now, HTTP/OCI/S3 later.
        .target(
            name: "ImageSources",
            dependencies: [
                "SystemCalls", "CShim",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // Remote sources over one block layer: HTTP(S) range reads, S3 (SigV4/SigV2), the block
        // cache, readahead, pinning to one object version.
        .target(
            name: "RemoteSources",
            dependencies: [
                "ImageSources", "SystemCalls", "CShim", "CCurl", "CZlib",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // EROFS on-disk structures, decoded byte by byte (little-endian).
        .target(name: "EROFSFormat", dependencies: []),
        // Decompressors: LZ4 in Swift; MicroLZMA, raw DEFLATE, ZSTD through system libraries.
        .target(name: "Compression", dependencies: ["CLZMA", "CZstd", "CZlib"]),
        // The filesystem reader over a random-access source.
        .target(
            name: "EROFSReader",
            dependencies: ["EROFSFormat", "Compression", "ImageSources", "SystemCalls"]),
        // The reader's view of an image in the manifest form (the tool's `ls --json`, the tests).
        .target(name: "ImageManifest", dependencies: ["EROFSReader", "Manifest", "SystemCalls"]),
        // The corpus manifest format: entries, exact JSON form, walking a mounted tree.
        .target(
            name: "Manifest", dependencies: ["SystemCalls", .product(name: "SystemPackage", package: "swift-system")]),
        // FUSE wire protocol: request decoding, reply encoding (no I/O).
        .target(name: "FUSEProtocol", dependencies: []),
        // The FUSE serving loop over /dev/fuse, on the EROFS reader.
        .target(
            name: "FUSEServer",
            dependencies: [
                "FUSEProtocol", "EROFSReader", "SystemCalls", "CShim",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // NBD wire protocol: requests, replies, handshake options (no I/O).
        .target(name: "NBDProtocol", dependencies: []),
        // The NBD serving loop: kernel mode (socketpair) and network mode (handshake).
        .target(
            name: "NBDServer",
            dependencies: [
                "NBDProtocol", "ImageSources", "SystemCalls", "CShim", "COpenSSL",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Kernel attachment of local images: mount(2), loop devices, the mount table.
        .target(name: "KernelAttach", dependencies: ["SystemCalls", "CShim"]),
        // Generic netlink client (no libnl).
        .target(
            name: "Netlink",
            dependencies: [
                "SystemCalls", "CShim", .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // Attaching nbd devices: the netlink `nbd` family and the ioctl fallback.
        .target(
            name: "NBDKernel",
            dependencies: [
                "Netlink", "SystemCalls", "KernelAttach", "CShim",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // One supervisor for every userspace backend's daemons: spawning, the control channel,
        // standby and hot upgrade, the state directory (see Supervision/SupervisedBackend.swift).
        .target(
            name: "Supervision",
            dependencies: [
                "SystemCalls", "KernelAttach", "CShim",
            ]),
        // The local backend (file-backed or loop mounts) and what every backend builds on: the
        // source probe, `MountFailure`, the mountpoint check, unmounting, image identity.
        .target(
            name: "LocalBackend",
            dependencies: [
                "SystemCalls", "EROFSFormat", "KernelAttach", "CShim", "ImageSources",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // `-t erofs.nbd`: the serving worker, its `SupervisedBackend`, state, recovery, teardown.
        .target(
            name: "NBDBackend",
            dependencies: [
                "LocalBackend", "SystemCalls", "KernelAttach", "CShim", "NBDKernel", "NBDServer", "NBDProtocol",
                "ImageSources", "RemoteSources", "Supervision",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // io_uring through the raw system calls (see Sources/IOURing/IOURing.swift for why).
        .target(name: "IOURing", dependencies: ["SystemCalls", "CShim"]),
        // The ublk driver's interface: uapi structures, control commands over io_uring.
        .target(name: "UblkKernel", dependencies: ["IOURing", "SystemCalls"]),
        // `-t erofs.ublk`: ADD_DEV/SET_PARAMS, the serving daemon, teardown.
        .target(
            name: "UblkBackend",
            dependencies: [
                "LocalBackend", "Supervision", "UblkKernel", "IOURing", "KernelAttach", "SystemCalls", "CShim",
                "RemoteSources", "ImageSources",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The FUSE backend: mount(2) over /dev/fuse and the daemon that serves it.
        .target(
            name: "FUSEBackend",
            dependencies: [
                "LocalBackend", "Supervision", "FUSEProtocol", "FUSEServer", "EROFSReader", "KernelAttach",
                "SystemCalls",
                "CShim", "RemoteSources", "ImageSources",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // mount(8)-compatible command line: options, -o parsing into MS_* flags and data.
        .target(
            name: "MountCLI",
            dependencies: [
                "LocalBackend", "NBDBackend", "FUSEBackend", "UblkBackend", "Supervision", "SystemCalls",
                "KernelAttach",
                "NBDKernel", "CShim", "RemoteSources", "EROFSReader", "ImageManifest", "ImageSources",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(name: "MountErofsTool", dependencies: ["MountCLI"]),
        // `erofs extract`'s work, a library so that a fuzz target and tests can call it.
        .target(name: "Extraction", dependencies: ["EROFSReader", "SystemCalls", "CShim"]),
        .executableTarget(
            name: "ErofsTool",
            dependencies: [
                "EROFSFormat", "EROFSReader", "Extraction", "ImageManifest", "Manifest", "NBDProtocol", "NBDServer",
                "SystemCalls",
                "RemoteSources", "ImageSources",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),

        // Shared by the test targets: the corpus, walk-and-compare, running our binaries.
        .target(name: "TestSupport", dependencies: ["Manifest"]),
        .testTarget(name: "TestSupportTests", dependencies: ["TestSupport"]),

        .testTarget(
            name: "SystemCallsTests",
            dependencies: ["SystemCalls", "CShim", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "EROFSFormatTests", dependencies: ["EROFSFormat", "TestSupport"]),
        .testTarget(name: "ManifestTests", dependencies: ["Manifest", "SystemCalls"]),
        // What the reader fuzzer does with an input; ReaderTests replays the findings through it.
        .target(
            name: "ReaderFuzzSupport",
            dependencies: [
                "EROFSReader", "EROFSFormat", "ImageSources", "SystemCalls",
                .product(name: "SystemPackage", package: "swift-system"),
            ], path: "Fuzz/ReaderFuzzSupport"),
        // What the extract fuzzer does with an input (ls --recursive, extract into a tmpfs).
        .target(
            name: "ExtractFuzzSupport",
            dependencies: ["EROFSReader", "Extraction", "ImageManifest", "ReaderFuzzSupport"],
            path: "Fuzz/ExtractFuzzSupport"),
        .testTarget(
            name: "ReaderTests",
            dependencies: [
                "EROFSReader", "EROFSFormat", "ImageSources", "SystemCalls", "Manifest", "ImageManifest", "TestSupport",
                "ReaderFuzzSupport",
                "ExtractFuzzSupport",
                .product(name: "SystemPackage", package: "swift-system"),
                // Built for the tests, which run the real binary.
                "ErofsTool", "CShim",
            ]),
        .testTarget(
            name: "MountCLITests",
            dependencies: [
                "MountCLI", "FUSEBackend", "LocalBackend", "SystemCalls", "RemoteSources",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .testTarget(
            name: "SupervisionTests",
            dependencies: ["Supervision", "SystemCalls"]),
        .testTarget(
            name: "NBDBackendTests",
            dependencies: [
                "NBDBackend", "LocalBackend", "Supervision", "SystemCalls", "KernelAttach", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(name: "KernelAttachTests", dependencies: ["KernelAttach"]),
        // What the remote fuzzer does with an input; RemoteSourcesTests replays the seeds through it.
        .target(
            name: "RemoteFuzzSupport", dependencies: ["RemoteSources", "ImageSources", "ReaderFuzzSupport"],
            path: "Fuzz/RemoteFuzzSupport"),
        // Real servers started by the tests: a Range server with faults (Servers/), moto's S3.
        .testTarget(
            name: "RemoteSourcesTests",
            dependencies: [
                "RemoteSources", "ImageSources", "SystemCalls", "TestSupport", "Manifest", "RemoteFuzzSupport",
                "ReaderFuzzSupport",
                // Built for the tests, which run `erofs ls` and `mount.erofs` on remote sources.
                "ErofsTool", "MountErofsTool",
            ], exclude: ["Servers"]),
        .testTarget(name: "UblkKernelTests", dependencies: ["UblkKernel", "IOURing"]),
        .testTarget(
            name: "UblkBackendTests", dependencies: ["UblkBackend", "UblkKernel", "Supervision", "SystemCalls"]),
        // LZ4 throughput: the Swift decoder against liblz4 (release build).
        .executableTarget(name: "LZ4Bench", dependencies: ["Compression", "CLZ4"]),
        .testTarget(
            name: "CompressionTests", dependencies: ["Compression", "CLZ4", "CLZMA", "CZlib", "CZstd", "TestSupport"]),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol", "TestSupport"]),
        // What the FUSE fuzzer does with an input; FUSEProtocolTests replays the findings through it.
        .target(
            name: "FUSEFuzzSupport",
            dependencies: [
                "FUSEProtocol", "FUSEServer", "EROFSReader", .product(name: "Logging", package: "swift-log"),
            ], path: "Fuzz/FUSEFuzzSupport"),
        .testTarget(
            name: "FUSEProtocolTests", dependencies: ["FUSEProtocol", "TestSupport", "FUSEFuzzSupport", "EROFSReader"]),
        .testTarget(
            name: "FUSEServerTests",
            dependencies: [
                "FUSEServer", "FUSEProtocol", "EROFSReader", "TestSupport", "ReaderFuzzSupport", "SystemCalls",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "NBDServerTests",
            dependencies: [
                "NBDServer", "NBDProtocol", "ImageSources", "SystemCalls", "TestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                // Built for the tests, which run `erofs serve` against real NBD clients.
                "ErofsTool",
                // Peers/: Python clients (libnbd) the tests run against `erofs serve`.
            ], exclude: ["Peers"]),
        // Canned netlink replies and a recording transport, shared by the two netlink test targets.
        .target(
            name: "NetlinkTestSupport", dependencies: ["Netlink", "SystemCalls"], path: "Tests/NetlinkTestSupport"),
        .testTarget(
            name: "NetlinkTests",
            dependencies: [
                "Netlink", "NetlinkTestSupport", "SystemCalls", "TestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .testTarget(
            name: "NBDKernelTests",
            dependencies: [
                "NBDKernel", "Netlink", "NetlinkTestSupport", "SystemCalls", "TestSupport", "Manifest", "KernelAttach",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .testTarget(
            name: "MountTests",
            dependencies: [
                "Manifest", "KernelAttach", "TestSupport", "CShim",
                // Built for the tests, which run the real binaries.
                "MountErofsTool", "ErofsTool",
            ]),
    ]
)

// libFuzzer targets (Fuzz/README.md): declared only when EROFS_FUZZERS=1, so that the normal
// `swift build` and `swift test` neither see nor build them (libFuzzer brings its own main).
if Context.environment["EROFS_FUZZERS"] == "1" {
    package.targets += [
        .target(name: "FuzzDriver", path: "Fuzz/FuzzDriver", swiftSettings: [.enableExperimentalFeature("Extern")]),
        .executableTarget(
            name: "ReaderFuzzer", dependencies: ["ReaderFuzzSupport", "FuzzDriver"], path: "Fuzz/ReaderFuzzer"),
        .executableTarget(name: "NBDFuzzer", dependencies: ["NBDProtocol", "FuzzDriver"], path: "Fuzz/NBDFuzzer"),
        .executableTarget(
            name: "FUSEFuzzer", dependencies: ["FUSEFuzzSupport", "FUSEServer", "EROFSReader", "FuzzDriver"],
            path: "Fuzz/FUSEFuzzer"),
        .executableTarget(
            name: "ExtractFuzzer", dependencies: ["ExtractFuzzSupport", "ReaderFuzzSupport", "FuzzDriver"],
            path: "Fuzz/ExtractFuzzer"),
        .executableTarget(
            name: "RemoteFuzzer", dependencies: ["RemoteFuzzSupport", "FuzzDriver"], path: "Fuzz/RemoteFuzzer"),
    ]
    package.products += [
        .executable(name: "ReaderFuzzer", targets: ["ReaderFuzzer"]),
        .executable(name: "NBDFuzzer", targets: ["NBDFuzzer"]),
        .executable(name: "FUSEFuzzer", targets: ["FUSEFuzzer"]),
        .executable(name: "ExtractFuzzer", targets: ["ExtractFuzzer"]),
        .executable(name: "RemoteFuzzer", targets: ["RemoteFuzzer"]),
    ]
}
