import Foundation

/// The fuzzers' committed inputs (Fuzz/seeds/TARGET, Fuzz/findings/TARGET), for the tests that
/// replay them on the normal build through each fuzzer's own code.
public enum FuzzInputs {
    /// The repository's root (this file is Sources/TestSupport/FuzzInputs.swift).
    public static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The files in `folder` (a path inside the repository), sorted by name; none when the
    /// folder does not exist (a target without findings).
    public static func files(in folder: String) -> [URL] {
        let directory = repository.appendingPathComponent(folder)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.sorted().map { directory.appendingPathComponent($0) }
    }
}
