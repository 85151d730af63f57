# Shared by the remote benchmarks (bench-remote.sh, bench-oci.sh): sourced, not run.
# Expects REPO, BIN and WORK set; defines the images, the timers and the report of medians.

# $BIG_IMAGE ($WORK/remote/big512.erofs): one random file of BIG_MIB (BENCH_BIG_MIB, default
# 512) MiB in an uncompressed image (made once), and $WORK/remote/small.erofs:
# make-bench-images.sh's 8000 small files (lz4hc).
BIG_MIB=${BENCH_BIG_MIB:-512}
BIG_IMAGE=$WORK/remote/big$BIG_MIB.erofs
make_remote_images() {
    mkdir -p "$WORK/remote"
    BENCH_IMAGES=small "$REPO/Benchmarks/make-bench-images.sh" "$WORK" >/dev/null
    if [[ ! -f $BIG_IMAGE ]]; then
        rm -rf "$BIG_IMAGE.tree"
        mkdir -p "$BIG_IMAGE.tree"
        head -c $((BIG_MIB << 20)) /dev/urandom >"$BIG_IMAGE.tree/file.bin"
        mkfs.erofs --quiet "$BIG_IMAGE" "$BIG_IMAGE.tree" >/dev/null
        rm -rf "$BIG_IMAGE.tree"
    fi
    ln -f "$WORK/small.erofs" "$WORK/remote/small.erofs" 2>/dev/null || cp "$WORK/small.erofs" "$WORK/remote/small.erofs"
}

now() { date +%s.%N; }
seconds() { python3 -c "print(f'{$2 - $1:.3f}')"; }
read_tree() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }

# shaped_link NAME N: a network namespace (LINK_NS) behind a veth pair (MTU 9000, jumbo frames
# as inside a data centre), its side 10.213.N.2 (LINK_ADDR), the host's 10.213.N.1, shaped by
# tc's tbf to NAME's rate (1gbit, 10gbit, ...) both ways; N is moved up past subnets another
# benchmark running at the same time holds. remove_links deletes them all.
namespaces=()
shaped_link() {
    local link=$1 subnet=$2 rate burst
    while [[ -n $(ip -o addr show to "10.213.$subnet.0/24") ]]; do subnet=$((subnet + 1)); done
    ((subnet < 255)) || { echo "no free subnet 10.213.N.0/24 for $link" >&2; return 1; }
    local host_if=ebh$subnet-$$ ns_if=ebn$subnet-$$
    LINK_NS=erofs-bench-$$-$subnet LINK_ADDR=10.213.$subnet.2
    ip netns add "$LINK_NS"
    namespaces+=("$LINK_NS")
    ip link add "$host_if" mtu 9000 type veth peer name "$ns_if" mtu 9000 netns "$LINK_NS"
    ip addr add "10.213.$subnet.1/24" dev "$host_if"
    ip link set "$host_if" up
    ip -n "$LINK_NS" addr add "$LINK_ADDR/24" dev "$ns_if"
    ip -n "$LINK_NS" link set "$ns_if" up
    ip -n "$LINK_NS" link set lo up
    # The bucket holds 1 ms at the rate (at least 256 KiB: veth passes 64 KiB GSO packets).
    rate=${link%gbit}
    burst=$((rate * 125000 > 262144 ? rate * 125000 : 262144))
    tc qdisc add dev "$host_if" root tbf rate "${rate}gbit" burst "$burst" latency 20ms
    tc -n "$LINK_NS" qdisc add dev "$ns_if" root tbf rate "${rate}gbit" burst "$burst" latency 20ms
}
remove_links() { for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done; }

# record NAME VALUE: one run of NAME (seconds; a name with MiB in it counts MiB). `report
# ARGS...` prints each name's runs and median, then runs the Python lines on its stdin, which
# see `m` (medians by name), `times` and ARGS as sys.argv[1:].
declare -A times
record() { times[$1]="${times[$1]:-} $2"; }
report() {
    local summary
    summary=$(cat)
    python3 - "$@" <<PY
import statistics, sys
times = {k: [float(x) for x in v.split()] for k, v in {
$(for k in "${!times[@]}"; do echo "    \"$k\": \"${times[$k]}\","; done)
}.items()}
m = {k: statistics.median(v) for k, v in times.items()}
for k in sorted(times):
    unit = "MiB" if "MiB" in k else "s"
    print(f"{k:30} median {m[k]:8.3f} {unit:3}  runs {' '.join(f'{x:.3f}' for x in times[k])}")
$summary
PY
}
