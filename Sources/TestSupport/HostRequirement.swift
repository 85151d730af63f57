import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing

/// What a suite needs from the host beyond a build: root, or a kernel module. A suite states it
/// as a trait (`@Suite(.requiresRoot)`), so that `make check` (no root) skips it by
/// construction, and where the capability must be there (`make test-unit`, CI, the test VM) its
/// absence fails the suite instead of skipping it: a skip never hides a failure.
public enum HostRequirement: Sendable, Equatable, CustomStringConvertible {
    /// Effective uid 0: mount(2), loop and nbd devices, mkfs.erofs images mounted, /run state.
    case root
    /// A loaded kernel module, as /sys/module/NAME shows it.
    case kernelModule(String)
    /// A Python module the first `python3` on PATH imports (test peers: moto, botocore), which
    /// scripts/install-deps.sh installs for root; required wherever root is.
    case pythonModule(String)
    /// A program in /usr/bin or /usr/sbin (test peers: docker-registry, skopeo), which
    /// scripts/install-deps.sh installs; required wherever root is.
    case program(String)

    public var description: String {
        switch self {
        case .root: "root"
        case .kernelModule(let name): "the \(name) kernel module"
        case .pythonModule(let name): "the Python module \(name)"
        case .program(let name): "the program \(name)"
        }
    }

    public var isMet: Bool {
        switch self {
        case .root: geteuid() == 0
        case .kernelModule(let name): access("/sys/module/" + name, F_OK) == 0
        case .pythonModule(let name): Self.pythonImports(name)
        case .program(let name): ["/usr/bin/", "/usr/sbin/"].contains { access($0 + name, X_OK) == 0 }
        }
    }

    /// Whether the environment says this requirement must be met: EROFS_REQUIRE_ROOT=1 (set by
    /// `make test-unit`) or CI=true for root; EROFS_REQUIRE_MODULES=nbd,... (set by the VM
    /// scripts) for modules. The host running CI has no nbd module, so CI alone does not
    /// require modules.
    public func isRequired(environment: [String: String]) -> Bool {
        switch self {
        case .root, .pythonModule, .program:
            environment["EROFS_REQUIRE_ROOT"] == "1" || environment["CI"] == "true"
        case .kernelModule(let name):
            (environment["EROFS_REQUIRE_MODULES"] ?? "").split(separator: ",").contains { $0 == name }
        }
    }

    /// Missing where the environment requires it.
    public struct Missing: Error, CustomStringConvertible {
        public let requirement: HostRequirement
        public var description: String {
            let variable: String
            if case .kernelModule = requirement {
                variable = "EROFS_REQUIRE_MODULES"
            } else {
                variable = "EROFS_REQUIRE_ROOT=1 or CI=true"
            }
            return "needs \(requirement), which this host lacks, and \(variable) says it must run here, not be skipped"
        }
    }

    static func pythonImports(_ name: String) -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", "import " + name]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return false }
        process.waitUntilExit()
        return process.terminationStatus == 0
    }

    /// True when met; false (skip) when missing and allowed to be; throws `Missing` (a failure)
    /// when missing and required.
    public func check(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Bool {
        if isMet { return true }
        if isRequired(environment: environment) { throw Missing(requirement: self) }
        return false
    }
}

extension Trait where Self == ConditionTrait {
    /// The suite runs only as root; see `HostRequirement`.
    public static var requiresRoot: Self { requires(.root) }

    /// The suite runs only where `requirement` is met; elsewhere it is skipped with a reason, or
    /// fails where the environment requires the requirement (`HostRequirement.isRequired`).
    public static func requires(_ requirement: HostRequirement) -> Self {
        .enabled("needs \(requirement)") { try requirement.check() }
    }
}
