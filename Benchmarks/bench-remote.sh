#!/usr/bin/env bash
# Remote images through the FUSE backend against `curl` and against the same image from a local
# file, same run, on this host (issue 14). The object is served by the tests' range server
# (Tests/RemoteSourcesTests/Servers/range_server.py: Python, sendfile); the image files stay in
# the host's page cache, so no disk I/O is timed on the server side.
#   1. one 512 MiB file (random, uncompressed image): `curl -o /dev/null` of the whole object
#      vs `cat FILE` through a fresh remote FUSE mount with an empty block cache (cold), over
#      each link of BENCH_LINKS (default "loopback 1gbit 10gbit");
#   2. 8000 small files (Benchmarks/make-bench-images.sh's small.erofs, lz4hc): walk and read
#      every file through a fresh mount: local file (FUSE) vs remote with an empty cache (cold)
#      vs remote again, its block cache filled by the cold run, a fresh mount (second cold);
#   3. the 512 MiB file again from the block cache the loopback cold read filled (a fresh
#      mount, so a new process that checks each block once) vs the local image through FUSE;
#   4. the small-read trade-off of remote.block_size: 200 random 4 KiB reads (fixed seed,
#      POSIX_FADV_RANDOM so the kernel reads no more) of the 512 MiB file through a fresh mount
#      with an empty cache, for each size of BENCH_BLOCK_SIZES (default "64K 1M"), over the last
#      link of BENCH_LINKS: time, and bytes the server sent (its /__stats).
# Links: `loopback` is 127.0.0.1, where curl is bound by memory copies (2-4 GB/s), not by a
# network. `1gbit` and `10gbit` put the server in a network namespace behind a veth pair
# (remote-bench-lib.sh's shaped_link) shaped to that rate both ways; this kernel has no netem, so the round trip is modelled by
# the server waiting BENCH_DELAY seconds (0.001) before answering each request (what a ranged
# reader pays per request; curl pays it once). The namespaces go when the script exits.
# Every round mounts anew (empty page cache and dentries of the mount). Rounds alternate;
# medians are reported. BENCH_OPTIONS adds -o options to every remote mount (e.g. to try other
# remote.block_size / remote.readahead values). BENCH_BASELINE=PATH (another build's mount.erofs)
# adds its cold read over each link and its read from the block cache, interleaved with ours in
# every round, so that two builds are compared under the same load.
#   Benchmarks/bench-remote.sh [ROUNDS]   (root, after swift build -c release)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
LINKS=${BENCH_LINKS:-loopback 1gbit 10gbit}
DELAY=${BENCH_DELAY:-0.001}
EXTRA=${BENCH_OPTIONS:+,$BENCH_OPTIONS}
BIN=${EROFS_BIN_DIR:-$REPO/.build/release}
WORK=${BENCH_DIR:-$REPO/.build-bench}
source "$REPO/Benchmarks/remote-bench-lib.sh"
make_remote_images
cat "$WORK/remote/"*.erofs >/dev/null   # the server's side in the page cache

MNT=$WORK/remote/mnt CACHE=$WORK/remote/cache
mkdir -p "$MNT"
servers=()
cleanup() {
    "$BIN/mount.erofs" -u "$MNT" 2>/dev/null || true
    for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
    remove_links
    rm -rf "$CACHE" "$CACHE"-*
}
trap cleanup EXIT

declare -A URL
start_server() {  # link portfile netns|"" server-args...
    local link=$1 portfile=$2 ns=$3; shift 3
    local prefix=()
    [[ -z $ns ]] || prefix=(ip netns exec "$ns")
    rm -f "$portfile"
    "${prefix[@]}" python3 "$REPO/Tests/RemoteSourcesTests/Servers/range_server.py" --root "$WORK/remote" "$@" >"$portfile" &
    servers+=($!)
    for _ in $(seq 600); do grep -q '^[0-9]' "$portfile" 2>/dev/null && break; sleep 0.1; done
    grep -q '^[0-9]' "$portfile" || { echo "the range server for $link did not start" >&2; exit 1; }
}
subnet=0
for link in $LINKS; do
    case $link in
    loopback)
        start_server loopback "$WORK/remote/port" ""
        URL[loopback]=http://127.0.0.1:$(head -1 "$WORK/remote/port")
        ;;
    *gbit)
        subnet=$((subnet + 1))
        shaped_link "$link" "$subnet"
        start_server "$link" "$WORK/remote/port-$link" "$LINK_NS" --bind "$LINK_ADDR" --delay "$DELAY"
        URL[$link]=http://$LINK_ADDR:$(head -1 "$WORK/remote/port-$link")
        ;;
    *) echo "unknown link $link (loopback, 1gbit, 10gbit, ...)" >&2; exit 2 ;;
    esac
done

mount_fuse() { "$BIN/mount.erofs" -t erofs.fuse "$@" "$MNT"; }
unmount() { "$BIN/mount.erofs" -u "$MNT"; }
# timed_read NAME MOUNT.EROFS SOURCE [-o OPTIONS]: a fresh mount by that binary, `cat` of the big file.
timed_read() {
    local name=$1 binary=$2
    shift 2
    "$binary" -t erofs.fuse "$@" "$MNT"
    t0=$(now); cat "$MNT/file.bin" >/dev/null; t1=$(now); record "$name" "$(seconds "$t0" "$t1")"
    "$binary" -u "$MNT"
}
builds=("$BIN/mount.erofs")
[[ -z ${BENCH_BASELINE:-} ]] || builds+=("$BENCH_BASELINE")
suffix() { [[ $1 == "$BIN/mount.erofs" ]] || echo -baseline; }

