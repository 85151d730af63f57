import EROFSFormat
import SystemCalls

/// A depth-first traversal of a tree with an explicit stack, so that an image's depth costs
/// heap (a few hundred bytes per level), never the thread's stack; every directory may be
/// reached once only (a directory has exactly one parent: a second name for one, a DAG or a
/// cycle, would multiply the tree exponentially), which bounds the walk by the image's
/// directories. Paths are built only when asked for (`path`), from the names on the stack, so
/// that deep trees do not hold a full path per level.
///
/// `next()` gives every object once (the start first) and, after a directory's subtree,
/// `.leave` for it; `skipChildren()` right after a directory's `.enter` does not descend.
public struct TreeTraversal {
    public enum Order: Sendable {
        /// Each directory's entries in on-disk order (sorted by name bytes).
        case disk
        /// The order of the full paths' bytes (the manifest's order): a subdirectory's subtree
        /// comes where "name/" sorts among its siblings, not right after "name".
        case paths
    }

    public enum Event {
        /// An object: a directory among them is descended into by the next `next()`.
        case enter(Inode)
        /// Every object below this directory has been given.
        case leave(Inode)
    }

    private enum Step {
        case object(DirectoryEntry, Inode)
        case descend(DirectoryEntry, Inode)
    }

    private struct Frame {
        var name: [UInt8]
        var inode: Inode
        var steps: [Step]
        var next = 0
        /// `directoryPath`'s length before this directory's name was appended.
        var parentPathLength: Int
    }

    let filesystem: EROFSFilesystem
    let order: Order
    let startPath: ByteString
    private var frames: [Frame] = []
    private var pending: (name: [UInt8], inode: Inode)?
    private var started = false
    private let start: Inode
    private var visitedDirectories: Set<UInt64> = []
    /// The path of the directory on top of the stack, as bytes: kept up to date on each push
    /// and pop, so that `path` costs one copy, not one append per level.
    private var directoryPath: [UInt8]
    /// The name of the object last given (empty for the start).
    public private(set) var name: [UInt8] = []
    /// How many directories above the start the last object is (0: the start).
    public var depth: Int { frames.count }

    /// Whether a name containing '/' is given to the caller (which must not use it as a path
    /// component) instead of being an error.
    let givesNamesWithSlash: Bool

    public init(
        _ filesystem: EROFSFilesystem, from start: Inode, path: ByteString = "/", order: Order = .disk,
        givesNamesWithSlash: Bool = false
    ) {
        self.filesystem = filesystem
        self.givesNamesWithSlash = givesNamesWithSlash
        self.start = start
        self.order = order
        startPath = path
        directoryPath = path.bytes
    }

    /// The path of the last object given: the start's path and the names below it.
    public var path: ByteString {
        guard depth > 0 else { return startPath }
        var bytes = directoryPath
        if bytes != [0x2f] { bytes.append(0x2f) }
        bytes += name
        return ByteString(bytes)
    }

    private mutating func push(_ name: [UInt8], _ directory: Inode) {
        let length = directoryPath.count
        if !frames.isEmpty {
            if directoryPath != [0x2f] { directoryPath.append(0x2f) }
            directoryPath += name
        }
        frames.append(Frame(name: name, inode: directory, steps: [], parentPathLength: length))
    }

    /// Do not descend into the directory just given (disk order only).
    public mutating func skipChildren() {
        precondition(order == .disk, "skipChildren() needs the disk order")
        pending = nil
    }

    public mutating func next() throws(EROFSError) -> Event? {
        if !started {
            started = true
            if start.kind == .directory {
                visitedDirectories.insert(start.nid)
                pending = ([], start)
            }
            return .enter(start)
        }
        if let (name, directory) = pending {
            pending = nil
            let steps = try withContext(path: path.description) { () throws(EROFSError) -> [Step] in
                try self.steps(of: directory)
            }
            push(name, directory)
            frames[frames.count - 1].steps = steps
        }
        while let top = frames.indices.last {
            guard frames[top].next < frames[top].steps.count else {
                let done = frames.removeLast()
                directoryPath.removeSubrange(done.parentPathLength...)
                name = done.name
                return .leave(done.inode)
            }
            let step = frames[top].steps[frames[top].next]
            frames[top].next += 1
            switch step {
            case .object(let entry, let child):
                name = entry.name
                if child.kind == .directory {
                    guard visitedDirectories.insert(child.nid).inserted else {
                        throw EROFSError(
                            .corrupt, "directory reached twice (a directory has one parent)", path: path.description,
                            nid: child.nid)
                    }
                    if order == .disk { pending = (entry.name, child) }
                }
                return .enter(child)
            case .descend(let entry, let child):
                // Sorted order: the subtree comes after the siblings sorting before "name/".
                name = entry.name
                let childPath = path
                push(entry.name, child)
                let steps = try withContext(path: childPath.description) { () throws(EROFSError) -> [Step] in
                    try self.steps(of: child)
                }
                frames[frames.count - 1].steps = steps
            }
        }
        return nil
    }

    /// A directory's children ("." and ".." left out), their inodes read, in walking order.
    private func steps(of directory: Inode) throws(EROFSError) -> [Step] {
        var steps: [Step] = []
        for entry in try filesystem.readDirectory(directory) where entry.name != [0x2e] && entry.name != [0x2e, 0x2e] {
            guard givesNamesWithSlash || !entry.name.contains(0x2f) else {
                throw EROFSError(.corrupt, "directory entry name contains '/'", nid: directory.nid)
            }
            let child = try withContext(nid: entry.nid) { () throws(EROFSError) -> Inode in
                try filesystem.inode(nid: entry.nid)
            }
            steps.append(.object(entry, child))
            if order == .paths && child.kind == .directory { steps.append(.descend(entry, child)) }
        }
        guard order == .paths else { return steps }
        func key(_ step: Step) -> [UInt8] {
            switch step {
            case .object(let entry, _): entry.name
            case .descend(let entry, _): entry.name + [0x2f]
            }
        }
        return steps.sorted { key($0).lexicographicallyPrecedes(key($1)) }
    }
}

extension EROFSFilesystem {
    /// Visits every path of the tree depth-first from the root, each directory's entries in disk
    /// order; "." and ".." are skipped. A directory reached twice (a cycle or a DAG) is an error.
    public func walk(_ visit: (_ path: ByteString, _ inode: Inode) throws(EROFSError) -> Void) throws(EROFSError) {
        let root = try withContext(path: "/") { () throws(EROFSError) -> Inode in try inode(nid: rootNid) }
        guard root.kind == .directory else {
            throw EROFSError(.corrupt, "root inode is not a directory", path: "/", nid: rootNid)
        }
        var traversal = TreeTraversal(self, from: root)
        while let event = try traversal.next() {
            if case .enter(let inode) = event { try visit(traversal.path, inode) }
        }
    }

    /// Streams a regular file's data in chunks.
    public func forEachChunk(of inode: Inode, chunkSize: Int = 1 << 20, _ body: ([UInt8]) throws(EROFSError) -> Void)
        throws(EROFSError)
    {
        var offset: UInt64 = 0
        while offset < inode.size {
            let chunk = try read(inode, at: offset, count: chunkSize)
            guard !chunk.isEmpty else {
                throw EROFSError(.corrupt, "data ends before the inode size", nid: inode.nid, offset: offset)
            }
            try body(chunk)
            offset += UInt64(chunk.count)
        }
    }
}
