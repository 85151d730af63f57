import Foundation
import Glibc
import SystemCalls
import Testing

@Suite struct ByteStringTests {
    /// Names that are not UTF-8 or hold what a terminal acts on.
    static let awkwardNames: [[UInt8]] = [
        Array("caf".utf8) + [0xe9], Array("caf".utf8) + [0xe8], Array("café".utf8), [0x1b] + Array("[31mred".utf8),
        Array("a b".utf8), Array("back\\slash".utf8), Array("new\nline".utf8), Array("tab\tbell\u{07}".utf8),
        Array("del".utf8) + [0x7f], Array("c1".utf8) + [0xc2, 0x9b], Array("名前-🙂".utf8),
        [0xed, 0xa0, 0x80], [0xc0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82] + Array("x".utf8), [0xf0, 0x9f, 0x99],
    ]

    /// `escaped` is GNU `ls -b`'s form: the names are made on disk and ls itself is the oracle.
    @Test func escapedIsWhatGNULsBPrints() throws {
        let directory = NSTemporaryDirectory() + "bytestring-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in Self.awkwardNames {
            let descriptor = (ByteString(directory + "/") + ByteString(name)).withCString {
                open($0, O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
            }
            try #require(descriptor >= 0, "create \(ByteString(name))")
            close(descriptor)
        }
        let listing = try Self.run("/bin/ls", ["-b", "-1", "-U", directory])
        let printed = Set(listing.split(separator: "\n").map(String.init))
        let ours = Set(Self.awkwardNames.map { ByteString($0).escaped })
        #expect(printed == ours, "ls -b printed \(printed.subtracting(ours)), we \(ours.subtracting(printed))")
    }

    @Test func escapedKeepsDistinctNamesDistinct() {
        let escaped = Self.awkwardNames.map { ByteString($0).escaped }
        #expect(Set(escaped).count == escaped.count)
        #expect(ByteString([0x63, 0x61, 0x66, 0xe9]).escaped == "caf\\351")
        #expect(ByteString([0x1b, 0x5b]).escaped == "\\033[")
        for name in escaped {
            #expect(!name.unicodeScalars.contains { $0.value < 0x20 || (0x7f...0x9f).contains($0.value) })
        }
    }

    @Test func piecesFollowUnicodeWellFormedness() {
        var pieces: [ByteString.Piece] = []
        ByteString([0x61, 0xc3, 0xa9, 0xed, 0xa0, 0x80, 0xf0, 0x9f, 0x99, 0x82, 0xe2, 0x82]).forEachPiece {
            pieces.append($0)
        }
        #expect(
            pieces == [
                .scalar("a", utf8: [0x61]), .scalar("é", utf8: [0xc3, 0xa9]),
                .invalidByte(0xed), .invalidByte(0xa0), .invalidByte(0x80),  // an encoded surrogate is not UTF-8
                .scalar("🙂", utf8: [0xf0, 0x9f, 0x99, 0x82]), .invalidByte(0xe2), .invalidByte(0x82),
            ])
    }

    static func run(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ["LC_ALL": "C.UTF-8"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}
