#!/usr/bin/env bash
# The FUSE backend (-t erofs.fuse) against the kernel's own EROFS mount of the same image and
# against squashfuse (Debian) on the same tree, same run, on this host: mount time, cold
# find+stat, cold small-file walk+read, cold big-file reads, warm small-file reads. Rounds
# interleave the methods; Benchmarks/bench-fuse.py says how each is measured.
#   Benchmarks/bench-fuse.sh [ROUNDS]   (as root, after `swift build -c release --product mount.erofs`)
# FUSE_OPTIONS="-o fuse.threads=1" passes options to our FUSE mount; BENCH_METHODS="kernel fuse"
# leaves squashfuse out; BENCH_BIG=0 leaves the big files out; EROFS_BIN_DIR picks the build
# (e.g. `make install`'s static one: $(swift build -c release --static-swift-stdlib
# --show-bin-path)); BENCH_FUSE_BASELINE=BINARY with method fuse-baseline adds another build.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-5}
BIN=${EROFS_BIN_DIR:-$REPO/.build/release}
WORK=${BENCH_DIR:-$REPO/.build-bench}
mkdir -p "$WORK"
for tool in squashfuse_ll mksquashfs; do
    command -v $tool >/dev/null || { echo "$tool not found (scripts/install-deps.sh)" >&2; exit 1; }
done
# 8000 files of 0..16 KiB in 200 directories, and 4 files of 64 MiB (2 random, 2 text), lz4hc;
# the trees are kept to make the squashfs images of the same files (lz4 -Xhc, 128 KiB blocks).
BENCH_IMAGES="small16k big" BENCH_KEEP_TREES=1 "$REPO/Benchmarks/make-bench-images.sh" "$WORK" >/dev/null
for kind in small16k big; do
    if [[ ! -s $WORK/$kind.sqfs ]]; then
        mksquashfs "$WORK/$kind.tree" "$WORK/$kind.sqfs.tmp" -comp lz4 -Xhc -all-root -noappend -quiet >/dev/null
        mv "$WORK/$kind.sqfs.tmp" "$WORK/$kind.sqfs"
    fi
done
echo "$(date -u '+%F %H:%M UTC'), $(uname -r), $(nproc) CPUs; images: $(stat -c '%n %s' "$WORK"/{small16k,big}.{erofs,sqfs} | sed "s|$WORK/||" | paste -sd, | sed 's/,/, /g')"
echo "binary: $BIN/mount.erofs ($(ldd "$BIN/mount.erofs" | grep -q libswiftCore && echo "Swift runtime linked dynamically" || echo "Swift runtime linked statically"))"
exec /usr/bin/python3 "$REPO/Benchmarks/bench-fuse.py" "$ROUNDS" "$BIN/mount.erofs" "$WORK" "${FUSE_OPTIONS:-}"
