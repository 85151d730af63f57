#!/usr/bin/env python3
"""Cold walk+read of a small-file image (bench-fuse.py's measure) through several mounts,
interleaved round by round in a rotated order: mount, evict the image (POSIX_FADV_DONTNEED),
walk and read every file, unmount. Medians and every round's time. As root:
    Benchmarks/fuse-walk-ab.py IMAGE ROUNDS METHOD...
METHOD: BINARY (its -t erofs.fuse), BINARY:kernel (its kernel mount), BINARY@-o,OPTION (FUSE
with mount options, comma-separated arguments), e.g.
    Benchmarks/fuse-walk-ab.py .build-bench/small16k.erofs 10 /tmp/main/mount.erofs:kernel \\
        /tmp/main/mount.erofs .build/release/mount.erofs .build/release/mount.erofs@-o,fuse.prefetch_ahead=on
"""
import os
import statistics
import subprocess
import sys
import time

image, rounds, methods = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
mountpoint = f"/tmp/erofs-fuse-walk-ab-{os.getpid()}"
os.makedirs(mountpoint, exist_ok=True)


def walk_read(root):
    for directory, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            while os.read(fd, 1 << 20):
                pass
            os.close(fd)


times = {method: [] for method in methods}
load = [os.getloadavg()[0]]
for round_index in range(rounds):
    for method in methods[round_index % len(methods):] + methods[:round_index % len(methods)]:
        binary, _, options = method.partition("@")
        kernel = binary.endswith(":kernel")
        binary = binary.removesuffix(":kernel")
        extra = options.split(",") if options else []
        subprocess.run([binary, image, mountpoint] if kernel else [binary, "-t", "erofs.fuse", *extra, image, mountpoint], check=True)
        fd = os.open(image, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        start = time.perf_counter()
        walk_read(mountpoint)
        times[method].append((time.perf_counter() - start) * 1000)
        subprocess.run([binary, "-u", mountpoint], check=True)
    load.append(os.getloadavg()[0])
os.rmdir(mountpoint)
print(f"{rounds} rounds, load average (1 min) {min(load):.1f}-{max(load):.1f}")
for method, values in times.items():
    print(f"{method}: median {statistics.median(values):.0f} ms  [{' '.join(f'{v:.0f}' for v in values)}]")
