#!/usr/bin/env bash
# Runs inside the test VM (6.12: ublk_drv): crash recovery, --reattach and hot upgrade of the
# ublk backend under two readers that check every file they read against the manifest (issue 17):
#   1. the serving worker is killed with SIGKILL $KILLS times; the supervisor recovers the
#      device (START_USER_RECOVERY / END_USER_RECOVERY by its standby);
#   2. every process of ours (supervisor, worker, standby) is killed and `--reattach` runs 2 s
#      later, $REATTACHES times;
#   3. the binary is reinstalled and `--upgrade` run $UPGRADES times.
# Each run must have zero read errors and zero mismatches; the stalls go to BENCHMARKS.md.
# `-u` after each must leave no /dev/ublkbN, /dev/ublkcN, process or state; `--list` shows the
# device in the nbd columns. Without ublk_drv (6.1) there is nothing to test: it says so.
# Prints "ok - ..." / "not ok - ..." lines, "STALLS {json}" lines, then "N passed, N failed".
set -uo pipefail
source "$(dirname "$0")/common.sh"  # REPO, device_of, wait_for
source "$(dirname "$0")/load.sh"    # start_load, stop_load, report, gone, uptime_now, kill_runs, upgrade_runs, ...
BIN=${EROFS_BIN_DIR:-$REPO/.build/debug}
CORPUS=${EROFS_CORPUS:-$REPO/../shared/corpus}
KILLS=${KILLS:-20} REATTACHES=${REATTACHES:-5} UPGRADES=${UPGRADES:-10}
IMAGE=${IMAGE:-lz4}
UBLK_STATE=/run/erofs-mount/ublk
kernel=$(uname -r)
passed=0 failed=0
ok() { echo "ok - [$kernel] $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - [$kernel] $*"; failed=$((failed + 1)); }
if [[ ! -e /dev/ublk-control ]]; then
    echo "# [$kernel] no ublk driver: nothing to recover (ublk-mount.sh checks the refusal)"
    echo "0 passed, 0 failed"
    exit 0
fi
work=$(mktemp -d /tmp/ublk-recovery.XXXXXX)
# Upgrades replace this copy the way a package manager does (a new file renamed over the old).
install -m 0755 "$BIN/mount.erofs" "$work/mount.erofs"
MOUNT=$work/mount.erofs
manifest=$CORPUS/$IMAGE.manifest.jsonl

# Field $2 of ublk device $1's state ('' when absent).
ufield() { python3 -c "import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print('' if v is None else v)" "$UBLK_STATE/ublk$1.json" "$2" 2>/dev/null; }
# Every process of ours for device $1: supervisor, worker, standby (argv: EXE FLAG MODE ID SOURCE).
ours() { pgrep -f -- "--(ublk-daemon|supervise-ublk-device) [a-z:0-9]+ $1 " | tr '\n' ' '; }
left_nothing() {  # DEVICE ID: nothing of the device remains
    local n=$1
    [[ ! -e /dev/ublkb$n && ! -e /dev/ublkc$n ]] || { echo "/dev/ublk[bc]$n still there"; return 1; }
    [[ ! -e $UBLK_STATE/ublk$n.json && ! -e $UBLK_STATE/ublk$n.log ]] || { echo "state left: $(ls "$UBLK_STATE")"; return 1; }
    [[ -z $(ours "$n") ]] || { echo "processes $(ours "$n")"; return 1; }
}
serving() { ufield "$1" servingPID; }
# The serving worker of device $1 changed from $2 and is alive.
served_again() { local now; now=$(ufield "$1" servingPID); [[ -n $now && $now != "$2" ]] && kill -0 "$now" 2>/dev/null; }
log_tail() { tail -5 "$UBLK_STATE/ublk$1.log"; }

# 1. Automatic recovery from SIGKILL of the serving worker.
mnt=$work/auto; mkdir -p "$mnt"; : >"$work/events"
if "$MOUNT" -t erofs.ublk "$CORPUS/$IMAGE.erofs" "$mnt" 2>"$work/err"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/ublkb}
    row=$("$MOUNT" --list | grep "^$dev	")
    if [[ $(awk -F'\t' '{print NF}' <<<"$row") == 10 && $(cut -f2,3,4,7 <<<"$row") == "ublk	uring	auto	live" \
        && $(cut -f9 <<<"$row") == "$MOUNT" && $(cut -f10 <<<"$row") == "$(readlink -f "$CORPUS/$IMAGE.erofs")" \
        && $(cut -f5 <<<"$row") == "$(ufield "$n" daemonPID)" && $(cut -f6 <<<"$row") == "$(ufield "$n" servingPID)" ]]; then
        ok "--list shows $dev in the nbd columns: $row"
    else
        not_ok "--list: '$row' from $("$MOUNT" --list)"
    fi
    start_load "$mnt"
    kill_runs "serving $n" "served_again $n" 20 "log_tail $n"
    stop_load
    [[ $recovered == "$KILLS" && $(ufield "$n" recoveries) == "$KILLS" ]] && ok "auto: $KILLS SIGKILLs of the serving worker, $KILLS recoveries" \
        || not_ok "auto: $recovered of $KILLS recovered (state says $(ufield "$n" recoveries))"
    report "ublk auto recovery ($KILLS x SIGKILL)"
    # The supervisor's own view: from reaping the dead worker to the new one serving.
    echo "TAKEOVERS [$kernel] $(grep -o 'serves again after [0-9]* ms' "$UBLK_STATE/ublk$n.log" | grep -o '[0-9]*' | sort -n | tr '\n' ' ')"
    "$BIN/erofs" walk "$mnt" | cmp -s - "$manifest" && ok "auto: the walk equals the manifest after the recoveries" || not_ok "auto: walk differs"
    "$MOUNT" -u "$mnt" 2>"$work/err" && why=$(left_nothing "$n") && ok "auto: -u after $KILLS recoveries left nothing" \
        || not_ok "auto: -u left: ${why:-failed: $(cat "$work/err")}"
