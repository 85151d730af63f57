#!/usr/bin/env bash
# Runs inside the test VM (vmtests/run.sh): cold reads through our block devices
# (`mount.erofs -t erofs.nbd`, `-t erofs.ublk` where the kernel has ublk_drv) against the same
# image on a loop device, in the same boot, interleaved.
#   big:   cat every file of big.erofs (256 MiB: 4 big files) to /dev/null
#   small: find -type f | xargs cat of small.erofs (8000 files of 0.5-24 KiB)
# Each measurement: mount, drop caches, time the read, unmount. ROUNDS rounds (default 3); the
# order of the methods rotates between rounds. Prints every time, then per workload and method
# the median of loop time / method time (throughput ratio: 1.0 = as fast as loop) with min..max.
# The images come from Benchmarks/make-bench-images.sh, run on the host first (the VM's root is
# read-only).
#   Benchmarks/make-bench-images.sh && swift build -c release --product mount.erofs
#   vmtests/run.sh --kernel 6.12 --timeout 2400 -- Benchmarks/vm/bench-nbd-vs-loop.sh
# Knobs: EROFS_BIN_DIR (default .build/release), EROFS_BENCH_DIR (default .build-bench),
# EROFS_BENCH_ROUNDS, EROFS_BENCH_WORKLOADS ("big small"), EROFS_BENCH_WARMUP=0 (skip the
# untimed first pass), EROFS_BENCH_METHODS (default "loop nbd ublk", ublk only where
# /dev/ublk-control exists): words KIND[:ATTR=VALUE,...][@BINDIR][%OPTIONS] as in bench-qd1.sh,
# KIND loop, nbd or ublk; ATTR=VALUE are written to /sys/block/X/queue/ATTR after the mount (to
# try what the daemon could set: nbd:max_sectors_kb=1280); @BINDIR takes mount.erofs from
# another build (an A/B of a daemon change); %OPTIONS are mount options
# (ublk%ublk.queues=1,ublk.depth=32). Every word is a method of its own, loop always first in
# the list (the ratios' reference). EROFS_BENCH_IN_MEMORY=1 (copy the images into the guest's
# tmpfs first: every device then reads memory, not the 9p share, which isolates the cost of
# the round trip from that of 9p).
set -euo pipefail
source "$(dirname "$0")/../../vmtests/common.sh"  # REPO, device_of, set_queue
BIN=${EROFS_BIN_DIR:-$REPO/.build/release}
DIR=${EROFS_BENCH_DIR:-$REPO/.build-bench}
ROUNDS=${EROFS_BENCH_ROUNDS:-3}
WORKLOADS=${EROFS_BENCH_WORKLOADS:-big small}
work=$(mktemp -d /tmp/bench.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
for kind in $WORKLOADS; do [[ -s $DIR/$kind.erofs ]] || { echo "missing $DIR/$kind.erofs: run Benchmarks/make-bench-images.sh on the host" >&2; exit 1; }; done
if [[ ${EROFS_BENCH_IN_MEMORY:-0} == 1 ]]; then
    mkdir -p "$work/images"
    for kind in $WORKLOADS; do cp "$DIR/$kind.erofs" "$work/images/"; done
    DIR=$work/images
    echo "images copied into the guest's tmpfs ($DIR)"
fi
[[ -x $BIN/mount.erofs ]] || { echo "missing $BIN/mount.erofs" >&2; exit 1; }


read_tree() {
    case $1 in
        big) cat "$mnt"/* > /dev/null ;;
        small) find "$mnt" -type f -print0 | xargs -0 cat > /dev/null ;;
    esac
}

queue_settings() {  # the block device's queue limits that shape reads
    local q=/sys/block/${1#/dev/}/queue
    echo "$1: hw_queues=$(ls /sys/block/${1#/dev/}/mq | wc -l) read_ahead_kb=$(cat $q/read_ahead_kb) max_sectors_kb=$(cat $q/max_sectors_kb) max_hw_sectors_kb=$(cat $q/max_hw_sectors_kb) logical_block_size=$(cat $q/logical_block_size) nr_requests=$(cat $q/nr_requests) scheduler=$(cat $q/scheduler)"
}

# Reads completed and sectors read so far on block device $1.
io_counts() { awk '{ print $1, $3 }' "/sys/block/${1#/dev/}/stat"; }

# One cold read with METHOD (a word of EROFS_BENCH_METHODS); sets $elapsed (seconds) and $io
# (the device's read requests and KiB).
measure() {
    local kind=$1 method=$2 image=$DIR/$1.erofs dev start end spec options= settings= bin=$BIN
    spec=${method%%\%*}
    [[ $method == *%* ]] && options=${method#*%}
    [[ $spec == *@* ]] && { bin=${spec#*@}; spec=${spec%%@*}; }
    [[ $spec == *:* ]] && settings=${spec#*:}
    case ${spec%%:*} in
        loop) mount -t erofs -o ro,loop "$image" "$mnt" ;;
        nbd|ublk)
            # The first mount of each method says how the daemon set the device up (-v).
            "$bin/mount.erofs" $([[ -n ${shown[$method]:-} ]] || echo -v) -t "erofs.${spec%%:*}" \
                ${options:+-o "$options"} "$image" "$mnt" ;;
        *) echo "unknown method $method" >&2; exit 1 ;;
    esac
    dev=$(device_of "$mnt")
    set_queue "$dev" ${settings//,/ }
    [[ -n ${shown[$method]:-} ]] || { queue_settings "$dev" >&2; shown[$method]=1; }
    sync
    echo 3 > /proc/sys/vm/drop_caches
    before=($(io_counts "$dev"))
    start=$EPOCHREALTIME
    read_tree "$kind"
    end=$EPOCHREALTIME
    after=($(io_counts "$dev"))
    io="$((after[0] - before[0])) reads, $(((after[1] - before[1]) / 2)) KiB"
    case ${spec%%:*} in
        loop) umount "$mnt" ;;
        *) "$bin/mount.erofs" -u "$mnt" ;;
    esac
    # A daemon left running would share the CPUs with every later measurement.
    local left
    left=$(pgrep -d ' ' -f -- '--(serve|supervise)-nbd-device|--ublk-daemon|--supervise-ublk-device' || true)
    [[ -z $left ]] || echo "warning: daemon processes still running after the unmount: $left" >&2
    elapsed=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }')
}

declare -A shown times
elapsed= io=
methods=${EROFS_BENCH_METHODS:-loop nbd$([[ -c /dev/ublk-control ]] && echo " ublk")}
[[ ${methods%% *} == loop ]] || { echo "EROFS_BENCH_METHODS must start with loop (the reference)" >&2; exit 1; }
echo "kernel $(uname -r), $(nproc) CPUs, rounds $ROUNDS, binaries $BIN, methods: $methods"
for kind in $WORKLOADS; do
    [[ ${EROFS_BENCH_WARMUP:-1} == 1 ]] || break
    # An untimed first pass of each warms the host's page cache and the guest's dentries of the
    # image file itself, so round 1 is not special.
    for method in $methods; do measure "$kind" "$method"; done
done
for round in $(seq "$ROUNDS"); do
    # Rotate the order each round, so no method always runs first or last.
    list=($methods) order=()
    for i in "${!list[@]}"; do order+=("${list[(i + round - 1) % ${#list[@]}]}"); done
    for kind in $WORKLOADS; do
        for method in "${order[@]}"; do
            measure "$kind" "$method"
            times[$kind,$method]+="$elapsed "
            echo "round $round $kind $method ${elapsed}s ($io)"
        done
    done
done
for kind in $WORKLOADS; do
    size=$(stat -c %s "$DIR/$kind.erofs")
    for method in $methods; do
        [[ $method == loop ]] && continue
        python3 - "$kind" "$method" "$size" ${times[$kind,loop]} -- ${times[$kind,$method]} <<'PY'
import statistics, sys
kind, method, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
rest = sys.argv[4:]
split = rest.index("--")
loop = [float(x) for x in rest[:split]]
nbd = [float(x) for x in rest[split + 1:]]
ratios = [l / n for l, n in zip(loop, nbd)]
print(f"{kind}: loop median {statistics.median(loop):.2f}s ({size / statistics.median(loop) / 1e6:.1f} MB/s of image), "
      f"{method} median {statistics.median(nbd):.2f}s; ratio loop/{method} per round {' '.join(f'{r:.2f}' for r in ratios)}; "
      f"median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
PY
    done
done
rm -rf "$work"
