/// Writes small, valid EROFS images from a description, for tests and fuzzing seeds that need
/// shapes mkfs.erofs never makes: directories reached from several parents (a DAG), chains
/// thousands deep, names that are any bytes, sparse files of a terabyte in a few KiB.
///
/// The images are uncompressed, 4096-byte blocks, extended (64-byte) inodes, no superblock
/// checksum. Layout: the superblock in block 0, then every inode (root first, nid 36) with its
/// inline xattrs and its tail-packed data or chunk table, then the data blocks. Field layouts
/// follow the kernel's fs/erofs/erofs_fs.h.
public struct CraftedImage: Sendable {
    public typealias InodeID = Int
    public static let blockSize = 4096

    /// One name in a directory; `target` may be any inode, including a directory already
    /// linked elsewhere.
    public struct Entry: Sendable {
        public var name: [UInt8]
        public var target: InodeID
        public init(_ name: [UInt8], _ target: InodeID) {
            self.name = name
            self.target = target
        }
    }

    /// A regular file's data and the on-disk layout that holds it.
    public enum FileData: Sendable {
        /// FLAT_PLAIN: every byte in data blocks, the last one zero-padded.
        case blocks([UInt8])
        /// FLAT_INLINE: whole blocks, then the tail right after the inode (it must fit there).
        case tailPacked([UInt8])
        /// CHUNK_BASED with a block map: chunks of 4096 << `chunkBits` bytes; the chunks listed
        /// in `data` are stored (zero-padded), every other chunk is a hole (null address).
        case chunks(size: UInt64, chunkBits: UInt8, data: [UInt64: [UInt8]])
    }

    public enum Content: Sendable {
        /// "." and ".." are added by the writer ("..": the first directory listing this one).
        case directory([Entry])
        case file(FileData)
        case symlink([UInt8])
        case characterDevice(major: UInt32, minor: UInt32)
        case blockDevice(major: UInt32, minor: UInt32)
        case fifo
        case socket
    }

    /// An inline extended attribute: `prefixIndex` is EROFS_XATTR_INDEX_* (1 user., 4 trusted.,
    /// 6 security.), `name` the rest of the name.
    public struct Xattr: Sendable {
        public var prefixIndex: UInt8
        public var name: [UInt8]
        public var value: [UInt8]
        public init(prefixIndex: UInt8, name: [UInt8], value: [UInt8]) {
            self.prefixIndex = prefixIndex
            self.name = name
            self.value = value
        }
        public static func user(_ name: String, _ value: [UInt8]) -> Xattr {
            Xattr(prefixIndex: 1, name: Array(name.utf8), value: value)
        }
        public static func security(_ name: String, _ value: [UInt8]) -> Xattr {
            Xattr(prefixIndex: 6, name: Array(name.utf8), value: value)
        }
    }

    public struct Node: Sendable {
        public var content: Content
        /// Permission bits, setuid/setgid/sticky included (0o7777).
        public var permissions: UInt16
        public var uid: UInt32 = 0
        public var gid: UInt32 = 0
        public var mtime: UInt64 = 0
        public var mtimeNanoseconds: UInt32 = 0
        /// nil: counted (a directory: 2 + its subdirectories; else the names linking it).
        public var linkCount: UInt32?
        public var xattrs: [Xattr] = []

        public init(
            _ content: Content, permissions: UInt16, uid: UInt32 = 0, gid: UInt32 = 0, mtime: UInt64 = 0,
            mtimeNanoseconds: UInt32 = 0, linkCount: UInt32? = nil, xattrs: [Xattr] = []
        ) {
            self.content = content
            self.permissions = permissions
            self.uid = uid
            self.gid = gid
            self.mtime = mtime
            self.mtimeNanoseconds = mtimeNanoseconds
            self.linkCount = linkCount
            self.xattrs = xattrs
        }
    }

    public var nodes: [Node]
    public let root: InodeID = 0

    /// An image with an empty root directory (0755).
    public init(rootPermissions: UInt16 = 0o755) {
        nodes = [Node(.directory([]), permissions: rootPermissions)]
    }

    /// Adds an inode linked from nowhere yet.
    @discardableResult
    public mutating func add(_ node: Node) -> InodeID {
        nodes.append(node)
        return nodes.count - 1
    }

    /// Adds an inode and links it as `name` in `directory`.
    @discardableResult
    public mutating func add(_ node: Node, named name: [UInt8], in directory: InodeID) -> InodeID {
        let id = add(node)
        link(name, to: id, in: directory)
        return id
    }

    @discardableResult
    public mutating func add(_ node: Node, named name: String, in directory: InodeID) -> InodeID {
        add(node, named: Array(name.utf8), in: directory)
    }

