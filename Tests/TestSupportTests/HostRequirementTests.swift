import Testing
import TestSupport

/// The rule behind `make check` skipping and `make test-unit` failing: which environment makes a
/// missing capability a failure.
@Suite struct HostRequirementTests {
    let absent = HostRequirement.kernelModule("erofs_test_no_such_module")
    /// Every Linux kernel has /sys/module/kernel (its built-in parameters).
    let present = HostRequirement.kernelModule("kernel")

    @Test func missingAndNotRequiredIsASkip() throws {
        #expect(try absent.check(environment: [:]) == false)
        // CI and EROFS_REQUIRE_ROOT speak for root only: the CI host has no nbd module.
        #expect(try absent.check(environment: ["CI": "true", "EROFS_REQUIRE_ROOT": "1"]) == false)
        #expect(try absent.check(environment: ["EROFS_REQUIRE_MODULES": "nbd"]) == false)
    }

    @Test func missingAndRequiredIsAFailure() {
        let error = #expect(throws: HostRequirement.Missing.self) {
            try absent.check(environment: ["EROFS_REQUIRE_MODULES": "nbd,erofs_test_no_such_module"])
        }
        #expect(
            error?.description == "needs the erofs_test_no_such_module kernel module, which this host lacks, "
                + "and EROFS_REQUIRE_MODULES says it must run here, not be skipped")
    }

    @Test func presentIsARunWhateverTheEnvironment() throws {
        #expect(present.isMet)
        #expect(try present.check(environment: [:]))
        #expect(try present.check(environment: ["EROFS_REQUIRE_MODULES": "kernel"]))
    }

    @Test func rootIsRequiredByMakeTestAndByCI() {
        #expect(HostRequirement.root.isRequired(environment: ["EROFS_REQUIRE_ROOT": "1"]))
        #expect(HostRequirement.root.isRequired(environment: ["CI": "true"]))
        #expect(!HostRequirement.root.isRequired(environment: ["EROFS_REQUIRE_ROOT": "0", "CI": "false"]))
        #expect(!HostRequirement.root.isRequired(environment: [:]))
        #expect(!HostRequirement.root.isRequired(environment: ["EROFS_REQUIRE_MODULES": "root"]))
    }
}
