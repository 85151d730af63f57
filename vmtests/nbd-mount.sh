#!/usr/bin/env bash
# Runs inside the test VM: mount.erofs -t erofs.nbd end to end on a real kernel nbd, over
# netlink and over the ioctl interface. Each mount must equal its manifest; -u and --disconnect
# must leave nothing (device size 0, no server pid, no daemon, no state file).
# Prints "ok - ..." / "not ok - ..." lines, then "N passed, N failed".
set -uo pipefail
source "$(dirname "$0")/common.sh"  # REPO, STATE, device_of, set_queue, field, wait_for
BIN=${EROFS_BIN_DIR:-$REPO/.build/debug}
CORPUS=${EROFS_CORPUS:-$REPO/../shared/corpus}
kernel=$(uname -r)
passed=0 failed=0
ok() { echo "ok - [$kernel] $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - [$kernel] $*"; failed=$((failed + 1)); }
work=$(mktemp -d /tmp/nbd-mount.XXXXXX)

images=(plain lz4 lz4hc-bigpcluster chunked blocksize512 ztailpacking-fragments-dedupe)
case $kernel in 6.1.*) ;; *) images+=(lzma deflate zstd) ;; esac


# Process $1 has exited (a zombie waiting for PID 1 to reap it counts as gone; a leader that
# exited while a thread is still in the kernel does not).
gone() { [[ ! -e /proc/$1 ]] || { [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]] && [[ $(ls "/proc/$1/task" 2>/dev/null | wc -l) -le 1 ]]; }; }

