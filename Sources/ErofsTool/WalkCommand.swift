import ArgumentParser
import Manifest

/// `erofs walk DIR`: the manifest of a mounted tree, as the kernel shows it. The tests compare
/// every backend's mount with the corpus manifests through this.
struct WalkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "walk",
        abstract: "Print the manifest (JSON lines, corpus format) of a mounted directory tree.")

    @Argument(help: "The directory to walk (usually a mountpoint).")
    var directory: String

    func run() throws {
        let entries = try DirectoryWalker.manifest(ofTreeAt: directory)
        print(entries.manifestText, terminator: "")
    }
}
