import Foundation
import Manifest
import SystemCalls
import Testing

@Suite struct ManifestTests {
    @Test func sha256KnownAnswers() {
        #expect(SHA256.hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(
            SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(
            SHA256.hex([UInt8](repeating: 0x61, count: 1_000_000))
                == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func sha256IncrementalEqualsOneShot() {
        let data = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        for split in [0, 1, 63, 64, 65, 127, 4097] {
            var hasher = SHA256()
            hasher.update(Array(data[..<split]))
            hasher.update(Array(data[split...]))
            #expect(Hex.encode(hasher.finalize()) == SHA256.hex(data))
        }
    }

    @Test func jsonStringsAsPythonWritesThem() {
        #expect(JSONText.quoted("plain") == "\"plain\"")
        #expect(JSONText.quoted("sp ace\ttab") == "\"sp ace\\ttab\"")
        #expect(JSONText.quoted("q\"b\\n\nr\r") == "\"q\\\"b\\\\n\\nr\\r\"")
        #expect(JSONText.quoted("\u{01}\u{1f}\u{08}\u{0c}\u{7f}") == "\"\\u0001\\u001f\\b\\f\u{7f}\"")
        #expect(JSONText.quoted("ünïcødé-名前-🙂") == "\"ünïcødé-名前-🙂\"")
    }

    @Test func entryLineHasSortedKeysAndOptionalMembers() {
        var entry = ManifestEntry(
            path: "/dev/block", kind: .block, permissions: 0o640, uid: 0, gid: 0, size: 0,
            mtimeNanoseconds: 1_768_170_996_297_109_184, linkCount: 1, rdev: (8, 1))
        #expect(
            entry.jsonLine
                == #"{"gid": 0, "mode": "0640", "mtime_ns": 1768170996297109184, "nlink": 1, "path": "/dev/block", "rdev": [8, 1], "size": 0, "type": "block", "uid": 0, "xattrs": {}}"#
        )
        entry = ManifestEntry(
            path: "/x", kind: .file, permissions: 0o4755, uid: 1, gid: 2, size: 3, mtimeNanoseconds: 5, linkCount: 1,
            xattrs: ["user.b": [0x01], "trusted.a": [0xff, 0x00]], sha256: "ab")
        #expect(
            entry.jsonLine
                == #"{"gid": 2, "mode": "4755", "mtime_ns": 5, "nlink": 1, "path": "/x", "sha256": "ab", "size": 3, "type": "file", "uid": 1, "xattrs": {"trusted.a": "ff00", "user.b": "01"}}"#
        )
    }

    @Test func sortsByCodePointNotByCanonicalEquivalence() {
        let names: [ByteString] = ["/é", "/z", "/e\u{301}", "/", "/a/b", "/a"]
        let entries = names.map {
            ManifestEntry(
                path: $0, kind: .dir, permissions: 0o755, uid: 0, gid: 0, size: 0, mtimeNanoseconds: 0, linkCount: 2)
        }
        #expect(entries.sortedByPath().map(\.path) == ["/", "/a", "/a/b", "/e\u{301}", "/z", "/é"])
    }
}

@Suite struct ByteNameJSONTests {
    /// Bytes that are not UTF-8 become `\udcXX` (Python's surrogateescape, written as a JSON
    /// escape); valid UTF-8 stays as Python's `ensure_ascii=False` writes it.
    @Test func invalidBytesAreSurrogateEscapes() {
        #expect(JSONText.quoted(ByteString([0x2f, 0x63, 0x61, 0x66, 0xe9])) == #""/caf\udce9""#)
        #expect(JSONText.quoted(ByteString([0x2f, 0x63, 0x61, 0x66, 0xe8])) == #""/caf\udce8""#)
        #expect(JSONText.quoted(ByteString("/café")) == "\"/café\"")
        #expect(JSONText.quoted(ByteString([0x1b, 0x5b, 0x5c, 0xff, 0x22])) == #""\u001b[\\\udcff\"""#)
    }

    /// Python, the reference: json.loads then os.fsencode gives the bytes back.
    @Test func pythonDecodesTheEscapeToTheSameBytes() throws {
        let name: [UInt8] = [0x2f, 0x63, 0x61, 0x66, 0xe9, 0x20, 0xc3, 0xa9, 0x1b, 0xed, 0xa0, 0x80]
        let line = JSONText.quoted(ByteString(name))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [
            "-c", "import json, os, sys; sys.stdout.write(os.fsencode(json.loads(sys.argv[1])).hex())", line,
        ]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(output == Hex.encode(name))
    }

    @Test func entriesSortByPathBytes() {
        let paths: [ByteString] = [ByteString([0x2f, 0xe9]), "/é", "/", "/z"]
        let entries = paths.map {
            ManifestEntry(
                path: $0, kind: .file, permissions: 0o644, uid: 0, gid: 0, size: 0, mtimeNanoseconds: 0, linkCount: 1)
        }
        #expect(entries.sortedByPath().map(\.path) == ["/", "/z", "/é", ByteString([0x2f, 0xe9])])
    }
}
