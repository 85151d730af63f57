#!/usr/bin/env bash
# Runs inside the test VM: crash recovery, --reattach and hot upgrade of the nbd daemon under a
# load of two readers that check every file they read against the manifest (issue 6).
#   1. the serving worker is killed with SIGKILL $KILLS times; the supervisor recovers it;
#   2. recovery is manual: the daemon is killed and `--reattach` runs 2 s later, $REATTACHES times;
#   3. the daemon is hot-upgraded $UPGRADES times to a freshly installed binary;
#   5. (debug builds) a request that crashes every worker is failed with EIO, the rest served.
# Each run must have zero read errors and zero mismatches; the stalls go to BENCHMARKS.md.
# Then the refusals: stale or missing state, a foreign backend identifier, an ioctl device, a
# live daemon; each must say why and change nothing. Prints "ok - ..." / "not ok - ..." lines,
# "STALLS {json}" lines, then "N passed, N failed".
set -uo pipefail
source "$(dirname "$0")/common.sh"  # REPO, STATE, device_of, set_queue, field, wait_for
source "$(dirname "$0")/load.sh"    # start_load, stop_load, report, gone, uptime_now, kill_runs, upgrade_runs, ...
BIN=${EROFS_BIN_DIR:-$REPO/.build/debug}
CORPUS=${EROFS_CORPUS:-$REPO/../shared/corpus}
KILLS=${KILLS:-20} REATTACHES=${REATTACHES:-5} UPGRADES=${UPGRADES:-10}
IMAGE=${IMAGE:-lz4}
NBD_OPTIONS=${NBD_OPTIONS:-}  # extra -o options for every mount, e.g. nbd.requeue_ms=100
kernel=$(uname -r)
passed=0 failed=0
ok() { echo "ok - [$kernel] $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - [$kernel] $*"; failed=$((failed + 1)); }
work=$(mktemp -d /tmp/recovery.XXXXXX)
# Upgrades replace this copy the way a package manager does (a new file renamed over the old).
install -m 0755 "$BIN/mount.erofs" "$work/mount.erofs"
MOUNT=$work/mount.erofs
manifest=$CORPUS/$IMAGE.manifest.jsonl

left_nothing() {  # DEVICE INDEX, PIDS...: nothing of the device remains
    local n=$1; shift
    [[ $(cat /sys/block/nbd$n/size) == 0 ]] || { echo "nbd$n size $(cat /sys/block/nbd$n/size)"; return 1; }
    [[ ! -e $STATE/nbd$n.json ]] || { echo "state file left"; return 1; }
    for pid in "$@"; do
        gone "$pid" && continue
        # What it is and whether it is on its way out (an exit under emulation can be slow).
        local what; what=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null; awk '{print " state " $3 " ppid " $4}' "/proc/$pid/stat" 2>/dev/null)
        sleep 5
        gone "$pid" && { echo "process $pid ($what) still running when -u returned, gone 5 s later"; return 1; }
        echo "process $pid alive ($what)"; return 1
    done
    ! pgrep -f "erofs-mount-.* .*:$n " >/dev/null || { echo "a worker for nbd$n is alive"; return 1; }
}

