#!/usr/bin/env bash
# Runs inside the test VM: a diagnostic, not part of the suite. The automatic-recovery part of
# recovery.sh ($KILLS SIGKILLs of the serving nbd worker under the two verifying readers) with
# the kernel's tracer on (block requests, nbd's transport events, process exits and the
# scheduler), then recovery-trace.py says for each kill which request waited longest and on
# what. TRACE=0: no tracer, only the stalls and the supervisor's takeovers (for A/B runs of two
# builds in one boot). $WARMUP=1 first mounts and walks a few corpus images (as the suite's earlier scripts do).
#   vmtests/run.sh --kernel 6.1 --timeout 1200 --log /tmp/console.log -- vmtests/recovery-trace.sh
set -uo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/load.sh"
BIN=${EROFS_BIN_DIR:-$REPO/.build/debug}
CORPUS=${EROFS_CORPUS:-$REPO/../shared/corpus}
KILLS=${KILLS:-6} IMAGE=${IMAGE:-lz4}
kernel=$(uname -r)
passed=0 failed=0
ok() { echo "ok - [$kernel] $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - [$kernel] $*"; failed=$((failed + 1)); }
work=$(mktemp -d /tmp/recovery-trace.XXXXXX)
manifest=$CORPUS/$IMAGE.manifest.jsonl
MOUNT=$BIN/mount.erofs

if [[ ${WARMUP:-0} == 1 ]]; then
    for image in plain lz4 chunked; do
        mkdir -p "$work/w"
        "$MOUNT" -t erofs.nbd "$CORPUS/$image.erofs" "$work/w" && "$BIN/erofs" walk "$work/w" >/dev/null
        "$MOUNT" -u "$work/w"
    done
fi

T=/sys/kernel/tracing
if [[ ${TRACE:-1} == 0 ]]; then T=$work/notrace; mkdir -p "$T"; else
mountpoint -q $T || mount -t tracefs nodev $T || { echo "no tracefs"; exit 1; }
echo 0 >$T/tracing_on
echo mono >$T/trace_clock  # CLOCK_MONOTONIC: /proc/uptime's clock without a suspend
echo 32768 >$T/buffer_size_kb
: >$T/trace
for event in block/block_rq_issue block/block_rq_complete block/block_rq_requeue block/block_rq_insert nbd \
    sched/sched_process_exit sched/sched_process_fork sched/sched_process_exec sched/sched_switch sched/sched_wakeup exceptions/page_fault_user filemap/mm_filemap_add_to_page_cache; do
    echo 1 >"$T/events/$event/enable" 2>/dev/null || echo "# no event $event"
done
# The kernel stack of each of our processes (comm "exe": /proc/self/exe) as it leaves a CPU.
echo 'stacktrace if prev_comm == "exe"' >$T/events/sched/sched_switch/trigger || echo "# no stacktrace trigger"
fi

mnt=$work/auto; mkdir -p "$mnt"; : >"$work/events"
"$MOUNT" -t erofs.nbd "$CORPUS/$IMAGE.erofs" "$mnt" || { not_ok "mount failed"; exit 1; }
dev=$(device_of "$mnt"); n=${dev#/dev/nbd}
echo "# $dev io_timeout $(cat /sys/block/nbd$n/queue/io_timeout) ms, supervisor $(field "$n" daemonPID)"
echo 1 >$T/tracing_on
echo "MOUNTED" >$T/trace_marker
start_load "$mnt"
for i in $(seq "$KILLS"); do
    sleep "0.$((RANDOM % 8 + 2))"
    worker=$(field "$n" servingPID)
    uptime_now >>"$work/events"
    echo "KILL $i $worker" >$T/trace_marker
    kill -9 "$worker"
    wait_for "[[ \$(field $n servingPID) != $worker ]] && kill -0 \$(field $n servingPID) 2>/dev/null" 10 || echo "# kill $i: no new worker"
done
stop_load
echo 0 >$T/tracing_on
report "traced auto recovery ($KILLS x SIGKILL)"
cat "$STATE"/*.log | grep -v '^$' | tail -40 | sed 's/^/# log: /'
dmesg | grep -i nbd | tail -20 | sed 's/^/# dmesg: /'
echo "TAKEOVERS [$kernel] $(grep -o 'serves again after [0-9]* ms' "$STATE"/*.log | grep -o '[0-9]*' | tr '\n' ' ')"
[[ ${TRACE:-1} == 0 ]] || python3 "$REPO/vmtests/recovery-trace.py" "$T/trace" "$work/events" "$work/load1.json" "$work/load2.json" "$dev"
"$MOUNT" -u "$mnt"
echo "$passed passed, $failed failed"
