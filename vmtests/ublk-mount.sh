#!/usr/bin/env bash
# Runs inside the test VM: mount.erofs -t erofs.ublk end to end on the kernel's ublk driver.
# Where the kernel has it (6.12): every corpus image the kernel reads must equal its manifest
# through /dev/ublkbN, -u must leave no /dev/ublkb*, /dev/ublkc*, daemon or state, and an
# image cut short under the daemon must give EIO (not zeros, not a dead daemon). Without it
# (6.1): the mount fails with one line, exit 32, and leaves nothing.
# Prints "ok - ..." / "not ok - ..." lines, then "N passed, N failed".
set -uo pipefail
source "$(dirname "$0")/common.sh"  # REPO, device_of, expectation
BIN=${EROFS_BIN_DIR:-$REPO/.build/debug}
CORPUS=${EROFS_CORPUS:-$REPO/../shared/corpus}
STATE=/run/erofs-mount/ublk
kernel=$(uname -r)
passed=0 failed=0
ok() { echo "ok - [$kernel] $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - [$kernel] $*"; failed=$((failed + 1)); }
work=$(mktemp -d /tmp/ublk-mount.XXXXXX)

gone() { [[ ! -e /proc/$1 ]] || [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]; }
# The serving worker of device $1 (the state's daemonPID is its supervisor).
daemon_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['servingPID'])" "$STATE/ublk${1#/dev/ublkb}.json"; }
supervisor_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['daemonPID'])" "$STATE/ublk${1#/dev/ublkb}.json"; }

# Nothing of ours is left: no ublk node, no state, processes $@ gone, no worker or supervisor.
left_nothing() {
    local nodes pid; nodes=$(ls /dev/ublkb* /dev/ublkc* 2>/dev/null | tr '\n' ' ')
    [[ -z $nodes ]] || { echo "nodes $nodes"; return 1; }
    [[ -z $(ls "$STATE" 2>/dev/null) ]] || { echo "state $(ls "$STATE" | tr '\n' ' ')"; return 1; }
    for pid; do gone "$pid" || { echo "process $pid alive"; return 1; }; done
    ! pgrep -f -- "--(ublk-daemon|supervise-ublk-device) " >/dev/null || { echo "processes $(pgrep -f -- "--(ublk-daemon|supervise-ublk-device) " | tr '\n' ' ')"; return 1; }
}

if [[ ! -e /dev/ublk-control ]]; then
    mkdir -p "$work/mnt"
    "$BIN/mount.erofs" -t erofs.ublk "$CORPUS/plain.erofs" "$work/mnt" 2>"$work/err"
    status=$?
    if [[ $status == 32 && $(wc -l < "$work/err") == 1 ]] && grep -q 'ublk' "$work/err"; then
        ok "no ublk driver: one line, exit 32: $(cat "$work/err")"
    else
        not_ok "no ublk driver: exit $status, $(wc -l < "$work/err") lines: $(head -c 300 "$work/err")"
    fi
    if why=$(left_nothing); then ok "no ublk driver: nothing left"; else not_ok "no ublk driver: left $why"; fi
    echo "$passed passed, $failed failed"
    (( failed == 0 )); exit
fi

for image in "$CORPUS"/*.erofs; do
    name=$(basename "$image" .erofs) mnt=$work/mnt-$name
    expect=$(expectation "$name" "$kernel")
    mkdir -p "$mnt"
    if ! "$BIN/mount.erofs" -t erofs.ublk "$image" "$mnt" 2>"$work/err"; then
        if [[ $expect == refuse ]]; then ok "$name: refused, as expected on this kernel"
        else not_ok "$name: mount failed: $(head -c 300 "$work/err")"; fi
        if why=$(left_nothing); then ok "$name: a failed mount left nothing"; else not_ok "$name: a failed mount left $why"; fi
        continue
    fi
    dev=$(device_of "$mnt")
    pid=$(daemon_of "$dev") supervisor=$(supervisor_of "$dev")
    if [[ $dev != /dev/ublkb* ]]; then not_ok "$name: mounted from $dev, not a ublk device"
    elif "$BIN/erofs" walk "$mnt" > "$work/walk" 2>"$work/walk.err" && cmp -s "$work/walk" "$CORPUS/$name.manifest.jsonl"; then
        ok "$name: $dev walk equals the manifest"
    elif [[ $expect == kernel-bug ]]; then
        echo "# [$kernel] $name: walk differs from the manifest (known kernel bug, not counted)"
    else
        not_ok "$name: $dev walk differs from the manifest: $(head -c 200 "$work/walk.err")"
    fi
    if [[ $(stat -c %a "$STATE/ublk${dev#/dev/ublkb}.json") == 600 ]]; then ok "$name: state file is 0600"
    else not_ok "$name: state file mode $(stat -c %a "$STATE/ublk${dev#/dev/ublkb}.json")"; fi
    # -u takes the mountpoint, or (plain) the image, as umount(8) does.
    target=$mnt; [[ $name == plain ]] && target=$image
    if ! "$BIN/mount.erofs" -u "$target" 2>"$work/err"; then not_ok "$name: -u $target failed: $(cat "$work/err")"; continue; fi
    if why=$(left_nothing "$pid" "$supervisor"); then ok "$name: -u left nothing"; else not_ok "$name: -u left $why"; fi
done

# The image cut short under the daemon: reads past the cut fail with EIO, reads before it
# still work, and the daemon lives on.
cp "$CORPUS/plain.erofs" "$work/cut.erofs"
mkdir -p "$work/mnt-cut"
if "$BIN/mount.erofs" -t erofs.ublk "$work/cut.erofs" "$work/mnt-cut" 2>"$work/err"; then
    dev=$(device_of "$work/mnt-cut") pid=$(daemon_of "$(device_of "$work/mnt-cut")")
    size=$(stat -c %s "$work/cut.erofs")
    truncate -s $((size / 2)) "$work/cut.erofs"
    last=$((size / 4096 - 1))
    if dd if="$dev" of=/dev/null bs=4096 skip=$last count=1 iflag=direct 2>"$work/err"; then
        not_ok "cut image: a read past the cut succeeded"
    elif grep -q 'Input/output error' "$work/err"; then ok "cut image: a read past the cut fails with EIO"
    else not_ok "cut image: a read past the cut failed, but not with EIO: $(cat "$work/err")"; fi
    if dd if="$dev" of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; then ok "cut image: a read before the cut works"
    else not_ok "cut image: a read before the cut fails"; fi
    # Cut again inside a page: the daemon answers from a mapping of the image, where the rest
    # of that page would read as zeros. It must fail (EIO), not return zeros.
    truncate -s $((size / 2 - 100)) "$work/cut.erofs"
    if dd if="$dev" of=/dev/null bs=4096 skip=$(((size / 2 - 100) / 4096)) count=1 iflag=direct 2>"$work/err"; then
        not_ok "cut image: a read of the page cut inside succeeded"
    elif grep -q 'Input/output error' "$work/err"; then ok "cut image: a read of the page cut inside fails with EIO"
    else not_ok "cut image: a read of the page cut inside failed, but not with EIO: $(cat "$work/err")"; fi
    if gone "$pid"; then not_ok "cut image: the daemon died"; else ok "cut image: the daemon lives"; fi
    "$BIN/mount.erofs" -u "$work/mnt-cut" 2>"$work/err" || not_ok "cut image: -u failed: $(cat "$work/err")"
    if why=$(left_nothing "$pid"); then ok "cut image: -u left nothing"; else not_ok "cut image: -u left $why"; fi
else
    not_ok "cut image: mount failed: $(cat "$work/err")"
fi

# -o ublk.queues=1,ublk.depth=32: the device has that shape, no I/O scheduler (the kernel
# gives a single-queue device mq-deadline; the mount turns it off, as loop has none) and
# 256 KiB of read-ahead; the image still reads equal to its manifest.
mkdir -p "$work/mnt-shape"
if "$BIN/mount.erofs" -t erofs.ublk -o ublk.queues=1,ublk.depth=32 "$CORPUS/plain.erofs" "$work/mnt-shape" 2>"$work/err"; then
    dev=$(device_of "$work/mnt-shape") pid=$(daemon_of "$(device_of "$work/mnt-shape")")
    q=/sys/block/${dev#/dev/}
    shape="$(ls "$q/mq" | wc -l) queue(s), nr_requests $(cat "$q/queue/nr_requests"), scheduler $(cat "$q/queue/scheduler"), read_ahead_kb $(cat "$q/queue/read_ahead_kb")"
    # Read-ahead 256 KiB: twice the 128 KiB optimal I/O size the mount declares, as nbd's.
    if [[ $(ls "$q/mq" | wc -l) == 1 && $(cat "$q/queue/nr_requests") == 32 && $(cat "$q/queue/read_ahead_kb") == 256 ]] &&
        grep -q '\[none\]' "$q/queue/scheduler"; then
        ok "ublk.queues=1,ublk.depth=32: $shape"
    else not_ok "ublk.queues=1,ublk.depth=32: $shape"; fi
    if "$BIN/erofs" walk "$work/mnt-shape" 2>/dev/null | cmp -s - "$CORPUS/plain.manifest.jsonl"; then ok "ublk.queues=1: walk equals the manifest"
    else not_ok "ublk.queues=1: walk differs from the manifest"; fi
    "$BIN/mount.erofs" -u "$work/mnt-shape" 2>"$work/err" || not_ok "ublk.queues=1: -u failed: $(cat "$work/err")"
    if why=$(left_nothing "$pid"); then ok "ublk.queues=1: -u left nothing"; else not_ok "ublk.queues=1: -u left $why"; fi
else
    not_ok "ublk.queues=1,ublk.depth=32: mount failed: $(cat "$work/err")"
fi

# The supervisor and the worker killed (reads would wait for --reattach): -u still releases
# everything.
mkdir -p "$work/mnt-kill"
if "$BIN/mount.erofs" -t erofs.ublk "$CORPUS/plain.erofs" "$work/mnt-kill" 2>"$work/err"; then
    pid=$(daemon_of "$(device_of "$work/mnt-kill")") supervisor=$(supervisor_of "$(device_of "$work/mnt-kill")")
    kill -9 "$supervisor" "$pid"
    for _ in $(seq 50); do gone "$pid" && gone "$supervisor" && break; sleep 0.1; done
    if timeout 60 "$BIN/mount.erofs" -u "$work/mnt-kill" 2>"$work/err"; then ok "daemons killed: -u works"
    else not_ok "daemons killed: -u failed: $(cat "$work/err")"; fi
    if why=$(left_nothing "$pid" "$supervisor"); then ok "daemons killed: -u left nothing"; else not_ok "daemons killed: -u left $why"; fi
else
    not_ok "daemon killed: mount failed: $(cat "$work/err")"
fi

# A corrupt image (random bytes over its metadata): errors, never a dead daemon.
cp "$CORPUS/plain.erofs" "$work/corrupt.erofs"
dd if=/dev/urandom of="$work/corrupt.erofs" bs=4096 seek=1 count=4 conv=notrunc 2>/dev/null
mkdir -p "$work/mnt-corrupt"
if "$BIN/mount.erofs" -t erofs.ublk "$work/corrupt.erofs" "$work/mnt-corrupt" 2>"$work/err"; then
    pid=$(daemon_of "$(device_of "$work/mnt-corrupt")")
    "$BIN/erofs" walk "$work/mnt-corrupt" >/dev/null 2>&1
    if gone "$pid"; then not_ok "corrupt image: the daemon died"; else ok "corrupt image: walked, the daemon lives"; fi
    "$BIN/mount.erofs" -u "$work/mnt-corrupt" 2>"$work/err" || not_ok "corrupt image: -u failed: $(cat "$work/err")"
    if why=$(left_nothing "$pid"); then ok "corrupt image: -u left nothing"; else not_ok "corrupt image: -u left $why"; fi
else
    if why=$(left_nothing); then ok "corrupt image: refused, nothing left"; else not_ok "corrupt image: refused, left $why"; fi
fi

echo "$passed passed, $failed failed"
(( failed == 0 ))
