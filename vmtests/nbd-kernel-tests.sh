#!/usr/bin/env bash
# The netlink and nbd device tests (Tests/NetlinkTests, Tests/NBDKernelTests) inside the VM,
# where the nbd module is loaded: KernelNBDTests attach real devices (netlink CONNECT, STATUS,
# LINK_DEAD, RECONFIGURE, DISCONNECT; the ioctl path) and KernelNBDMountTests mount corpus
# images from them. On the host both suites skip themselves. Prints "ok - " / "not ok - "
# lines and "N passed, N failed"; exits non-zero on any failure. In the VM a missing nbd module
# or root fails those suites (EROFS_REQUIRE_*, TestSupport's HostRequirement) rather than skip them.
set -euo pipefail
source "$(dirname "$0")/common.sh"
KERNELS=(${VM_KERNELS:-6.1 6.12})

(cd "$REPO" && swift build --build-tests >&2)
tests=$(cd "$REPO" && swift build --show-bin-path)/erofs-mountPackageTests.xctest
"$VM_DIR/fetch-kernels.sh" >&2

passed=0 failed=0
for kernel in "${KERNELS[@]}"; do
    status=0
    output=$(EROFS_REQUIRE_ROOT=1 EROFS_REQUIRE_MODULES=nbd "$VM_DIR/run.sh" --kernel "$kernel" --timeout "${VM_TIMEOUT:-900}" -- \
        "$tests" --testing-library swift-testing --filter 'NetlinkTests|NBDKernelTests' 2>&1) || status=$?
    grep -E '^✘ ' <<<"$output" || true
    # Every suite must have run and passed: a skipped kernel suite means the VM lacked nbd.
    for suite in NetlinkEncodingTests NetlinkReplyTests MalformedReplyTests LiveNetlinkTests \
                 NBDNetlinkRequestTests NBDDeviceTests LiveNBDTests KernelNBDTests KernelNBDMountTests; do
        if grep -q "^✔ Suite $suite passed" <<<"$output"; then
            echo "ok - [$kernel] $suite"; passed=$((passed + 1))
        else
            echo "not ok - [$kernel] $suite"; failed=$((failed + 1))
        fi
    done
    if (( status != 0 )); then
        echo "not ok - [$kernel] the test run exited with status $status"; failed=$((failed + 1))
        tail -20 <<<"$output"
    fi
done
echo "$passed passed, $failed failed"
(( failed == 0 ))
