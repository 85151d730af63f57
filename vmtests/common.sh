# Shared settings for the VM harness scripts (sourced, not run).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VM_CACHE=${VM_CACHE:-$REPO/.vmcache}
VM_DIR=$REPO/vmtests

die() { echo "${0##*/}: $*" >&2; exit 1; }
need() { local tool; for tool; do command -v "$tool" >/dev/null || die "missing tool '$tool' (install it: see vmtests/README.md)"; done; }

# Resolves a kernel name given by the user (6.1, 6.12 or a full version) to the
# directory fetch-kernels.sh made for it.
kernel_dir() {
    local dir=$VM_CACHE/kernels/$1
    [[ -f $dir/vmlinuz && -f $dir/modules.load ]] || return 1
    readlink -f "$dir"
}

# For the scripts that run inside the VM:
# The device mounted at $1 (the newest mount there), from /proc/self/mountinfo (or from the
# mountinfo file $2: another namespace's /proc/PID/mountinfo).
# Pure bash: called hundreds of times a run, and a run once failed on an exec of awk whose
# lookup over 9p failed (BENCHMARKS.md, "Consecutive full VM runs", run 13).
device_of() {
    local line fields i source=
    while IFS= read -r line; do
        read -ra fields <<<"$line"
        [[ ${fields[4]:-} == "$1" ]] || continue
        for ((i = 6; i < ${#fields[@]}; i++)); do [[ ${fields[i]} == - ]] && break; done
        source=${fields[i + 2]:-}
    done <"${2:-/proc/self/mountinfo}"
    [[ -z $source ]] || echo "$source"
}
# Writes queue attributes ATTR=VALUE... of block device $1 (/sys/block/X/queue/ATTR).
set_queue() {
    local device=${1#/dev/} setting; shift
    for setting; do echo "${setting#*=}" > "/sys/block/$device/queue/${setting%%=*}"; done
}
# mount.erofs's nbd state directory, and field $2 of device $1's state ('' when absent).
STATE=/run/erofs-mount/nbd
field() { python3 -c "import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print('' if v is None else v)" "$STATE/nbd$1.json" "$2" 2>/dev/null; }
# Waits up to $2 s for command $1 to succeed.
wait_for() { local deadline=$((SECONDS + $2)); until eval "$1"; do (( SECONDS < deadline )) || return 1; sleep 0.05; done; }

# What kernel $2 does with corpus image $1: read (must equal the manifest),
# refuse (the mount must fail), or kernel-bug (this kernel is known to misread
# it: a mismatch is reported but not counted; a match passes).
#   blocksize512-lz4 on 6.1: reads fail part-way (corpus README).
#   all-fragments-lzma on Debian 6.12.117: the last 739 bytes of /xattrs/x9
#   differ from what 6.18 reads, on every read (seen with this harness).
expectation() {
    case $1:$2 in
        metadata-compressed:*) echo refuse ;;
        blocksize512-lz4:6.1.*) echo kernel-bug ;;
        lzma:6.1.*|deflate:6.1.*|zstd:6.1.*|all-fragments-lzma:6.1.*) echo refuse ;;
        all-fragments-lzma:6.12.*) echo kernel-bug ;;
        *) echo read ;;
    esac
}
