#!/usr/bin/env bash
# OCI registry layers through the FUSE backend against `curl`, against the same image from a
# local file, and against erofs-utils' own OCI mount, same run, on this host (issue 16).
# The registry is Debian's docker-registry (CNCF Distribution 2.8) on loopback, its storage in
# the page cache; the two images of bench-remote.sh are pushed with skopeo as native EROFS
# layers (application/vnd.erofs.layer.v1), each the one layer of its image:
#   1. one 512 MiB random file (uncompressed image; BENCH_BIG_MIB=N for another size): `curl -o
#      /dev/null` of the blob from the registry vs a fresh `mount.erofs -t erofs.fuse -o
#      oci.insecure,remote.cache=EMPTY REF DIR` + `cat FILE` + unmount (cold: an empty block
#      cache; the mount is timed with the read), and, to see where the time goes, the same
#      through the blob's plain http URL and from the local image file;
#   2. 8000 small files (make-bench-images.sh's small.erofs, lz4hc): walk and read every file
#      through a fresh mount: local file (FUSE) vs the registry layer with an empty cache.
# EROFS_UTILS_MOUNT=PATH adds erofs-utils' mount.erofs (1.9.x, configured --enable-oci) as a
# third method in both, with -t $EROFS_UTILS_TYPE (default erofs.nbd, its main OCI backend: 32 KiB
# per request, one at a time; erofs.fanotify: the kernel's EROFS over a sparse file it fills on
# fanotify pre-content events, that file removed before each run). Its erofsfuse has no OCI
# source. The method is tried once before the rounds and skipped, saying why, if it cannot
# mount here; unset: skipped. BENCH_OCI_TYPE sets our backend (default erofs.fuse). In the VM
# (nbd for both): vmtests/run.sh --kernel 6.12 --timeout 3000 -- env BENCH_OCI_TYPE=erofs.nbd \
#   BENCH_BIG_MIB=128 EROFS_UTILS_MOUNT=PATH Benchmarks/bench-oci.sh 2   (its tmpfs holds the
#   registry, the layout and the block cache in 2 GiB: 512 MiB does not fit)
# BENCH_LINKS (default "loopback 1gbit 10gbit") adds the 512 MiB curl/cold pair over links shaped
# as bench-remote.sh's (remote-bench-lib.sh's shaped_link: a registry on the same storage in a
# network namespace behind a veth pair, tbf to that rate; no per-request delay: the registry
# has none to add); loopback must stay in the list.
# Every round mounts anew; the methods' order rotates each round; medians are reported with
# the host load before and after.    Benchmarks/bench-oci.sh [ROUNDS]   (root, after
# swift build -c release)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
BIN=${EROFS_BIN_DIR:-$REPO/.build/release}
WORK=${BENCH_DIR:-$REPO/.build-bench}
EU=${EROFS_UTILS_MOUNT:-}
EU_TYPE=${EROFS_UTILS_TYPE:-erofs.nbd}
LINKS=${BENCH_LINKS:-loopback 1gbit 10gbit}
OURS_TYPE=${BENCH_OCI_TYPE:-erofs.fuse}
source "$REPO/Benchmarks/remote-bench-lib.sh"
for program in docker-registry skopeo curl; do
    command -v $program >/dev/null || { echo "bench-oci.sh: $program not found (apt-get install docker-registry skopeo curl)" >&2; exit 1; }
done
make_remote_images
ip link set lo up 2>/dev/null || true   # down in the test VM (vmtests/run.sh), up on a host

