#!/usr/bin/env bash
# Runs the netlink and nbd device tests (Tests/NetlinkTests, Tests/NBDKernelTests) inside the
# test VM, where the nbd module is loaded and KernelNBDTests really attach devices (netlink
# CONNECT/STATUS/LINK_DEAD/RECONFIGURE/DISCONNECT and the ioctl path) and
# KernelNBDMountTests mount corpus images from them, on each kernel. Fails if either suite
# did not run and pass. KERNELS="6.1 6.12" by default; VM_HARNESS names the
# directory holding run.sh (default: this one).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
harness=${VM_HARNESS:-$here}
repo=$(git -C "$here" rev-parse --show-toplevel)
[[ -x $harness/run.sh ]] || { echo "${0##*/}: needs the VM harness ($harness/run.sh)" >&2; exit 2; }

cd "$repo"
swift build --build-tests >&2
tests=$(swift build --show-bin-path)/erofs-mountPackageTests.xctest
status=0
for kernel in ${KERNELS:-6.1 6.12}; do
    echo "== kernel $kernel"
    output=$("$harness/run.sh" --kernel "$kernel" --timeout 900 -- \
        "$tests" --testing-library swift-testing --filter 'NetlinkTests|NBDKernelTests' 2>&1) || status=1
    grep -E '^(✔|✘|➜) (Suite|Test run)|✘ Test' <<<"$output" || true
    for suite in KernelNBDTests KernelNBDMountTests; do
        if ! grep -q "Suite $suite passed" <<<"$output"; then
            echo "kernel $kernel: $suite did not pass" >&2
            grep -E 'rror|skipped' <<<"$output" | tail -20 >&2 || true
            status=1
        fi
    done
done
exit "$status"