    /// Adds a directory entry `name` -> `target` to `directory`.
    public mutating func link(_ name: [UInt8], to target: InodeID, in directory: InodeID) {
        guard case .directory(var entries) = nodes[directory].content else {
            preconditionFailure("inode \(directory) is not a directory")
        }
        entries.append(Entry(name, target))
        nodes[directory].content = .directory(entries)
    }

    public mutating func link(_ name: String, to target: InodeID, in directory: InodeID) {
        link(Array(name.utf8), to: target, in: directory)
    }

    // MARK: Writing

    private enum Layout: UInt16 {
        case flatPlain = 0, flatInline = 2, chunkBased = 4
    }

    /// Where one inode goes and what it holds, decided before anything is written.
    private struct Placement {
        var layout = Layout.flatPlain
        var size: UInt64 = 0
        var xattrBody: [UInt8] = []
        /// Bytes stored in data blocks (FLAT_*: all but the tail), zero-padded to whole blocks.
        var blockBytes = 0
        /// Bytes stored right after the inode and its xattrs (tail or chunk table).
        var inlineBytes = 0
        var nid: UInt64 = 0
        var startBlock: UInt64 = 0
        /// Chunk-based: the block of each stored chunk.
        var chunkBlocks: [UInt64: UInt64] = [:]
    }

    /// The image bytes.
    public func bytes() -> [UInt8] {
        let block = CraftedImage.blockSize
        let parents = parentDirectories()
        // Directory contents depend on the nids only through their values, not their sizes.
        var placements = nodes.indices.map {
            placementSizes(of: $0, directoryBytes: directoryData($0, parent: parents[$0], nids: nil))
        }

        // Inodes, root first: nid 36 is right after the superblock, as mkfs.erofs puts it.
        var cursor = 1152
        for id in nodes.indices {
            let head = 64 + placements[id].xattrBody.count
            let record = head + placements[id].inlineBytes
            // Tail data may not cross a block; nor may the inode and its xattrs.
            let mustFit = placements[id].layout == .chunkBased ? head : record
            precondition(mustFit <= block, "inode \(id): inode, xattrs and inline data exceed a block")
            if cursor % block + mustFit > block { cursor = (cursor / block + 1) * block }
            placements[id].nid = UInt64(cursor / 32)
            cursor += (record + 31) / 32 * 32
        }
        precondition(placements[root].nid < 1 << 16, "root nid must fit the superblock's 16 bits")

        var nextBlock = UInt64((cursor + block - 1) / block)
        for id in nodes.indices {
            if placements[id].blockBytes > 0 {
                placements[id].startBlock = nextBlock
                nextBlock += UInt64((placements[id].blockBytes + block - 1) / block)
            }
            if case .file(.chunks(let size, let bits, let data)) = nodes[id].content {
                let chunkSize = UInt64(block) << bits
                for index in data.keys.sorted() {
                    let stored = min(
                        chunkSize, (size - index * chunkSize + UInt64(block) - 1) / UInt64(block) * UInt64(block))
                    placements[id].chunkBlocks[index] = nextBlock
                    nextBlock += stored / UInt64(block)
                }
            }
        }
        precondition(nextBlock < 1 << 16, "crafted images are kept under 256 MiB")

        var image = [UInt8](repeating: 0, count: Int(nextBlock) * block)
        let nids = placements.map(\.nid)
        let links = linkCounts()
        for id in nodes.indices {
            let placement = placements[id]
            let node = nodes[id]
            let offset = Int(placement.nid) * 32
            image.store(inode(node, placement, index: id, linkCount: links[id]), at: offset)
            image.store(placement.xattrBody, at: offset + 64)
            let inlineAt = offset + 64 + placement.xattrBody.count
            let data: [UInt8]
            switch node.content {
            case .directory: data = directoryData(id, parent: parents[id], nids: nids)
            case .symlink(let target): data = target
            case .file(.blocks(let bytes)), .file(.tailPacked(let bytes)): data = bytes
            case .file(.chunks(let size, let bits, let chunks)):
                let count = Int((size + (UInt64(block) << bits) - 1) >> (UInt64(bits) + 12))
                for index in 0..<count {
                    let address = placement.chunkBlocks[UInt64(index)].map { UInt32($0) } ?? UInt32.max
                    image.storeLE(address, at: inlineAt + 4 * index)
                }
                for (index, bytes) in chunks {
                    image.store(bytes, at: Int(placement.chunkBlocks[index]!) * block)
                }
                data = []
            default: data = []
            }
            if placement.blockBytes > 0 {
                image.store(Array(data.prefix(placement.blockBytes)), at: Int(placement.startBlock) * block)
            }
            if placement.layout == .flatInline {
                image.store(Array(data.dropFirst(placement.blockBytes)), at: inlineAt)
            }
        }

        // The superblock (erofs_super_block).
        let sb = 1024
        image.storeLE(UInt32(0xE0F5_E1E2), at: sb)
        image[sb + 12] = 12  // blkszbits
        image.storeLE(UInt16(placements[root].nid), at: sb + 14)
        image.storeLE(UInt64(nodes.count), at: sb + 16)
        image.storeLE(UInt32(nextBlock), at: sb + 36)
        let hasChunks = nodes.contains { if case .file(.chunks) = $0.content { true } else { false } }
        image.storeLE(UInt32(hasChunks ? 0x4 : 0), at: sb + 80)  // CHUNKED_FILE
        image.store(Array("crafted".utf8), at: sb + 64)
        return image
    }

