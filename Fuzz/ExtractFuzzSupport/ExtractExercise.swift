// What the extract fuzzer does with each input, shared with ReaderTests so that every finding is
// replayed on the normal build through exactly the same calls. See Fuzz/README.md.
import EROFSReader
import ImageManifest
import Extraction
import ReaderFuzzSupport
#if canImport(Glibc)
import Glibc
#endif

/// `erofs ls --recursive --json --sha256` and `erofs extract` over one image: the recursive
/// listing's walk (manifest order) with every object's manifest entry, then a real extraction
/// (owners, modes, xattrs, devices, holes) into a fresh, size-limited tmpfs that is unmounted
/// afterwards. Errors are expected; traps, hangs, absurd allocations, a full tmpfs without the
/// free-space refusal, and anything written outside the destination are the findings.
public enum ExtractExercise {
    public struct Limits: Sendable {
        /// Objects the listing visits, and file bytes it hashes (holes count: they are read).
        public var listedObjects = 4096
        public var listedFileBytes: UInt64 = 256 << 10
        /// The tmpfs the extraction writes to.
        public var tmpfsBytes = 4 << 20
        public init() {}
    }

    public struct Outcome: Sendable {
        public var listingError: EROFSError?
        public var listedObjects = 0
        /// How the extraction ended: nil, or the error's text.
        public var extractionError: String?
        public var warnings = 0
    }

    /// Where the tmpfs goes (made once per process).
    public static let scratch: String = {
        var template = Array("/tmp/erofs-extract-fuzz-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp: \(errno)")
        atexit { _ = rmdir(ExtractExercise.scratch) }
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }()

    /// Thrown to stop the listing once a budget is spent (not a finding).
    private static let listingBudgetSpent = EROFSError(.io, "listing budget spent")

    @discardableResult
    public static func run(image: [UInt8], limits: Limits = Limits()) -> Outcome {
        var outcome = Outcome()
        switch Result(catching: { () throws(EROFSError) in try EROFSFilesystem(source: InMemorySource(image)) }) {
        case .failure(let error):
            outcome.listingError = error
        case .success(let filesystem):
            list(filesystem, limits: limits, outcome: &outcome)
            extract(filesystem, limits: limits, outcome: &outcome)
        }
        return outcome
    }

    /// The walk of `ls --recursive --json --sha256` (paths order), within the budgets.
    static func list(_ filesystem: EROFSFilesystem, limits: Limits, outcome: inout Outcome) {
        var hashed: UInt64 = 0
        do throws(EROFSError) {
            let root = try filesystem.inode(nid: filesystem.rootNid)
            var traversal = TreeTraversal(filesystem, from: root, order: .paths)
            while let event = try traversal.next() {
                guard case .enter(let inode) = event else { continue }
                guard outcome.listedObjects < limits.listedObjects else { throw listingBudgetSpent }
                outcome.listedObjects += 1
                let hash = inode.kind == .file && inode.size <= limits.listedFileBytes - hashed
                if hash { hashed += inode.size }
                _ = try? filesystem.manifestEntry(path: traversal.path, inode: inode, sha256: hash)
                if inode.kind == .file && !hash { _ = try? filesystem.storedLength(of: inode) }
            }
        } catch {
            if error != listingBudgetSpent { outcome.listingError = error }
        }
    }

    /// A real extraction into a new tmpfs (nosuid, nodev, noexec) of `tmpfsBytes`.
    static func extract(_ filesystem: EROFSFilesystem, limits: Limits, outcome: inout Outcome) {
        let target = scratch
        guard
            mount(
                "tmpfs", target, "tmpfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), "size=\(limits.tmpfsBytes),mode=0700")
                == 0
        else {
            fatalError("cannot mount a tmpfs at \(target): errno \(errno) (the extract exercise needs root)")
        }
        defer {
            if umount2(target, 0) != 0 { fatalError("cannot unmount \(target): errno \(errno)") }
        }
        let root = open(target, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        precondition(root >= 0)
        defer { close(root) }
        var extractor = Extractor(
            filesystem: filesystem, rootDescriptor: root, destinationName: target,
            // Everything restored (devices, setuid, every xattr): the tmpfs is nosuid and nodev.
            policy: ExtractPolicy(
                restoreOwners: true, samePermissions: true, umask: 0, devices: true, xattrs: .all, capabilities: true,
                rootMetadata: true),
            openDirectories: 16, filesInFlight: 4)
        do {
            outcome.warnings = try extractor.run().count
        } catch let error as EROFSError {
            outcome.extractionError = "\(error)"
        } catch let error as ExtractionError {
            outcome.extractionError = error.message
        } catch {
            outcome.extractionError = "\(error)"
        }
    }
}
