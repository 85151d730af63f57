#!/usr/bin/env bash
# First figures for the FUSE backend against the kernel's own EROFS, same image, same run, on
# this host: warm small-file reads (every file opened, read whole and closed, from a list made
# beforehand; the page cache and, for FUSE, the kernel's entry/attribute caches are warm) and
# mount time; then "fresh mount" rounds: each mounts anew (empty dentry, inode and page caches
# of the mount; the image file itself stays in the host's page cache, so no device I/O is
# timed), walks the tree and stats every file, then mounts anew and walks and reads every file.
# Rounds alternate between the two mounts; the median of each is reported.
#   scripts/bench-fuse.sh [ROUNDS]   (as root, after `swift build -c release`)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-7}
BIN=${EROFS_BIN_DIR:-$REPO/.build/release}
WORK=${BENCH_DIR:-$REPO/.build-bench}
mkdir -p "$WORK"
# The nbd benchmarks' small-file image: 8000 files of 512 B..24 KiB in 200 directories, lz4hc.
BENCH_IMAGES=small "$REPO/tests/vm/make-bench-images.sh" "$WORK" >/dev/null
IMAGE=$WORK/small.erofs
KERNEL=$WORK/kernel FUSE=$WORK/fuse
mkdir -p "$KERNEL" "$FUSE"
cleanup() { "$BIN/mount.erofs" -u "$KERNEL" 2>/dev/null || true; "$BIN/mount.erofs" -u "$FUSE" 2>/dev/null || true; }
trap cleanup EXIT
cleanup

now() { date +%s.%N; }
mount_ms=()
for round in 1 2 3; do
    t0=$(now); "$BIN/mount.erofs" "$IMAGE" "$KERNEL"; t1=$(now)
    "$BIN/mount.erofs" -t erofs.fuse ${FUSE_OPTIONS:-} "$IMAGE" "$FUSE"; t2=$(now)
    mount_ms+=("$(python3 -c "print(f'{($t1-$t0)*1000:.1f} {($t2-$t1)*1000:.1f}')")")
    [[ $round == 3 ]] || cleanup
done
echo "mount ms (kernel fuse), 3 rounds: ${mount_ms[*]}"

python3 - "$KERNEL" "$FUSE" "$ROUNDS" <<'PY'
import os, statistics, sys, time
kernel, fuse, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def files(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names]
    return sorted(out)
def read_all(paths):
    total = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            total += len(b)
        os.close(fd)
    return total
lists = {"kernel": files(kernel), "fuse": files(fuse)}
assert len(lists["kernel"]) == len(lists["fuse"]) == 8000, {k: len(v) for k, v in lists.items()}
sizes = {k: read_all(v) for k, v in lists.items()}   # warm-up: every page and entry cached
assert sizes["kernel"] == sizes["fuse"], sizes
times = {"kernel": [], "fuse": []}
for _ in range(rounds):
    for name in ("kernel", "fuse"):
        t = time.perf_counter(); read_all(lists[name]); times[name].append(time.perf_counter() - t)
k, f = statistics.median(times["kernel"]), statistics.median(times["fuse"])
print(f"warm small-file reads, 8000 files / {sizes['kernel'] / 1e6:.1f} MB, median of {rounds}: "
      f"kernel {k * 1000:.0f} ms, fuse {f * 1000:.0f} ms, fuse/kernel {f / k:.2f}x")
print("  per round kernel ms:", " ".join(f"{x * 1000:.0f}" for x in times["kernel"]))
print("  per round fuse ms:  ", " ".join(f"{x * 1000:.0f}" for x in times["fuse"]))
PY

# Fresh-mount rounds: find+stat, and walk+read, each on a mount made just before.
python3 - "$ROUNDS" "$BIN/mount.erofs" "$IMAGE" "$KERNEL" "$FUSE" ${FUSE_OPTIONS:-} <<'PY'
import os, statistics, subprocess, sys, time
rounds, tool, image, kernel, fuse, fuse_options = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
def mount(name):
    target = kernel if name == "kernel" else fuse
    subprocess.run([tool, "-u", target], stderr=subprocess.DEVNULL)
    args = [tool] + (["-t", "erofs.fuse"] + fuse_options if name == "fuse" else []) + [image, target]
    subprocess.run(args, check=True)
    return target
def find_stat(root):
    n = 0
    for d, dirs, names in os.walk(root):
        for x in names + dirs:
            os.lstat(os.path.join(d, x)); n += 1
    return n
def walk_read(root):
    total = 0
    for d, _, names in os.walk(root):
        for x in names:
            fd = os.open(os.path.join(d, x), os.O_RDONLY)
            while (b := os.read(fd, 1 << 16)):
                total += len(b)
            os.close(fd)
    return total
for label, work in (("find+stat", find_stat), ("walk+read", walk_read)):
    times = {"kernel": [], "fuse": []}
    results = {}
    for _ in range(rounds):
        for name in ("kernel", "fuse"):
            root = mount(name)
            t = time.perf_counter(); results[name] = work(root); times[name].append(time.perf_counter() - t)
    assert results["kernel"] == results["fuse"], results
    k, f = statistics.median(times["kernel"]), statistics.median(times["fuse"])
    print(f"fresh-mount {label}, median of {rounds}: kernel {k * 1000:.0f} ms, fuse {f * 1000:.0f} ms, fuse/kernel {f / k:.2f}x"
          f" (kernel {min(times['kernel']) * 1000:.0f}-{max(times['kernel']) * 1000:.0f}, fuse {min(times['fuse']) * 1000:.0f}-{max(times['fuse']) * 1000:.0f})")
PY