OCI=$WORK/oci
MNT=$OCI/mnt CACHE=$OCI/cache
rm -rf "$OCI/registry" "$OCI/layout-"*
mkdir -p "$OCI/registry" "$MNT"
registries=()
cleanup() {
    "$BIN/mount.erofs" -u "$MNT" 2>/dev/null || true
    [[ -z $EU ]] || "$EU" -u "$MNT" 2>/dev/null || true
    for pid in "${registries[@]}"; do kill "$pid" 2>/dev/null || true; done
    remove_links
    rm -rf "$CACHE" "$OCI/registry" "$OCI/layout-"*
}
trap cleanup EXIT
# start_registry LINK ADDR:PORT [NETNS]: a registry on the one storage directory, as REG[LINK].
declare -A REG
start_registry() {
    local prefix=()
    [[ -z ${3:-} ]] || prefix=(ip netns exec "$3")
    printf '%s\n' "version: 0.1" "log: {level: error, accesslog: {disabled: true}}" \
        "storage: {filesystem: {rootdirectory: $OCI/registry/storage}}" "http: {addr: $2}" >"$OCI/registry/$1.yml"
    "${prefix[@]}" docker-registry serve "$OCI/registry/$1.yml" >/dev/null 2>&1 &
    registries+=($!)
    for _ in $(seq 100); do curl -sf "http://$2/v2/" >/dev/null && break; sleep 0.1; done
    curl -sf "http://$2/v2/" >/dev/null || { echo "bench-oci.sh: the registry for $1 did not start" >&2; exit 1; }
    REG[$1]=$2
}
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_registry loopback "127.0.0.1:$PORT"
HOST=${REG[loopback]}
subnet=0
for link in $LINKS; do
    case $link in
    loopback) ;;
    *gbit)
        subnet=$((subnet + 1))
        shaped_link "$link" "$subnet"
        start_registry "$link" "$LINK_ADDR:5000" "$LINK_NS"
        ;;
    *) echo "unknown link $link (loopback, 1gbit, 10gbit, ...)" >&2; exit 2 ;;
    esac
done

# push NAME IMAGE: IMAGE as the one EROFS layer of HOST/bench/NAME:v1; prints the layer digest.
push() {
    python3 "$REPO/Tests/RemoteSourcesTests/Servers/oci_layout.py" "$OCI/layout-$1" v1 \
        "$2:application/vnd.erofs.layer.v1"
    skopeo copy -q --dest-tls-verify=false "oci:$OCI/layout-$1:v1" "docker://$HOST/bench/$1:v1" >&2
    rm -rf "$OCI/layout-$1"
    echo "sha256:$(sha256sum "$2" | cut -d' ' -f1)"
}
BIG_DIGEST=$(push big "$BIG_IMAGE")
SMALL_DIGEST=$(push small "$WORK/remote/small.erofs")
curl -sf -o /dev/null "http://$HOST/v2/bench/small/blobs/$SMALL_DIGEST"   # the registry's files in the page cache
curl -sf -o /dev/null "http://$HOST/v2/bench/big/blobs/$BIG_DIGEST"