for round in $(seq "$ROUNDS"); do
    for link in $LINKS; do
        t0=$(now); curl -s -o /dev/null "${URL[$link]}/big512.erofs"; t1=$(now); record "curl@$link" "$(seconds "$t0" "$t1")"
        # A cache directory per link and build: the cache is keyed by the URL, the loopback
        # one, filled here, is what the read from the block cache below reads, and another
        # build may keep its cache in another format.
        for build in "${builds[@]}"; do
            rm -rf "$CACHE-$link$(suffix "$build")"
            timed_read "big-remote-cold$(suffix "$build")@$link" "$build" \
                "${URL[$link]}/big512.erofs" -o "remote.cache=$CACHE-$link$(suffix "$build")$EXTRA"
        done
    done
    [[ " $LINKS " == *" loopback "* ]] || continue
    base=${URL[loopback]}
    for build in "${builds[@]}"; do
        timed_read "big-remote-second$(suffix "$build")" "$build" "$base/big512.erofs" \
            -o "remote.cache=$CACHE-loopback$(suffix "$build")$EXTRA"
    done
    mount_fuse "$WORK/remote/big512.erofs"
    t0=$(now); cat "$MNT/file.bin" >/dev/null; t1=$(now); record big-local "$(seconds "$t0" "$t1")"
    unmount

    mount_fuse "$WORK/remote/small.erofs"
    t0=$(now); read_tree "$MNT"; t1=$(now); record small-local "$(seconds "$t0" "$t1")"
    unmount
    rm -rf "$CACHE"
    mount_fuse "$base/small.erofs" -o "remote.cache=$CACHE$EXTRA"
    t0=$(now); read_tree "$MNT"; t1=$(now); record small-remote-cold "$(seconds "$t0" "$t1")"
    unmount
    mount_fuse "$base/small.erofs" -o "remote.cache=$CACHE$EXTRA"
    t0=$(now); read_tree "$MNT"; t1=$(now); record small-remote-second "$(seconds "$t0" "$t1")"
    unmount
done
random_reads() {  # prints seconds
    python3 - "$MNT/file.bin" <<'PY'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
size = os.fstat(fd).st_size
rng = random.Random(14)
offsets = [rng.randrange(size // 4096) * 4096 for _ in range(200)]
start = time.monotonic()
for offset in offsets:
    assert len(os.pread(fd, 4096, offset)) == 4096
print(f"{time.monotonic() - start:.3f}")
PY
}
served() { curl -s "$1/__stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["bytes"])'; }
for link in ${LINKS##* }; do
    for block in ${BENCH_BLOCK_SIZES:-64K 1M}; do
        for round in $(seq "$ROUNDS"); do
            rm -rf "$CACHE"
            mount_fuse "${URL[$link]}/big512.erofs" -o "remote.cache=$CACHE,remote.block_size=$block$EXTRA"
            before=$(served "${URL[$link]}")
            record "random-4k-$block@$link" "$(random_reads)"
            record "random-4k-$block-MiB@$link" "$(python3 -c "print(($(served "${URL[$link]}") - $before) / 1048576)")"
            unmount
        done
    done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
report "$LINKS" <<'PY'
mib = 512
for link in sys.argv[1].split():
    ratios = [c / f for c, f in zip(times[f"curl@{link}"], times[f"big-remote-cold@{link}"])]
    print(f"512 MiB cold over {link}, remote FUSE vs curl: {mib / m[f'big-remote-cold@{link}']:.0f} vs"
          f" {mib / m[f'curl@{link}']:.0f} MiB/s = {m[f'curl@{link}'] / m[f'big-remote-cold@{link}']:.2f}x"
          f" (per round {' '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.8x)")
for k in sorted(k for k in m if k.startswith("random-4k-") and "MiB" not in k):
    block, link = k[len("random-4k-"):].split("@")
    print(f"200 random 4 KiB reads, cold, remote.block_size={block}, over {link}: {m[k]:.3f} s"
          f" ({m[k] / 200 * 1000:.2f} ms a read), {m[f'random-4k-{block}-MiB@{link}']:.1f} MiB fetched")
if "small-local" in m:
    print(f"8000 small files cold, remote vs local FUSE: {m['small-remote-cold'] / m['small-local']:.2f}x the time (goal <= 2x)")
    print(f"second cold read from the block cache vs local FUSE: small {m['small-remote-second'] / m['small-local']:.2f}x,"
          f" 512 MiB {m['big-remote-second'] / m['big-local']:.2f}x the time (goal <= 1.2x)")
for k in sorted(k for k in m if "-baseline" in k):
    ours = k.replace("-baseline", "")
    print(f"{ours}: this build {m[ours]:.3f} s, baseline {m[k]:.3f} s (per round"
          f" {' '.join(f'{b / a:.2f}' for a, b in zip(times[ours], times[k]))}x the baseline's speed)")
PY
