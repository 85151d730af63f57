#!/usr/bin/env bash
# Runs inside the test VM: remote images through the nbd backend, and plain -t erofs choosing
# a backend. The servers run in the guest on its loopback (it has no other network): the tests'
# range server (HTTP with Range) and moto's S3 checking SigV4 signatures against an IAM key.
#   - plain -t erofs of an HTTP URL picks nbd (said on stderr); its walk equals the manifest;
#   - an S3 object (credentials in the environment) through -t erofs.nbd equals its manifest,
#     and the secret is in no state file, no /proc/PID/cmdline or environ of any process of ours;
#   - every process of ours SIGKILLed under two verifying readers, then --reattach: 0 errors;
#   - -u leaves no mount, device, daemon, state or captured credentials;
#   - plain -t erofs of an image this kernel refuses (EOPNOTSUPP: zstd on 6.1) falls back to
#     FUSE, says so, and equals its manifest;
#   - an OCI layer through nbd, and (where the kernel has ublk) an S3 object through ublk, each
#     with the same secret, kill and --reattach checks.
# Prints "ok - ..." / "not ok - ..." lines, then "N passed, N failed".
set -uo pipefail
source "$(dirname "$0")/common.sh"  # REPO, STATE, device_of, wait_for
BIN=${EROFS_BIN_DIR:-$REPO/.build/debug}
CORPUS=${EROFS_CORPUS:-$REPO/../shared/corpus}
SERVERS=$REPO/Tests/RemoteSourcesTests/Servers
kernel=$(uname -r)
passed=0 failed=0
ok() { echo "ok - [$kernel] $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - [$kernel] $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else not_ok "$what"; return 1; fi; }
work=$(mktemp -d /tmp/remote-mount.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done' EXIT
# Our daemons of the backend under test (pgrep -f patterns); section 5 switches to ublk's.
DAEMONS='--serve-nbd-device|--supervise-nbd-device'

ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up 2>/dev/null
# The guest's PATH has no pyenv shim: the python that has moto.
PYTHON=python3
for candidate in python3 /root/.pyenv/versions/*/bin/python3; do
    if "$candidate" -c 'import moto' 2>/dev/null; then PYTHON=$candidate; break; fi
done
# Whether the tree at $1 walks to manifest $2; if not, what differed, the walk's errors and the
# daemons' logs.
walk_equals() {
    "$BIN/erofs" walk "$1" >"$work/walk" 2>"$work/walk.err"
    cmp -s "$work/walk" "$2" && return 0
    diff "$work/walk" "$2" | head -6; head -5 "$work/walk.err"
    tail -n 5 /run/erofs-mount/nbd/*.log 2>/dev/null; dmesg | grep -i -E "nbd|erofs|I/O error" | tail -n 8
    return 1
}

# The range server over the corpus.
"$PYTHON" "$SERVERS/range_server.py" --root "$CORPUS" >"$work/http.port" 2>"$work/http.err" &
pids+=($!)
wait_for '[[ -s $work/http.port ]]' 30 || { echo "range server did not start: $(cat "$work/http.err")"; exit 1; }
http=http://127.0.0.1:$(head -1 "$work/http.port")

nothing_left() {  # $1 mountpoint, $2 device
    local left
    left=$(awk -v m="$1" '$5 == m' /proc/self/mountinfo
        pgrep -f -- '--serve-nbd-device|--supervise-nbd-device|--serve-fuse|--ublk-daemon|--supervise-ublk-device' || true
        ls "$STATE" /run/erofs-mount/fuse /run/erofs-mount/ublk 2>/dev/null | grep json
        ls /dev/ublkb* /dev/ublkc* 2>/dev/null
        ls /run/erofs-mount/credentials 2>/dev/null
        [[ -n ${2:-} && $(cat /sys/block/${2#/dev/}/size 2>/dev/null) != 0 ]] && echo "$2 still has a size")
    [[ -z $left ]] || { echo "left: $left"; return 1; }
}

# SIGKILL of every process of ours under two verifying readers of mount $1 (manifest $2), then
# --reattach: 0 errors.
kill_under_readers() {
    local mnt=$1 manifest=$2 stop=$work/stop r1 e1 r2 e2
    rm -f "$stop" "$work/reader1" "$work/reader2"
    for reader in 1 2; do
        ( errors=0 rounds=0
          while [[ ! -e $stop ]]; do
              echo 3 >/proc/sys/vm/drop_caches
              "$BIN/erofs" walk "$mnt" | cmp -s - "$manifest" || errors=$((errors + 1))
              rounds=$((rounds + 1))
          done
          echo "$rounds $errors" >"$work/reader$reader" ) &
    done
    sleep 3
    kill -9 $(pgrep -f -- "$DAEMONS") 2>/dev/null
    sleep 1
    if "$BIN/mount.erofs" --reattach "$mnt" 2>"$work/err"; then ok "--reattach after SIGKILL of every process of ours"
    else not_ok "--reattach: $(cat "$work/err")"; fi
    sleep 5
    touch "$stop"; wait_for "[[ -s $work/reader1 && -s $work/reader2 ]]" 120
    read -r r1 e1 <"$work/reader1"; read -r r2 e2 <"$work/reader2"
    check "readers across the kill and --reattach: $r1 + $r2 walks, $e1 + $e2 errors" test "$e1$e2" = 00 -a "$r1" -gt 0 -a "$r2" -gt 0
}

# The secrets ($3...) are in no daemon's argv or environment nor in $STATE; --list shows $2
# (a fixed string) and none of them. $1 names the secret in the messages.
no_secret_in_daemons() {
    local what=$1 listed=$2 ours leaks secret; shift 2
    local patterns=(); for secret in "$@"; do patterns+=(-e "$secret"); done
    ours=$(pgrep -f -- "$DAEMONS")
    leaks=$(for pid in $ours; do grep -l -a -F "${patterns[@]}" /proc/$pid/cmdline /proc/$pid/environ 2>/dev/null; done
        grep -rl -a -F "${patterns[@]}" "$STATE" /run/erofs-mount/ublk 2>/dev/null)
    check "the $what is in no daemon's argv or environment, nor in a state file (daemons: $(echo $ours))" \
        test -z "$leaks" -a -n "$ours"
    local shown=no
    "$BIN/mount.erofs" --list >"$work/list"
    grep -q -F -- "$listed" "$work/list" && ! grep -q -F "${patterns[@]}" "$work/list" && shown=yes
    check "--list shows $listed, not the $what" test $shown = yes
}

# 1. Plain -t erofs of a URL: nbd where the kernel has it.
mnt=$work/http; mkdir -p "$mnt"
if "$BIN/mount.erofs" -t erofs "$http/lz4.erofs" "$mnt" -o remote.cache=$work/cache 2>"$work/err"; then
    check "plain -t erofs of a URL says it picked nbd" grep -q "mounting through nbd" "$work/err"
    device=$(device_of "$mnt")
    check "the URL is mounted from an nbd device ($device)" test "${device#/dev/nbd}" != "$device"
    check "lz4 over HTTP through nbd: walk equals the manifest" \
        walk_equals "$mnt" "$CORPUS/lz4.manifest.jsonl"
    "$BIN/mount.erofs" -u "$mnt" 2>"$work/err" || not_ok "-u: $(cat "$work/err")"
    check "-u of the HTTP mount left nothing" nothing_left "$mnt" "$device"
else
    not_ok "plain -t erofs of $http/lz4.erofs: $(cat "$work/err")"
fi

# 1b. The same with a request timer longer than any fetch (diagnosis: a cold remote read can
# outlast the 250 ms timer the backend sets for recoveries).
mnt=$work/http2; mkdir -p "$mnt"
if "$BIN/mount.erofs" -t erofs.nbd "$http/lz4.erofs" "$mnt" -o remote.cache=none,nbd.requeue_ms=600000 2>"$work/err"; then
    check "lz4 over HTTP through nbd, requeue_ms=600000: walk equals the manifest" \
        walk_equals "$mnt" "$CORPUS/lz4.manifest.jsonl"
    "$BIN/mount.erofs" -u "$mnt" 2>"$work/err" || not_ok "-u: $(cat "$work/err")"
else
    not_ok "-t erofs.nbd of $http/lz4.erofs: $(cat "$work/err")"
fi

# 2. S3 (moto, signatures checked) through -t erofs.nbd, credentials from the environment.
port=45931
INITIAL_NO_AUTH_ACTION_COUNT=3 "$PYTHON" -m moto.server -H 127.0.0.1 -p $port >"$work/moto.log" 2>&1 &
pids+=($!)
wait_for "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", $port))' 2>/dev/null" 60 \
    || { echo "moto did not start: $(tail -3 "$work/moto.log")"; exit 1; }
"$PYTHON" "$SERVERS/moto_setup.py" $port images "$CORPUS/chunked.erofs" "$CORPUS/plain.erofs" >"$work/keys" \
    || { echo "moto setup failed"; exit 1; }
access=$(sed -n 1p "$work/keys"); secret=$(sed -n 2p "$work/keys")
s3opts=s3.endpoint=http://127.0.0.1:$port,remote.cache=$work/cache
mnt=$work/s3; mkdir -p "$mnt"
if AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret \
    "$BIN/mount.erofs" -t erofs.nbd images/chunked.erofs "$mnt" -o "$s3opts" 2>"$work/err"; then
    device=$(device_of "$mnt")
    check "chunked from S3 through nbd: walk equals the manifest" \
        walk_equals "$mnt" "$CORPUS/chunked.manifest.jsonl"
    no_secret_in_daemons secret s3://images/chunked.erofs "$secret"

    kill_under_readers "$mnt" "$CORPUS/chunked.manifest.jsonl"
    "$BIN/mount.erofs" -u "$mnt" 2>"$work/err" || not_ok "-u: $(cat "$work/err")"
    check "-u of the S3 mount left nothing (no captured credentials either)" nothing_left "$mnt" "$device"
else
    not_ok "S3 mount through nbd: $(cat "$work/err")"
fi

# 3. Plain -t erofs of a local image this kernel refuses: FUSE instead.
case $kernel in
    6.1.*)
        mnt=$work/fallback; mkdir -p "$mnt"
        if "$BIN/mount.erofs" -t erofs "$CORPUS/zstd.erofs" "$mnt" 2>"$work/err"; then
            check "the kernel's refusal of zstd falls back to FUSE, said on stderr" grep -q "through FUSE instead" "$work/err"
            check "zstd through the FUSE fallback: walk equals the manifest" \
                walk_equals "$mnt" "$CORPUS/zstd.manifest.jsonl"
            "$BIN/mount.erofs" -u "$mnt" 2>"$work/err" || not_ok "-u: $(cat "$work/err")"
            check "-u of the fallback mount left nothing" nothing_left "$mnt"
        else
            not_ok "plain -t erofs of zstd.erofs: $(cat "$work/err")"
        fi ;;
esac

# 4. A layer of an image in an OCI registry (issue 16): Debian's docker-registry on the guest's
# loopback with htpasswd auth, the image pushed by skopeo from an OCI layout.
registry_port=45932 password=pw-$RANDOM$RANDOM
htpasswd -Bbc "$work/htpasswd" reader "$password" >/dev/null 2>&1
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\nauth: {htpasswd: {realm: test, path: %s}}\n' \
    "$work/registry" $registry_port "$work/htpasswd" >"$work/registry.yml"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
wait_for "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", $registry_port))' 2>/dev/null" 60 \
    || { echo "docker-registry did not start: $(tail -3 "$work/registry.log")"; exit 1; }
python3 "$SERVERS/oci_layout.py" "$work/layout" v1 "$CORPUS/lz4.erofs:application/vnd.erofs.layer.v1" \
    && skopeo copy -q --dest-tls-verify=false --dest-creds "reader:$password" "oci:$work/layout:v1" \
        "docker://127.0.0.1:$registry_port/corpus/lz4:v1" 2>"$work/err" \
    || { echo "push to the registry failed: $(cat "$work/err")"; exit 1; }
reference=127.0.0.1:$registry_port/corpus/lz4:v1
auth=$(printf 'reader:%s' "$password" | base64 -w0)
mnt=$work/oci; mkdir -p "$mnt"
if "$BIN/mount.erofs" -t erofs.nbd "$reference" "$mnt" \
    -o "oci.insecure,oci.username=reader,oci.password=$password,remote.cache=$work/cache" 2>"$work/err"; then
    device=$(device_of "$mnt")
    check "an OCI layer through nbd: walk equals the manifest" walk_equals "$mnt" "$CORPUS/lz4.manifest.jsonl"
    no_secret_in_daemons password "$reference layer sha256:" "$password" "$auth"
    kill_under_readers "$mnt" "$CORPUS/lz4.manifest.jsonl"
    "$BIN/mount.erofs" -u "$mnt" 2>"$work/err" || not_ok "-u: $(cat "$work/err")"
    check "-u of the OCI mount left nothing (no captured credentials either)" nothing_left "$mnt" "$device"
else
    not_ok "OCI mount through nbd: $(cat "$work/err")"
fi

# 5. An S3 object through ublk (issue 17: every source), where the kernel has the driver.
if [[ -c /dev/ublk-control ]]; then
    DAEMONS='--ublk-daemon|--supervise-ublk-device'
    mnt=$work/ublk; mkdir -p "$mnt"
    if AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret \
        "$BIN/mount.erofs" -t erofs.ublk images/plain.erofs "$mnt" -o "$s3opts" 2>"$work/err"; then
        device=$(device_of "$mnt")
        check "the S3 object is mounted from a ublk device ($device)" test "${device#/dev/ublkb}" != "$device"
        check "plain from S3 through ublk: walk equals the manifest" \
            walk_equals "$mnt" "$CORPUS/plain.manifest.jsonl"
        no_secret_in_daemons secret s3://images/plain.erofs "$secret"
        kill_under_readers "$mnt" "$CORPUS/plain.manifest.jsonl"
        "$BIN/mount.erofs" -u "$mnt" 2>"$work/err" || not_ok "-u: $(cat "$work/err")"
        check "-u of the S3 ublk mount left nothing (no device, no captured credentials)" nothing_left "$mnt"
    else
        not_ok "S3 mount through ublk: $(cat "$work/err")"
    fi
fi

rm -rf "$work"
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