else
    not_ok "auto: mount failed: $(cat "$work/err")"
fi

# 2. Every process of ours killed, --reattach 2 s later.
mnt=$work/manual; mkdir -p "$mnt"; : >"$work/events"
if "$MOUNT" -t erofs.ublk "$CORPUS/$IMAGE.erofs" "$mnt" 2>"$work/err"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/ublkb}
    # Live daemons are not replaced by --reattach.
    before=$(cat "$UBLK_STATE/ublk$n.json")
    if ! "$MOUNT" --reattach "$mnt" 2>"$work/err" && grep -q "is still served by process" "$work/err" \
        && [[ $(cat "$UBLK_STATE/ublk$n.json") == "$before" ]]; then ok "manual: --reattach refuses live daemons and changes nothing"
    else not_ok "manual: --reattach with live daemons: $(cat "$work/err")"; fi
    start_load "$mnt"
    # A new supervisor (none of the killed ones) and a live worker.
    new_daemons() { [[ " $1 " != *" $(ufield "$n" daemonPID) "* ]] && kill -0 "$(ufield "$n" servingPID)"; }
    reattach_runs "$dev" "ours $n" new_daemons
    stop_load
    [[ $reattached == "$REATTACHES" ]] && ok "manual: $REATTACHES kills of every process of ours, each followed by --reattach 2 s later" \
        || not_ok "manual: $reattached of $REATTACHES reattached"
    report "ublk --reattach 2 s after SIGKILL of all ($REATTACHES x)"
    "$MOUNT" -u "$mnt" 2>"$work/err" && why=$(left_nothing "$n") && ok "manual: -u after $REATTACHES reattaches left nothing" \
        || not_ok "manual: -u left: ${why:-failed: $(cat "$work/err")}"
else
    not_ok "manual: mount failed: $(cat "$work/err")"
fi

# 3. Hot upgrade to a newly installed binary.
mnt=$work/upgrade; mkdir -p "$mnt"; : >"$work/events"
if "$MOUNT" -t erofs.ublk "$CORPUS/$IMAGE.erofs" "$mnt" 2>"$work/err"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/ublkb}; supervisor=$(ufield "$n" daemonPID)
    start_load "$mnt"
    upgrade_runs "$mnt" "serving $n"
    upgraded_everywhere "$dev" "$supervisor" "ufield $n daemonPID" "serving $n"
    stop_load
    [[ $upgraded == "$UPGRADES" ]] && ok "upgrade: $UPGRADES hot upgrades, each to the newly installed binary" || not_ok "upgrade: $upgraded of $UPGRADES"
    report "ublk hot upgrade ($UPGRADES x)"
    echo "UPGRADES [$kernel] $(grep -o 'upgraded to worker [0-9]* in [0-9]* ms' "$UBLK_STATE/ublk$n.log" | grep -o '[0-9]* ms' | grep -o '[0-9]*' | sort -n | tr '\n' ' ')"
    "$MOUNT" -u "$mnt" 2>"$work/err" && why=$(left_nothing "$n") && ok "upgrade: -u after $UPGRADES upgrades left nothing" \
        || not_ok "upgrade: -u left: ${why:-failed: $(cat "$work/err")}"
else
    not_ok "upgrade: mount failed: $(cat "$work/err")"
fi

# 4. --reattach of a file renamed over the image after every process died: refused, nothing
# changed; -u still releases everything.
cp "$CORPUS/$IMAGE.erofs" "$work/replaced.erofs"
mnt=$work/replaced; mkdir -p "$mnt"
if "$MOUNT" -t erofs.ublk "$work/replaced.erofs" "$mnt" 2>"$work/err"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/ublkb}
    kill -9 $(ours "$n"); wait_for "[[ -z \$(ours $n) ]]" 5
    cp "$CORPUS/plain.erofs" "$work/new.erofs" && mv -f "$work/new.erofs" "$work/replaced.erofs"
    before=$(cat "$UBLK_STATE/ublk$n.json")
    if ! "$MOUNT" --reattach "$mnt" 2>"$work/err" && grep -q "is not the image $dev was mounted from (device:inode" "$work/err" \
        && [[ $(cat "$UBLK_STATE/ublk$n.json") == "$before" && -z $(ours "$n") ]]; then
        ok "replaced image: --reattach refuses a file renamed over the image: $(cat "$work/err")"
    else
        not_ok "replaced image: --reattach after a rename: $(cat "$work/err")"
    fi
    timeout 60 "$MOUNT" -u "$mnt" 2>"$work/err" && why=$(left_nothing "$n") && ok "replaced image: -u with every process dead left nothing" \
        || not_ok "replaced image: -u left: ${why:-failed: $(cat "$work/err")}"
else
    not_ok "replaced image: mount failed: $(cat "$work/err")"
fi

echo "$passed passed, $failed failed"
(( failed == 0 ))
