#if canImport(Glibc)
import Glibc
#endif
import NBDKernel
import Netlink
import SystemCalls
import SystemPackage
import Testing

/// On this host's kernel. Where the nbd module is absent (as on the build machines), opening
/// the family must say so clearly; where it is present, STATUS must answer.
@Suite struct LiveNBDTests {
    @Test func openingTheFamilyAnswersOrExplains() throws {
        if access("/sys/module/nbd", F_OK) == 0 {
            let nbd = try NBDNetlink.open()
            #expect(nbd.family.multicastGroups[NBDNetlinkProtocol.multicastGroupName] != nil)
            _ = try nbd.status()
        } else {
            let error = #expect(throws: SystemError.self) { try NBDNetlink.open() }
            #expect(error?.errno == .noSuchFileOrDirectory)
            #expect(
                error?.description
                    == "resolve generic netlink family \"nbd\": the kernel has no such family (is its module loaded?): No such file or directory"
            )
        }
    }
}
