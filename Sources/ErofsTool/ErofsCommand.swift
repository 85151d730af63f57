import ArgumentParser

@main
struct ErofsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "erofs",
        abstract: "Inspect, read and serve EROFS images.",
        subcommands: [WalkCommand.self, ServeCommand.self])
}