# Quiet about the oci.insecure warning; a failure says why.
mount_ours() { "$BIN/mount.erofs" -t "$OURS_TYPE" "$@" "$MNT" 2>"$OCI/mount.err" || { cat "$OCI/mount.err" >&2; return 1; }; }
unmount_ours() { "$BIN/mount.erofs" -u "$MNT"; }
mount_eu() {  # NAME DIGEST: erofs-utils' OCI mount (fanotify: its sparse cache file removed first)
    rm -f "/var/cache/erofsmount/${2#sha256:}"
    # oci.layer=0: without oci.layer or oci.blob, 1.9.3's serving child exits with no message
    # and the mount fails with EIO, even for an image of one layer.
    "$EU" -t "$EU_TYPE" -o oci.insecure,oci.layer=0 "$HOST/bench/$1:v1" "$MNT" 2>"$OCI/mount.err" || { cat "$OCI/mount.err" >&2; return 1; }
}
unmount_eu() { "$EU" -u "$MNT"; rm -f /var/cache/erofsmount/*; }

# One timed run of each method; `timed NAME COMMAND...` records COMMAND's wall time.
timed() { local t0 t1; t0=$(now); "${@:2}"; t1=$(now); record "$1" "$(seconds "$t0" "$t1")"; }
big_curl() { curl -sf -o /dev/null "http://${REG[$1]}/v2/bench/big/blobs/$BIG_DIGEST"; }
big_ours() {
    rm -rf "$CACHE"
    mount_ours "${REG[$1]}/bench/big:v1" -o oci.insecure,remote.cache="$CACHE"
    cat "$MNT/file.bin" >/dev/null
    unmount_ours
}
big_http() {  # the same blob as a plain URL: what the OCI layer adds
    rm -rf "$CACHE"
    mount_ours "http://$HOST/v2/bench/big/blobs/$BIG_DIGEST" -o remote.cache="$CACHE"
    cat "$MNT/file.bin" >/dev/null
    unmount_ours
}
big_local() { mount_ours "$BIG_IMAGE"; cat "$MNT/file.bin" >/dev/null; unmount_ours; }
big_eu() { mount_eu big "$BIG_DIGEST"; cat "$MNT/file.bin" >/dev/null; unmount_eu; }
small_local() { mount_ours "$WORK/remote/small.erofs"; timed small-local read_tree "$MNT"; unmount_ours; }
small_ours() {
    rm -rf "$CACHE"
    timed small-oci-mount mount_ours "$HOST/bench/small:v1" -o oci.insecure,remote.cache="$CACHE"
    timed small-oci-cold read_tree "$MNT"
    unmount_ours
}
small_eu() {
    timed small-erofs-utils-mount mount_eu small "$SMALL_DIGEST"
    timed small-erofs-utils-cold read_tree "$MNT"
    unmount_eu
}
methods=(big-http-cold big-local small_local small_ours)
for link in $LINKS; do methods+=("big-curl@$link" "big-oci-cold@$link"); done
if [[ -n $EU ]]; then
    if (mount_eu small "$SMALL_DIGEST") 2>"$OCI/probe.err"; then
        unmount_eu
        methods+=(big-erofs-utils-cold small_eu)
    else
        echo "erofs-utils ($EU -t $EU_TYPE) cannot mount here, method skipped: $(grep -v '<W>' "$OCI/probe.err" | tr '\n' ' ')"
        "$EU" -u "$MNT" 2>/dev/null || true
        rm -f "/var/cache/erofsmount/${SMALL_DIGEST#sha256:}"   # its fanotify sparse file
    fi
fi
run() {
    case $1 in
    big-curl@*) timed "$1" big_curl "${1#*@}" ;;
    big-oci-cold@*) timed "$1" big_ours "${1#*@}" ;;
    big-http-cold) timed big-http-cold big_http ;;
    big-local) timed big-local big_local ;;
    big-erofs-utils-cold) timed big-erofs-utils-cold big_eu ;;
    *) "$1" ;;
    esac
}

echo "load before: $(uptime)"
for round in $(seq "$ROUNDS"); do
    for i in "${!methods[@]}"; do run "${methods[$(((i + round) % ${#methods[@]}))]}"; done
done
echo "load after: $(uptime)"
export OURS_TYPE EU_TYPE BIG_MIB
report "$LINKS" <<'PY'
import os
mib, ours, theirs = int(os.environ["BIG_MIB"]), os.environ["OURS_TYPE"], os.environ["EU_TYPE"]
for link in sys.argv[1].split():
    curl, cold = times[f"big-curl@{link}"], times[f"big-oci-cold@{link}"]
    print(f"{mib} MiB cold over {link}, OCI layer through our {ours} (mount included) vs curl of the blob:"
          f" {mib / m[f'big-oci-cold@{link}']:.0f} vs {mib / m[f'big-curl@{link}']:.0f} MiB/s ="
          f" {m[f'big-curl@{link}'] / m[f'big-oci-cold@{link}']:.2f}x"
          f" (per round {' '.join(f'{c / o:.2f}' for c, o in zip(curl, cold))}; goal >= 0.8x)")
m['big-curl'] = m['big-curl@loopback']
print(f"over loopback, the same blob as a plain http URL: {m['big-curl'] / m['big-http-cold']:.2f}x curl; the local image through our {ours}: {mib / m['big-local']:.0f} MiB/s = {m['big-curl'] / m['big-local']:.2f}x curl (both mount included)")
print(f"8000 small files cold, OCI layer vs local image, both through our {ours}: {m['small-oci-cold'] / m['small-local']:.2f}x the time (mount {m['small-oci-mount']:.3f} s not included)")
if 'big-erofs-utils-cold' in m:
    print(f"erofs-utils 1.9 OCI mount ({theirs}): {mib} MiB {mib / m['big-erofs-utils-cold']:.0f} MiB/s = {m['big-curl'] / m['big-erofs-utils-cold']:.2f}x curl, ours {m['big-erofs-utils-cold'] / m['big-oci-cold@loopback']:.2f}x its speed; small files {m['small-erofs-utils-cold'] / m['small-local']:.2f}x the local image's time, ours {m['small-oci-cold'] / m['small-erofs-utils-cold']:.2f}x its time (its mount {m['small-erofs-utils-mount']:.3f} s)")
PY
