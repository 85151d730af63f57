import Foundation
import Manifest

/// The conformance corpus in ../shared/corpus (or $EROFS_CORPUS): EROFS images made by
/// mkfs.erofs 1.9.3, each with the kernel's own view of it as a manifest.
public struct Corpus: Sendable {
    public let directory: String

    public struct Image: Sendable, CustomStringConvertible {
        public let name: String
        public let path: String
        public let manifestPath: String
        public var description: String { name }

        public func expectedManifest() throws -> String {
            try String(contentsOfFile: manifestPath, encoding: .utf8)
        }
    }

    /// Finds the corpus: $EROFS_CORPUS, else `shared/corpus` beside the repository (CI lays
    /// shared/ next to its clone), else the developers' checkout layout.
    public static func locate(file: String = #filePath) -> Corpus? {
        var candidates: [String] = []
        if let fromEnvironment = ProcessInfo.processInfo.environment["EROFS_CORPUS"] {
            candidates.append(fromEnvironment)
        }
        let repository = URL(fileURLWithPath: file).deletingLastPathComponent()  // Sources/TestSupport
            .deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(repository.deletingLastPathComponent().appendingPathComponent("shared/corpus").path)
        candidates.append("/work/shared/corpus")
        for candidate in candidates where FileManager.default.fileExists(atPath: candidate + "/INDEX.tsv") {
            return Corpus(directory: candidate)
        }
        return nil
    }

    /// Every image listed in INDEX.tsv, in its order.
    public func images() throws -> [Image] {
        let index = try String(contentsOfFile: directory + "/INDEX.tsv", encoding: .utf8)
        return index.split(separator: "\n").compactMap { line in
            guard let name = line.split(separator: "\t").first else { return nil }
            return Image(
                name: String(name), path: "\(directory)/\(name).erofs",
                manifestPath: "\(directory)/\(name).manifest.jsonl")
        }
    }

    /// The images, or none when the corpus is missing (tests then fail on `requireCorpus`).
    public static var imagesOrEmpty: [Image] {
        (try? locate()?.images()) ?? []
    }
}

/// Where a walk differs from the manifest it should equal, as a short report: the first
/// differing lines of each side. nil when they are equal byte for byte.
public func manifestDifference(actual: String, expected: String) -> String? {
    guard actual != expected else { return nil }
    let actualLines = actual.split(separator: "\n", omittingEmptySubsequences: false)
    let expectedLines = expected.split(separator: "\n", omittingEmptySubsequences: false)
    var report: [String] = ["\(actualLines.count) lines walked, \(expectedLines.count) expected"]
    let expectedSet = Set(expectedLines)
    let actualSet = Set(actualLines)
    for line in actualLines where !expectedSet.contains(line) && report.count < 4 {
        report.append("+ \(line.prefix(400))")
    }
    for line in expectedLines where !actualSet.contains(line) && report.count < 7 {
        report.append("- \(line.prefix(400))")
    }
    if report.count == 1 { report.append("same lines in a different order") }
    return report.joined(separator: "\n")
}

/// Runs a program and captures its exit status and output.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var standardOutput: String
    public var standardError: String
}

@discardableResult
public func runProgram(_ executable: String, _ arguments: [String]) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    // Drain stderr on another thread while reading stdout, so a chatty child never blocks.
    let errorBox = DataBox()
    let group = DispatchGroup()
    DispatchQueue.global().async(group: group) {
        errorBox.data = err.fileHandleForReading.readDataToEndOfFile()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    let errorData = errorBox.data
    process.waitUntilExit()
    return ProcessResult(
        status: process.terminationStatus,
        standardOutput: String(decoding: outData, as: UTF8.self),
        standardError: String(decoding: errorData, as: UTF8.self))
}

private final class DataBox: @unchecked Sendable {
    var data = Data()
}

/// The directory holding the built executables (mount.erofs, erofs), beside the test bundle.
public func builtProductsDirectory() -> String {
    if let override = ProcessInfo.processInfo.environment["EROFS_BIN_DIR"] { return override }
    var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    while url.path != "/" {
        if FileManager.default.isExecutableFile(atPath: url.appendingPathComponent("mount.erofs").path) {
            return url.path
        }
        url = url.deletingLastPathComponent()
    }
    return FileManager.default.currentDirectoryPath + "/.build/debug"
}
