import ArgumentParser
import Manifest
import SystemCalls

/// `erofs walk DIR`: the manifest of a mounted tree, as the kernel shows it. The tests compare
/// every backend's mount with the corpus manifests through this.
struct WalkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "walk",
        abstract: "Print the manifest (JSON lines, corpus format) of a mounted directory tree.",
        discussion: """
            Names are read and used as bytes; in the JSON a byte that is not UTF-8 is written as \
            \\udcXX, as `erofs ls --json` writes it, so the walk of a mount equals the listing of \
            its image.
            """)

    @Argument(help: "The directory to walk (usually a mountpoint).")
    var directory: String

    func run() throws {
        let entries = try DirectoryWalker.manifest(ofTreeAt: try RawArguments.bytes(of: directory))
        try writeStandardOutput(Array(entries.manifestText.utf8))
    }
}
