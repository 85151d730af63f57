#!/usr/bin/env bash
# Boots a Debian kernel under QEMU (TCG) with the host's root as a read-only
# 9p share behind a tmpfs overlay, runs COMMAND there as root in the repo, and
# exits with its status. The guest console goes to a log file; the command's
# output to stdout. A hard timeout kills QEMU: a task stuck on a dead nbd
# device cannot be killed from inside.
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage() { die "usage: run.sh [--kernel 6.1|6.12] [--timeout SECONDS] [--log FILE] -- COMMAND..."; }
kernel=6.12 timeout=300 log=
while (( $# )); do
    case $1 in
        --kernel) kernel=${2:?}; shift 2 ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        --log) log=${2:?}; shift 2 ;;
        --) shift; break ;;
        *) usage ;;
    esac
done
(( $# )) || usage
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout wants whole seconds, got '$timeout'"
need qemu-system-x86_64 timeout

kdir=$(kernel_dir "$kernel") || { "$VM_DIR/fetch-kernels.sh" >&2; kdir=$(kernel_dir "$kernel") || die "unknown kernel '$kernel' (6.1, 6.12 or a fetched version)"; }
initramfs=$("$VM_DIR/build-initramfs.sh" "$kernel")
log=${log:-$VM_CACHE/logs/console-$kernel.log}
mkdir -p "$(dirname "$log")"

out=$(mktemp -d)
qemu_pid= tail_pid=
cleanup() {
    [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null  # timeout passes it on to QEMU
    [[ -n $tail_pid ]] && kill "$tail_pid" 2>/dev/null
    rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
{
    echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root"
    echo "export REPO=$(printf %q "$REPO")"
    for name in $(compgen -e | grep '^EROFS_'); do  # EROFS_CORPUS, EROFS_BIN, ...
        echo "export $name=$(printf %q "${!name}")"
    done
    echo "cd \"\$REPO\""
    printf 'exec'; printf ' %q' "$@"; echo
} > "$out/cmd"
: > "$out/output"
# The guest mounts a fresh tmpfs on /tmp; a checkout under /tmp would vanish behind it.
[[ $REPO == /tmp/* ]] && : > "$out/keep-host-tmp"

# TCG now and then crashes a guest kernel while it boots (an int3 oops while patching code):
# a boot that never reached the command is retried, up to three boots in all.
for boot in 1 2 3; do
    qemu_status=0
    : > "$log"
    timeout -k 5 "$timeout" qemu-system-x86_64 \
        -accel tcg -cpu max -m 2G -smp 2 -nographic -no-reboot -nic none \
        -serial "file:$log" -monitor none \
        -kernel "$kdir/vmlinuz" -initrd "$initramfs" \
        -append "console=ttyS0 panic=-1 quiet loglevel=4" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$out,mount_tag=out,security_model=none" \
        < /dev/null &
    qemu_pid=$!
    # The command's output arrives on the 9p share while it runs: stream it. tail
    # reads what is left and exits once QEMU (its timeout wrapper) has exited.
    tail -n +1 -s 0.2 -F --pid=$qemu_pid "$out/output" 2>/dev/null &
    tail_pid=$!
    wait "$qemu_pid" || qemu_status=$?; qemu_pid=
    wait "$tail_pid" || true; tail_pid=

    if (( qemu_status == 0 )) && [[ ! -f $out/status ]] && ! grep -q 'running /vmout/cmd' "$log" && (( boot < 3 )); then
        echo "run.sh: the kernel did not boot (kernel $kernel, boot $boot: $(grep -m1 -o 'Kernel panic.*\|Oops.*' "$log" || echo 'no command started')); booting again" >&2
        continue
    fi
    break
done

if (( qemu_status == 124 || qemu_status == 137 )); then
    echo "run.sh: timed out after ${timeout}s (kernel $kernel); console log: $log" >&2
    exit 124
elif (( qemu_status != 0 )); then
    die "qemu failed with status $qemu_status (kernel $kernel); console log: $log"
elif [[ ! -f $out/status ]]; then
    die "the VM stopped without running the command (kernel $kernel); console log: $log"
fi
exit "$(cat "$out/status")"
