#if canImport(Glibc)
import Glibc
#endif
import MountCLI

exit(MountTool.main(Array(CommandLine.arguments.dropFirst())))
