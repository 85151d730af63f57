#!/usr/bin/env python3
"""The FUSE backend against the kernel's own EROFS and squashfuse, same files, same run (issue 15).

Run by Benchmarks/bench-fuse.sh, which makes the images. Methods:
  kernel      mount.erofs IMAGE DIR (the kernel's file-backed EROFS mount)
  fuse        mount.erofs -t erofs.fuse IMAGE DIR (ours)
  fuse-noprefetch  the same with -o fuse.prefetch_kb=0 (only when BENCH_METHODS names it)
  squashfuse  squashfuse_ll SQUASHFS DIR (Debian's squashfuse; mksquashfs -comp lz4 -Xhc of the tree)
  fuse-baseline  -t erofs.fuse with another build, $BENCH_FUSE_BASELINE (a mount.erofs binary):
              an A/B of two builds in one run (only when BENCH_METHODS names it)
Measures, each round visiting the methods in a rotated order so that a change of load hits all:
  mount         mount command start to return (small image)
  find+stat     fresh mount, image file evicted from the page cache: walk the tree, lstat everything
  walk+read     fresh mount, image evicted: walk the tree, read every file whole
  big read      fresh mount, image evicted: read the 4 big files (256 MiB): MB/s
  warm read     mounted, everything cached by a first pass: read every small file whole
"Evicted" is posix_fadvise(DONTNEED) on the image file alone: the caches of the other work on
a shared machine stay, and a fresh mount has empty dentry, inode and page caches of its own.
Each ratio is method / kernel per round (times; for big reads kernel / method, so >1 is faster
than the kernel for all); the median and the range over rounds are printed.
"""
import os
import statistics
import subprocess
import sys
import time

rounds = int(sys.argv[1])
tool, work = sys.argv[2], sys.argv[3]
fuse_options = sys.argv[4].split() if len(sys.argv) > 4 and sys.argv[4] else []
baseline = os.environ.get("BENCH_FUSE_BASELINE", "")
methods = os.environ.get("BENCH_METHODS", "kernel fuse squashfuse").split()
images = {
    "small": {"erofs": f"{work}/small16k.erofs", "squashfs": f"{work}/small16k.sqfs"},
    "big": {"erofs": f"{work}/big.erofs", "squashfs": f"{work}/big.sqfs"},
}


def mountpoint(method, kind):
    path = f"{work}/mnt-{method}-{kind}"
    os.makedirs(path, exist_ok=True)
    return path


def unmount(method, kind):
    target = mountpoint(method, kind)
    if method == "squashfuse":
        subprocess.run(["umount", target], stderr=subprocess.DEVNULL)
    else:
        subprocess.run([baseline if method == "fuse-baseline" else tool, "-u", target], stderr=subprocess.DEVNULL)


def mount(method, kind):
    """Mounts anew; returns (root, seconds the mount command took)."""
    unmount(method, kind)
    target = mountpoint(method, kind)
    if method == "kernel":
        args = [tool, images[kind]["erofs"], target]
    elif method == "fuse":
        args = [tool, "-t", "erofs.fuse", *fuse_options, images[kind]["erofs"], target]
    elif method == "fuse-noprefetch":  # ours without SiblingPrefetch, for an A/B in one run
        args = [tool, "-t", "erofs.fuse", *fuse_options, "-o", "fuse.prefetch_kb=0", images[kind]["erofs"], target]
    elif method == "fuse-baseline":
        args = [baseline, "-t", "erofs.fuse", *fuse_options, images[kind]["erofs"], target]
    else:
        args = ["squashfuse_ll", images[kind]["squashfs"], target]
    start = time.perf_counter()
    subprocess.run(args, check=True)
    return target, time.perf_counter() - start


def evict(method, kind):
    path = images[kind]["squashfs" if method == "squashfuse" else "erofs"]
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def find_stat(root):
    count = 0
    for directory, dirs, names in os.walk(root):
        for name in names + dirs:
            os.lstat(os.path.join(directory, name))
            count += 1
    return count


def read_file(path):
    total = 0
    fd = os.open(path, os.O_RDONLY)
    while chunk := os.read(fd, 1 << 20):
        total += len(chunk)
    os.close(fd)
    return total


def walk_read(root):
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            total += read_file(os.path.join(directory, name))
    return total


def big_read(root):
    return sum(read_file(os.path.join(root, name)) for name in sorted(os.listdir(root)))


def listed(root):
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)


def read_list(paths):
    return sum(read_file(p) for p in paths)


times = {measure: {m: [] for m in methods} for measure in ("mount", "find+stat", "walk+read", "big read", "warm read")}
results = {}


def record(measure, method, seconds, result):
    times[measure][method].append(seconds)
    previous = results.setdefault(measure, result)
    assert previous == result, f"{measure}: {method} saw {result}, another method {previous}"


def cold(measure, kind, work_function):
    for method in order:
        root, mount_seconds = mount(method, kind)
        if kind == "small":
            times["mount"][method].append(mount_seconds)
        evict(method, kind)
        start = time.perf_counter()
        result = work_function(root)
        record(measure, method, time.perf_counter() - start, result)
        unmount(method, kind)


load = [os.getloadavg()[0]]
for round_index in range(rounds):
    order = methods[round_index % len(methods):] + methods[:round_index % len(methods)]
    cold("find+stat", "small", find_stat)
    cold("walk+read", "small", walk_read)
    if os.environ.get("BENCH_BIG", "1") != "0":
        cold("big read", "big", big_read)
    load.append(os.getloadavg()[0])

# Warm: all mounted at once, one pass to fill every cache, then interleaved timed passes.
roots = {m: mount(m, "small")[0] for m in methods}
lists = {m: listed(roots[m]) for m in methods}
for m in methods:
    read_list(lists[m])
for round_index in range(rounds):
    order = methods[round_index % len(methods):] + methods[:round_index % len(methods)]
    for method in order:
        start = time.perf_counter()
        result = read_list(lists[method])
        record("warm read", method, time.perf_counter() - start, result)
load.append(os.getloadavg()[0])
for m in methods:
    unmount(m, "small")

print(f"{rounds} rounds, methods {' '.join(methods)}, load average (1 min) {min(load):.1f}-{max(load):.1f}")
print(f"small: {results['walk+read'] / 1e6:.1f} MB in {results['find+stat']} entries"
      + (f"; big: {results['big read'] / 1e6:.0f} MB" if "big read" in results else ""))
for measure, per_method in times.items():
    kernel = per_method.get("kernel")
    if not kernel:
        continue
    parts = []
    for method, values in per_method.items():
        if measure == "big read":
            size = results["big read"] / 1e6
            text = f"{method} {statistics.median(size / v for v in values):.0f} MB/s ({min(size / v for v in values):.0f}-{max(size / v for v in values):.0f})"
        else:
            text = f"{method} {statistics.median(values) * 1000:.1f} ms ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"
        if kernel and method != "kernel":
            # Per-round ratios (same round, neighbouring runs): time / kernel; for throughput kernel's time / ours.
            ratios = [v / k for v, k in zip(values, kernel)]
            if measure == "big read":
                ratios = [k / v for v, k in zip(values, kernel)]
                text += f", {statistics.median(ratios):.2f}x kernel's throughput ({min(ratios):.2f}-{max(ratios):.2f})"
            else:
                text += f", {statistics.median(ratios):.2f}x kernel's time ({min(ratios):.2f}-{max(ratios):.2f})"
        parts.append(text)
    print(f"{measure:10} " + "; ".join(parts))
