/// erofs_xattr_ibody_header: the 12 bytes that open an inode's inline xattr area, followed by
/// `sharedCount` le32 shared xattr ids and then the inline entries.
public struct XattrBodyHeader: FixedSizeStructure, Sendable, Equatable {
    public static let cName = "erofs_xattr_ibody_header"
    /// sizeof(struct erofs_xattr_ibody_header)
    public static let size = 12
    /// sizeof(h_shared_xattrs[0]); also the unit of i_xattr_icount and of shared xattr ids.
    public static let sharedIDSize = 4

    /// h_name_filter (bit set: that name hash is absent)
    public var nameFilter: UInt32
    /// h_shared_count
    public var sharedCount: UInt8

    /// Decodes the first 12 of `bytes` (an inline xattr area is never shorter).
    public init(decoding bytes: some Collection<UInt8>) {
        let raw = Self.structureBytes(bytes)
        nameFilter = raw.le32(at: 0)
        sharedCount = raw[4]
    }

    /// erofs_xattr_ibody_size(): bytes of the inline xattr area for an i_xattr_icount.
    public static func bodySize(xattrCount: UInt16) -> Int {
        xattrCount == 0 ? 0 : size + sharedIDSize * (Int(xattrCount) - 1)
    }
}

/// erofs_xattr_entry: the 4-byte header of one xattr; name and value follow, and the next
/// entry starts at the next multiple of 4 (EROFS_XATTR_ALIGN).
public struct XattrEntryHeader: Sendable, Equatable {
    /// sizeof(struct erofs_xattr_entry)
    public static let size = 4
    /// EROFS_XATTR_LONG_PREFIX: the name index is an entry of the long prefix table.
    public static let longPrefix: UInt8 = 0x80
    /// EROFS_XATTR_LONG_PREFIX_MASK
    public static let longPrefixMask: UInt8 = 0x7f

    /// e_name_len
    public var nameLength: UInt8
    /// e_name_index (EROFS_XATTR_INDEX_*, or `longPrefix` | table index)
    public var nameIndex: UInt8
    /// e_value_size
    public var valueSize: UInt16

    public init(decoding bytes: some Collection<UInt8>) throws(FormatError) {
        let raw = Array(bytes.prefix(Self.size))
        guard raw.count == Self.size else { throw FormatError("xattr entry header truncated") }
        nameLength = raw[0]
        nameIndex = raw[1]
        valueSize = raw.le16(at: 2)
    }

    /// Header, name and value, unaligned.
    public var entrySize: Int { Self.size + Int(nameLength) + Int(valueSize) }
    /// erofs_xattr_entry_size(): `entrySize` rounded up to EROFS_XATTR_ALIGN.
    public var alignedEntrySize: Int { (entrySize + Self.size - 1) / Self.size * Self.size }
}

/// The short xattr name prefixes (EROFS_XATTR_INDEX_*).
public enum XattrNameIndex: UInt8, Sendable, CaseIterable {
    /// EROFS_XATTR_INDEX_USER
    case user = 1
    /// EROFS_XATTR_INDEX_POSIX_ACL_ACCESS
    case posixACLAccess = 2
    /// EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT
    case posixACLDefault = 3
    /// EROFS_XATTR_INDEX_TRUSTED
    case trusted = 4
    /// EROFS_XATTR_INDEX_LUSTRE
    case lustre = 5
    /// EROFS_XATTR_INDEX_SECURITY
    case security = 6

    /// The bytes the index stands for at the start of a name.
    public var prefix: String {
        switch self {
        case .user: "user."
        case .posixACLAccess: "system.posix_acl_access"
        case .posixACLDefault: "system.posix_acl_default"
        case .trusted: "trusted."
        case .lustre: "lustre."
        case .security: "security."
        }
    }
}

/// Long xattr name prefix records (erofs_xattr_long_prefix), and the COMPR_CFGS records after the
/// superblock: each is a le16 length, then that many bytes, starting at a multiple of 4.
public enum LengthPrefixedRecord {
    /// The le16 length field before each record.
    public static let lengthSize = 2
    /// Each record starts at a multiple of this.
    public static let alignment: UInt64 = 4
    /// The longest record either table holds.
    public static let maximumLength = 256

    /// `position` rounded up to the next record start.
    public static func aligned(_ position: UInt64) -> UInt64 { (position + alignment - 1) & ~(alignment - 1) }
}
