import KernelAttach
import Testing

@Suite struct MountTableTests {
    @Test func parsesFieldsOptionalTagsAndEscapes() {
        let text = """
            36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue
            42 27 7:3 / /tmp/m ro,relatime shared:5 master:2 - erofs /dev/loop3 ro,user_xattr,acl
            garbage line
            """
        let entries = MountTable.parse(text)
        #expect(entries.count == 2)
        #expect(entries[0].mountPoint == "/mnt/with space")
        #expect(entries[0].root == "/mnt1")
        #expect(entries[0].major == 98 && entries[0].minor == 0)
        #expect(entries[1].fsType == "erofs")
        #expect(entries[1].source == "/dev/loop3")
        #expect(entries[1].superOptions == "ro,user_xattr,acl")
    }

    @Test func readsThisProcessTable() throws {
        let entries = try MountTable.read()
        #expect(entries.contains { $0.mountPoint == "/" })
    }
}
