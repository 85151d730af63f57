#!/usr/bin/env bash
# The VM test suite CI runs: vmtests/smoke.sh, vmtests/nbd-mount.sh, vmtests/fuse-mount.sh,
# vmtests/recovery.sh, vmtests/ublk-mount.sh (6.12: the ublk backend; 6.1, without ublk_drv:
# its one-line refusal) and vmtests/ublk-recovery.sh (6.12: ublk crash recovery, --reattach,
# --upgrade)
# on Debian's 6.1 and 6.12 kernels, one boot per kernel. Exits non-zero on any failure; the last line is "N passed, N failed".
set -euo pipefail
source "$(dirname "$0")/common.sh"
KERNELS=(${VM_KERNELS:-6.1 6.12})

if [[ -z ${EROFS_BIN:-} ]]; then
    # Release builds: under emulation a debug build made the suite about 1.8x slower.
    echo "== building erofs and mount.erofs (release)"
    (cd "$REPO" && swift build -c release --product erofs && swift build -c release --product mount.erofs) >/dev/null
    export EROFS_BIN=$REPO/.build/release/erofs
fi
export EROFS_BIN_DIR=${EROFS_BIN_DIR:-$(dirname "$EROFS_BIN")}
"$VM_DIR/fetch-kernels.sh"

output=$(mktemp)
trap 'rm -f "$output"' EXIT
passed=0 failed=0
for kernel in "${KERNELS[@]}"; do
    echo "== kernel $kernel"
    started=$SECONDS
    status=0
    "$VM_DIR/run.sh" --kernel "$kernel" --timeout "${VM_TIMEOUT:-1800}" -- \
        sh -c 't=$(date +%s); vmtests/smoke.sh; smoke=$?; echo "# smoke.sh took $(($(date +%s) - t)) s"
               t=$(date +%s); vmtests/nbd-mount.sh; nbd=$?; echo "# nbd-mount.sh took $(($(date +%s) - t)) s"
               t=$(date +%s); vmtests/fuse-mount.sh; fuse=$?; echo "# fuse-mount.sh took $(($(date +%s) - t)) s"
               t=$(date +%s); vmtests/recovery.sh; recovery=$?; echo "# recovery.sh took $(($(date +%s) - t)) s"
               t=$(date +%s); vmtests/ublk-mount.sh; ublk=$?; echo "# ublk-mount.sh took $(($(date +%s) - t)) s"
               t=$(date +%s); vmtests/ublk-recovery.sh; ublkrecovery=$?; echo "# ublk-recovery.sh took $(($(date +%s) - t)) s"
               t=$(date +%s); vmtests/remote-mount.sh; remote=$?; echo "# remote-mount.sh took $(($(date +%s) - t)) s"
               [ $recovery = 0 ] && [ $nbd = 0 ] && [ $ublk = 0 ] && [ $ublkrecovery = 0 ] && [ $fuse = 0 ] && [ $remote = 0 ] && exit $smoke' | tee "$output" || status=$?
    echo "== kernel $kernel: status $status in $((SECONDS - started)) s"
    passed=$((passed + $(grep -c '^ok - ' "$output" || true)))
    failed=$((failed + $(grep -c '^not ok - ' "$output" || true)))
    # A VM that died or timed out, or a smoke test that failed without saying
    # which check, still counts as a failure.
    if (( status != 0 )) && ! grep -q '^not ok - ' "$output"; then
        echo "not ok - [$kernel] the VM run failed (status $status)"
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
(( failed == 0 ))
