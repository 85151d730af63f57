#!/usr/bin/python3
"""Benchmark `erofs serve` against nbdkit, qemu-nbd and nbd-server on one image over Unix
sockets: sequential nbdcopy throughput, fio random 4 KiB reads, server CPU per GiB.

Usage: bench.py EROFS_BINARY IMAGE WORKDIR [REPEATS]. Prints a Markdown report.
The image should be warm in the page cache and live on a disk (not tmpfs).
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import time

erofs, image, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
size = os.path.getsize(image)
gib = size / (1 << 30)
tick = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime+stime of the process and its waited-for children (nbd-server forks per client)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick


class Daemon:
    """A server that detached itself: signalled and polled by pid."""
    def __init__(self, pid):
        self.pid = pid

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def wait(self, timeout):
        for _ in range(int(timeout * 100)):
            if not os.path.exists(f"/proc/{self.pid}"):
                return
            time.sleep(0.01)


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def start(name):
    sock = f"{workdir}/{name}.sock"
    if os.path.exists(sock):
        os.unlink(sock)
    if name == "erofs":
        cmd = [erofs, "serve", image, "--unix", sock, "--export-name", "bench"]
    elif name == "nbdkit":
        cmd = ["nbdkit", "-U", sock, "-r", "-f", "file", image]
    elif name == "qemu-nbd":
        cmd = ["qemu-nbd", "-r", "-t", "-e", "16", "--cache=none", "--aio=native", "-f", "raw", "-x", "bench", "-k", sock, image]
    elif name == "nbd-server":
        config = f"{workdir}/nbd-server.conf"
        with open(config, "w") as f:
            f.write(f"[generic]\nunixsock = {sock}\n\n[bench]\nexportname = {image}\nreadonly = true\nsplice = true\n")
        # It daemonizes and forks a child per client; the daemon reaps them, so their CPU shows
        # up in its cutime/cstime. (-d would serve a single client.)
        subprocess.run(["nbd-server", "-C", config], check=True, timeout=30)
        for _ in range(500):
            found = subprocess.run(["pgrep", "-of", config], capture_output=True, text=True).stdout.split()
            if found:
                break
            time.sleep(0.01)
        proc = Daemon(int(found[0]))
        cmd = None
    if cmd:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    time.sleep(0.2)
    return proc, f"nbd+unix:///bench?socket={sock}"


def nbdcopy(uri, extra):
    begin = time.monotonic()
    subprocess.run(["nbdcopy", "--no-extents", *extra, uri, "null:"], check=True, timeout=120)
    return size / (time.monotonic() - begin) / 1e6  # MB/s


def fio(uri, depth):
    out = subprocess.run(
        ["fio", "--name=rand", "--ioengine=nbd", f"--uri={uri}", "--rw=randread", "--bs=4k",
         f"--iodepth={depth}", "--runtime=3", "--time_based", "--output-format=json"],
        check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out[out.index("{"):])["jobs"][0]["read"]["iops"]


shapes = [("defaults", [])] + [
    (f"--requests {r} --request-size {s}", [f"--requests={r}", f"--request-size={b}"])
    for r in (1, 16) for s, b in (("64k", 65536), ("256k", 262144), ("1M", 1048576))
]
servers = ["erofs", "nbdkit", "qemu-nbd", "nbd-server"]
results = {}  # (server, test) -> list
cpu = {}
for server in servers:
    proc, uri = start(server)
    log("server", server, proc.pid)
    for label, extra in shapes:
        values = []
        for _ in range(repeats):
            before = cpu_seconds(proc.pid)
            values.append(nbdcopy(uri, extra))
            if label == "defaults":
                time.sleep(0.3)  # let a forking server reap its per-client children
                cpu.setdefault(server, []).append((cpu_seconds(proc.pid) - before) / gib)
        results[(server, "seq " + label)] = values
        log(server, label, values)
    for depth in (1, 32):
        results[(server, f"randread 4k QD{depth}")] = values = [fio(uri, depth) for _ in range(repeats)]
        log(server, "QD", depth, values)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)

print(f"image: {image}, {size} bytes; repeats: {repeats}; values: median (min..max)\n")
tests = [t for (s, t) in results if s == "erofs"]
print("| test | " + " | ".join(servers) + " | erofs/nbdkit | erofs/best other |")
print("|---|" + "---|" * (len(servers) + 2))
for test in tests:
    unit = "MB/s" if test.startswith("seq") else "IOPS"
    row = [test + f" ({unit})"]
    medians = {}
    for server in servers:
        v = results[(server, test)]
        medians[server] = statistics.median(v)
        row.append(f"{medians[server]:.0f} ({min(v):.0f}..{max(v):.0f})")
    row.append(f"{medians['erofs'] / medians['nbdkit']:.2f}x")
    row.append(f"{medians['erofs'] / max(medians[s] for s in servers if s != 'erofs'):.2f}x")
    print("| " + " | ".join(row) + " |")
print("\nServer CPU seconds per GiB (nbdcopy defaults, utime+stime from /proc/PID/stat):\n")
for server, values in cpu.items():
    print(f"- {server}: median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})")
