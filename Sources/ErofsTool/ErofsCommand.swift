import ArgumentParser
import RemoteSources

@main
struct ErofsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "erofs",
        abstract: "Inspect, read and serve EROFS images.",
        discussion: """
            Remote sources: inspect, ls, cat, extract and verify also read IMAGE
            over HTTP(S) or from S3, lazily (ranged GETs, a block cache). IMAGE is
            an http:// or https:// URL, or BUCKET/KEY (or s3://BUCKET/KEY) when an
            s3.* option is given. Options (-o KEY=VALUE,...):
            \(RemoteSourceDescription.optionsHelp)
            The object is pinned when opened (If-Match on its ETag): if it is
            replaced, reads fail rather than mix two versions.
            """,
        subcommands: [
            WalkCommand.self, ServeCommand.self, InspectCommand.self, ListCommand.self, CatCommand.self,
            VerifyCommand.self, ExtractCommand.self,
        ])
}
