#!/usr/bin/env bash
# `erofs extract` against Debian's `fsck.erofs --extract` on a 1 GiB lz4hc image (issue 3).
#
# The tree is real files: /usr/lib/x86_64-linux-gnu, then /opt/swift, copied (symlinks kept)
# until 1 GiB of file data; the image is made once with `mkfs.erofs -zlz4hc -T0` and kept under
# DIR (default $REPO/.build-bench, git-ignored). Both tools extract onto tmpfs (/dev/shm), so the
# tools' own work is measured, not the disk's writeback; runs alternate which tool goes first.
#   Benchmarks/bench-extract.sh [RUNS] [DIR] [IMAGE]   RUNS default 3 (0: only make the image);
#       IMAGE: another image to measure the same way (e.g. Benchmarks/make-bench-images.sh's
#       small.erofs); the runs need swift build -c release --product erofs
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-3}
DIR=${2:-$REPO/.build-bench}
EROFS_BIN=$REPO/.build/release/erofs
IMAGE=${3:-$DIR/real-1g-lz4hc.erofs}
OUT=/dev/shm/erofs-bench-extract
command -v fsck.erofs >/dev/null || { echo "fsck.erofs not found (apt-get install erofs-utils)" >&2; exit 1; }
mkdir -p "$DIR"

if [[ ! -s $IMAGE ]]; then
    tree=$DIR/real-1g.tree
    rm -rf "$tree"
    /usr/bin/python3 - "$tree" /usr/lib/x86_64-linux-gnu /opt/swift <<'PY'
import os, shutil, sys
dest, sources = sys.argv[1], sys.argv[2:]
limit, total = 1 << 30, 0
for source in sources:
    for root, dirs, files in os.walk(source):
        dirs.sort()
        target = os.path.join(dest, source.strip("/"), os.path.relpath(root, source))
        os.makedirs(target, exist_ok=True)
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path):
                os.symlink(os.readlink(path), os.path.join(target, name))
                continue
            if not os.path.isfile(path):
                continue
            size = os.path.getsize(path)
            if total + size > limit:
                continue
            shutil.copy2(path, os.path.join(target, name))
            total += size
        if total >= limit - (1 << 20):
            print(f"tree: {total} bytes of files")
            sys.exit(0)
print(f"tree: {total} bytes of files")
PY
    mkfs.erofs --quiet -zlz4hc -T0 "$IMAGE.tmp" "$tree"
    mv "$IMAGE.tmp" "$IMAGE"
    rm -rf "$tree"
fi
(( RUNS > 0 )) || exit 0   # RUNS=0: only make the image
[[ -x $EROFS_BIN ]] || { echo "build first: swift build -c release --product erofs" >&2; exit 1; }
echo "image: $IMAGE, $(stat -c %s "$IMAGE") bytes; load: $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$IMAGE" >/dev/null   # in the page cache for both tools

# Freeing a GiB of tmpfs pages goes on after rm returns; the pause keeps it out of the next run.
run_fsck() { /usr/bin/time -a -o "$LOG" -f "fsck.erofs run$1: %e s wall, %U user, %S sys" fsck.erofs --extract="$OUT/f" "$IMAGE" >/dev/null; rm -rf "$OUT/f"; sleep 3; }
run_ours() { /usr/bin/time -a -o "$LOG" -f "erofs-extract run$1: %e s wall, %U user, %S sys" "$EROFS_BIN" extract "$IMAGE" "$OUT/o"; rm -rf "$OUT/o"; sleep 3; }
LOG=$(mktemp)
rm -rf "$OUT"; mkdir -p "$OUT"
for run in $(seq 1 "$RUNS"); do
    if (( run % 2 )); then run_fsck "$run"; run_ours "$run"; else run_ours "$run"; run_fsck "$run"; fi
done
rm -rf "$OUT"
cat "$LOG"
/usr/bin/python3 - "$LOG" <<'PY'
import statistics, sys
walls = {}
for line in open(sys.argv[1]):
    tool, _, wall = line.split()[:3]
    walls.setdefault(tool, []).append(float(wall))
for tool, values in walls.items():
    print(f"{tool}: median wall {statistics.median(values):.2f} s of {len(values)} runs")
ratio = statistics.median(walls["fsck.erofs"]) / statistics.median(walls["erofs-extract"])
print(f"speed ratio (fsck.erofs median / erofs extract median): {ratio:.2f}x")
PY
rm -f "$LOG"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
