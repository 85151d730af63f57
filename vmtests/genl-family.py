"""Resolves a generic netlink family by name (CTRL_CMD_GETFAMILY) and prints its id.

Usage: genl-family.py NAME. Exit status 1 when the kernel does not know the family.
"""
import socket
import struct
import sys

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2


def attribute(kind, payload):
    padding = b"\0" * (-len(payload) % 4)
    return struct.pack("<HH", 4 + len(payload), kind) + payload + padding


name = sys.argv[1]
body = struct.pack("<BBH", CTRL_CMD_GETFAMILY, 1, 0) + attribute(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
request = struct.pack("<IHHII", 16 + len(body), GENL_ID_CTRL, NLM_F_REQUEST, 1, 0) + body
with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as sock:
    sock.send(request)
    reply = sock.recv(65536)

length, kind = struct.unpack_from("<IH", reply)
if kind == NLMSG_ERROR:
    (error,) = struct.unpack_from("<i", reply, 16)
    sys.exit(f"generic netlink family {name!r}: not found (errno {-error})")
offset = 16 + 4  # netlink header, genl header
while offset + 4 <= min(length, len(reply)):
    size, attr_kind = struct.unpack_from("<HH", reply, offset)
    if size < 4:
        break
    if attr_kind == CTRL_ATTR_FAMILY_ID:
        print(struct.unpack_from("<H", reply, offset + 4)[0])
        sys.exit(0)
    offset += (size + 3) & ~3
sys.exit(f"generic netlink family {name!r}: reply without a family id")
