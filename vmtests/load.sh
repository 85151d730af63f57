# The reader load, the SIGKILL and upgrade loops and the stall report of the recovery tests (recovery.sh, ublk-recovery.sh):
# sourced after common.sh by a script that defines ok, not_ok, $work, $manifest and $kernel.

uptime_now() { cut -d' ' -f1 /proc/uptime; }

# Two readers of random files under mountpoint $1, checking each against $manifest and
# dropping the page cache every 16 files, until stop_load.
start_load() {
    rm -f "$work/stop"
    for seed in 1 2; do
        python3 "$REPO/vmtests/read-load.py" "$1" "$manifest" "$work/stop" "$seed$RANDOM" --drop-caches >"$work/load$seed.json" &
    done
    sleep 1
}
stop_load() { touch "$work/stop"; wait; }
report() {  # NAME: prints the summary and checks errors and mismatches
    local summary
    summary=$(python3 "$REPO/vmtests/stall-report.py" "$1" "$work/events" "$work/load1.json" "$work/load2.json") || { not_ok "$1: no load report"; return; }
    echo "STALLS [$kernel] $summary"
    if python3 -c "import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if s['errors'] == 0 and s['mismatches'] == 0 and s['reads'] > 0 else 1)" "$summary"; then
        ok "$1: $(python3 -c "import json,sys; s=json.loads(sys.argv[1]); print(f\"{s['reads']} reads, 0 errors, 0 mismatches; stall median {s['stall_median_ms']} ms, worst {s['stall_worst_ms']} ms\")" "$summary")"
    else
        not_ok "$1: read errors or mismatches: $summary"
    fi
}
# Process $1 has exited (a zombie waiting for PID 1 to reap it counts as gone).
gone() { [[ ! -e /proc/$1 ]] || { [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]] && [[ $(ls "/proc/$1/task" 2>/dev/null | wc -l) -le 1 ]]; }; }

# Automatic recovery: kills the serving worker with SIGKILL $KILLS times under the load, each
# 0.2-0.9 s after the last; `$1` prints the serving worker's pid, `$2 OLD` succeeds once a new
# worker serves in place of OLD (waited for up to $3 s), `$4` prints what to show when none
# does. $recovered counts the kills after which a new worker served.
kill_runs() {
    local worker=$1 served_again=$2 timeout=$3 show_log=$4 i old
    recovered=0
    for i in $(seq "$KILLS"); do
        sleep "0.$((RANDOM % 8 + 2))"
        old=$($worker)
        uptime_now >>"$work/events"
        kill -9 "$old"
        if wait_for "$served_again $old" "$timeout"; then recovered=$((recovered + 1))
        else echo "# kill $i: no new worker"; $show_log; fi
    done
}

# Manual recovery: $REATTACHES times under the load, SIGKILLs what `$2` prints (the processes
# serving device $1), and 2 s later runs `--reattach $1`; `$3 OLD` must then succeed (someone
# new serves in place of OLD). $reattached counts the kills after which both succeeded.
reattach_runs() {
    local device=$1 processes=$2 replaced=$3 i old
    reattached=0
    for i in $(seq "$REATTACHES"); do
        sleep 0.5
        old=$($processes)
        uptime_now >>"$work/events"
        kill -9 $old
        sleep 2
        if "$MOUNT" --reattach "$device" 2>"$work/err" && $replaced "$old"; then reattached=$((reattached + 1))
        else echo "# reattach $i: $(cat "$work/err")"; fi
    done
}

# Hot upgrades: reinstalls $BIN/mount.erofs over $MOUNT (a new file renamed over the old, as a
# package manager does) and runs `--upgrade $1` $UPGRADES times; `$2` prints the serving
# worker's pid. $upgraded counts the upgrades after which a new worker runs the new file and
# the old one is gone.
upgrade_runs() {
    local target=$1 worker=$2 i old new exe log
    upgraded=0
    for i in $(seq "$UPGRADES"); do
        sleep "0.$((RANDOM % 5 + 1))"
        install -m 0755 "$BIN/mount.erofs" "$work/mount.erofs.new" && mv -f "$work/mount.erofs.new" "$MOUNT"
        old=$($worker)
        uptime_now >>"$work/events"
        if "$MOUNT" --upgrade "$target" 2>"$work/err"; then
            new=$($worker)
            exe=$(readlink "/proc/$new/exe")
            # The old worker exits right after its hand-off: give it a moment.
            if [[ $new != "$old" && $exe == "$MOUNT" ]] && wait_for "gone $old" 5; then upgraded=$((upgraded + 1))
            else echo "# upgrade $i: worker $old -> $new ($exe)"; fi
        else
            echo "# upgrade $i: $(cat "$work/err")"
            # The supervisor's log the message names, for why.
            log=$(grep -o '(see [^)]*)' "$work/err" | sed 's/^(see //; s/)$//')
            [[ -f $log ]] && tail -n 12 "$log" | sed 's/^/#   /'
        fi
    done
}

# After upgrade_runs on device $1 first supervised by $2 (`$3` prints the supervisor's pid,
# `$4` the serving worker's): the supervisor replaced itself (same pid, exec of the installed
# binary), --list says every process runs $MOUNT, and a worker that takes over after a crash
# runs it too (the old code does not come back).
upgraded_everywhere() {
    local dev=$1 supervisor=$2 daemon=$3 worker=$4 binary old exe
    if wait_for "[[ \$(readlink /proc/$supervisor/exe) == '$MOUNT' ]]" 10 && [[ $($daemon) == "$supervisor" ]]; then
        ok "upgrade: the supervisor runs the upgraded binary, same pid"
    else
        not_ok "upgrade: the supervisor runs '$(readlink "/proc/$supervisor/exe")'"
    fi
    binary=$("$MOUNT" --list | awk -F'\t' -v d="$dev" '$1 == d { print $9 }')
    [[ $binary == "$MOUNT" ]] && ok "upgrade: --list shows every process on $MOUNT" || not_ok "upgrade: --list shows '$binary'"
    old=$($worker)
    kill -9 "$old"
    if wait_for "new=\$($worker); [[ -n \$new && \$new != $old ]] && kill -0 \$new 2>/dev/null" 20 \
        && exe=$(readlink "/proc/$($worker)/exe") && [[ $exe == "$MOUNT" ]]; then
        ok "upgrade: the worker that takes over after a crash runs the upgraded binary"
    else
        not_ok "upgrade: after a crash the worker runs '${exe:-?}', not $MOUNT"
    fi
}
