#!/usr/bin/env bash
# Runs inside the test VM (vmtests/run.sh): the latency of one 4 KiB read at a time
# (`dd iflag=direct bs=4k`) on the raw devices, loop against nbd (and ublk), all attached at once and
# measured in turns, the image's pages warm in the guest's page cache (so 9p is out of it).
#   vmtests/run.sh --kernel 6.1 --timeout 900 -- Benchmarks/vm/bench-qd1.sh
# EROFS_QD1_METHODS (default "loop nbd"): words KIND[:ATTR=VALUE,...][@BINDIR][%OPTIONS], KIND
# loop, nbd or ublk (6.12: "loop nbd ublk"); ATTR=VALUE are written to /sys/block/X/queue/ATTR after the attach (e.g.
# nbd:scheduler=mq-deadline); @BINDIR takes mount.erofs from another build (an A/B of a daemon
# change); %OPTIONS are mount options (nbd%nbd.poll_us=0, ublk%ublk.queues=1). EROFS_QD1_READS per turn
# (default 1000), EROFS_QD1_ROUNDS (default 15). Prints each method's microseconds per read,
# every round and the median.
set -euo pipefail
source "$(dirname "$0")/../../vmtests/common.sh"  # REPO, device_of, set_queue
BIN=${EROFS_BIN_DIR:-$REPO/.build/release}
IMAGE=${EROFS_BENCH_DIR:-$REPO/.build-bench}/small.erofs
METHODS=${EROFS_QD1_METHODS:-loop nbd}
READS=${EROFS_QD1_READS:-1000}
ROUNDS=${EROFS_QD1_ROUNDS:-15}
[[ -s $IMAGE ]] || { echo "missing $IMAGE: run Benchmarks/make-bench-images.sh on the host" >&2; exit 1; }
work=$(mktemp -d /tmp/qd1.XXXXXX)
declare -A device unmount times
cleanup() {
    for method in $METHODS; do
        case ${device[$method]:-} in
            /dev/loop*) losetup -d "${device[$method]}" ;;
            /dev/nbd*|/dev/ublkb*) ${unmount[$method]} ;;
        esac
    done
    rm -rf "$work"
}
trap cleanup EXIT
cat "$IMAGE" > /dev/null
blocks=$(( $(stat -c %s "$IMAGE") / 4096 ))
i=0
for method in $METHODS; do
    spec=${method%%\%*} options= settings= bin=$BIN
    [[ $method == *%* ]] && options=${method#*%}
    [[ $spec == *@* ]] && { bin=${spec#*@}; spec=${spec%%@*}; }
    [[ $spec == *:* ]] && settings=${spec#*:}
    case ${spec%%:*} in
        loop) device[$method]=$(losetup -f --show -r "$IMAGE") ;;
        nbd|ublk)
            mnt=$work/mnt$((i++)); mkdir -p "$mnt"
            "$bin/mount.erofs" -t "erofs.${spec%%:*}" ${options:+-o "$options"} "$IMAGE" "$mnt"
            unmount[$method]="$bin/mount.erofs -u $mnt"
            device[$method]=$(device_of "$mnt") ;;
        *) echo "unknown method $method" >&2; exit 1 ;;
    esac
    set_queue "${device[$method]}" ${settings//,/ }
    echo "$method: ${device[$method]}, scheduler $(cat "/sys/block/${device[$method]#/dev/}/queue/scheduler")"
done
for round in $(seq "$ROUNDS"); do
    # Another stretch of the image each round, the same for every method.
    skip=$(( (round * READS) % (blocks - READS) ))
    for method in $METHODS; do
        start=$EPOCHREALTIME
        dd if="${device[$method]}" of=/dev/null bs=4k count="$READS" skip="$skip" iflag=direct 2>/dev/null
        end=$EPOCHREALTIME
        times[$method]+="$(awk -v s="$start" -v e="$end" -v n="$READS" 'BEGIN { printf "%.0f", (e - s) * 1e6 / n }') "
    done
done
for method in $METHODS; do
    median=$(tr ' ' '\n' <<< "${times[$method]}" | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    echo "$method: us per 4 KiB read: ${times[$method]}median $median"
done
