#if canImport(Glibc)
import Glibc
#endif
import Netlink
import SystemCalls
import SystemPackage
import Testing

/// Against this host's kernel: no mocks.
@Suite struct LiveNetlinkTests {
    @Test func controllerResolvesItself() throws {
        let family = try GenericNetlinkClient().resolveFamily("nlctrl")
        #expect(family.id == GenericNetlinkController.familyID)
        #expect(family.name == "nlctrl")
        #expect(family.multicastGroups["notify"] != nil)
    }

    @Test func missingFamilyGivesAClearError() throws {
        // A name no kernel has (GENL_NAMSIZ allows 15 characters); "nbd" too when its module
        // is absent, as on this host.
        var names = ["erofsnofamily"]
        if !FileStatus.exists("/sys/module/nbd") { names.append("nbd") }
        for name in names {
            let error = #expect(throws: SystemError.self) { try GenericNetlinkClient().resolveFamily(name) }
            #expect(error?.errno == .noSuchFileOrDirectory)
            #expect(error?.description.hasPrefix("resolve generic netlink family \"\(name)\": ") == true)
            #expect(error?.description.contains("the kernel has no such family (is its module loaded?)") == true)
        }
    }

    @Test func socketIsCloseOnExecAndBound() throws {
        let socket = try NetlinkSocket()
        #expect(socket.portID != 0)
        let flags = fcntl(socket.descriptor, F_GETFD)
        #expect(flags & FD_CLOEXEC != 0)
    }
}

extension FileStatus {
    static func exists(_ path: String) -> Bool { (try? FileStatus.lstat(path)) != nil }
}

extension LiveNetlinkTests {
    @Test func overlongFamilyNameIsRefusedBeforeAsking() {
        let error = #expect(throws: SystemError.self) {
            try GenericNetlinkClient().resolveFamily("erofs-no-such-family")
        }
        #expect(error?.detail == "family names have 1 to 15 bytes")
    }
}

extension LiveNetlinkTests {
    /// A dump comes back as NLM_F_MULTI parts ending in NLMSG_DONE, in datagrams larger than
    /// a page: this exercises the multi-part loop and the peeked buffer sizes on a real kernel.
    @Test func familyDumpGathersEveryPart() throws {
        let families = try GenericNetlinkClient().families()
        #expect(families.count > 1)
        #expect(families.contains { $0.name == "nlctrl" && $0.id == GenericNetlinkController.familyID })
        #expect(Set(families.map(\.id)).count == families.count)
    }

    @Test func joiningAMulticastGroupWorks() throws {
        let client = try GenericNetlinkClient()
        let controller = try client.resolveFamily("nlctrl")
        let group = try #require(controller.multicastGroups["notify"])
        let socket = try NetlinkSocket()
        try socket.joinMulticastGroup(group)
        #expect(throws: SystemError.self) { try socket.joinMulticastGroup(0xffff) }  // no such group
    }
}

extension LiveNetlinkTests {
    /// An attribute shorter than its policy allows: the kernel refuses it and says why in an
    /// extended ack, which must reach the error.
    @Test func kernelsExtendedAckReachesTheError() throws {
        let client = try GenericNetlinkClient()
        let badRequest = GenericNetlinkMessage(
            command: GenericNetlinkController.Command.getFamily, version: GenericNetlinkController.version,
            attributes: [.u8(GenericNetlinkController.Attribute.familyID, 1)])  // policy: u16
        let error = #expect(throws: SystemError.self) {
            try client.request(family: GenericNetlinkController.familyID, badRequest, operation: "bad GETFAMILY")
        }
        // 6.18 answers ERANGE; the errno differs between kernels, the text is the point.
        #expect(error?.errno != nil)
        #expect(error?.detail == "kernel: Attribute failed policy validation")
    }
}
