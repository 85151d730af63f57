#!/usr/bin/env bash
# Remote images through the FUSE backend against `curl` and against the same image from a local
# file, same run, on this host (issue 14). The object is served by the tests' range server
# (Tests/RemoteSourcesTests/Servers/range_server.py: Python, sendfile) on loopback; the image
# files stay in the host's page cache, so no disk I/O is timed on the server side.
#   1. one 512 MiB file (random, uncompressed image): `curl -o /dev/null` of the whole object
#      vs `cat FILE` through a fresh remote FUSE mount with an empty block cache (cold);
#   2. 8000 small files (tests/vm/make-bench-images.sh's small.erofs, lz4hc): walk and read
#      every file through a fresh mount: local file (FUSE) vs remote with an empty cache (cold)
#      vs remote again, its block cache filled by the cold run, a fresh mount (second cold);
#   3. the 512 MiB file again from the filled block cache vs the local image through FUSE.
# Every round mounts anew (empty page cache and dentries of the mount). Rounds alternate;
# medians are reported.   scripts/bench-remote.sh [ROUNDS]   (root, after swift build -c release)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
BIN=${EROFS_BIN_DIR:-$REPO/.build/release}
WORK=${BENCH_DIR:-$REPO/.build-bench}
mkdir -p "$WORK/remote"
BENCH_IMAGES=small "$REPO/tests/vm/make-bench-images.sh" "$WORK" >/dev/null
if [[ ! -f $WORK/remote/big512.erofs ]]; then
    rm -rf "$WORK/remote/big512.tree"; mkdir -p "$WORK/remote/big512.tree"
    head -c $((512 << 20)) /dev/urandom >"$WORK/remote/big512.tree/file.bin"
    mkfs.erofs --quiet "$WORK/remote/big512.erofs" "$WORK/remote/big512.tree" >/dev/null
    rm -rf "$WORK/remote/big512.tree"
fi
ln -f "$WORK/small.erofs" "$WORK/remote/small.erofs" 2>/dev/null || cp "$WORK/small.erofs" "$WORK/remote/small.erofs"
cat "$WORK/remote/"*.erofs >/dev/null   # the server's side in the page cache

python3 "$REPO/Tests/RemoteSourcesTests/Servers/range_server.py" --root "$WORK/remote" >"$WORK/remote/port" &
server=$!
MNT=$WORK/remote/mnt CACHE=$WORK/remote/cache
mkdir -p "$MNT"
cleanup() { "$BIN/mount.erofs" -u "$MNT" 2>/dev/null || true; kill "$server" 2>/dev/null || true; rm -rf "$CACHE"; }
trap cleanup EXIT
for _ in $(seq 50); do [[ -s $WORK/remote/port ]] && break; sleep 0.1; done
URL=http://127.0.0.1:$(head -1 "$WORK/remote/port")

now() { date +%s.%N; }
seconds() { python3 -c "print(f'{$2 - $1:.3f}')"; }
read_tree() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }
mount_fuse() { "$BIN/mount.erofs" -t erofs.fuse "$@" "$MNT"; }
unmount() { "$BIN/mount.erofs" -u "$MNT"; }

declare -A times
record() { times[$1]="${times[$1]:-} $2"; }
for round in $(seq "$ROUNDS"); do
    t0=$(now); curl -s -o /dev/null "$URL/big512.erofs"; t1=$(now); record curl "$(seconds "$t0" "$t1")"

    rm -rf "$CACHE"
    mount_fuse "$URL/big512.erofs" -o remote.cache="$CACHE"
    t0=$(now); cat "$MNT/file.bin" >/dev/null; t1=$(now); record big-remote-cold "$(seconds "$t0" "$t1")"
    unmount
    mount_fuse "$URL/big512.erofs" -o remote.cache="$CACHE"
    t0=$(now); cat "$MNT/file.bin" >/dev/null; t1=$(now); record big-remote-second "$(seconds "$t0" "$t1")"
    unmount
    mount_fuse "$WORK/remote/big512.erofs"
    t0=$(now); cat "$MNT/file.bin" >/dev/null; t1=$(now); record big-local "$(seconds "$t0" "$t1")"
    unmount

    mount_fuse "$WORK/remote/small.erofs"
    t0=$(now); read_tree "$MNT"; t1=$(now); record small-local "$(seconds "$t0" "$t1")"
    unmount
    rm -rf "$CACHE"
    mount_fuse "$URL/small.erofs" -o remote.cache="$CACHE"
    t0=$(now); read_tree "$MNT"; t1=$(now); record small-remote-cold "$(seconds "$t0" "$t1")"
    unmount
    mount_fuse "$URL/small.erofs" -o remote.cache="$CACHE"
    t0=$(now); read_tree "$MNT"; t1=$(now); record small-remote-second "$(seconds "$t0" "$t1")"
    unmount
done
python3 - <<PY
import statistics
times = {k: [float(x) for x in v.split()] for k, v in {
$(for k in "${!times[@]}"; do echo "    \"$k\": \"${times[$k]}\","; done)
}.items()}
m = {k: statistics.median(v) for k, v in times.items()}
mib = 512
for k in sorted(times):
    print(f"{k:22} median {m[k]:7.3f} s   runs {' '.join(f'{x:.3f}' for x in times[k])}")
print(f"512 MiB cold, remote FUSE vs curl: {mib / m['big-remote-cold']:.0f} vs {mib / m['curl']:.0f} MiB/s = {m['curl'] / m['big-remote-cold']:.2f}x (goal >= 0.8x)")
print(f"8000 small files cold, remote vs local FUSE: {m['small-remote-cold'] / m['small-local']:.2f}x the time (goal <= 2x)")
print(f"second cold read from the block cache vs local FUSE: small {m['small-remote-second'] / m['small-local']:.2f}x, 512 MiB {m['big-remote-second'] / m['big-local']:.2f}x the time (goal <= 1.2x)")
PY