    /// Sizes and layout of one inode, before nids and blocks are known.
    private func placementSizes(of id: InodeID, directoryBytes: [UInt8]) -> Placement {
        let block = CraftedImage.blockSize
        let node = nodes[id]
        var placement = Placement()
        placement.xattrBody = xattrBody(node.xattrs)
        let room = block - 64 - placement.xattrBody.count
        /// Whole blocks in the data area and the tail inline when it fits; else all in blocks.
        func flat(_ count: Int, tailPacked: Bool = true) {
            placement.size = UInt64(count)
            let tail = count % block
            if tailPacked && tail != 0 && tail <= room {
                placement.layout = .flatInline
                placement.blockBytes = count - tail
                placement.inlineBytes = tail
            } else {
                placement.blockBytes = count
            }
        }
        switch node.content {
        case .directory: flat(directoryBytes.count)
        case .symlink(let target): flat(target.count)
        case .file(.blocks(let bytes)): flat(bytes.count, tailPacked: false)
        case .file(.tailPacked(let bytes)):
            precondition(
                bytes.count % block == 0 || bytes.count % block <= room,
                "inode \(id): tail does not fit after the inode")
            flat(bytes.count)
        case .file(.chunks(let size, let bits, let data)):
            precondition(bits < 20, "chunk bits out of range")
            let chunkSize = UInt64(block) << bits
            for (index, bytes) in data {
                precondition(
                    index * chunkSize < size && UInt64(bytes.count) <= min(chunkSize, size - index * chunkSize),
                    "inode \(id): chunk \(index) outside the file")
            }
            placement.layout = .chunkBased
            placement.size = size
            placement.inlineBytes = 4 * Int((size + chunkSize - 1) / chunkSize)
        case .characterDevice, .blockDevice, .fifo, .socket: break
        }
        return placement
    }

