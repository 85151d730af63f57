#!/usr/bin/env bash
# Runs inside the test VM (or on the host): mount.erofs -t erofs.fuse end to end on this
# kernel's FUSE. Every corpus image, including those the kernel's own EROFS cannot mount
# (lzma, deflate, zstd on 6.1, metadata-compressed on both), must walk to its manifest with 2
# serving threads (EROFS_FUSE_THREADS="1 2" for both; run.sh passes EROFS_* into the VM: each
# mount starts three processes, slow under emulation; FUSEMountTests covers 1 and 4 threads on
# the host);
# -u must leave no mount, no daemon and no state file.
# Prints "ok - ..." / "not ok - ..." lines, then "N passed, N failed".
set -uo pipefail
source "$(dirname "$0")/common.sh"  # REPO
BIN=${EROFS_BIN_DIR:-$REPO/.build/debug}
CORPUS=${EROFS_CORPUS:-$REPO/../shared/corpus}
STATE=/run/erofs-mount/fuse
kernel=$(uname -r)
passed=0 failed=0
ok() { echo "ok - [$kernel] $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - [$kernel] $*"; failed=$((failed + 1)); }
work=$(mktemp -d /tmp/fuse-mount.XXXXXX)

[[ -c /dev/fuse ]] || { modprobe fuse 2>/dev/null; }
[[ -c /dev/fuse ]] && ok "/dev/fuse is there" || not_ok "no /dev/fuse"

daemons_of() { pgrep -f -- "--serve-fuse .*-- $1\$" || true; }

for image in $(cut -f1 "$CORPUS/INDEX.tsv"); do
    for threads in ${EROFS_FUSE_THREADS:-2}; do
        mnt=$work/mnt-$image-$threads
        mkdir -p "$mnt"
        if ! "$BIN/mount.erofs" -t erofs.fuse -o fuse.threads=$threads "$CORPUS/$image.erofs" "$mnt" 2>"$work/err"; then
            not_ok "$image ($threads threads): mount failed: $(cat "$work/err")"; continue
        fi
        if "$BIN/erofs" walk "$mnt" | cmp -s - "$CORPUS/$image.manifest.jsonl"; then
            ok "$image ($threads threads): walk equals the manifest"
        else
            not_ok "$image ($threads threads): walk differs from the manifest"
        fi
        "$BIN/mount.erofs" -u "$mnt" 2>"$work/err" || not_ok "$image: -u failed: $(cat "$work/err")"
        left=$(awk -v m="$mnt" '$5 == m' /proc/self/mountinfo; daemons_of "$CORPUS/$image.erofs"; ls "$STATE" 2>/dev/null | grep json)
        [[ -z $left ]] && ok "$image ($threads threads): -u left nothing" || not_ok "$image ($threads threads): left: $left"
    done
done
rm -rf "$work"
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
