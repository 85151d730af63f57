#!/usr/bin/env python3
"""FUSE requests that reach the daemon, by opcode, per phase of bench-fuse.py's small-file
measures (cold find+stat, cold walk+read, two warm passes), with each opcode's latency (send
to reply), from the kernel's fuse tracepoints (6.13+) on a tracefs instance of its own,
filtered by the mount's connection. As root:
    Benchmarks/fuse-requests.py MOUNT.EROFS IMAGE [MOUNT OPTIONS...]
e.g. Benchmarks/fuse-requests.py .build/release/mount.erofs .build-bench/small16k.erofs
"""
import collections
import os
import re
import statistics
import subprocess
import sys
import time

tool, image, *options = sys.argv[1:]
if not os.path.isdir("/sys/kernel/tracing/events"):
    subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
trace = "/sys/kernel/tracing/instances/erofs-fuse-requests"
os.makedirs(trace, exist_ok=True)


def write(name, value):
    with open(f"{trace}/{name}", "w") as f:
        f.write(value)


fmt = open("/sys/kernel/tracing/events/fuse/fuse_request_send/format").read()
names = {int(number): name for number, name in re.findall(r'\{(\d+), "FUSE_(\w+)"\}', fmt)}
sent = re.compile(r"\s(\d+\.\d+): fuse_request_send: connection (\d+) req (\d+) opcode (\d+)")
ended = re.compile(r"\s(\d+\.\d+): fuse_request_end: connection (\d+) req (\d+) len \d+ error (-?\d+)")
mountpoint = f"/tmp/erofs-fuse-requests-{os.getpid()}"
os.makedirs(mountpoint, exist_ok=True)


def mount():
    subprocess.run([tool, "-u", mountpoint], stderr=subprocess.DEVNULL)
    subprocess.run([tool, "-t", "erofs.fuse", *options, image, mountpoint], check=True)
    device = os.stat(mountpoint).st_dev
    fd = os.open(image, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    return os.major(device) << 20 | os.minor(device)  # the kernel's dev_t, as traced


def read_all(paths):
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        while os.read(fd, 1 << 20):
            pass
        os.close(fd)


def phase(label, work, connection):
    write("trace", "")
    write("tracing_on", "1")
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    write("tracing_on", "0")
    pending, counts, latency, errors = {}, collections.Counter(), collections.defaultdict(list), collections.Counter()
    for line in open(f"{trace}/trace"):
        if (m := sent.search(line)) and int(m[2]) == connection:
            name = names.get(int(m[4]), m[4])
            counts[name] += 1
            pending[int(m[3])] = (float(m[1]), name)
        elif (m := ended.search(line)) and int(m[2]) == connection and int(m[3]) in pending:
            began, name = pending.pop(int(m[3]))
            latency[name].append((float(m[1]) - began) * 1e6)
            if int(m[4]):
                errors[(name, int(m[4]))] += 1
    print(f"{label}: {seconds * 1000:.1f} ms, {sum(counts.values())} requests")
    for name, count in counts.most_common():
        values = latency[name] or [0]
        print(f"  {name:12} {count:6}  median {statistics.median(values):7.0f} us, total {sum(values) / 1000:7.1f} ms")
    if errors:
        print("  errors:", dict(errors))


write("buffer_size_kb", "65536")
write("events/fuse/enable", "1")
try:
    connection = mount()
    phase("cold find+stat", lambda: [os.lstat(os.path.join(d, n)) for d, ds, ns in os.walk(mountpoint) for n in ns + ds], connection)
    connection = mount()
    paths = []

    def walk_read():  # each directory's files read as the walk reaches it, as bench-fuse.py does
        for directory, _, names in os.walk(mountpoint):
            listed = [os.path.join(directory, name) for name in names]
            read_all(listed)
            paths.extend(listed)

    phase("cold walk+read", walk_read, connection)
    phase("warm read 1", lambda: read_all(paths), connection)
    phase("warm read 2", lambda: read_all(paths), connection)
finally:
    write("events/fuse/enable", "0")
    subprocess.run([tool, "-u", mountpoint], stderr=subprocess.DEVNULL)
    os.rmdir(mountpoint)