serving() { field "$1" servingPID; }
# The serving worker of device $1 changed from $2 and is alive.
served_again() { local now; now=$(field "$1" servingPID); [[ -n $now && $now != "$2" ]] && kill -0 "$now" 2>/dev/null; }
log_tail() { cat "$STATE"/*.log | tail -5; }

# 1. Automatic recovery from SIGKILL of the serving worker.
mnt=$work/auto; mkdir -p "$mnt"; : >"$work/events"
if "$MOUNT" -t erofs.nbd ${NBD_OPTIONS:+-o "$NBD_OPTIONS"} "$CORPUS/$IMAGE.erofs" "$mnt"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/nbd}; supervisor=$(field "$n" daemonPID)
    start_load "$mnt"
    kill_runs "serving $n" "served_again $n" 10 "log_tail"
    stop_load
    [[ $recovered == "$KILLS" && $(field "$n" recoveries) == "$KILLS" ]] && ok "auto: $KILLS SIGKILLs of the serving worker, $KILLS recoveries" \
        || not_ok "auto: $recovered of $KILLS recovered (state says $(field "$n" recoveries))"
    report "auto recovery ($KILLS x SIGKILL)"
    # The supervisor's own view: from reaping the dead worker to the new one serving.
    echo "TAKEOVERS [$kernel] $(grep -o 'serves again after [0-9]* ms' "$STATE"/*.log | grep -o '[0-9]*' | sort -n | tr '\n' ' ')"
    # Every takeover must have gone on with the live socket from the journal (a new socket
    # would leave the dead worker's requests to the kernel's timer: about a second).
    journaled=$(cat "$STATE"/*.log | grep -c 'same link, from the journal')
    [[ $journaled == "$KILLS" ]] && ok "auto: all $KILLS recoveries resumed the live socket from the journal" \
        || not_ok "auto: $journaled of $KILLS recoveries resumed from the journal"
    "$BIN/erofs" walk "$mnt" | cmp -s - "$manifest" && ok "auto: the walk equals the manifest after the recoveries" || not_ok "auto: walk differs"
    "$MOUNT" -u "$mnt" && why=$(left_nothing "$n" "$supervisor") && ok "auto: -u after $KILLS recoveries left nothing" || not_ok "auto: -u left: ${why:-failed}"
else
    not_ok "auto: mount failed"
fi

# 2. Manual recovery: kill, wait 2 s, --reattach.
mnt=$work/manual; mkdir -p "$mnt"; : >"$work/events"
if "$MOUNT" -t erofs.nbd -o nbd.recovery=manual "$CORPUS/$IMAGE.erofs" "$mnt"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/nbd}
    [[ -z $(field "$n" servingPID) && $(field "$n" supervised) == False ]] && ok "manual: no supervisor" || not_ok "manual: state $(cat "$STATE/nbd$n.json")"
    # A live daemon is not replaced by --reattach.
    before=$(cat "$STATE/nbd$n.json")
    if ! "$MOUNT" --reattach "$mnt" 2>"$work/err" && grep -q "is still served by process $(field "$n" daemonPID)" "$work/err" \
        && [[ $(cat "$STATE/nbd$n.json") == "$before" ]]; then ok "manual: --reattach refuses a live daemon and changes nothing"
    else not_ok "manual: --reattach with a live daemon: $(cat "$work/err")"; fi
    start_load "$mnt"
    new_daemon() { [[ $(field "$n" daemonPID) != "$1" ]]; }
    reattach_runs "$dev" "field $n daemonPID" new_daemon
    stop_load
    [[ $reattached == "$REATTACHES" ]] && ok "manual: $REATTACHES kills each followed by --reattach 2 s later" || not_ok "manual: $reattached of $REATTACHES reattached"
    report "manual --reattach 2 s after SIGKILL ($REATTACHES x)"
    daemon=$(field "$n" daemonPID)
    "$MOUNT" -u "$mnt" && why=$(left_nothing "$n" "$daemon") && ok "manual: -u after $REATTACHES reattaches left nothing" || not_ok "manual: -u left: ${why:-failed}"
else
    not_ok "manual: mount failed"
fi

# 3. Hot upgrade to a newly installed binary.
mnt=$work/upgrade; mkdir -p "$mnt"; : >"$work/events"
if "$MOUNT" -t erofs.nbd "$CORPUS/$IMAGE.erofs" "$mnt"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/nbd}; supervisor=$(field "$n" daemonPID)
    start_load "$mnt"
    upgrade_runs "$mnt" "serving $n"
    upgraded_everywhere "$dev" "$supervisor" "field $n daemonPID" "serving $n"
    stop_load
    [[ $upgraded == "$UPGRADES" ]] && ok "upgrade: $UPGRADES hot upgrades, each to the newly installed binary" || not_ok "upgrade: $upgraded of $UPGRADES"
    report "hot upgrade ($UPGRADES x)"
    echo "UPGRADES [$kernel] $(grep -o 'upgraded to worker [0-9]* in [0-9]* ms' "$STATE"/*.log | grep -o '[0-9]* ms' | grep -o '[0-9]*' | sort -n | tr '\n' ' ')"
    "$MOUNT" -u "$mnt" && why=$(left_nothing "$n" "$supervisor") && ok "upgrade: -u after $UPGRADES upgrades left nothing" || not_ok "upgrade: -u left: ${why:-failed}"
else
    not_ok "upgrade: mount failed"
fi

# 4. The image replaced while mounted (a new file renamed over the path): whatever takes over
# serves the image that was mounted, from the descriptor handed down, or refuses saying why.
other=plain; [[ $IMAGE == plain ]] && other=lz4
cp "$CORPUS/$IMAGE.erofs" "$work/replaced.erofs"
mnt=$work/replaced; mkdir -p "$mnt"
if "$MOUNT" -t erofs.nbd "$work/replaced.erofs" "$mnt"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/nbd}; supervisor=$(field "$n" daemonPID)
    cp "$CORPUS/$other.erofs" "$work/new.erofs" && mv -f "$work/new.erofs" "$work/replaced.erofs"
    worker=$(field "$n" servingPID)
    kill -9 "$worker"
    if wait_for "served_again $n $worker" 10; then
        echo 3 > /proc/sys/vm/drop_caches
        "$BIN/erofs" walk "$mnt" | cmp -s - "$manifest" && ok "replaced image: after a SIGKILL the takeover serves the image mounted, not the file renamed over it" \
            || not_ok "replaced image: after the takeover the walk differs from $IMAGE's manifest"
    else
        not_ok "replaced image: no takeover after the SIGKILL"
    fi
    if "$MOUNT" --upgrade "$mnt" 2>"$work/err"; then
        echo 3 > /proc/sys/vm/drop_caches
        "$BIN/erofs" walk "$mnt" | cmp -s - "$manifest" && ok "replaced image: after --upgrade the new worker serves the image mounted" \
            || not_ok "replaced image: after --upgrade the walk differs from $IMAGE's manifest"
    else
        not_ok "replaced image: --upgrade failed: $(cat "$work/err")"
    fi
    "$MOUNT" -u "$mnt" && why=$(left_nothing "$n" "$supervisor") && ok "replaced image: -u left nothing" || not_ok "replaced image: -u left: ${why:-failed}"
else
    not_ok "replaced image: mount failed"
fi
# Without a supervisor nothing holds the image once the daemon died: --reattach opens the path
# again and must refuse a file that is not the one mounted.
cp "$CORPUS/$IMAGE.erofs" "$work/replaced.erofs"
if "$MOUNT" -t erofs.nbd -o nbd.recovery=manual "$work/replaced.erofs" "$mnt"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/nbd}; daemon=$(field "$n" daemonPID)
    kill -9 "$daemon"; wait_for "gone $daemon" 5
    cp "$CORPUS/$other.erofs" "$work/new.erofs" && mv -f "$work/new.erofs" "$work/replaced.erofs"
    before=$(cat "$STATE/nbd$n.json")
    if ! "$MOUNT" --reattach "$mnt" 2>"$work/err" && grep -q "is not the image $dev was mounted from (device:inode" "$work/err" \
        && [[ $(cat "$STATE/nbd$n.json") == "$before" ]] && ! pgrep -f "erofs-mount-.* .*:$n " >/dev/null; then
        ok "replaced image: --reattach refuses a file renamed over the image: $(cat "$work/err")"
    else
        not_ok "replaced image: --reattach after a rename: $(cat "$work/err")"
    fi
    timeout 60 "$MOUNT" -u "$mnt" && why=$(left_nothing "$n" "$daemon") && ok "replaced image: -u after the refusal left nothing" \
        || not_ok "replaced image: -u after the refusal left: ${why:-failed}"
else
    not_ok "replaced image (manual): mount failed"
fi

# 5. The crash-loop guard: a worker that dies on one request (a debug build's
# EROFS_TEST_CRASH_READ_AT makes every worker abort on a READ covering that byte) would kill each
# successor the journal hands it to. That one read gets EIO after three deaths; the rest serve.
if grep -aq EROFS_TEST_CRASH_READ_AT "$MOUNT"; then
    mnt=$work/poison; mkdir -p "$mnt"
    image=$CORPUS/$IMAGE.erofs
    poison=$(( $(stat -c %s "$image") / 2 / 4096 * 4096 ))
    if EROFS_TEST_CRASH_READ_AT=$poison "$MOUNT" -t erofs.nbd "$image" "$mnt"; then
        dev=$(device_of "$mnt"); n=${dev#/dev/nbd}; supervisor=$(field "$n" daemonPID)
        block() { dd if="$dev" bs=4096 skip=$(($1 / 4096)) count=1 iflag=direct status=none; }
        expected() { dd if="$image" bs=4096 skip=$(($1 / 4096)) count=1 status=none; }
        if block "$poison" >/dev/null 2>"$work/err" || ! grep -q "Input/output error" "$work/err"; then
            not_ok "crash loop: the poisoned read did not fail with EIO: $(cat "$work/err")"
        else
            ok "crash loop: the read that kills every worker fails with EIO"
        fi
        good=0
        for offset in 0 4096 $((poison - 4096)) $((poison + 4096)); do
            if block "$offset" >"$work/got" 2>"$work/err" && expected "$offset" | cmp -s - "$work/got"; then good=$((good + 1))
            else echo "# block at $offset: $(cat "$work/err") ($(stat -c %s "$work/got") bytes)"; fi
        done
        [[ $good == 4 ]] && ok "crash loop: the blocks around it read back the image's bytes" || not_ok "crash loop: $good of 4 blocks read back right"
        guard=$(grep -c 'was in flight at 3 worker deaths in a row; failing it with EIO' "$STATE"/*.log)
        [[ $guard == 1 && $(field "$n" recoveries) == 3 ]] && ok "crash loop: the supervisor failed it once, after 3 deaths, and serves on" \
            || { not_ok "crash loop: guard logged $guard times, $(field "$n" recoveries) recoveries"; grep -h 'died\|in flight\|EIO' "$STATE"/*.log | tail -20; }
        kill -0 "$(field "$n" servingPID)" && block 0 >/dev/null && ok "crash loop: a worker still serves" || not_ok "crash loop: no worker serves"
        "$MOUNT" -u "$mnt" && why=$(left_nothing "$n" "$supervisor") && ok "crash loop: -u left nothing" || not_ok "crash loop: -u left: ${why:-failed}"
    else
        not_ok "crash loop: mount failed"
    fi
else
    echo "# crash loop: skipped ($MOUNT is a release build, without EROFS_TEST_CRASH_READ_AT)"
fi

# 6. Refusals that change nothing.
refuses() {  # NAME EXPECTED-MESSAGE-PART TARGET [MODE]
    local before after
    before=$(cat "$STATE"/*.json 2>/dev/null | md5sum)
    if "$MOUNT" "${4:---reattach}" "$3" 2>"$work/err"; then not_ok "$1: accepted"; return; fi
    after=$(cat "$STATE"/*.json 2>/dev/null | md5sum)
    if grep -q -- "$2" "$work/err" && [[ $before == "$after" ]]; then ok "$1: $(cat "$work/err")"
    else not_ok "$1: got '$(cat "$work/err")', state changed: $([[ $before == "$after" ]] && echo no || echo yes)"; fi
}
mnt=$work/refuse; mkdir -p "$mnt"
if "$MOUNT" -t erofs.nbd "$CORPUS/$IMAGE.erofs" "$mnt"; then
    dev=$(device_of "$mnt"); n=${dev#/dev/nbd}
    free=$(for d in /sys/block/nbd*; do [[ $(cat "$d/size") == 0 && ! -e $STATE/${d##*/}.json ]] && { echo "${d##*/nbd}"; break; }; done)
    refuses "no state" "is not managed by mount.erofs" "/dev/nbd$free"
    sed "s/\"index\" : $n,/\"index\" : $free,/" "$STATE/nbd$n.json" >"$STATE/nbd$free.json"
    refuses "stale state" "is not connected: the state $STATE/nbd$free.json is stale" "/dev/nbd$free"
    rm -f "$STATE/nbd$free.json"
    cp "$STATE/nbd$n.json" "$work/saved.json"
    sed -i 's/"backendIdentifier" : "erofs-mount-[0-9a-f]*"/"backendIdentifier" : "erofs-mount-0000000000000000"/' "$STATE/nbd$n.json"
    refuses "foreign identifier" "is connected to backend \`erofs-mount-" "$mnt"
    cp "$work/saved.json" "$STATE/nbd$n.json"
    refuses "live daemon" "is still served by process" "$mnt"
    refuses "not an nbd target" "is neither /dev/nbdN nor mounted from one" "$work"
    "$MOUNT" -u "$mnt" || not_ok "refuse: -u"
fi
mnt=$work/ioctl; mkdir -p "$mnt"
if "$MOUNT" -t erofs.nbd -o nbd.ioctl "$CORPUS/$IMAGE.erofs" "$mnt" 2>"$work/mount-err"; then
    grep -q "cannot be recovered" "$work/mount-err" && ok "ioctl: the mount warns that it cannot recover" || not_ok "ioctl: no warning at mount: $(cat "$work/mount-err")"
    "$MOUNT" --list | grep -q "none (ioctl)" && ok "ioctl: --list says it cannot recover" || not_ok "ioctl: --list: $("$MOUNT" --list)"
    daemon=$(field "$(device_of "$mnt" | tr -dc 0-9)" daemonPID)
    kill -9 "$daemon"; sleep 1
    refuses "ioctl device" "cannot be reattached" "$mnt"
    timeout 60 "$MOUNT" -u "$mnt" && ok "ioctl: -u after its daemon died does not hang" || not_ok "ioctl: -u after the daemon died"
fi

echo "$passed passed, $failed failed"
(( failed == 0 ))
