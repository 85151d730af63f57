# The reader load and stall report of the recovery tests (recovery.sh, ublk-recovery.sh):
# sourced after common.sh by a script that defines ok, not_ok, $work, $manifest and $kernel.

uptime_now() { cut -d' ' -f1 /proc/uptime; }

# Two readers of random files under mountpoint $1, checking each against $manifest and
# dropping the page cache every 16 files, until stop_load.
start_load() {
    rm -f "$work/stop"
    for seed in 1 2; do
        python3 "$REPO/tests/vm/read-load.py" "$1" "$manifest" "$work/stop" "$seed$RANDOM" --drop-caches >"$work/load$seed.json" &
    done
    sleep 1
}
stop_load() { touch "$work/stop"; wait; }
report() {  # NAME: prints the summary and checks errors and mismatches
    local summary
    summary=$(python3 "$REPO/tests/vm/stall-report.py" "$1" "$work/events" "$work/load1.json" "$work/load2.json") || { not_ok "$1: no load report"; return; }
    echo "STALLS [$kernel] $summary"
    if python3 -c "import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if s['errors'] == 0 and s['mismatches'] == 0 and s['reads'] > 0 else 1)" "$summary"; then
        ok "$1: $(python3 -c "import json,sys; s=json.loads(sys.argv[1]); print(f\"{s['reads']} reads, 0 errors, 0 mismatches; stall median {s['stall_median_ms']} ms, worst {s['stall_worst_ms']} ms\")" "$summary")"
    else
        not_ok "$1: read errors or mismatches: $summary"
    fi
}
# Process $1 has exited (a zombie waiting for PID 1 to reap it counts as gone).
gone() { [[ ! -e /proc/$1 ]] || { [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]] && [[ $(ls "/proc/$1/task" 2>/dev/null | wc -l) -le 1 ]]; }; }
