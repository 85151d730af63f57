#!/usr/bin/python3
"""A TLS client that never reads its replies (for the SIGTERM test of `erofs serve`).

Usage: tls_stalled_reader.py PORT CA_FILE. Negotiates fixed newstyle, STARTTLS, then OPT_GO
inside TLS on 127.0.0.1:PORT (verifying the certificate for "localhost"), sends READs of
1 MiB until the socket takes no more, prints "stalled N" and sleeps until killed.
"""
import os
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak import OPTS_MAGIC, go_handshake, read_request, receive_exactly  # noqa: E402

port, ca_file = int(sys.argv[1]), sys.argv[2]
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
greeting = receive_exactly(raw, 18)
raw.sendall(struct.pack(">I", 3))
raw.sendall(OPTS_MAGIC + struct.pack(">II", 5, 0))  # NBD_OPT_STARTTLS
_, option, kind, length = struct.unpack(">QIII", receive_exactly(raw, 20))
if option != 5 or kind != 1:
    sys.exit(f"STARTTLS answered with {kind:#x}")
context = ssl.create_default_context(cafile=ca_file)
tls = context.wrap_socket(raw, server_hostname="localhost")


class AfterGreeting:
    """go_handshake on a connection whose greeting was already read."""

    def __init__(self, sock):
        self.sock, self.greeted = sock, False

    def recv(self, count):
        if not self.greeted:
            self.greeted = True
            return greeting[:count]
        return self.sock.recv(count)

    def sendall(self, data):
        if len(data) == 4:
            return  # client flags went before STARTTLS
        self.sock.sendall(data)


size = go_handshake(AfterGreeting(tls))
tls.setblocking(False)
sent = 0
for cookie in range(1024):
    try:
        tls.send(read_request(cookie, (cookie % 4) << 20, 1 << 20))
        sent += 1
    except (ssl.SSLWantWriteError, BlockingIOError):
        break
print(f"stalled {sent}", flush=True)
time.sleep(60)