    private func inode(_ node: Node, _ placement: Placement, index: Int, linkCount: UInt32) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 64)
        bytes.storeLE(UInt16(1) | placement.layout.rawValue << 1, at: 0)  // extended
        let xattrCount = placement.xattrBody.isEmpty ? 0 : (placement.xattrBody.count - 12) / 4 + 1
        bytes.storeLE(UInt16(xattrCount), at: 2)
        let type: UInt16 =
            switch node.content {
            case .directory: 0o040000
            case .file: 0o100000
            case .symlink: 0o120000
            case .characterDevice: 0o020000
            case .blockDevice: 0o060000
            case .fifo: 0o010000
            case .socket: 0o140000
            }
        bytes.storeLE(type | (node.permissions & 0o7777), at: 4)
        bytes.storeLE(placement.size, at: 8)
        let iU: UInt32
        switch node.content {
        case .characterDevice(let major, let minor), .blockDevice(let major, let minor):
            // new_encode_dev
            iU = (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)
        case .file(.chunks(_, let bits, _)): iU = UInt32(bits)  // block map, no indexes
        default: iU = UInt32(truncatingIfNeeded: placement.startBlock)
        }
        bytes.storeLE(iU, at: 16)
        bytes.storeLE(UInt32(index + 1), at: 20)  // i_ino
        bytes.storeLE(node.uid, at: 24)
        bytes.storeLE(node.gid, at: 28)
        bytes.storeLE(node.mtime, at: 32)
        bytes.storeLE(node.mtimeNanoseconds, at: 40)
        bytes.storeLE(linkCount, at: 44)
        return bytes
    }

    /// erofs_xattr_ibody_header (no shared xattrs) and the entries, each padded to 4 bytes.
    private func xattrBody(_ xattrs: [Xattr]) -> [UInt8] {
        guard !xattrs.isEmpty else { return [] }
        var body = [UInt8](repeating: 0, count: 12)
        for xattr in xattrs {
            precondition(xattr.name.count <= 255 && xattr.value.count <= 0xffff, "xattr too long")
            body += [UInt8(xattr.name.count), xattr.prefixIndex]
            body += [UInt8(xattr.value.count & 0xff), UInt8(xattr.value.count >> 8)]
            body += xattr.name + xattr.value
            body += [UInt8](repeating: 0, count: (4 - body.count % 4) % 4)
        }
        return body
    }

    /// The first directory linking each directory (its ".."); the root is its own parent.
    private func parentDirectories() -> [InodeID] {
        var parents = Array(nodes.indices)
        var assigned = Set([root])
        for id in nodes.indices {
            guard case .directory(let entries) = nodes[id].content else { continue }
            for entry in entries where assigned.insert(entry.target).inserted { parents[entry.target] = id }
        }
        return parents
    }

    /// Each inode's i_nlink: as given, else a directory's 2 + its subdirectories, anything
    /// else the names linking it (at least 1).
    private func linkCounts() -> [UInt32] {
        var names = [UInt32](repeating: 0, count: nodes.count)
        var subdirectories = [UInt32](repeating: 0, count: nodes.count)
        for (id, node) in nodes.enumerated() {
            guard case .directory(let entries) = node.content else { continue }
            for entry in entries {
                names[entry.target] += 1
                if case .directory = nodes[entry.target].content { subdirectories[id] += 1 }
            }
        }
        return nodes.indices.map { id in
            if let count = nodes[id].linkCount { return count }
            if case .directory = nodes[id].content { return 2 + subdirectories[id] }
            return max(1, names[id])
        }
    }

    /// A directory's blocks of erofs_dirent (nid, nameoff, file type) followed by the names,
    /// sorted by name bytes across all blocks; the last block is cut after its last name.
    /// `nids` nil: placeholders, for sizing.
    private func directoryData(_ id: InodeID, parent: InodeID, nids: [UInt64]?) -> [UInt8] {
        guard case .directory(let listed) = nodes[id].content else { return [] }
        let entries = ([Entry([0x2e], id), Entry([0x2e, 0x2e], parent)] + listed)
            .sorted { $0.name.lexicographicallyPrecedes($1.name) }
        let block = CraftedImage.blockSize
        var blocks: [[Entry]] = [[]]
        var used = 0
        for entry in entries {
            if used + 12 + entry.name.count > block {
                blocks.append([])
                used = 0
            }
            blocks[blocks.count - 1].append(entry)
            used += 12 + entry.name.count
        }
        var data: [UInt8] = []
        for (number, members) in blocks.enumerated() {
            var chunk = [UInt8](repeating: 0, count: 12 * members.count)
            var nameOffset = chunk.count
            for (index, entry) in members.enumerated() {
                chunk.storeLE(nids?[entry.target] ?? 0, at: 12 * index)
                chunk.storeLE(UInt16(nameOffset), at: 12 * index + 8)
                chunk[12 * index + 10] = fileType(entry.target)
                nameOffset += entry.name.count
            }
            for entry in members { chunk += entry.name }
            if number + 1 < blocks.count { chunk += [UInt8](repeating: 0, count: block - chunk.count) }
            data += chunk
        }
        return data
    }

    /// EROFS_FT_*.
    private func fileType(_ id: InodeID) -> UInt8 {
        switch nodes[id].content {
        case .file: 1
        case .directory: 2
        case .characterDevice: 3
        case .blockDevice: 4
        case .fifo: 5
        case .socket: 6
        case .symlink: 7
        }
    }
}

extension Array where Element == UInt8 {
    fileprivate mutating func store(_ bytes: [UInt8], at offset: Int) {
        replaceSubrange(offset..<(offset + bytes.count), with: bytes)
    }

    fileprivate mutating func storeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for index in 0..<(T.bitWidth / 8) { self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }
}

// MARK: Shapes the tests and the fuzzing seeds share

