#!/usr/bin/env bash
# Runs on the host (the VM sees the repo read-only): makes the two images that
# bench-nbd-vs-loop.sh reads, with Debian's mkfs.erofs (lz4hc), under DIR
# (default $REPO/.build-bench, git-ignored). Deterministic content; skipped when present.
# BENCH_IMAGES picks the kinds (default: big small); BENCH_KEEP_TREES=1 keeps each source tree
# as DIR/KIND.tree, for the other filesystems Benchmarks/bench-fuse.sh builds from the same files.
#   big.erofs:   4 files, 256 MiB: 2 x 64 MiB incompressible (random) + 2 x 64 MiB text-like
#   small.erofs: 8000 files of 512 B..24 KiB (mixed random and text) in 200 directories
#   small16k.erofs: 8000 files of 0..16 KiB (mixed random and text) in 200 directories
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$REPO/.build-bench}
mkdir -p "$DIR"
command -v mkfs.erofs >/dev/null || { echo "mkfs.erofs not found (apt-get install erofs-utils)" >&2; exit 1; }

make_tree() {  # kind dest
    /usr/bin/python3 - "$1" "$2" <<'PY'
import os, random, sys
kind, dest = sys.argv[1], sys.argv[2]
rng = random.Random(20261126)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(4000)]
def text(n):
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:n])
os.makedirs(dest)
if kind == "big":
    chunk = 1 << 20
    for i in range(2):
        with open(f"{dest}/random{i}.bin", "wb") as f:
            for _ in range(64):
                f.write(rng.randbytes(chunk))
        with open(f"{dest}/text{i}.txt", "wb") as f:
            for _ in range(64):
                f.write(text(chunk))
else:
    pool = text(1 << 20)
    for d in range(200):
        os.makedirs(f"{dest}/d{d:03}")
        for i in range(40):
            n = rng.randint(0, 16 << 10) if kind == "small16k" else rng.randint(512, 24 << 10)
            data = rng.randbytes(n) if i % 3 == 0 else pool[(s := rng.randrange(len(pool) - n)):s + n]
            with open(f"{dest}/d{d:03}/f{i:02}", "wb") as f:
                f.write(data)
PY
}

for kind in ${BENCH_IMAGES:-big small}; do
    image=$DIR/$kind.erofs
    [[ -s $image && ( -z ${BENCH_KEEP_TREES:-} || -d $DIR/$kind.tree ) ]] && continue
    rm -rf "$DIR/$kind.tree"
    make_tree "$kind" "$DIR/$kind.tree"
    mkfs.erofs --quiet -zlz4hc -T0 --all-root "$image.tmp" "$DIR/$kind.tree"
    mv "$image.tmp" "$image"
    [[ -n ${BENCH_KEEP_TREES:-} ]] || rm -rf "$DIR/$kind.tree"
    echo "made $image: $(stat -c %s "$image") bytes"
done
