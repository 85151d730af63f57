#!/usr/bin/python3
"""Benchmark `erofs serve` against nbdkit, qemu-nbd and nbd-server on one image over Unix
sockets: sequential nbdcopy throughput, fio random 4 KiB reads, server CPU per GiB.

Usage: bench.py EROFS_BINARY IMAGE WORKDIR [REPEATS]. Prints a Markdown report.
The image should be warm in the page cache and live on a disk (not tmpfs).

All servers run at once and every measurement goes round them in turn (the order rotates each
repeat), so load from other work on the machine falls on all of them alike and each ratio comes
from one run. BENCH_BASELINE=PATH adds a second `erofs` binary ("erofs-base") for an A/B of a
change; BENCH_TESTS=seq|rand|all (default all) picks the tests.
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
    if name in ("erofs", "erofs-base"):
        binary = erofs if name == "erofs" else os.environ["BENCH_BASELINE"]
        cmd = [binary, "serve", image, "--unix", sock, "--export-name", "bench"]
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
which = os.environ.get("BENCH_TESTS", "all")
tests = []  # (label, run(uri) -> value)
if which in ("all", "seq"):
    tests += [("seq " + label, lambda uri, extra=extra: nbdcopy(uri, extra)) for label, extra in shapes]
if which in ("all", "rand"):
    tests += [(f"randread 4k QD{depth}", lambda uri, depth=depth: fio(uri, depth)) for depth in (1, 32)]
servers = ["erofs"] + (["erofs-base"] if os.environ.get("BENCH_BASELINE") else []) + ["nbdkit", "qemu-nbd", "nbd-server"]
running = {}
for server in servers:
    running[server] = start(server)
    log("server", server, running[server][0].pid)
results = {}  # (server, test) -> list
cpu = {}
try:
    for repeat in range(repeats):
        order = servers[repeat % len(servers):] + servers[:repeat % len(servers)]
        for label, run in tests:
            for server in order:
                proc, uri = running[server]
                before = cpu_seconds(proc.pid)
                value = run(uri)
                results.setdefault((server, label), []).append(value)
                if label == "seq defaults":
                    time.sleep(0.3)  # let a forking server reap its per-client children
                    cpu.setdefault(server, []).append((cpu_seconds(proc.pid) - before) / gib)
            log(repeat, label, {server: round(results[(server, label)][-1]) for server in servers})
finally:
    for proc, _ in running.values():
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)

print(f"image: {image}, {size} bytes; repeats: {repeats}; values: median (min..max)\n")
others = [s for s in servers if not s.startswith("erofs")]
baseline = "erofs-base" in servers
print("| test | " + " | ".join(servers) + " | erofs/nbdkit (per-repeat range) | erofs/best other |"
      + (" erofs/erofs-base |" if baseline else ""))
print("|---|" + "---|" * (len(servers) + 2 + baseline))
for test, _ in tests:
    unit = "MB/s" if test.startswith("seq") else "IOPS"
    row = [test + f" ({unit})"]
    medians = {}
    for server in servers:
        v = results[(server, test)]
        medians[server] = statistics.median(v)
        row.append(f"{medians[server]:.0f} ({min(v):.0f}..{max(v):.0f})")
    paired = [a / b for a, b in zip(results[("erofs", test)], results[("nbdkit", test)])]
    row.append(f"{medians['erofs'] / medians['nbdkit']:.2f}x ({min(paired):.2f}..{max(paired):.2f})")
    row.append(f"{medians['erofs'] / max(medians[s] for s in others):.2f}x")
    if baseline:
        row.append(f"{medians['erofs'] / medians['erofs-base']:.2f}x")
    print("| " + " | ".join(row) + " |")
print("\nServer CPU seconds per GiB (nbdcopy defaults, utime+stime from /proc/PID/stat):\n")
for server, values in cpu.items():
    print(f"- {server}: median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})")