# Everything mount.erofs set up for nbd device $1 (daemon pid $2) is gone.
left_nothing() {
    local n=${1#/dev/nbd} pid=$2 size
    size=$(cat /sys/block/nbd$n/size)
    [[ $size == 0 ]] || { echo "nbd$n size $size"; return 1; }
    [[ ! -e /sys/block/nbd$n/pid ]] || { echo "nbd$n still has a pid"; return 1; }
    [[ ! -e $STATE/nbd$n.json ]] || { echo "state file left"; return 1; }
    gone "$pid" || { echo "daemon $pid alive"; return 1; }
}

# mount, compare, check the attach method, unmount, check nothing is left
round_trip() {
    local image=$1 method=$2 mnt=$work/mnt-$1-$2 options=() dev pid
    mkdir -p "$mnt"
    [[ $method == ioctl ]] && options=(-o nbd.ioctl)
    if ! "$BIN/mount.erofs" -t erofs.nbd "${options[@]}" "$CORPUS/$image.erofs" "$mnt" 2>"$work/err"; then
        not_ok "$method $image: mount failed: $(cat "$work/err")"; return
    fi
    dev=$(device_of "$mnt")
    pid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['daemonPID'])" "$STATE/${dev#/dev/}.json")
    if "$BIN/erofs" walk "$mnt" | cmp -s - "$CORPUS/$image.manifest.jsonl"; then
        ok "$method $image: $dev walk equals the manifest"
    else
        not_ok "$method $image: $dev walk differs from the manifest"
    fi
    # Like loop, no I/O scheduler (mq-deadline costs each request a hop through kblockd).
    if grep -q '\[none\]' "/sys/block/${dev#/dev/}/queue/scheduler"; then ok "$method $image: no I/O scheduler"
    else not_ok "$method $image: scheduler is $(cat "/sys/block/${dev#/dev/}/queue/scheduler")"; fi
    # Requests as large as loop's (1280 KiB, or the driver's ceiling): 6.1's nbd starts at 128.
    q=/sys/block/${dev#/dev/}/queue want=$(( $(cat $q/max_hw_sectors_kb) < 1280 ? $(cat $q/max_hw_sectors_kb) : 1280 ))
    if (( $(cat $q/max_sectors_kb) >= want )); then ok "$method $image: max_sectors_kb $(cat $q/max_sectors_kb)"
    else not_ok "$method $image: max_sectors_kb $(cat $q/max_sectors_kb), want $want"; fi
    if [[ $method == netlink ]]; then
        id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['backendIdentifier'])" "$STATE/${dev#/dev/}.json")
        if [[ $(cat /sys/block/${dev#/dev/}/backend 2>/dev/null) == "$id" ]]; then ok "$method $image: sysfs backend is ours"
        else not_ok "$method $image: sysfs backend is not $id"; fi
    fi
    if ! "$BIN/mount.erofs" -u "$mnt" 2>"$work/err"; then not_ok "$method $image: -u failed: $(cat "$work/err")"; return; fi
    if why=$(left_nothing "$dev" "$pid"); then ok "$method $image: -u left nothing"; else not_ok "$method $image: -u left: $why"; fi
}

for method in netlink ioctl; do
    for image in "${images[@]}"; do round_trip "$image" "$method"; done
done

# Four at once: four devices, unmounted independently.
devices=()
for i in 1 2 3 4; do
    mkdir -p "$work/four$i"
    "$BIN/mount.erofs" -t erofs.nbd "$CORPUS/${images[i % ${#images[@]}]}.erofs" "$work/four$i" && devices+=("$(device_of "$work/four$i")")
done
if [[ $(printf '%s\n' "${devices[@]}" | sort -u | wc -l) == 4 ]]; then ok "four mounts at once on four devices"; else not_ok "four mounts: devices ${devices[*]}"; fi
for i in 2 4 1 3; do "$BIN/mount.erofs" -u "$work/four$i" || not_ok "unmount four$i"; done
if ls "$STATE"/nbd*.json >/dev/null 2>&1; then not_ok "state left after four unmounts: $(ls "$STATE")"; else ok "four unmounts left no state"; fi

# --disconnect on a mounted device: reads then fail (not hang), and the mount can go.
mkdir -p "$work/disc"
if "$BIN/mount.erofs" -t erofs.nbd "$CORPUS/plain.erofs" "$work/disc"; then
    dev=$(device_of "$work/disc")
    pid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['daemonPID'])" "$STATE/${dev#/dev/}.json")
    echo 3 > /proc/sys/vm/drop_caches
    # The mount still holds the device, so the kernel keeps its capacity and its (stale) pid
    # file until the unmount (6.1 and 6.12); the daemon and the state go at once.
    if "$BIN/mount.erofs" --disconnect "$dev" && [[ ! -e $STATE/${dev#/dev/}.json ]] && ! kill -0 "$pid" 2>/dev/null; then
        ok "--disconnect stopped the daemon and removed the state"
    else
        not_ok "--disconnect: state $(ls "$STATE"), daemon $pid $(kill -0 "$pid" 2>/dev/null && echo alive)"
    fi
    if timeout 60 cat "$work/disc/sizes/random-4097" >/dev/null 2>&1; then not_ok "a read after --disconnect succeeded"
    else ok "a read after --disconnect fails cleanly"; fi
    umount "$work/disc" && ok "the disconnected mount unmounts" || not_ok "umount after --disconnect"
    if why=$(left_nothing "$dev" "$pid"); then ok "--disconnect then umount left nothing"; else not_ok "--disconnect then umount left: $why"; fi
else
    not_ok "mount for --disconnect"
fi

# A bad image leaves nothing: no state, no device in use.
head -c 8192 /dev/zero > "$work/bad.erofs"; mkdir -p "$work/bad"
before=$(cat /sys/block/nbd*/size | grep -vc '^0$')
"$BIN/mount.erofs" -t erofs.nbd "$work/bad.erofs" "$work/bad" 2>"$work/err"; status=$?
after=$(cat /sys/block/nbd*/size | grep -vc '^0$')
if [[ $status == 32 ]] && grep -q "not an EROFS image" "$work/err" && [[ $before == "$after" ]] && ! ls "$STATE"/nbd*.json >/dev/null 2>&1; then
    ok "a bad image is refused and leaves nothing"
else
    not_ok "bad image: status $status, $(cat "$work/err"), devices in use $before -> $after"
fi

# A busy mountpoint: -u fails saying why and changes nothing; once the file is closed it works.
mkdir -p "$work/busy"
if "$BIN/mount.erofs" -t erofs.nbd "$CORPUS/plain.erofs" "$work/busy"; then
    dev=$(device_of "$work/busy"); n=${dev#/dev/nbd}
    before=$(cat "$STATE/nbd$n.json")
    exec 7<"$work/busy/sizes/random-4097"
    "$BIN/mount.erofs" -u "$work/busy" 2>"$work/err"; status=$?
    if [[ $status == 32 ]] && grep -q "cannot unmount $work/busy" "$work/err" && grep -qi "busy" "$work/err" && mountpoint -q "$work/busy" \
        && [[ $(cat "$STATE/nbd$n.json") == "$before" ]] && cat "$work/busy/sizes/random-4097" >/dev/null; then
        ok "-u of a busy mountpoint fails and changes nothing: $(cat "$work/err")"
    else
        not_ok "-u of a busy mountpoint: status $status, $(cat "$work/err")"
    fi
    exec 7<&-
    # A bind mount of it keeps the device when the first mount goes.
    mkdir -p "$work/busy-bind"; mount --bind "$work/busy" "$work/busy-bind"
    "$BIN/mount.erofs" -u "$work/busy" && [[ -e $STATE/nbd$n.json ]] && cat "$work/busy-bind/sizes/random-4097" >/dev/null \
        && ok "-u keeps the device while a bind mount of it remains" || not_ok "-u with a bind mount left: $(ls "$STATE")"
    pid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['daemonPID'])" "$STATE/nbd$n.json")
    "$BIN/mount.erofs" -u "$work/busy-bind" && why=$(left_nothing "$dev" "$pid") && ok "then -u of the bind mount left nothing" \
        || not_ok "-u of the bind mount left: ${why:-failed}"
else
    not_ok "mount for the busy mountpoint test"
fi

# Another mount namespace holds a copy of the mount (as a service with PrivateTmp does): -u must
# not take the device from under it; the kernel disconnects the device when that copy goes.
mkdir -p "$work/held"
if "$BIN/mount.erofs" -t erofs.nbd "$CORPUS/plain.erofs" "$work/held"; then
    dev=$(device_of "$work/held"); n=${dev#/dev/nbd}; pid=$(field "$n" daemonPID)
    unshare -m --propagation private sleep 600 & holder=$!
    wait_for "[[ \$(readlink /proc/$holder/ns/mnt) != \$(readlink /proc/self/ns/mnt) ]]" 10
    "$BIN/mount.erofs" -u "$work/held" 2>"$work/err"; status=$?
    if [[ $status == 0 ]] && ! mountpoint -q "$work/held" && [[ -e $STATE/nbd$n.json && $(cat /sys/block/nbd$n/size) != 0 ]] \
        && nsenter -t "$holder" -m -r cat "$work/held/sizes/random-4097" >/dev/null; then
        ok "-u keeps a device another mount namespace still has mounted, and it reads there"
    else
        not_ok "-u with a copy in another namespace: status $status, $(cat "$work/err"), state $(ls "$STATE"), size $(cat /sys/block/nbd$n/size)"
    fi
    kill "$holder"; wait "$holder" 2>/dev/null
    if wait_for "left_nothing $dev $pid >/dev/null" 20; then ok "the device goes with the namespace's last mount (disconnect-on-close)"
    else not_ok "after the namespace went: $(left_nothing "$dev" "$pid")"; fi
else
    not_ok "mount for the other-namespace test"
fi

# -N: only the mountpoint is the namespace's; its /run is not ours. A state planted there naming
# an unrelated process (start time 0) must neither be used nor kill it.
mkdir -p "$work/nsmnt"
unshare -m --propagation private sh -c 'mount -t tmpfs tmpfs /run && mkdir -p /run/erofs-mount/nbd && exec sleep 600' & nsholder=$!
sleep 600 & victim=$!
if wait_for "[[ -d /proc/$nsholder/root/run/erofs-mount/nbd ]]" 10 \
    && "$BIN/mount.erofs" -N "$nsholder" -t erofs.nbd "$CORPUS/plain.erofs" "$work/nsmnt" 2>"$work/err"; then
    dev=$(device_of "$work/nsmnt" "/proc/$nsholder/mountinfo"); n=${dev#/dev/nbd}; pid=$(field "$n" daemonPID)
    if [[ -n $pid ]] && ! mountpoint -q "$work/nsmnt" && nsenter -t "$nsholder" -m -r "$BIN/erofs" walk "$work/nsmnt" | cmp -s - "$CORPUS/plain.manifest.jsonl"; then
        ok "-N: mounted in the namespace (walk equals the manifest), state in our /run"
    else
        not_ok "-N mount: device '$dev', state $(ls "$STATE"), mounted here: $(mountpoint "$work/nsmnt")"
    fi
    python3 -c "import json,sys; s=json.load(open(sys.argv[1])); s.update(daemonPID=int(sys.argv[3]), daemonStartTime=0, servingPID=int(sys.argv[3]), servingStartTime=0); json.dump(s, open(sys.argv[2], 'w'))" \
        "$STATE/nbd$n.json" "/proc/$nsholder/root/run/erofs-mount/nbd/nbd$n.json" "$victim"
    "$BIN/mount.erofs" -N "$nsholder" -u "$work/nsmnt" 2>"$work/err"; status=$?
    if [[ $status == 0 ]] && kill -0 "$victim" 2>/dev/null && why=$(left_nothing "$dev" "$pid") \
        && ! nsenter -t "$nsholder" -m -r mountpoint -q "$work/nsmnt"; then
        ok "-N -u: unmounted there, released from our state, the process a planted state names lives"
    else
        not_ok "-N -u: status $status, $(cat "$work/err"), victim $(kill -0 "$victim" 2>/dev/null && echo alive || echo killed), left: ${why:-?}"
    fi
else
    not_ok "-N mount failed: $(cat "$work/err")"
fi
kill "$nsholder" "$victim" 2>/dev/null; wait "$nsholder" "$victim" 2>/dev/null

# A tmpfs whose source reads /dev/nbdN of a device we serve is no mount of ours: every mode
# refuses it and the device goes on serving.
mkdir -p "$work/real" "$work/fake"
if "$BIN/mount.erofs" -t erofs.nbd "$CORPUS/plain.erofs" "$work/real"; then
    dev=$(device_of "$work/real"); n=${dev#/dev/nbd}
    mount -t tmpfs "$dev" "$work/fake"
    before=$(cat "$STATE/nbd$n.json"); refused=0
    for mode in --disconnect --reattach --upgrade -u; do
        "$BIN/mount.erofs" $mode "$work/fake" 2>"$work/err"; status=$?
        [[ $status == 32 ]] && grep -q "is not an EROFS mount" "$work/err" && refused=$((refused + 1)) || echo "# $mode: status $status, $(cat "$work/err")"
    done
    if [[ $refused == 4 && $(cat "$STATE/nbd$n.json") == "$before" ]] && mountpoint -q "$work/fake" && cat "$work/real/sizes/random-4097" >/dev/null; then
        ok "a tmpfs named $dev is refused by --disconnect, --reattach, --upgrade and -u; $dev serves on"
    else
        not_ok "a tmpfs named $dev: $refused of 4 modes refused it"
    fi
    umount "$work/fake"; "$BIN/mount.erofs" -u "$work/real" || not_ok "-u after the tmpfs test"
else
    not_ok "mount for the tmpfs test"
fi

in_use() { cat /sys/block/nbd*/size | grep -vc '^0$'; }
daemons() { pgrep -f -- '--s(erve|upervise)-nbd-device' | wc -l; }

# mount(2) fails after the device was attached (EROFS refuses an option): nothing stays.
mkdir -p "$work/late"
before=$(in_use)
"$BIN/mount.erofs" -t erofs.nbd -o cache_strategy=bogus "$CORPUS/plain.erofs" "$work/late" 2>"$work/err"; status=$?
if [[ $status == 32 ]] && grep -q "cannot mount .* through /dev/nbd" "$work/err" && [[ $(in_use) == "$before" ]] \
    && [[ $(daemons) == 0 ]] && ! ls "$STATE"/nbd*.json >/dev/null 2>&1 && ! mountpoint -q "$work/late"; then
    ok "a mount(2) failure after attaching leaves nothing: $(cat "$work/err")"
else
    not_ok "late mount failure: status $status, $(cat "$work/err"), devices $before -> $(in_use), daemons $(daemons)"
fi

# The daemon killed while mount.erofs waits for it: the mount fails saying why, or (when the
# kill came after the device was in service) succeeds; either way -u or the failure leaves nothing.
for which in supervise serve; do
    mkdir -p "$work/killed-$which"
    before=$(in_use)
    "$BIN/mount.erofs" -t erofs.nbd "$CORPUS/plain.erofs" "$work/killed-$which" 2>"$work/err" & mounter=$!
    victim=
    for _ in $(seq 500); do victim=$(pgrep -f -- "--$which-nbd-device" | head -n 1); [[ -n $victim ]] && break; done
    [[ -n $victim ]] && kill -9 "$victim"
    wait "$mounter"; status=$?
    if [[ $status == 0 ]]; then
        "$BIN/mount.erofs" -u "$work/killed-$which" 2>>"$work/err"
        outcome="mounted anyway (killed after attaching), then unmounted"
    else
        outcome="failed: $(cat "$work/err")"
    fi
    sleep 1
    if [[ -n $victim ]] && [[ $(in_use) == "$before" ]] && [[ $(daemons) == 0 ]] && ! ls "$STATE"/nbd*.json >/dev/null 2>&1 \
        && ! mountpoint -q "$work/killed-$which" && { [[ $status == 0 ]] || grep -q . "$work/err"; }; then
        ok "the $which daemon killed during the mount leaves nothing ($outcome)"
    else
        not_ok "$which daemon killed during the mount (pid ${victim:-not found}): $outcome; devices $before -> $(in_use), daemons $(daemons), state $(ls "$STATE")"
    fi
done

echo "$passed passed, $failed failed"
(( failed == 0 ))