extension CraftedImage {
    /// One of every kind of object: files in blocks, tail-packed and chunk-based with holes, a
    /// hard link, a symlink, devices, a fifo, a socket, setuid/setgid/sticky modes, owners,
    /// nanosecond mtimes, user.* and security.capability xattrs, a name with control characters
    /// and, with `nonUTF8Name`, one that is not UTF-8 (`erofs walk` cannot walk that one yet:
    /// its names are Strings).
    public static func sample(nonUTF8Name: Bool = false) -> CraftedImage {
        var image = CraftedImage()
        image.nodes[image.root].mtime = 1_700_000_000
        let directory = image.add(
            Node(
                .directory([]), permissions: 0o2775, uid: 1000, gid: 100, mtime: 1_700_000_001,
                mtimeNanoseconds: 123_456_789, xattrs: [.user("comment", Array("a directory".utf8))]),
            named: "dir", in: image.root)
        let pattern = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
        image.add(
            Node(
                .file(.blocks(pattern)), permissions: 0o644, uid: 1, gid: 2, mtime: 1_600_000_000, mtimeNanoseconds: 1),
            named: "blocks.bin", in: directory)
        let tailPacked = image.add(
            Node(.file(.tailPacked(Array(pattern.prefix(5000)))), permissions: 0o4755, mtime: 1_600_000_002),
            named: "setuid-tail", in: directory)
        image.link("hardlink-to-setuid-tail", to: tailPacked, in: image.root)
        image.add(
            Node(
                .file(.tailPacked(Array("hello\n".utf8))), permissions: 0o640, uid: 65534, gid: 65534,
                xattrs: [
                    .user("mime", Array("text/plain".utf8)),
                    .security("capability", [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                ]),
            named: "small.txt", in: image.root)
        image.add(
            Node(
                .file(
                    .chunks(
                        size: 5 * 4096 + 100, chunkBits: 0,
                        data: [1: Array(pattern.prefix(4096)), 5: Array(pattern.prefix(100))])),
                permissions: 0o600), named: "sparse", in: image.root)
        image.add(Node(.file(.blocks([])), permissions: 0o644), named: "empty", in: image.root)
        image.add(Node(.symlink(Array("dir/blocks.bin".utf8)), permissions: 0o777), named: "link", in: image.root)
        image.add(Node(.characterDevice(major: 1, minor: 3), permissions: 0o666), named: "null", in: directory)
        image.add(Node(.blockDevice(major: 259, minor: 300), permissions: 0o660, gid: 6), named: "disk", in: directory)
        image.add(Node(.fifo, permissions: 0o620), named: "fifo", in: directory)
        image.add(Node(.socket, permissions: 0o755), named: "socket", in: directory)
        image.add(Node(.directory([]), permissions: 0o1777), named: "sticky", in: image.root)
        image.add(
            Node(.file(.tailPacked([1])), permissions: 0o644), named: [0x63, 0x01, 0x1b, 0x5b, 0x32, 0x4a],
            in: directory)
        if nonUTF8Name {
            image.add(
                Node(.file(.tailPacked([2])), permissions: 0o644), named: [0x6c, 0x61, 0x74, 0x69, 0x6e, 0x31, 0xe9],
                in: directory)
        }
        return image
    }

    /// `levels` directories, each with entries `a` and `b` naming the same next directory:
    /// 2^levels paths in a few KiB (the bottom one holds a file).
    public static func directoryDAG(levels: Int) -> CraftedImage {
        var image = CraftedImage()
        var current = image.root
        for _ in 0..<levels {
            let next = image.add(Node(.directory([]), permissions: 0o755))
            image.link("a", to: next, in: current)
            image.link("b", to: next, in: current)
            current = next
        }
        image.add(Node(.file(.tailPacked(Array("bottom\n".utf8))), permissions: 0o644), named: "file", in: current)
        return image
    }

    /// A chain of `depth` directories named `d`, with a file at the bottom.
    public static func deepChain(depth: Int) -> CraftedImage {
        var image = CraftedImage()
        var current = image.root
        for _ in 0..<depth {
            current = image.add(Node(.directory([]), permissions: 0o755), named: "d", in: current)
        }
        image.add(Node(.file(.tailPacked(Array("bottom\n".utf8))), permissions: 0o644), named: "file", in: current)
        return image
    }

    /// One chunk-based file of `holes` bytes of holes (4096 << `chunkBits`-byte chunks with
    /// null addresses), then `tail` stored in one last short chunk: 1 TiB of holes is a 4 KiB
    /// chunk table with the default 1 GiB chunks.
    public static func sparseFile(holes: UInt64, tail: [UInt8] = [], chunkBits: UInt8 = 18, name: String = "sparse")
        -> CraftedImage
    {
        let chunkSize = UInt64(CraftedImage.blockSize) << chunkBits
        precondition(holes % chunkSize == 0 && tail.count <= chunkSize)
        var image = CraftedImage()
        let data: [UInt64: [UInt8]] = tail.isEmpty ? [:] : [holes / chunkSize: tail]
        image.add(
            Node(
                .file(.chunks(size: holes + UInt64(tail.count), chunkBits: chunkBits, data: data)), permissions: 0o644),
            named: name, in: image.root)
        return image
    }
}
