import ArgumentParser

@main
struct ErofsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "erofs",
        abstract: "Inspect, read and serve EROFS images.",
        subcommands: [
            WalkCommand.self, ServeCommand.self, InspectCommand.self, ListCommand.self, CatCommand.self,
            VerifyCommand.self, ExtractCommand.self,
        ])
}
