#!/usr/bin/python3
"""Edge cases of `erofs serve` through libnbd (a real client).

Usage: edge_cases.py URI IMAGE. Exits non-zero with a message on the first failure.
Run with /usr/bin/python3 (the python with the `nbd` module), e.g. from NBDServerTests.
"""
import random
import sys

import nbd

uri, image_path = sys.argv[1], sys.argv[2]
with open(image_path, "rb") as f:
    image = f.read()


def check(condition, message):
    if not condition:
        sys.exit("FAIL: " + message)


def expect_error(errno_name, action, what):
    try:
        action()
    except nbd.Error as error:
        check(error.errno == errno_name, f"{what}: expected {errno_name}, got {error.errno} ({error.string})")
        return
    sys.exit(f"FAIL: {what}: succeeded, expected {errno_name}")


h = nbd.NBD()
# Let requests the export's flags forbid reach the server: it must refuse them itself.
h.set_strict_mode(0)
h.connect_uri(uri)
size = h.get_size()
check(size == len(image), f"size {size} != image size {len(image)}")
check(h.is_read_only(), "export is not read-only")
check(h.get_structured_replies_negotiated(), "structured replies were not negotiated")

# Writes, trims and zeroes are refused with EPERM, and the connection stays usable.
expect_error("EPERM", lambda: h.pwrite(b"x" * 4096, 0), "pwrite")
check(h.pread(4096, 0) == image[:4096], "read after refused write")
expect_error("EPERM", lambda: h.trim(4096, 0), "trim")
expect_error("EPERM", lambda: h.zero(4096, 0), "zero")
h.flush()

# Reads past the end are refused with EINVAL; the connection lives on.
expect_error("EINVAL", lambda: h.pread(4096, size - 100), "read across the end")
expect_error("EINVAL", lambda: h.pread(512, size + 4096), "read past the end")
check(h.pread(100, size - 100) == image[-100:], "read of the last bytes")

# Structured replies: one OFFSET_DATA chunk covering the request.
chunks = []


def chunk(subbuf, offset, status, error):
    chunks.append((offset, status, len(subbuf), bytes(subbuf)))
    return 0


buffer = h.pread_structured(8192, 4096, chunk)
check(chunks == [(4096, nbd.READ_DATA, 8192, image[4096:12288])], f"structured chunks {[(c[0], c[1], c[2]) for c in chunks]}")
check(buffer == image[4096:12288], "structured read data")

# Many concurrent requests (aio), completed in whatever order the server answers.
rng = random.Random(1234)
pending = []
for _ in range(256):
    length = rng.choice([512, 4096, 65536])
    offset = rng.randrange(0, size - length)
    buf = nbd.Buffer(length)
    cookie = h.aio_pread(buf, offset)
    pending.append((cookie, buf, offset, length))
while h.aio_in_flight() > 0:
    h.poll(-1)
for cookie, buf, offset, length in pending:
    check(h.aio_command_completed(cookie), f"aio {cookie} not completed")
    check(buf.to_bytearray() == image[offset:offset + length], f"aio read at {offset}+{length}")
h.shutdown()

# Option negotiation by hand: an unknown export name is refused at GO, LIST names the export,
# and an unsupported option (LIST_META_CONTEXT) is refused without ending the handshake.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(uri)
names = []
h.opt_list(lambda name, description: names.append(name) or 0)
check(len(names) == 1, f"LIST gave {names}")
try:
    h.opt_list_meta_context(lambda name: 0)
    sys.exit("FAIL: LIST_META_CONTEXT succeeded")
except nbd.Error as error:
    check("unsupported" in str(error).lower() or error.errno == "ENOTSUP", f"LIST_META_CONTEXT error: {error}")
h.set_export_name("no-such-export")
try:
    h.opt_go()
    sys.exit("FAIL: GO to an unknown export succeeded")
except nbd.Error:
    pass
h.set_export_name(names[0])
h.opt_go()
check(h.pread(512, 0) == image[:512], "read after negotiation by hand")
h.shutdown()
print("ok")
