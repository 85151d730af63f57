#!/usr/bin/python3
"""Soak of `erofs serve --tcp` under hostile clients, with real clients served meanwhile.

Starts `erofs serve IMAGE --tcp 127.0.0.1:PORT`, then holds open at once:
  - SLOW readers: full handshake (GO), then READ requests of 1 MiB sent and never read;
  - IDLE connections that never send a byte (a flood far over the server's cap);
  - HALF-OPEN connections: half a handshake then silence, or client flags then SHUT_WR;
while a churner keeps opening fresh idle connections. Meanwhile nbdinfo and nbdcopy (other
processes, real libnbd clients) must be served, and nbdcopy's copy must equal the image. Then it
reads the server's memory (VmRSS, VmHWM) and thread count, sends SIGTERM and times the exit,
which must come within 5 s with status 0.

Usage: soak.py ERofs-BINARY IMAGE [--idle N] [--half-open N] [--slow N] [--max-connections N]
Exits non-zero with a message on the first failure; prints one line of figures at the end.
Raises its own RLIMIT_NOFILE (soft to hard) for the client sockets; the server keeps the limit
it inherits (its connections stay under its cap).
"""
import argparse
import hashlib
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

OPTS_MAGIC = b"IHAVEOPT"
REQUEST_MAGIC = 0x25609513


def fail(message):
    sys.exit("FAIL: " + message)


def connect(port, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def receive_exactly(s, count):
    data = b""
    while len(data) < count:
        chunk = s.recv(count - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def go_handshake(s):
    """Fixed newstyle, NO_ZEROES, OPT_GO on the default export; returns the export size."""
    greeting = receive_exactly(s, 18)
    if greeting[:16] != b"NBDMAGIC" + OPTS_MAGIC:
        raise ValueError("bad greeting")
    s.sendall(struct.pack(">I", 3))
    data = struct.pack(">IH", 0, 0)  # empty name, no info requests
    s.sendall(OPTS_MAGIC + struct.pack(">II", 7, len(data)) + data)
    size = None
    while True:
        magic, option, kind, length = struct.unpack(">QIII", receive_exactly(s, 20))
        payload = receive_exactly(s, length)
        if kind == 3 and struct.unpack(">H", payload[:2])[0] == 0:
            size = struct.unpack(">Q", payload[2:10])[0]
        if kind == 1:
            return size
        if kind & 0x80000000:
            raise ValueError(f"GO refused: {kind:#x}")


def read_request(cookie, offset, length):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 0, cookie, offset, length)


def slow_reader(port, size):
    """Handshakes, then asks for far more than the socket buffers hold and never reads."""
    s = connect(port)
    go_handshake(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    length = min(1 << 20, size)
    s.setblocking(False)
    for cookie in range(256):
        try:
            s.send(read_request(cookie, (cookie * length) % (size - length + 1), length))
        except BlockingIOError:
            break
    return s


def open_quietly(port, kind):
    """An idle or half-open connection; None when the server refused it at once."""
    try:
        s = connect(port, timeout=5)
        if kind == "partial":
            s.sendall(struct.pack(">I", 3) + OPTS_MAGIC + b"\0\0")  # half an option header
        elif kind == "shut-write":
            s.sendall(struct.pack(">I", 3))
            s.shutdown(socket.SHUT_WR)
        return s
    except OSError:
        return None


def closed_by_peer(s):
    """Drains what arrived; true when the server has closed the connection."""
    s.setblocking(False)
    try:
        while True:
            if not s.recv(1 << 16):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("image")
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--half-open", type=int, default=500)
    parser.add_argument("--slow", type=int, default=16)
    parser.add_argument("--max-connections", type=int, default=64)
    parser.add_argument("--send-timeout", type=float, default=30)
    parser.add_argument(
        "--no-limit-options", action="store_true",
        help="pass neither --max-connections nor --send-timeout (for binaries from before they existed)")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.idle + args.half_open + args.slow + 2000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, needed)), hard))

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    log = open(f"/tmp/erofs-soak-{os.getpid()}.log", "w+")
    limits = [] if args.no_limit_options else [
        "--max-connections", str(args.max_connections), "--send-timeout", str(args.send_timeout)]
    server = subprocess.Popen(
        [args.binary, "serve", args.image, "--tcp", f"127.0.0.1:{port}"] + limits,
        stderr=log, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    try:
        run(args, server, port)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.seek(0)
        errors = log.read()
        log.close()
        os.unlink(log.name)
        if sys.exc_info()[0] is not None or server.returncode not in (0, None):
            print(errors[-4000:], file=sys.stderr)


def run(args, server, port):
    deadline = time.monotonic() + 10
    while True:
        try:
            connect(port).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                fail("the server did not start listening")
            time.sleep(0.05)
    image_size = os.path.getsize(args.image)
    with open(args.image, "rb") as f:
        image_digest = hashlib.sha256(f.read()).hexdigest()

    held = [slow_reader(port, image_size) for _ in range(args.slow)]
    started = time.monotonic()
    refused = 0
    kinds = ["idle"] * args.idle + ["partial", "shut-write"] * (args.half_open // 2)
    for kind in kinds:
        s = open_quietly(port, kind)
        if s is None:
            refused += 1
        else:
            held.append(s)
    flood_seconds = time.monotonic() - started

    # Fresh idle connections keep coming while the real clients run.
    stop_churn = threading.Event()
    churned = [0]

    def churn():
        ring = []
        while not stop_churn.is_set():
            s = open_quietly(port, "idle")
            if s is not None:
                ring.append(s)
                churned[0] += 1
            if len(ring) > 500:
                ring.pop(0).close()
        for s in ring:
            s.close()

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        started = time.monotonic()
        info = subprocess.run(["nbdinfo", "--size", f"nbd://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=60)
        info_seconds = time.monotonic() - started
        if info.returncode != 0 or int(info.stdout) != image_size:
            fail(f"nbdinfo under the flood: {info.returncode} {info.stdout!r} {info.stderr}")
        started = time.monotonic()
        copy = subprocess.run(
            ["nbdcopy", "--connections=4", f"nbd://127.0.0.1:{port}/", "-"], capture_output=True, timeout=120)
        copy_seconds = time.monotonic() - started
        if copy.returncode != 0 or hashlib.sha256(copy.stdout).hexdigest() != image_digest:
            fail(f"nbdcopy under the flood: {copy.returncode} {copy.stderr.decode(errors='replace')}")
        status = proc_status(server.pid)
        descriptors = len(os.listdir(f"/proc/{server.pid}/fd"))
        dropped = sum(1 for s in held if closed_by_peer(s))
    finally:
        stop_churn.set()
        churner.join()

    print(
        f"served idle={args.idle} half-open={args.half_open} slow={args.slow} cap={args.max_connections} "
        f"refused-at-connect={refused} dropped-by-server={dropped} flood={flood_seconds:.1f}s churned={churned[0]} "
        f"nbdinfo={info_seconds:.2f}s nbdcopy={copy_seconds:.2f}s "
        f"VmRSS={status['VmRSS'].replace(' ', '')} VmHWM={status['VmHWM'].replace(' ', '')} "
        f"threads={status['Threads']} fds={descriptors}", flush=True)
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        fail("the server did not exit within 30 s of SIGTERM")
    exit_seconds = time.monotonic() - started
    if code != 0:
        fail(f"the server exited with status {code}")
    if exit_seconds > 5:
        fail(f"the server took {exit_seconds:.2f} s to exit after SIGTERM")
    print(f"ok sigterm-exit={exit_seconds:.2f}s")

if __name__ == "__main__":
    main()
